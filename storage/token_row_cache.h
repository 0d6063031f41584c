// TokenRowCache: recently read token rows, so that a detokenize does not pay a SQLite read (a
// read pool lease, a read transaction, and a cold page cache: every commit makes SQLite drop a
// WAL reader's cache) for a token read moments ago.
//
// Rows hold ciphertext, never values, and the cache is in the only process that may write the
// database. Coherence: a change to a token row is bracketed by BeginChange / EndChange (the
// latter after the commit, or the failure). In between, the row is never served from the cache
// - readers go to the database, which answers the old row before the commit and the new one
// after - and a reader fills the cache only if no change began or ended since it began reading
// (PutIfUnchanged with the epoch it saw), so a row read before a change can never be cached
// after it.
#ifndef TOKENVAULT_STORAGE_TOKEN_ROW_CACHE_H_
#define TOKENVAULT_STORAGE_TOKEN_ROW_CACHE_H_

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "storage/store.h"

namespace tokenvault::storage {

class TokenRowCache {
 public:
  // 0 disables the cache.
  explicit TokenRowCache(size_t max_entries) : max_entries_(max_entries) {}

  // Rows are keyed by merchant and token (tokens are unique per merchant only).
  static std::string Key(std::string_view merchant, std::string_view token) {
    std::string key(merchant);
    key.push_back('\n');  // never in a merchant id
    key.append(token);
    return key;
  }

  std::optional<TokenRecord> Get(std::string_view key) {
    if (max_entries_ == 0) return std::nullopt;
    std::lock_guard<std::mutex> lock(mu_);
    if (!changing_.empty() && changing_.count(std::string(key))) return std::nullopt;
    auto it = index_.find(std::string(key));
    if (it == index_.end()) return std::nullopt;
    lru_.splice(lru_.begin(), lru_, it->second);  // most recently used first
    return it->second->second;
  }

  // Take before reading the row from the database; pass to PutIfUnchanged.
  uint64_t epoch() const {
    std::lock_guard<std::mutex> lock(mu_);
    return epoch_;
  }

  void PutIfUnchanged(const std::string& key, const TokenRecord& row, uint64_t epoch_seen) {
    if (max_entries_ == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch_ != epoch_seen || index_.count(key) || changing_.count(key)) return;
    lru_.emplace_front(key, row);
    index_.emplace(key, lru_.begin());
    if (lru_.size() > max_entries_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }

  // Before a change to 'token' is written.
  void BeginChange(std::string_view token) {
    std::lock_guard<std::mutex> lock(mu_);
    ++changing_[std::string(token)];
    EvictLocked(token);
  }

  // Drops a row readers can no longer use anyway (an expired token: gone by its expires_at,
  // whatever the cache holds).
  void Evict(std::string_view token) {
    std::lock_guard<std::mutex> lock(mu_);
    EvictLocked(token);
  }

  // After that change has committed or failed.
  void EndChange(std::string_view token) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = changing_.find(std::string(token));
    if (it != changing_.end() && --it->second == 0) changing_.erase(it);
    EvictLocked(token);
  }

  // After a change to many rows (a merchant's tokens, say; callers must also keep the rows from
  // being served while that change is in progress).
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    ++epoch_;
    index_.clear();
    lru_.clear();
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lru_.size();
  }

 private:
  void EvictLocked(std::string_view token) {
    ++epoch_;
    auto it = index_.find(std::string(token));
    if (it == index_.end()) return;
    lru_.erase(it->second);
    index_.erase(it);
  }

  const size_t max_entries_;
  mutable std::mutex mu_;
  using Entry = std::pair<std::string, TokenRecord>;  // key, row
  std::list<Entry> lru_;  // GUARDED_BY(mu_)
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;  // GUARDED_BY(mu_)
  uint64_t epoch_ = 0;  // GUARDED_BY(mu_); bumped by every eviction
  std::unordered_map<std::string, int> changing_;  // GUARDED_BY(mu_); changes in progress
};

}  // namespace tokenvault::storage

#endif  // TOKENVAULT_STORAGE_TOKEN_ROW_CACHE_H_
