// AES-GCM inside the HSM through C_Encrypt / C_Decrypt (CKM_AES_GCM), the mechanism that wraps
// DEKs (docs/key-wrapping.md). Separate from Pkcs11Hsm so the exact parameters can be checked
// against Wycheproof vectors on a real token.
#ifndef TOKENVAULT_HSM_INTERNAL_GCM_H_
#define TOKENVAULT_HSM_INTERNAL_GCM_H_

#include "hsm/internal/pkcs11.h"
#include "vault/base/bytes.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::hsm::internal {

inline constexpr size_t kGcmIvSize = 12;
inline constexpr size_t kGcmTagSize = 16;

// ciphertext || tag of 'plaintext' under 'key' with a 96-bit 'iv' and a 128-bit tag.
// On error the session may hold an unfinished operation: callers discard it.
StatusOr<Bytes> HsmGcmEncrypt(ck_function_list* fn, ck_session_handle_t session,
                              ck_object_handle_t key, ByteView iv, ByteView aad,
                              ByteView plaintext);

// The plaintext of 'ciphertext_and_tag'. kDataLoss (integrity_failure) when authentication
// fails - told apart from a device fault as docs/key-wrapping.md explains.
StatusOr<SecretBytes> HsmGcmDecrypt(ck_function_list* fn, ck_session_handle_t session,
                                    ck_object_handle_t key, ByteView iv, ByteView aad,
                                    ByteView ciphertext_and_tag);

}  // namespace tokenvault::hsm::internal

#endif  // TOKENVAULT_HSM_INTERNAL_GCM_H_
