#include "api/reveal_budget.h"

#include <algorithm>
#include <cmath>

namespace tokenvault::api {
namespace {

constexpr int64_t kBucket = storage::kRevealBucketMs;
constexpr int64_t kLongestWindowMs = 86400 * 1000LL;

int64_t CeilSeconds(int64_t ms) { return std::max<int64_t>(1, (ms + 999) / 1000); }

}  // namespace

void RevealBudgets::Load(const std::vector<storage::RevealCharge>& usage) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const storage::RevealCharge& c : usage) {
    usage_[Key{c.principal, c.merchant, c.plain}].buckets[c.bucket_ms] += c.count;
  }
}

std::variant<storage::RevealCharge, RevealBudgets::Refusal> RevealBudgets::Charge(
    const std::string& principal, const std::string& merchant, bool plain, int64_t count,
    const std::vector<policy::RevealBudget>& budgets) {
  const int64_t now = clock_.NowUnixMillis();
  const int64_t bucket = now - now % kBucket;
  storage::RevealCharge charge{principal, merchant, plain, bucket, count};
  if (budgets.empty()) return charge;
  std::lock_guard<std::mutex> lock(mu_);
  Usage& u = usage_[Key{principal, merchant, plain}];
  const std::string what = std::string(plain ? "plain" : "masked") + " reveals of '" + principal +
                           "' on merchant '" + merchant + "'";
  // Check every budget before charging any: a refused request costs nothing.
  std::vector<std::pair<std::pair<double, int64_t>, double>> refills;
  for (const policy::RevealBudget& b : budgets) {
    if (b.max_values > 0) {
      const int64_t window = b.window_seconds * 1000;
      // Buckets with any part inside (now - window, now].
      const int64_t oldest = now - window - kBucket + 1;
      int64_t used = 0;
      for (auto it = u.buckets.lower_bound(oldest); it != u.buckets.end(); ++it) used += it->second;
      if (used + count > b.max_values) {
        Refusal r;
        r.reason = "budget exceeded: " + what + " are limited to " + std::to_string(b.max_values) +
                   " per " + std::to_string(b.window_seconds) + " s (" + std::to_string(used) +
                   " used)";
        if (count > b.max_values) {
          r.retry_after_seconds = b.window_seconds;  // never fits: ask for fewer values
        } else {
          // Wait until enough of the oldest buckets have left the window.
          int64_t freed = 0;
          int64_t wait_ms = window;
          for (auto it = u.buckets.lower_bound(oldest); it != u.buckets.end(); ++it) {
            freed += it->second;
            if (used - freed + count <= b.max_values) {
              wait_ms = it->first + kBucket + window - now;
              break;
            }
          }
          r.retry_after_seconds = CeilSeconds(wait_ms);
        }
        return r;
      }
    }
    if (b.per_second > 0) {
      const std::pair<double, int64_t> id{b.per_second, b.burst};
      auto it = u.rate.find(id);
      double tokens = static_cast<double>(b.burst);
      if (it != u.rate.end()) {
        const double elapsed = static_cast<double>(std::max<int64_t>(0, now - it->second.second)) / 1000.0;
        tokens = std::min(static_cast<double>(b.burst), it->second.first + elapsed * b.per_second);
      }
      if (tokens < static_cast<double>(count)) {
        Refusal r;
        r.reason = "budget exceeded: " + what + " are limited to " + std::to_string(b.per_second) +
                   " per second in bursts of " + std::to_string(b.burst);
        r.retry_after_seconds =
            count > b.burst ? 1
                            : CeilSeconds(static_cast<int64_t>(
                                  std::ceil((static_cast<double>(count) - tokens) / b.per_second * 1000.0)));
        return r;
      }
      refills.emplace_back(id, tokens - static_cast<double>(count));
    }
  }
  u.buckets[bucket] += count;
  for (const auto& [id, tokens] : refills) u.rate[id] = {tokens, now};
  return charge;
}

void RevealBudgets::Refund(const storage::RevealCharge& charge) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = usage_.find(Key{charge.principal, charge.merchant, charge.plain});
  if (it == usage_.end()) return;
  Usage& u = it->second;
  auto b = u.buckets.find(charge.bucket_ms);
  if (b != u.buckets.end()) {
    b->second -= std::min(b->second, charge.count);
    if (b->second == 0) u.buckets.erase(b);
  }
  // Rate tokens come back too (capped at the burst when next refilled).
  for (auto& [id, state] : u.rate) {
    state.first = std::min(static_cast<double>(id.second), state.first + static_cast<double>(charge.count));
  }
}

int64_t RevealBudgets::ForgetOld() {
  const int64_t cutoff = clock_.NowUnixMillis() - kLongestWindowMs - kBucket;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = usage_.begin(); it != usage_.end();) {
    Usage& u = it->second;
    u.buckets.erase(u.buckets.begin(), u.buckets.lower_bound(cutoff));
    // A token bucket untouched for a day is full again: forgetting it changes nothing.
    for (auto r = u.rate.begin(); r != u.rate.end();) {
      r = r->second.second < cutoff ? u.rate.erase(r) : std::next(r);
    }
    it = u.buckets.empty() && u.rate.empty() ? usage_.erase(it) : std::next(it);
  }
  return cutoff;
}

}  // namespace tokenvault::api
