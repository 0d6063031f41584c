// Failed-authentication lockout (PCI DSS 8.3.4): after 'max_failures' bad API keys from one
// source address within 'window', that address is refused - even with a good key - until
// 'lockout' has passed. Keyed by address, not by key id, because a guessing attacker controls
// the key id; the audit trail records both the failures and the refusals.
#ifndef TOKENVAULT_API_AUTH_LOCKOUT_H_
#define TOKENVAULT_API_AUTH_LOCKOUT_H_

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "vault/base/clock.h"

namespace tokenvault::api {

struct LockoutOptions {
  size_t max_failures = 10;                          // 0: no lockout
  std::chrono::milliseconds window = std::chrono::minutes(15);
  std::chrono::milliseconds lockout = std::chrono::minutes(30);
  size_t max_tracked_sources = 100000;               // bounds memory under a spray of addresses
};

// Thread-safe.
class AuthLockout {
 public:
  explicit AuthLockout(LockoutOptions options, const Clock& clock = Clock::Real())
      : options_(options), clock_(clock) {}

  // Milliseconds until 'source' may try again, or 0 if it is not locked out.
  int64_t LockedFor(const std::string& source);
  // Records a bad API key from 'source'. True if this failure locked it out.
  bool Failed(const std::string& source);

 private:
  struct Entry {
    int64_t window_start_ms = 0;
    size_t failures = 0;
    int64_t locked_until_ms = 0;
  };
  // Drops entries that neither count failures nor lock anything any more.
  void ForgetStaleLocked(int64_t now);

  const LockoutOptions options_;
  const Clock& clock_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> sources_;  // GUARDED_BY(mu_)
};

}  // namespace tokenvault::api

#endif  // TOKENVAULT_API_AUTH_LOCKOUT_H_
