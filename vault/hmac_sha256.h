// HmacSha256: HMAC-SHA256 under one key, keyed once. Keyed fingerprints (API.md, Tokens) are
// this MAC over the normalised value under a per-merchant key: PCI DSS 3.5.1.1's keyed hash,
// never a plain one.
#ifndef TOKENVAULT_VAULT_HMAC_SHA256_H_
#define TOKENVAULT_VAULT_HMAC_SHA256_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "vault/base/bytes.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

struct evp_mac_ctx_st;

namespace tokenvault {

inline constexpr size_t kHmacSha256Size = 32;
using HmacSha256Tag = std::array<uint8_t, kHmacSha256Size>;

// Thread-safe.
class HmacSha256 {
 public:
  // Any key length HMAC allows (1 byte or more); fingerprint keys are 32 random bytes. The key
  // lives inside OpenSSL's keyed context, which wipes it when freed.
  static StatusOr<std::unique_ptr<HmacSha256>> Create(const SecretBytes& key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  StatusOr<HmacSha256Tag> Compute(ByteView message) const;
  // The MAC of the concatenation first || second.
  StatusOr<HmacSha256Tag> Compute(ByteView first, ByteView second) const;

 private:
  explicit HmacSha256(evp_mac_ctx_st* keyed) : keyed_(keyed) {}
  mutable std::mutex mu_;  // guards duplicating keyed_ (each MAC works on its own copy)
  evp_mac_ctx_st* const keyed_;
};

// "fp_" + the tag as exactly 43 base62 digits (0-9A-Za-z), most significant first.
std::string FingerprintString(const HmacSha256Tag& tag);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_HMAC_SHA256_H_
