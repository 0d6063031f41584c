#include "vault/dek_cache.h"

#include "vault/base/metrics.h"

#include <vector>

namespace tokenvault {

std::string DekCache::KeyOf(std::string_view merchant, uint32_t version) {
  std::string key(merchant);
  key.push_back('\0');  // merchant ids never contain NUL, so keys cannot collide
  key += std::to_string(version);
  return key;
}

void DekCache::EvictExpiredLocked(std::chrono::steady_clock::time_point now) {
  // Every entry gets the same TTL, so the oldest loads expire first; but LRU order is by use,
  // so scan. The cache is small (max_entries) and this runs on insert only.
  for (auto it = lru_.begin(); it != lru_.end();) {
    if (it->expires <= now) {
      index_.erase(it->key);
      it = lru_.erase(it);
    } else {
      ++it;
    }
  }
}

std::shared_ptr<const AesGcm256> DekCache::Get(std::string_view merchant, uint32_t version) {
  if (!enabled()) return nullptr;
  static metrics::Family& lookups = metrics::Registry::Global().Counter(
      "tokenvault_dek_cache_lookups_total", "DEK cache lookups, by result (hit or miss).");
  static metrics::Family::Cell hits = lookups.CellFor({{"result", "hit"}});
  static metrics::Family::Cell misses = lookups.CellFor({{"result", "miss"}});
  std::shared_ptr<const AesGcm256> found;
  std::shared_ptr<const AesGcm256> expired;  // released outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(KeyOf(merchant, version));
    if (it != index_.end()) {
      if (it->second->expires <= clock_.SteadyNow()) {
        expired = std::move(it->second->aead);
        lru_.erase(it->second);
        index_.erase(it);
      } else {
        lru_.splice(lru_.begin(), lru_, it->second);
        found = it->second->aead;
      }
    }
  }
  // Counted outside the cache's lock: the metrics lock is not taken inside it.
  (found ? hits : misses).Add();
  return found;
}

void DekCache::Put(std::string_view merchant, uint32_t version,
                   std::shared_ptr<const AesGcm256> key) {
  if (!enabled() || key == nullptr) return;
  std::list<Entry> evicted;  // destroyed (and wiped) after the lock is released
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = clock_.SteadyNow();
    const std::string k = KeyOf(merchant, version);
    auto it = index_.find(k);
    if (it != index_.end()) {
      evicted.splice(evicted.end(), lru_, it->second);
      index_.erase(it);
    }
    EvictExpiredLocked(now);
    while (lru_.size() >= max_entries_) {
      index_.erase(lru_.back().key);
      evicted.splice(evicted.end(), lru_, std::prev(lru_.end()));
    }
    lru_.push_front(Entry{k, std::string(merchant), std::move(key), now + ttl_});
    index_[k] = lru_.begin();
  }
}

void DekCache::EraseMerchant(std::string_view merchant) {
  std::list<Entry> evicted;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = lru_.begin(); it != lru_.end();) {
    auto next = std::next(it);
    if (it->merchant == merchant) {
      index_.erase(it->key);
      evicted.splice(evicted.end(), lru_, it);
    }
    it = next;
  }
}

void DekCache::Erase(std::string_view merchant, uint32_t version) {
  std::list<Entry> evicted;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(KeyOf(merchant, version));
  if (it == index_.end()) return;
  evicted.splice(evicted.end(), lru_, it->second);
  index_.erase(it);
}

void DekCache::Clear() {
  std::list<Entry> evicted;
  std::lock_guard<std::mutex> lock(mu_);
  index_.clear();
  evicted.swap(lru_);
}

size_t DekCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

}  // namespace tokenvault
