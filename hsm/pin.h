// Where the HSM user PIN comes from: a file (mode 0600 or stricter) or an environment variable.
// Never argv (visible in /proc and `ps`), never a log line.
#ifndef TOKENVAULT_HSM_PIN_H_
#define TOKENVAULT_HSM_PIN_H_

#include <string>

#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::hsm {

struct PinSource {
  std::string file;     // read first when set
  std::string env_var;  // else this variable (e.g. TOKENVAULT_HSM_PIN)
};

// The PIN, with one trailing newline removed. Errors: kFailedPrecondition (pin_unreadable,
// pin_file_permissions) when the file is missing, unreadable, empty, or readable by group or
// others; kFailedPrecondition (pin_missing) when neither source is set.
StatusOr<SecretBytes> LoadPin(const PinSource& source);

// Unsets the PIN's environment variable, if that is where the PIN came from: call once the HSM
// accepted it, so that it does not stay in /proc/self/environ or pass to child processes.
// REQUIRES: no other thread reads the environment meanwhile (startup).
void ForgetEnvPin(const PinSource& source);

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_PIN_H_
