// Development bootstrap: a SoftHSM2 token that lives entirely inside the data dir.
//
// Writes <dir>/softhsm2.conf (tokendir <dir>/tokens), then initialises a token through PKCS#11
// itself (C_InitToken, then C_InitPIN as the security officer) with random SO and user PINs kept in
// <dir>/so.pin and <dir>/user.pin (mode 0600). Nothing outside <dir> is read or written: not
// /etc/softhsm, not /var/lib/softhsm. Idempotent: a second call finds the token and returns.
//
// For development and tests. A production HSM is provisioned by its own tools; tokenvault is then
// given a module path, a token label and a PIN source.
#ifndef TOKENVAULT_HSM_DEV_TOKEN_H_
#define TOKENVAULT_HSM_DEV_TOKEN_H_

#include <string>

#include "hsm/pin.h"
#include "hsm/pkcs11_hsm.h"
#include "vault/base/status.h"

namespace tokenvault::hsm {

struct DevToken {
  Pkcs11Config config;  // module, label, softhsm2_conf
  PinSource pin;        // the user PIN file
};

// REQUIRES: no PKCS#11 module is initialised in this process (the bootstrap loads the module and
// finalises it before returning).
StatusOr<DevToken> EnsureDevToken(const std::string& dir, const std::string& module_path = "",
                                  const std::string& label = "tokenvault-dev");

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_DEV_TOKEN_H_
