#include "vault/aes_gcm.h"

#include <openssl/evp.h>

#include <climits>

#include "vault/base/scope_guard.h"

namespace tokenvault {
namespace {

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

Status CryptoError(const char* what) {
  return InternalError("crypto_error", std::string("OpenSSL ") + what + " failed");
}

bool FitsInt(size_t n) { return n <= static_cast<size_t>(INT_MAX); }

// Fetched once: EVP_aes_256_gcm() makes OpenSSL 3 look the implementation up on every init.
// Null only if the default provider lacks AES-GCM; every caller then fails with crypto_error.
const EVP_CIPHER* Aes256Gcm() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

}  // namespace

namespace internal {

Status AesGcmSealWithNonce(const SecretBytes& key, ByteView nonce, ByteView plaintext,
                           ByteView aad, uint8_t* ciphertext_out, uint8_t* tag_out) {
  if (key.size() != kAesGcmKeySize) return InvalidArgumentError("bad_key", "AES-256 key required");
  if (nonce.size() != kAesGcmNonceSize) return InvalidArgumentError("bad_nonce", "96-bit nonce required");
  if (plaintext.size() > kAesGcmMaxPlaintext || !FitsInt(aad.size())) {
    return InvalidArgumentError("too_large", "plaintext or AAD too large");
  }
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return CryptoError("EVP_CIPHER_CTX_new");
  // The default IV length of AES-256-GCM is 12 bytes: no EVP_CTRL_GCM_SET_IVLEN needed.
  if (EVP_EncryptInit_ex(ctx.get(), Aes256Gcm(), nullptr, key.data(), nonce.data()) != 1) {
    return CryptoError("EVP_EncryptInit_ex");
  }
  int len = 0;
  if (!aad.empty() &&
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) {
    return CryptoError("EVP_EncryptUpdate(aad)");
  }
  if (!plaintext.empty() &&
      EVP_EncryptUpdate(ctx.get(), ciphertext_out, &len, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1) {
    return CryptoError("EVP_EncryptUpdate");
  }
  uint8_t final_block[16];  // GCM writes nothing here; never pass a null pointer
  if (EVP_EncryptFinal_ex(ctx.get(), final_block, &len) != 1) {
    return CryptoError("EVP_EncryptFinal_ex");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kAesGcmTagSize, tag_out) != 1) {
    return CryptoError("EVP_CTRL_GCM_GET_TAG");
  }
  return Status::Ok();
}

StatusOr<SecretBytes> AesGcmOpen(const SecretBytes& key, ByteView nonce, ByteView ciphertext,
                                 ByteView tag, ByteView aad) {
  if (key.size() != kAesGcmKeySize) return InvalidArgumentError("bad_key", "AES-256 key required");
  // Wrong sizes are what tampering looks like: report them as integrity failures.
  if (nonce.size() != kAesGcmNonceSize || tag.size() != kAesGcmTagSize ||
      ciphertext.size() > kAesGcmMaxPlaintext || !FitsInt(aad.size())) {
    return DataLossError("integrity_failure", "sealed value has an impossible shape");
  }
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return CryptoError("EVP_CIPHER_CTX_new");
  if (EVP_DecryptInit_ex(ctx.get(), Aes256Gcm(), nullptr, key.data(), nonce.data()) != 1) {
    return CryptoError("EVP_DecryptInit_ex");
  }
  int len = 0;
  if (!aad.empty() &&
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) {
    return CryptoError("EVP_DecryptUpdate(aad)");
  }
  SecretBytes plaintext(ciphertext.size());
  // Tink's rule: if anything fails, the partial plaintext is wiped before we return.
  ScopeGuard wipe([&] { plaintext.Wipe(); });
  if (!ciphertext.empty() &&
      EVP_DecryptUpdate(ctx.get(), plaintext.data(), &len, ciphertext.data(),
                        static_cast<int>(ciphertext.size())) != 1) {
    return CryptoError("EVP_DecryptUpdate");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kAesGcmTagSize,
                          const_cast<uint8_t*>(tag.data())) != 1) {
    return CryptoError("EVP_CTRL_GCM_SET_TAG");
  }
  // EVP_DecryptFinal_ex compares the tag in constant time.
  uint8_t final_block[16];
  if (EVP_DecryptFinal_ex(ctx.get(), final_block, &len) != 1) {
    return DataLossError("integrity_failure", "authentication tag mismatch");
  }
  wipe.Dismiss();
  return plaintext;
}

}  // namespace internal

StatusOr<AesGcm256> AesGcm256::Create(SecretBytes key) {
  if (key.size() != kAesGcmKeySize) {
    return InvalidArgumentError("bad_key", "AES-256-GCM needs a 32-byte key");
  }
  return AesGcm256(std::move(key));
}

StatusOr<SealedBox> AesGcm256::Encrypt(ByteView plaintext, ByteView aad) const {
  SealedBox box;
  TV_ASSIGN_OR_RETURN(box.nonce, RandomNonce());
  box.ciphertext.resize(plaintext.size());
  TV_RETURN_IF_ERROR(internal::AesGcmSealWithNonce(key_, box.nonce, plaintext, aad,
                                                  box.ciphertext.data(), box.tag.data()));
  return box;
}

StatusOr<SecretBytes> AesGcm256::Decrypt(ByteView nonce, ByteView ciphertext, ByteView tag,
                                         ByteView aad) const {
  return internal::AesGcmOpen(key_, nonce, ciphertext, tag, aad);
}

}  // namespace tokenvault
