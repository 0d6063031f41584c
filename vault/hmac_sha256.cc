#include "vault/hmac_sha256.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

namespace tokenvault {
namespace {

constexpr size_t kFingerprintDigits = 43;  // 62^43 > 2^256
constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Fetched once (OpenSSL 3 would look it up on every use otherwise).
EVP_MAC* HmacImplementation() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}

}  // namespace

StatusOr<std::unique_ptr<HmacSha256>> HmacSha256::Create(const SecretBytes& key) {
  if (key.size() == 0) return InvalidArgumentError("bad_key", "an HMAC key cannot be empty");
  if (HmacImplementation() == nullptr) return InternalError("crypto_error", "HMAC unavailable");
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(HmacImplementation());
  if (ctx == nullptr) return InternalError("crypto_error", "EVP_MAC_CTX_new failed");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx, key.data(), key.size(), params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return InternalError("crypto_error", "EVP_MAC_init failed");
  }
  return std::unique_ptr<HmacSha256>(new HmacSha256(ctx));
}

HmacSha256::~HmacSha256() { EVP_MAC_CTX_free(keyed_); }

StatusOr<HmacSha256Tag> HmacSha256::Compute(ByteView message) const {
  EVP_MAC_CTX* ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ctx = EVP_MAC_CTX_dup(keyed_);  // keyed and ready: no key schedule per MAC
  }
  if (ctx == nullptr) return InternalError("crypto_error", "EVP_MAC_CTX_dup failed");
  HmacSha256Tag tag;
  size_t len = 0;
  const bool ok = EVP_MAC_update(ctx, message.data(), message.size()) == 1 &&
                  EVP_MAC_final(ctx, tag.data(), &len, tag.size()) == 1 && len == tag.size();
  EVP_MAC_CTX_free(ctx);
  if (!ok) return InternalError("crypto_error", "HMAC failed");
  return tag;
}

std::string FingerprintString(const HmacSha256Tag& tag) {
  // Repeated division of the 256-bit big-endian number by 62.
  HmacSha256Tag n = tag;
  std::string digits(kFingerprintDigits, '0');
  for (size_t i = kFingerprintDigits; i-- > 0;) {
    unsigned remainder = 0;
    for (uint8_t& byte : n) {
      const unsigned acc = (remainder << 8) | byte;
      byte = static_cast<uint8_t>(acc / 62);
      remainder = acc % 62;
    }
    digits[i] = kAlphabet[remainder];
  }
  return "fp_" + digits;
}

}  // namespace tokenvault
