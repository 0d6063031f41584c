#include "vault/base/in_flight.h"

#include <gtest/gtest.h>

#include <thread>

namespace tokenvault {
namespace {

TEST(InFlightTest, CountsTicketsUntilTheirLastCopyIsGone) {
  InFlight in_flight;
  InFlight::Ticket a = in_flight.Enter();
  InFlight::Ticket copy = a;
  InFlight::Ticket b = in_flight.Enter();
  EXPECT_EQ(in_flight.count(), 2u);
  a.reset();
  EXPECT_EQ(in_flight.count(), 2u);  // 'copy' still holds it
  copy.reset();
  b.reset();
  EXPECT_EQ(in_flight.count(), 0u);
  EXPECT_TRUE(in_flight.WaitIdleFor(std::chrono::seconds(0)));
}

TEST(InFlightTest, WaitIdleReturnsOnceTheLastTicketIsReleasedElsewhere) {
  InFlight in_flight;
  InFlight::Ticket ticket = in_flight.Enter();
  EXPECT_FALSE(in_flight.WaitIdleFor(std::chrono::milliseconds(1)));
  std::thread releaser([t = std::move(ticket)]() mutable { t.reset(); });
  in_flight.WaitIdle();
  releaser.join();
  EXPECT_EQ(in_flight.count(), 0u);
}

}  // namespace
}  // namespace tokenvault
