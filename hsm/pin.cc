#include "hsm/pin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "vault/base/scope_guard.h"

namespace tokenvault::hsm {
namespace {

constexpr size_t kMaxPinSize = 256;

SecretBytes StripNewline(SecretBytes pin) {
  size_t n = pin.size();
  if (n > 0 && pin.data()[n - 1] == '\n') --n;
  if (n > 0 && pin.data()[n - 1] == '\r') --n;
  pin.Truncate(n);
  return pin;
}

StatusOr<SecretBytes> ReadPinFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return FailedPreconditionError("pin_unreadable",
                                   "cannot open PIN file " + path + ": " + std::strerror(errno));
  }
  ScopeGuard close_fd([fd] { close(fd); });
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return FailedPreconditionError("pin_unreadable", "PIN file " + path + " is not a regular file");
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return FailedPreconditionError("pin_file_permissions",
                                   "PIN file " + path + " is accessible by group or others; chmod 600 it");
  }
  SecretBytes pin(kMaxPinSize + 1);
  size_t total = 0;
  while (total < pin.size()) {
    const ssize_t n = read(fd, pin.data() + total, pin.size() - total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError("pin_unreadable", "cannot read PIN file " + path);
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  if (total > kMaxPinSize) {
    return FailedPreconditionError("pin_unreadable", "PIN file " + path + " is too long");
  }
  pin.Truncate(total);
  pin = StripNewline(std::move(pin));
  if (pin.empty()) return FailedPreconditionError("pin_unreadable", "PIN file " + path + " is empty");
  return pin;
}

}  // namespace

StatusOr<SecretBytes> LoadPin(const PinSource& source) {
  if (!source.file.empty()) return ReadPinFile(source.file);
  if (!source.env_var.empty()) {
    const char* v = std::getenv(source.env_var.c_str());
    if (v == nullptr || *v == '\0') {
      return FailedPreconditionError("pin_missing", "environment variable " + source.env_var +
                                                        " holds no PIN");
    }
    SecretBytes pin = SecretBytes::CopyFrom(AsBytes(v));
    if (pin.size() > kMaxPinSize) return FailedPreconditionError("pin_unreadable", "PIN too long");
    return StripNewline(std::move(pin));
  }
  return FailedPreconditionError("pin_missing", "no PIN file or PIN environment variable configured");
}

void ForgetEnvPin(const PinSource& source) {
  if (source.file.empty() && !source.env_var.empty()) unsetenv(source.env_var.c_str());
}

}  // namespace tokenvault::hsm
