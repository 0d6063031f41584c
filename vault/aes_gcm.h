// AES-256-GCM through OpenSSL EVP, with a 96-bit nonce and a 128-bit tag and nothing else.
// The nonce is drawn inside Encrypt from the CSPRNG: no caller can pass, reuse or predict one.
#ifndef TOKENVAULT_VAULT_AES_GCM_H_
#define TOKENVAULT_VAULT_AES_GCM_H_

#include <array>
#include <memory>

#include "vault/base/bytes.h"
#include "vault/base/random.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault {

inline constexpr size_t kAesGcmKeySize = 32;
inline constexpr size_t kAesGcmNonceSize = kGcmNonceSize;  // 12
inline constexpr size_t kAesGcmTagSize = 16;
// Values are short; the bound keeps a hostile row from making us allocate gigabytes.
inline constexpr size_t kAesGcmMaxPlaintext = 1 << 20;

using GcmTag = std::array<uint8_t, kAesGcmTagSize>;

struct SealedBox {
  GcmNonce nonce;
  Bytes ciphertext;  // same length as the plaintext
  GcmTag tag;
};

// Immutable and thread-safe once created.
class AesGcm256 {
 public:
  // kInvalidArgument unless 'key' is 32 bytes. Takes ownership of the key.
  static StatusOr<AesGcm256> Create(SecretBytes key);

  AesGcm256(AesGcm256&&) = default;
  AesGcm256& operator=(AesGcm256&&) = default;

  // Seals 'plaintext' and authenticates 'aad' under a fresh random nonce.
  StatusOr<SealedBox> Encrypt(ByteView plaintext, ByteView aad) const;

  // kDataLoss (integrity_failure) if the box or the AAD was changed in any way. On failure no
  // byte of plaintext is returned.
  StatusOr<SecretBytes> Decrypt(ByteView nonce, ByteView ciphertext, ByteView tag,
                                ByteView aad) const;

 private:
  explicit AesGcm256(SecretBytes key) : key_(std::move(key)) {}
  SecretBytes key_;
};

namespace internal {

// The raw primitive under AesGcm256, with a caller-chosen nonce. Only for AesGcm256 itself and
// for known-answer tests (Wycheproof): a nonce must never come from anywhere else.
Status AesGcmSealWithNonce(const SecretBytes& key, ByteView nonce, ByteView plaintext,
                           ByteView aad, uint8_t* ciphertext_out, uint8_t* tag_out);
StatusOr<SecretBytes> AesGcmOpen(const SecretBytes& key, ByteView nonce, ByteView ciphertext,
                                 ByteView tag, ByteView aad);

}  // namespace internal
}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_AES_GCM_H_
