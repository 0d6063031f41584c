#include "vault/rotation_gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <future>
#include <thread>

namespace tokenvault {
namespace {

void WaitUntil(const std::function<bool()>& condition) {
  while (!condition()) std::this_thread::yield();
}

TEST(RotationGateTest, ASharedHoldCanEndOnAnotherThread) {
  RotationGate gate;
  RotationGate::Shared hold = gate.EnterShared();
  EXPECT_EQ(gate.shared_holds(), 1u);
  std::thread([h = std::move(hold)]() mutable { h.Release(); }).join();
  EXPECT_EQ(gate.shared_holds(), 0u);
  RotationGate::Exclusive exclusive(gate);  // would wait forever if the hold had leaked
}

TEST(RotationGateTest, ExclusiveWaitsForEverySharedHold) {
  RotationGate gate;
  RotationGate::Shared a = gate.EnterShared();
  RotationGate::Shared b = gate.EnterShared();
  std::atomic<bool> exclusive_held{false};
  std::thread rotator([&] {
    RotationGate::Exclusive exclusive(gate);
    exclusive_held = true;
  });
  WaitUntil([&] { return gate.exclusive_waiting() == 1; });
  a.Release();
  EXPECT_EQ(gate.exclusive_waiting(), 1u);  // one hold is still out
  EXPECT_FALSE(exclusive_held);
  b = RotationGate::Shared();  // move-assigning releases too
  rotator.join();
  EXPECT_TRUE(exclusive_held);
}

TEST(RotationGateTest, AWaitingRotationIsNotStarvedByNewSharedHolds) {
  RotationGate gate;
  RotationGate::Shared first = gate.EnterShared();
  std::thread rotator([&] { RotationGate::Exclusive exclusive(gate); });
  WaitUntil([&] { return gate.exclusive_waiting() == 1; });
  // A newcomer queues behind the rotation instead of joining the holders.
  std::promise<void> entered;
  std::thread newcomer([&] {
    RotationGate::Shared late = gate.EnterShared();
    entered.set_value();
  });
  std::future<void> newcomer_entered = entered.get_future();
  WaitUntil([&] { return gate.shared_waiting() == 1; });
  EXPECT_EQ(gate.shared_holds(), 1u);  // the newcomer waits; only the first hold exists
  first.Release();
  rotator.join();
  newcomer_entered.wait();
  newcomer.join();
  EXPECT_EQ(gate.shared_holds(), 0u);
}

}  // namespace
}  // namespace tokenvault
