// Detokenize budgets' arithmetic, with a clock the test moves (the end-to-end test with the real
// server, its persistence and its audit records is ApiTest.ABudgetOf100PlainRevealsPerMinute...).
#include "api/reveal_budget.h"

#include <gtest/gtest.h>

namespace tokenvault::api {
namespace {

policy::RevealBudget Volume(int64_t max_values, int64_t window_seconds) {
  policy::RevealBudget b;
  b.principal = "p";
  b.max_values = max_values;
  b.window_seconds = window_seconds;
  return b;
}

policy::RevealBudget Rate(double per_second, int64_t burst) {
  policy::RevealBudget b;
  b.principal = "p";
  b.per_second = per_second;
  b.burst = burst;
  return b;
}

bool Allowed(const std::variant<storage::RevealCharge, RevealBudgets::Refusal>& v) {
  return std::holds_alternative<storage::RevealCharge>(v);
}

TEST(RevealBudgetsTest, AVolumeLimitHoldsOverItsRollingWindowAndSaysWhenToRetry) {
  FakeClock clock(1'700'000'000'000);  // a multiple of the 10 s bucket
  RevealBudgets budgets(clock);
  const std::vector<policy::RevealBudget> limit = {Volume(100, 60)};
  int allowed = 0;
  for (int i = 0; i < 150; ++i) {
    allowed += Allowed(budgets.Charge("p", "acme", true, 1, limit));
    clock.Advance(std::chrono::milliseconds(50));  // 150 in 7.5 s
  }
  EXPECT_EQ(allowed, 100);
  auto refused = budgets.Charge("p", "acme", true, 1, limit);
  ASSERT_FALSE(Allowed(refused));
  const auto& r = std::get<RevealBudgets::Refusal>(refused);
  // The first bucket [0, 10 s) leaves the window 70 s after it began: 62.5 s from now.
  EXPECT_EQ(r.retry_after_seconds, 63);
  EXPECT_NE(r.reason.find("100 per 60 s"), std::string::npos) << r.reason;
  // Other merchants, other principals and masked reveals have budgets of their own.
  EXPECT_TRUE(Allowed(budgets.Charge("p", "globex", true, 1, limit)));
  EXPECT_TRUE(Allowed(budgets.Charge("q", "acme", true, 1, limit)));
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", false, 1, limit)));
  // Never lenient: one second before Retry-After it is still refused; at it, allowed.
  clock.Advance(std::chrono::seconds(61));
  EXPECT_FALSE(Allowed(budgets.Charge("p", "acme", true, 1, limit)));
  clock.Advance(std::chrono::seconds(2));
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 1, limit)));
}

TEST(RevealBudgetsTest, ARefusedRequestCostsNothingAndABatchCountsEachValue) {
  FakeClock clock;
  RevealBudgets budgets(clock);
  const std::vector<policy::RevealBudget> limit = {Volume(10, 3600)};
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 8, limit)));
  EXPECT_FALSE(Allowed(budgets.Charge("p", "acme", true, 3, limit)));  // 11 > 10
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 2, limit)));   // the refusal cost nothing
  auto too_big = budgets.Charge("x", "acme", true, 11, limit);          // can never fit
  ASSERT_FALSE(Allowed(too_big));
  EXPECT_EQ(std::get<RevealBudgets::Refusal>(too_big).retry_after_seconds, 3600);
}

TEST(RevealBudgetsTest, ARateLimitAllowsItsBurstThenItsRate) {
  FakeClock clock;
  RevealBudgets budgets(clock);
  const std::vector<policy::RevealBudget> limit = {Rate(2, 5)};
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 1, limit))) << i;
  auto refused = budgets.Charge("p", "acme", true, 1, limit);
  ASSERT_FALSE(Allowed(refused));
  EXPECT_EQ(std::get<RevealBudgets::Refusal>(refused).retry_after_seconds, 1);
  clock.Advance(std::chrono::milliseconds(500));  // one value's worth at 2/s
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 1, limit)));
  EXPECT_FALSE(Allowed(budgets.Charge("p", "acme", true, 1, limit)));
}

TEST(RevealBudgetsTest, CountersLoadedAtStartStillCount) {
  FakeClock clock(1'700'000'000'000);
  RevealBudgets budgets(clock);
  budgets.Load({storage::RevealCharge{"p", "acme", true, 1'700'000'000'000 - 20'000, 100}});
  EXPECT_FALSE(Allowed(budgets.Charge("p", "acme", true, 1, {Volume(100, 60)})));
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", false, 1, {Volume(100, 60)})));
  // A day later they are forgotten.
  clock.Advance(std::chrono::hours(25));
  budgets.ForgetOld();
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 1, {Volume(100, 86400)})));
}

TEST(RevealBudgetsTest, AChargeWhoseRequestFailedIsGivenBack) {
  FakeClock clock;
  RevealBudgets budgets(clock);
  const std::vector<policy::RevealBudget> limit = {Volume(10, 60), Rate(1, 10)};
  auto charged = budgets.Charge("p", "acme", true, 10, limit);
  ASSERT_TRUE(Allowed(charged));
  EXPECT_FALSE(Allowed(budgets.Charge("p", "acme", true, 1, limit)));
  budgets.Refund(std::get<storage::RevealCharge>(charged));  // say, the HSM failed: nothing revealed
  EXPECT_TRUE(Allowed(budgets.Charge("p", "acme", true, 10, limit)));
}

TEST(RevealBudgetsTest, NoBudgetNoLimit) {
  FakeClock clock;
  RevealBudgets budgets(clock);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(Allowed(budgets.Charge("p", "acme", true, 1000, {})));
}

}  // namespace
}  // namespace tokenvault::api
