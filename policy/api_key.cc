#include "policy/api_key.h"

#include <openssl/evp.h>

#include "vault/base/random.h"

namespace tokenvault::policy {
namespace {

constexpr std::string_view kPrefix = "tvk_";
constexpr char kHex[] = "0123456789abcdef";

bool IsLowerHex(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// 'bytes' random bytes as 2*bytes lowercase hex digits, written into 'out' at 'at'.
Status RandomHex(SecretBytes& out, size_t at, size_t bytes) {
  SecretBytes raw(bytes);
  TV_RETURN_IF_ERROR(RandomBytes(raw.data(), raw.size()));
  for (size_t i = 0; i < bytes; ++i) {
    out.data()[at + 2 * i] = static_cast<uint8_t>(kHex[raw.data()[i] >> 4]);
    out.data()[at + 2 * i + 1] = static_cast<uint8_t>(kHex[raw.data()[i] & 15]);
  }
  return Status::Ok();
}

Status BadKey() {
  return UnauthenticatedError("bad_api_key", "the API key is malformed");
}

}  // namespace

StatusOr<NewApiKey> GenerateApiKey() {
  const size_t total = kPrefix.size() + kApiKeyIdLength + 1 + kApiKeySecretLength;
  SecretBytes key(total);
  std::copy(kPrefix.begin(), kPrefix.end(), key.data());
  TV_RETURN_IF_ERROR(RandomHex(key, kPrefix.size(), kApiKeyIdLength / 2));
  key.data()[kPrefix.size() + kApiKeyIdLength] = '_';
  const size_t secret_at = kPrefix.size() + kApiKeyIdLength + 1;
  TV_RETURN_IF_ERROR(RandomHex(key, secret_at, kApiKeySecretLength / 2));
  NewApiKey out;
  out.key_id.assign(reinterpret_cast<const char*>(key.data()) + kPrefix.size(), kApiKeyIdLength);
  out.secret_hash = HashApiKeySecret(key.view().subspan(secret_at));
  out.full_key = std::move(key);
  return out;
}

StatusOr<ApiKey> ParseApiKey(std::string_view presented) {
  const size_t total = kPrefix.size() + kApiKeyIdLength + 1 + kApiKeySecretLength;
  if (presented.size() != total || presented.substr(0, kPrefix.size()) != kPrefix ||
      presented[kPrefix.size() + kApiKeyIdLength] != '_') {
    return BadKey();
  }
  const std::string_view id = presented.substr(kPrefix.size(), kApiKeyIdLength);
  const std::string_view secret = presented.substr(kPrefix.size() + kApiKeyIdLength + 1);
  for (char c : id) {
    if (!IsLowerHex(static_cast<uint8_t>(c))) return BadKey();
  }
  for (char c : secret) {
    if (!IsLowerHex(static_cast<uint8_t>(c))) return BadKey();
  }
  return ApiKey{std::string(id), SecretBytes::CopyFrom(AsBytes(secret))};
}

Bytes HashApiKeySecret(ByteView secret) {
  static constexpr std::string_view kDomain = "tokenvault/api-key/v1";
  Bytes digest(32);
  unsigned int len = 0;
  // Fetched once: EVP_sha256() makes OpenSSL 3 look the implementation up on every request.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = sha256 != nullptr && ctx != nullptr &&
                  EVP_DigestInit_ex2(ctx, sha256, nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, kDomain.data(), kDomain.size()) == 1 &&
                  EVP_DigestUpdate(ctx, secret.data(), secret.size()) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest.data(), &len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok || len != digest.size()) std::abort();  // SHA-256 cannot fail short of OOM
  return digest;
}

bool ApiKeySecretMatches(const SecretBytes& secret, ByteView stored_hash) {
  return ConstantTimeEquals(HashApiKeySecret(secret.view()), stored_hash);
}

}  // namespace tokenvault::policy
