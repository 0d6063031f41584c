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

// The PIN, with one trailing newline removed. A PIN read from the environment is then wiped
// from it and the variable unset (REQUIRES: no other thread reads the environment meanwhile). Errors: kFailedPrecondition (pin_unreadable,
// pin_file_permissions) when the file is missing, unreadable, empty, or readable by group or
// others; kFailedPrecondition (pin_missing) when neither source is set.
StatusOr<SecretBytes> LoadPin(const PinSource& source);

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_PIN_H_
