#include "hsm/internal/pkcs11_module.h"

#include <dlfcn.h>

#include <optional>

#include "hsm/hsm.h"

namespace tokenvault::hsm::internal {

namespace {

// dlopen()s 'path' and finds C_GetFunctionList. The caller owns the handle.
StatusOr<std::pair<void*, void*>> OpenLibrary(const std::string& path) {
  if (path.empty()) {
    return UnavailableError(kReasonModuleUnavailable, "no PKCS#11 module path configured");
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    return UnavailableError(kReasonModuleUnavailable,
                            "cannot load PKCS#11 module " + path + ": " + (err ? err : "?"));
  }
  void* get_list = dlsym(handle, "C_GetFunctionList");
  if (get_list == nullptr) {
    dlclose(handle);
    return UnavailableError(kReasonModuleUnavailable,
                            path + " is not a PKCS#11 module (no C_GetFunctionList)");
  }
  return std::make_pair(handle, get_list);
}

}  // namespace

Status CheckModuleLoadable(const std::string& path) {
  TV_ASSIGN_OR_RETURN(auto library, OpenLibrary(path));
  dlclose(library.first);
  return Status::Ok();
}

StatusOr<std::unique_ptr<Pkcs11Module>> Pkcs11Module::Load(const std::string& path) {
  TV_ASSIGN_OR_RETURN(auto library, OpenLibrary(path));
  void* handle = library.first;
  auto get_list = reinterpret_cast<ck_rv_t (*)(ck_function_list**)>(library.second);
  ck_function_list* fn = nullptr;
  if (get_list(&fn) != CKR_OK || fn == nullptr) {
    dlclose(handle);
    return UnavailableError(kReasonModuleUnavailable,
                            path + " is not a PKCS#11 module (no usable C_GetFunctionList)");
  }
  ck_c_initialize_args args{};
  args.flags = CKF_OS_LOCKING_OK;  // without it SoftHSM does no locking of its own
  const ck_rv_t rv = fn->C_Initialize(&args);
  if (rv != CKR_OK) {
    dlclose(handle);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      return FailedPreconditionError("hsm_module_in_use",
                                     "PKCS#11 module " + path + " is already initialised in this process");
    }
    Status s = StatusFromCkr(rv, "C_Initialize");
    return UnavailableError(kReasonModuleUnavailable, s.message());
  }
  return std::unique_ptr<Pkcs11Module>(new Pkcs11Module(handle, fn));
}

Pkcs11Module::~Pkcs11Module() {
  fn_->C_Finalize(nullptr);  // ignoring errors: nothing useful can be done at teardown
  dlclose(handle_);
}

StatusOr<std::vector<ck_slot_id_t>> Pkcs11Module::SlotsWithTokens() const {
  unsigned long count = 0;
  ck_rv_t rv = fn_->C_GetSlotList(1, nullptr, &count);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetSlotList");
  std::vector<ck_slot_id_t> slots(count);
  rv = fn_->C_GetSlotList(1, slots.data(), &count);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetSlotList");
  slots.resize(count);
  return slots;
}

StatusOr<ck_slot_id_t> Pkcs11Module::FindSlotByTokenLabel(const std::string& label) const {
  TV_ASSIGN_OR_RETURN(std::vector<ck_slot_id_t> slots, SlotsWithTokens());
  std::vector<ck_slot_id_t> matches;
  for (ck_slot_id_t slot : slots) {
    ck_token_info info{};
    if (fn_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    if (TrimLabel(info.label) == label) matches.push_back(slot);
  }
  if (matches.empty()) {
    return UnavailableError(kReasonTokenNotFound, "no initialised token labelled '" + label + "'");
  }
  if (matches.size() > 1) {
    // Never guess which token gets the PIN: a second token with our label may be a plant.
    return FailedPreconditionError("hsm_token_ambiguous",
                                   "more than one token is labelled '" + label + "'");
  }
  return matches[0];
}

StatusOr<Pkcs11Session> Pkcs11Session::Open(ck_function_list* fn, ck_slot_id_t slot) {
  ck_session_handle_t handle = CK_INVALID_HANDLE;
  const ck_rv_t rv =
      fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &handle);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_OpenSession");
  return Pkcs11Session(fn, handle);
}

Pkcs11Session& Pkcs11Session::operator=(Pkcs11Session&& other) noexcept {
  if (this != &other) {
    if (handle_ != CK_INVALID_HANDLE) fn_->C_CloseSession(handle_);
    fn_ = other.fn_;
    handle_ = std::exchange(other.handle_, CK_INVALID_HANDLE);
  }
  return *this;
}

Pkcs11Session::~Pkcs11Session() {
  if (handle_ != CK_INVALID_HANDLE) fn_->C_CloseSession(handle_);
}

StatusOr<std::vector<ck_object_handle_t>> FindObjects(ck_function_list* fn,
                                                     ck_session_handle_t session,
                                                     ck_attribute* templ, unsigned long count,
                                                     size_t max) {
  ck_rv_t rv = fn->C_FindObjectsInit(session, templ, count);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_FindObjectsInit");
  std::vector<ck_object_handle_t> found(max);
  unsigned long n = 0;
  rv = fn->C_FindObjects(session, found.data(), found.size(), &n);
  const ck_rv_t final_rv = fn->C_FindObjectsFinal(session);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_FindObjects");
  if (final_rv != CKR_OK) return StatusFromCkr(final_rv, "C_FindObjectsFinal");
  found.resize(n);
  return found;
}

StatusOr<std::unique_ptr<SessionPool>> SessionPool::Create(ck_function_list* fn,
                                                           ck_slot_id_t slot,
                                                           const SecretBytes& pin,
                                                           size_t max_sessions) {
  TV_ASSIGN_OR_RETURN(Pkcs11Session anchor, Pkcs11Session::Open(fn, slot));
  // C_Login takes a non-const pointer; the PIN is not modified.
  const ck_rv_t rv = fn->C_Login(anchor.handle(), CKU_USER, const_cast<uint8_t*>(pin.data()),
                                 pin.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ||
        rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED || rv == CKR_USER_PIN_NOT_INITIALIZED) {
      return UnauthenticatedError(kReasonLoginRefused,
                                  "the HSM refused the user PIN (" + std::string(CkrName(rv)) + ")");
    }
    return StatusFromCkr(rv, "C_Login");
  }
  return std::unique_ptr<SessionPool>(
      new SessionPool(fn, slot, std::move(anchor), max_sessions == 0 ? 1 : max_sessions));
}

SessionPool::~SessionPool() {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.clear();  // closes them; the anchor closes last and ends the login
}

StatusOr<SessionPool::Lease> SessionPool::Acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  available_.wait(lock, [&] { return !idle_.empty() || open_ < max_sessions_; });
  if (!idle_.empty()) {
    Pkcs11Session session = std::move(idle_.back());
    idle_.pop_back();
    return Lease(this, std::move(session));
  }
  ++open_;
  lock.unlock();
  return OpenCounted();
}

StatusOr<SessionPool::Lease> SessionPool::AcquireNew() {
  std::optional<Pkcs11Session> retired;  // closed after the lock is released
  {
    std::unique_lock<std::mutex> lock(mu_);
    available_.wait(lock, [&] { return !idle_.empty() || open_ < max_sessions_; });
    if (open_ >= max_sessions_) {
      retired.emplace(std::move(idle_.back()));
      idle_.pop_back();
      --open_;
    }
    ++open_;
  }
  retired.reset();
  return OpenCounted();
}

StatusOr<SessionPool::Lease> SessionPool::OpenCounted() {
  StatusOr<Pkcs11Session> session = Pkcs11Session::Open(fn_, slot_);
  if (!session.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    --open_;
    available_.notify_one();
    return session.status();
  }
  return Lease(this, std::move(session).value());
}

void SessionPool::Release(Pkcs11Session session, bool broken) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken) {
    --open_;
    Pkcs11Session closing = std::move(session);  // closes at end of scope
  } else {
    idle_.push_back(std::move(session));
  }
  available_.notify_one();
}

SessionPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(std::move(session_), broken_);
}

}  // namespace tokenvault::hsm::internal
