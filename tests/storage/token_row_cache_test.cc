#include "storage/token_row_cache.h"

#include <gtest/gtest.h>

namespace tokenvault::storage {
namespace {

TokenRecord Row(const std::string& token, uint8_t marker = 1) {
  TokenRecord r;
  r.token = token;
  r.merchant = "acme";
  r.ciphertext = Bytes(4, marker);
  return r;
}

TEST(TokenRowCacheTest, ServesWhatWasPut) {
  TokenRowCache cache(8);
  EXPECT_FALSE(cache.Get("tok_a").has_value());
  cache.PutIfUnchanged("tok_a", Row("tok_a", 7), cache.epoch());
  std::optional<TokenRecord> hit = cache.Get("tok_a");
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->ciphertext, Bytes(4, 7));
}

TEST(TokenRowCacheTest, ARowReadBeforeAnEvictionIsNeverCachedAfterIt) {
  TokenRowCache cache(8);
  const uint64_t seen = cache.epoch();  // a reader starts reading the row...
  cache.BeginChange("tok_a");           // ...a change to it begins...
  cache.EndChange("tok_a");             // ...and commits...
  cache.PutIfUnchanged("tok_a", Row("tok_a"), seen);  // ...and the reader's (stale) row is refused.
  EXPECT_FALSE(cache.Get("tok_a").has_value());
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());  // a read that began afterwards is cached
  EXPECT_TRUE(cache.Get("tok_a").has_value());
}

TEST(TokenRowCacheTest, ARowBeingChangedIsNeverServedNorCached) {
  TokenRowCache cache(8);
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  cache.PutIfUnchanged("tok_b", Row("tok_b"), cache.epoch());
  cache.BeginChange("tok_a");
  EXPECT_FALSE(cache.Get("tok_a").has_value());  // the change may have committed already
  EXPECT_TRUE(cache.Get("tok_b").has_value());
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());  // a read during the change: not kept
  EXPECT_FALSE(cache.Get("tok_a").has_value());
  cache.BeginChange("tok_a");  // two changes overlap: the row stays uncached until both end
  cache.EndChange("tok_a");
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  EXPECT_FALSE(cache.Get("tok_a").has_value());
  cache.EndChange("tok_a");
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  EXPECT_TRUE(cache.Get("tok_a").has_value());
}

TEST(TokenRowCacheTest, ClearRemovesRows) {
  TokenRowCache cache(8);
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  cache.PutIfUnchanged("tok_b", Row("tok_b"), cache.epoch());
  cache.Clear();
  EXPECT_EQ(cache.size(), 0u);
}

TEST(TokenRowCacheTest, HoldsAtMostItsLimitDroppingTheLeastRecentlyUsed) {
  TokenRowCache cache(2);
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  cache.PutIfUnchanged("tok_b", Row("tok_b"), cache.epoch());
  EXPECT_TRUE(cache.Get("tok_a").has_value());  // a is now more recent than b
  cache.PutIfUnchanged("tok_c", Row("tok_c"), cache.epoch());
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_TRUE(cache.Get("tok_a").has_value());
  EXPECT_FALSE(cache.Get("tok_b").has_value());
  EXPECT_TRUE(cache.Get("tok_c").has_value());
}

TEST(TokenRowCacheTest, ZeroEntriesMeansOff) {
  TokenRowCache cache(0);
  cache.PutIfUnchanged("tok_a", Row("tok_a"), cache.epoch());
  EXPECT_FALSE(cache.Get("tok_a").has_value());
}

}  // namespace
}  // namespace tokenvault::storage
