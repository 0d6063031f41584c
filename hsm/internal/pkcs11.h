// The one place that includes the PKCS#11 header. Only .cc files of hsm/ (and HSM tests) may
// include this. CRYPTOKI_GNU selects p11-kit's lower-case names: its compatibility mode defines
// macros such as `value` and `flags` that would rewrite unrelated identifiers.
#ifndef TOKENVAULT_HSM_INTERNAL_PKCS11_H_
#define TOKENVAULT_HSM_INTERNAL_PKCS11_H_

#define CRYPTOKI_GNU 1
#include <p11-kit/pkcs11.h>

#include <string>
#include <string_view>

#include "vault/base/status.h"

namespace tokenvault::hsm::internal {

// "CKR_PIN_INCORRECT" etc.
std::string_view CkrName(ck_rv_t rv);

// Maps a PKCS#11 return value to a Status with the reasons of hsm.h. 'what' names the operation.
Status StatusFromCkr(ck_rv_t rv, std::string_view what);

// True for return values that mean the device, token or session is gone (retryable).
bool IsDeviceFailure(ck_rv_t rv);

// A token label is 32 bytes padded with spaces.
std::string TrimLabel(const unsigned char (&label)[32]);
void PadLabel(std::string_view label, unsigned char (&out)[32]);

}  // namespace tokenvault::hsm::internal

#endif  // TOKENVAULT_HSM_INTERNAL_PKCS11_H_
