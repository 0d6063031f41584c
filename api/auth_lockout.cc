#include "api/auth_lockout.h"

namespace tokenvault::api {

int64_t AuthLockout::LockedFor(const std::string& source) {
  if (options_.max_failures == 0) return 0;
  const int64_t now = clock_.NowUnixMillis();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sources_.find(source);
  if (it == sources_.end() || it->second.locked_until_ms <= now) return 0;
  return it->second.locked_until_ms - now;
}

bool AuthLockout::Failed(const std::string& source) {
  if (options_.max_failures == 0) return false;
  const int64_t now = clock_.NowUnixMillis();
  std::lock_guard<std::mutex> lock(mu_);
  if (sources_.size() >= options_.max_tracked_sources && !sources_.count(source)) {
    ForgetStaleLocked(now);
  }
  Entry& e = sources_[source];
  if (e.locked_until_ms > now) return false;  // already locked out: the refusal is recorded
  if (e.failures == 0 || now - e.window_start_ms >= options_.window.count()) {
    e.window_start_ms = now;
    e.failures = 0;
  }
  if (++e.failures < options_.max_failures) return false;
  e.locked_until_ms = now + options_.lockout.count();
  e.failures = 0;
  return true;
}

void AuthLockout::ForgetStaleLocked(int64_t now) {
  for (auto it = sources_.begin(); it != sources_.end();) {
    const Entry& e = it->second;
    const bool counting = e.failures > 0 && now - e.window_start_ms < options_.window.count();
    it = (e.locked_until_ms > now || counting) ? std::next(it) : sources_.erase(it);
  }
  // Still full (a spray of addresses each failing within the window): forget the counts, never
  // the lockouts, rather than grow without bound.
  if (sources_.size() >= options_.max_tracked_sources) {
    for (auto it = sources_.begin(); it != sources_.end();) {
      it = it->second.locked_until_ms > now ? std::next(it) : sources_.erase(it);
    }
  }
}

}  // namespace tokenvault::api
