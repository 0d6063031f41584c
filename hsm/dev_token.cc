#include "hsm/dev_token.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "hsm/internal/pkcs11.h"
#include "hsm/internal/pkcs11_module.h"
#include "vault/base/random.h"
#include "vault/base/scope_guard.h"

namespace tokenvault::hsm {
namespace {

using internal::StatusFromCkr;

Status MakeDir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    struct stat st {};
    const std::string parent = path.substr(0, slash);
    if (stat(parent.c_str(), &st) != 0) TV_RETURN_IF_ERROR(MakeDir(parent));
  }
  if (mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return Status::Ok();
  return FailedPreconditionError("data_dir_unwritable",
                                 "cannot create " + path + ": " + std::strerror(errno));
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

// Writes 'data' to a new file with mode 0600; fails if the file exists.
Status WriteSecretFile(const std::string& path, ByteView data) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return FailedPreconditionError("data_dir_unwritable",
                                   "cannot create " + path + ": " + std::strerror(errno));
  }
  ScopeGuard close_fd([fd] { close(fd); });
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError("data_dir_unwritable", "cannot write " + path);
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return FailedPreconditionError("data_dir_unwritable", "cannot fsync " + path);
  return Status::Ok();
}

// A PIN of 32 characters from [A-Za-z0-9]: printable so operators can paste it into HSM tools.
StatusOr<SecretBytes> RandomPin() {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  SecretBytes pin(32);
  SecretBytes raw(32);
  for (size_t i = 0; i < pin.size();) {
    TV_RETURN_IF_ERROR(RandomBytes(raw.data(), raw.size()));
    for (size_t j = 0; j < raw.size() && i < pin.size(); ++j) {
      if (raw.data()[j] < 248) pin.data()[i++] = kAlphabet[raw.data()[j] % 62];  // no modulo bias
    }
  }
  return pin;
}

Status InitUserPin(ck_function_list* fn, ck_slot_id_t slot, const SecretBytes& so_pin,
                   const SecretBytes& user_pin) {
  TV_ASSIGN_OR_RETURN(internal::Pkcs11Session session, internal::Pkcs11Session::Open(fn, slot));
  ck_rv_t rv =
      fn->C_Login(session.handle(), CKU_SO, const_cast<uint8_t*>(so_pin.data()), so_pin.size());
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_Login(SO)");
  rv = fn->C_InitPIN(session.handle(), const_cast<uint8_t*>(user_pin.data()), user_pin.size());
  const ck_rv_t logout_rv = fn->C_Logout(session.handle());
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_InitPIN");
  if (logout_rv != CKR_OK) return StatusFromCkr(logout_rv, "C_Logout(SO)");
  return Status::Ok();
}

Status InitToken(const std::string& module_path, const std::string& label,
                 const SecretBytes& so_pin, const SecretBytes& user_pin) {
  TV_ASSIGN_OR_RETURN(std::unique_ptr<internal::Pkcs11Module> module,
                      internal::Pkcs11Module::Load(module_path));
  ck_function_list* fn = module->fn();
  StatusOr<ck_slot_id_t> existing = module->FindSlotByTokenLabel(label);
  if (existing.ok()) {
    // Made by an earlier run. If that run died between C_InitToken and C_InitPIN, finish it.
    ck_token_info info{};
    ck_rv_t rv = fn->C_GetTokenInfo(*existing, &info);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetTokenInfo");
    if (info.flags & CKF_USER_PIN_INITIALIZED) return Status::Ok();
    return InitUserPin(fn, *existing, so_pin, user_pin);
  }
  if (existing.status().reason() != kReasonTokenNotFound) return existing.status();

  // SoftHSM always offers one slot with an uninitialised token.
  TV_ASSIGN_OR_RETURN(std::vector<ck_slot_id_t> slots, module->SlotsWithTokens());
  ck_rv_t rv;
  bool initialised = false;
  for (ck_slot_id_t slot : slots) {
    ck_token_info info{};
    if (fn->C_GetTokenInfo(slot, &info) != CKR_OK || (info.flags & CKF_TOKEN_INITIALIZED)) continue;
    unsigned char padded[32];
    internal::PadLabel(label, padded);
    rv = fn->C_InitToken(slot, const_cast<uint8_t*>(so_pin.data()), so_pin.size(), padded);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_InitToken");
    initialised = true;
    break;
  }
  if (!initialised) {
    return UnavailableError(kReasonTokenNotFound, "the module offers no uninitialised token slot");
  }
  // Slot ids change after C_InitToken: find the token again by its label.
  TV_ASSIGN_OR_RETURN(ck_slot_id_t slot, module->FindSlotByTokenLabel(label));
  return InitUserPin(fn, slot, so_pin, user_pin);
}

}  // namespace

StatusOr<DevToken> EnsureDevToken(const std::string& dir, const std::string& module_path,
                                  const std::string& label) {
  DevToken token;
  token.config.module_path = module_path.empty() ? DefaultModulePath() : module_path;
  token.config.token_label = label;
  token.config.softhsm2_conf = dir + "/softhsm2.conf";
  token.pin.file = dir + "/user.pin";
  const std::string so_pin_file = dir + "/so.pin";
  const std::string token_dir = dir + "/tokens";

  // Fail on a missing or foreign module before writing anything.
  TV_RETURN_IF_ERROR(internal::CheckModuleLoadable(token.config.module_path));
  TV_RETURN_IF_ERROR(MakeDir(dir));
  TV_RETURN_IF_ERROR(MakeDir(token_dir));
  if (!FileExists(token.config.softhsm2_conf)) {
    const std::string conf = "# Written by tokenvault: a development SoftHSM2 token in the data dir.\n"
                             "directories.tokendir = " + token_dir + "\n"
                             "objectstore.backend = file\n"
                             "log.level = ERROR\n"
                             "slots.removable = false\n";
    TV_RETURN_IF_ERROR(WriteSecretFile(token.config.softhsm2_conf, AsBytes(conf)));
  }
  // Each PIN is written before it is used, so a crash can never leave a token whose PIN is lost.
  if (!FileExists(so_pin_file)) {
    TV_ASSIGN_OR_RETURN(SecretBytes so_pin, RandomPin());
    TV_RETURN_IF_ERROR(WriteSecretFile(so_pin_file, so_pin.view()));
  }
  if (!FileExists(token.pin.file)) {
    TV_ASSIGN_OR_RETURN(SecretBytes user_pin, RandomPin());
    TV_RETURN_IF_ERROR(WriteSecretFile(token.pin.file, user_pin.view()));
  }
  TV_ASSIGN_OR_RETURN(SecretBytes so_pin, LoadPin(PinSource{so_pin_file, ""}));
  TV_ASSIGN_OR_RETURN(SecretBytes user_pin, LoadPin(token.pin));

  setenv("SOFTHSM2_CONF", token.config.softhsm2_conf.c_str(), 1);
  TV_RETURN_IF_ERROR(InitToken(token.config.module_path, label, so_pin, user_pin));
  return token;
}

}  // namespace tokenvault::hsm
