// API keys: "tvk_<key id>_<secret>", with a 20-hex-digit key id (80 bits, public: it names the
// key in storage and logs) and a 64-hex-digit secret (256 bits from the CSPRNG). Only a hash of
// the secret is stored; the whole key is shown once, when it is created.
#ifndef TOKENVAULT_POLICY_API_KEY_H_
#define TOKENVAULT_POLICY_API_KEY_H_

#include <string>
#include <string_view>

#include "vault/base/bytes.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::policy {

inline constexpr size_t kApiKeyIdLength = 20;
inline constexpr size_t kApiKeySecretLength = 64;

struct ApiKey {
  std::string key_id;
  SecretBytes secret;  // the hex digits as presented
};

struct NewApiKey {
  std::string key_id;
  SecretBytes full_key;  // "tvk_<id>_<secret>", to hand to its owner once
  Bytes secret_hash;     // what is stored
};

StatusOr<NewApiKey> GenerateApiKey();

// Splits a presented key. kUnauthenticated (bad_api_key) when it does not have the shape; the
// message never repeats the key.
StatusOr<ApiKey> ParseApiKey(std::string_view presented);

// SHA-256 over a domain-separation prefix and the secret. A plain (unsalted, fast) hash is
// enough because the secret has 256 bits of entropy: there is no dictionary to try.
Bytes HashApiKeySecret(ByteView secret);

// Constant-time comparison of the presented secret's hash with the stored one.
bool ApiKeySecretMatches(const SecretBytes& secret, ByteView stored_hash);

}  // namespace tokenvault::policy

#endif  // TOKENVAULT_POLICY_API_KEY_H_
