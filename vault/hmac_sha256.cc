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
  return Compute(message, ByteView());
}

StatusOr<HmacSha256Tag> HmacSha256::Compute(ByteView first, ByteView second) const {
  EVP_MAC_CTX* ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ctx = EVP_MAC_CTX_dup(keyed_);  // keyed and ready: no key schedule per MAC
  }
  if (ctx == nullptr) return InternalError("crypto_error", "EVP_MAC_CTX_dup failed");
  HmacSha256Tag tag;
  size_t len = 0;
  const bool ok = EVP_MAC_update(ctx, first.data(), first.size()) == 1 &&
                  EVP_MAC_update(ctx, second.data(), second.size()) == 1 &&
                  EVP_MAC_final(ctx, tag.data(), &len, tag.size()) == 1 && len == tag.size();
  EVP_MAC_CTX_free(ctx);
  if (!ok) return InternalError("crypto_error", "HMAC failed");
  return tag;
}

std::string FingerprintString(const HmacSha256Tag& tag) {
  // The 256-bit big-endian number in four 64-bit limbs, divided by 62^10 per pass (ten digits at
  // a time: byte-by-byte division by 62 cost 2% of a tokenize's CPU).
  constexpr uint64_t kBase = 839299365868340224ULL;  // 62^10 < 2^64
  uint64_t limbs[4];
  for (int i = 0; i < 4; ++i) {
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v = (v << 8) | tag[static_cast<size_t>(i * 8 + b)];
    limbs[i] = v;
  }
  std::string digits(kFingerprintDigits, '0');
  size_t pos = kFingerprintDigits;
  while (pos > 0) {
    unsigned __int128 remainder = 0;
    for (uint64_t& limb : limbs) {
      const unsigned __int128 acc = (remainder << 64) | limb;
      limb = static_cast<uint64_t>(acc / kBase);
      remainder = acc % kBase;
    }
    uint64_t r = static_cast<uint64_t>(remainder);
    for (int k = 0; k < 10 && pos > 0; ++k) {
      digits[--pos] = kAlphabet[r % 62];
      r /= 62;
    }
  }
  return "fp_" + digits;
}

}  // namespace tokenvault
