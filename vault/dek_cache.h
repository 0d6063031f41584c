// A bounded cache of unwrapped data keys, so that the HSM is not called on every request.
//
// Trade-off: each entry is an AES key in process memory. 'max_entries' bounds how many keys sit
// there at once and 'ttl' how long one stays after it was unwrapped; either set to 0 disables
// the cache and every use asks the HSM (slower, nothing kept). Keys live in SecretBytes: an
// evicted key is wiped as soon as the last operation using it finishes.
#ifndef TOKENVAULT_VAULT_DEK_CACHE_H_
#define TOKENVAULT_VAULT_DEK_CACHE_H_

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "vault/aes_gcm.h"
#include "vault/base/clock.h"

namespace tokenvault {

// Thread-safe.
class DekCache {
 public:
  DekCache(size_t max_entries, std::chrono::milliseconds ttl, const Clock& clock)
      : max_entries_(max_entries), ttl_(ttl), clock_(clock) {}

  bool enabled() const { return max_entries_ > 0 && ttl_.count() > 0; }

  // The key, or null if absent or expired (an expired entry is dropped).
  std::shared_ptr<const AesGcm256> Get(std::string_view merchant, uint32_t version);
  // Inserts or replaces; evicts the least recently used entry when full. No-op when disabled.
  void Put(std::string_view merchant, uint32_t version, std::shared_ptr<const AesGcm256> key);
  // Drops every version of one merchant (shredding).
  void EraseMerchant(std::string_view merchant);
  // Drops one version (destroyed). The entry is freed - and its key wiped - once no request
  // still holds it.
  void Erase(std::string_view merchant, uint32_t version);
  void Clear();
  size_t size() const;

 private:
  struct Entry {
    std::string key;
    std::string merchant;
    std::shared_ptr<const AesGcm256> aead;
    std::chrono::steady_clock::time_point expires;
  };
  static std::string KeyOf(std::string_view merchant, uint32_t version);
  void EvictExpiredLocked(std::chrono::steady_clock::time_point now);

  const size_t max_entries_;
  const std::chrono::milliseconds ttl_;
  const Clock& clock_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // front: most recently used; GUARDED_BY(mu_)
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;  // GUARDED_BY(mu_)
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_DEK_CACHE_H_
