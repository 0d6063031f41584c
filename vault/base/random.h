// Randomness from OpenSSL's CSPRNG (RAND_bytes), the only source of keys, nonces and tokens.
#ifndef TOKENVAULT_VAULT_BASE_RANDOM_H_
#define TOKENVAULT_VAULT_BASE_RANDOM_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault {

// Fills 'out' with 'size' bytes from RAND_bytes. Fails (kInternal) only if the CSPRNG does.
Status RandomBytes(uint8_t* out, size_t size);

// Like RandomBytes, for small draws on hot paths (token ids, request ids): served from a
// per-thread block of RAND_bytes output (one RAND call per ~1 KiB instead of one per draw, which
// costs ~2 us whatever the size), each byte handed out once and wiped from the block, the block
// discarded after fork(). Not for keys: those come from RandomSecret.
Status RandomBytesFast(uint8_t* out, size_t size);

// A fresh random secret of 'size' bytes (keys).
StatusOr<SecretBytes> RandomSecret(size_t size);

inline constexpr size_t kGcmNonceSize = 12;
using GcmNonce = std::array<uint8_t, kGcmNonceSize>;

// A random 96-bit nonce. Nonces are drawn from RAND_bytes in blocks per thread (one RAND call per
// 64 nonces) because the call, not the bytes, is what costs; each nonce is used exactly once and
// the block is discarded after fork so parent and child never share one.
StatusOr<GcmNonce> RandomNonce();

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_RANDOM_H_
