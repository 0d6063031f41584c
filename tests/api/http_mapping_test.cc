// The service's small pure pieces: time parsing for /v1/audit and the Status -> HTTP mapping.
#include <gtest/gtest.h>

#include "api/service.h"

namespace tokenvault::api {
namespace {

TEST(Rfc3339Test, UtcAndNumericOffsetsNameTheSameInstant) {
  const std::optional<int64_t> utc = ParseRfc3339("2026-11-29T12:00:00Z");
  ASSERT_TRUE(utc.has_value());
  EXPECT_EQ(*utc, 1795953600000);
  EXPECT_EQ(ParseRfc3339("2026-11-29T12:00:00+00:00"), utc);
  EXPECT_EQ(ParseRfc3339("2026-11-29T13:30:00+01:30"), utc);
  EXPECT_EQ(ParseRfc3339("2026-11-29T07:00:00-05:00"), utc);
  EXPECT_EQ(ParseRfc3339("2026-11-29T12:00:00.250Z"), *utc + 250);
  EXPECT_EQ(Rfc3339(*utc + 250), "2026-11-29T12:00:00.250Z");
  for (const char* bad : {"2026-11-29T12:00:00", "2026-11-29T12:00:00+0100", "2026-11-29T12:00:00+24:00",
                          "2026-11-29T12:00:00+01:60", "2026-11-29 12:00:00Z", "2026-13-01T00:00:00Z",
                          "2026-11-29T12:00:00.Z", "yesterday", ""}) {
    EXPECT_FALSE(ParseRfc3339(bad).has_value()) << bad;
  }
}

TEST(HttpStatusTest, MemoryExhaustionIsUnavailableNotRateLimited) {
  EXPECT_EQ(HttpStatusOf(ResourceExhaustedError("out_of_memory", "")), std::make_pair(503, std::string("unavailable")));
  EXPECT_EQ(HttpStatusOf(ResourceExhaustedError("hsm_host_memory", "")), std::make_pair(503, std::string("unavailable")));
  EXPECT_EQ(HttpStatusOf(ResourceExhaustedError("budget_exceeded", "")), std::make_pair(429, std::string("rate_limited")));
  EXPECT_EQ(HttpStatusOf(NotFoundError("token_gone", "")), std::make_pair(410, std::string("gone")));
  EXPECT_EQ(HttpStatusOf(AlreadyExistsError("idempotency_key_reused", "")), std::make_pair(409, std::string("conflict")));
}

}  // namespace
}  // namespace tokenvault::api
