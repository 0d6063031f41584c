// Detokenize budgets (policy::RevealBudget): at most N values revealed per rolling window, and a
// token-bucket rate, per principal and merchant, for plain and for masked reveals. Bulk
// exfiltration with stolen-but-valid credentials is made slow, loud (every refusal is a 429 in
// the audit trail) and visible.
//
// Volume is counted in 10-second buckets (storage::kRevealBucketMs). A bucket counts toward a
// window while any part of it lies inside the window, so the count errs on the strict side by at
// most one bucket; it is never lenient. The counts are persisted in the transaction of the
// reveal's audit record and reloaded at start, so a restart does not refill a budget. The
// token buckets of the rate limit are in memory: a restart allows one burst.
#ifndef TOKENVAULT_API_REVEAL_BUDGET_H_
#define TOKENVAULT_API_REVEAL_BUDGET_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "policy/policy.h"
#include "storage/store.h"
#include "vault/base/clock.h"

namespace tokenvault::api {

// Thread-safe.
class RevealBudgets {
 public:
  explicit RevealBudgets(const Clock& clock = Clock::Real()) : clock_(clock) {}

  // Adds persisted counters (at start).
  void Load(const std::vector<storage::RevealCharge>& usage);

  struct Refusal {
    int64_t retry_after_seconds = 1;
    std::string reason;  // which budget, for the audit record and the error message
  };
  // Charges 'count' values to (principal, merchant, plain) if every budget in 'budgets' allows
  // it, and returns the charge to persist with the audit record; otherwise charges nothing and
  // says why and for how long.
  std::variant<storage::RevealCharge, Refusal> Charge(const std::string& principal,
                                                      const std::string& merchant, bool plain,
                                                      int64_t count,
                                                      const std::vector<policy::RevealBudget>& budgets);

  // Gives back a charge whose request did not reveal anything after all (an HSM or audit
  // failure): the volume counted and the rate tokens taken.
  void Refund(const storage::RevealCharge& charge);

  // Forgets buckets older than a day (the longest window). Returns the cut-off, for pruning the
  // persisted counters too.
  int64_t ForgetOld();

 private:
  using Key = std::tuple<std::string, std::string, bool>;  // principal, merchant, plain
  struct Usage {
    std::map<int64_t, int64_t> buckets;  // bucket start -> values revealed
    // Token buckets, one per (per_second, burst) pair in force: tokens and when last refilled.
    std::map<std::pair<double, int64_t>, std::pair<double, int64_t>> rate;
  };
  const Clock& clock_;
  std::mutex mu_;
  std::map<Key, Usage> usage_;  // GUARDED_BY(mu_)
};

}  // namespace tokenvault::api

#endif  // TOKENVAULT_API_REVEAL_BUDGET_H_
