#include "api/auth_lockout.h"

#include <gtest/gtest.h>

namespace tokenvault::api {
namespace {

TEST(AuthLockoutTest, TenFailuresInTheWindowLockTheSourceOutForTheCoolDown) {
  FakeClock clock;
  AuthLockout lockout(LockoutOptions{}, clock);  // 10 failures / 15 min window / 30 min
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(lockout.Failed("10.0.0.1"));
  EXPECT_EQ(lockout.LockedFor("10.0.0.1"), 0);
  EXPECT_TRUE(lockout.Failed("10.0.0.1"));  // the tenth
  EXPECT_EQ(lockout.LockedFor("10.0.0.1"), 30 * 60 * 1000);
  EXPECT_EQ(lockout.LockedFor("10.0.0.2"), 0);  // another address is not affected
  EXPECT_FALSE(lockout.Failed("10.0.0.1"));     // already locked: no new lockout
  clock.Advance(std::chrono::minutes(30) - std::chrono::milliseconds(1));
  EXPECT_EQ(lockout.LockedFor("10.0.0.1"), 1);
  clock.Advance(std::chrono::milliseconds(1));
  EXPECT_EQ(lockout.LockedFor("10.0.0.1"), 0);
  // After the cool-down it starts counting from zero.
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(lockout.Failed("10.0.0.1"));
  EXPECT_TRUE(lockout.Failed("10.0.0.1"));
}

TEST(AuthLockoutTest, FailuresSpreadBeyondTheWindowDoNotAddUp) {
  FakeClock clock;
  AuthLockout lockout(LockoutOptions{}, clock);
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 9; ++i) EXPECT_FALSE(lockout.Failed("10.0.0.1"));
    clock.Advance(std::chrono::minutes(15));
  }
  EXPECT_EQ(lockout.LockedFor("10.0.0.1"), 0);
}

TEST(AuthLockoutTest, ASprayOfAddressesNeverForgetsALockout) {
  FakeClock clock;
  LockoutOptions options;
  options.max_failures = 2;
  options.max_tracked_sources = 100;
  AuthLockout lockout(options, clock);
  lockout.Failed("attacker");
  EXPECT_TRUE(lockout.Failed("attacker"));
  for (int i = 0; i < 1000; ++i) lockout.Failed("spray-" + std::to_string(i));
  EXPECT_GT(lockout.LockedFor("attacker"), 0);
  LockoutOptions off;
  off.max_failures = 0;
  AuthLockout disabled(off, clock);
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(disabled.Failed("x"));
  EXPECT_EQ(disabled.LockedFor("x"), 0);
}

}  // namespace
}  // namespace tokenvault::api
