#include "vault/dek_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace tokenvault {
namespace {

using std::chrono::milliseconds;

struct Released {
  std::vector<const uint8_t*> buffers;
  bool all_zero = true;
};
Released* g_released = nullptr;

void OnWipe(const uint8_t* data, size_t size) {
  if (g_released == nullptr || size != kAesGcmKeySize) return;
  g_released->buffers.push_back(data);
  g_released->all_zero &= std::all_of(data, data + size, [](uint8_t b) { return b == 0; });
}

// A key whose buffer address we know: moving SecretBytes keeps the buffer. The observer only
// sees buffers after OPENSSL_cleanse, so 'all_zero' checks the cleanse ran over the whole buffer.
std::shared_ptr<const AesGcm256> KeyAt(const uint8_t** address) {
  SecretBytes key(kAesGcmKeySize);
  std::fill(key.data(), key.data() + key.size(), 0xA5);
  *address = key.data();
  return std::make_shared<const AesGcm256>(std::move(*AesGcm256::Create(std::move(key))));
}

class DekCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_released = &released_;
    internal::SetWipeObserverForTesting(&OnWipe);
  }
  void TearDown() override {
    internal::SetWipeObserverForTesting(nullptr);
    g_released = nullptr;
  }
  // Released since Mark(): addresses are reused by the allocator, so only releases after the
  // buffer was handed out count.
  void Mark() { mark_ = released_.buffers.size(); }
  bool WasWiped(const uint8_t* p) const {
    return std::find(released_.buffers.begin() + mark_, released_.buffers.end(), p) !=
           released_.buffers.end();
  }
  size_t mark_ = 0;
  Released released_;
  FakeClock clock_;
};

TEST_F(DekCacheTest, EvictsLeastRecentlyUsedAndWipesIt) {
  DekCache cache(2, milliseconds(60000), clock_);
  const uint8_t *a, *b, *c;
  cache.Put("m", 1, KeyAt(&a));
  cache.Put("m", 2, KeyAt(&b));
  Mark();
  ASSERT_NE(cache.Get("m", 1), nullptr);  // 1 is now more recent than 2
  cache.Put("m", 3, KeyAt(&c));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Get("m", 2), nullptr);
  EXPECT_NE(cache.Get("m", 1), nullptr);
  EXPECT_TRUE(WasWiped(b));
  EXPECT_FALSE(WasWiped(a));
  EXPECT_TRUE(released_.all_zero);
}

TEST_F(DekCacheTest, AKeyInUseIsWipedWhenItsLastUserLetsGo) {
  DekCache cache(1, milliseconds(60000), clock_);
  const uint8_t *a, *b;
  cache.Put("m", 1, KeyAt(&a));
  Mark();
  std::shared_ptr<const AesGcm256> in_use = cache.Get("m", 1);
  cache.Put("m", 2, KeyAt(&b));  // evicts 1 while it is still in use
  EXPECT_FALSE(WasWiped(a));
  in_use.reset();
  EXPECT_TRUE(WasWiped(a));
  EXPECT_TRUE(released_.all_zero);
}

TEST_F(DekCacheTest, EntriesExpireAfterTheTtl) {
  DekCache cache(8, milliseconds(1000), clock_);
  const uint8_t* a;
  cache.Put("m", 1, KeyAt(&a));
  Mark();
  clock_.Advance(milliseconds(999));
  EXPECT_NE(cache.Get("m", 1), nullptr);
  clock_.Advance(milliseconds(1));
  EXPECT_EQ(cache.Get("m", 1), nullptr);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(WasWiped(a));
}

TEST_F(DekCacheTest, ZeroDisablesCaching) {
  for (auto [entries, ttl] : {std::pair<size_t, int>{0, 60000}, {8, 0}}) {
    DekCache cache(entries, milliseconds(ttl), clock_);
    EXPECT_FALSE(cache.enabled());
    const uint8_t* a;
    std::shared_ptr<const AesGcm256> key = KeyAt(&a);
    Mark();
    cache.Put("m", 1, std::move(key));
    EXPECT_EQ(cache.Get("m", 1), nullptr);
    EXPECT_EQ(cache.size(), 0u);
    EXPECT_TRUE(WasWiped(a));
  }
}

TEST_F(DekCacheTest, EraseMerchantDropsOnlyThatMerchant) {
  DekCache cache(8, milliseconds(60000), clock_);
  const uint8_t *a1, *a2, *b1;
  cache.Put("a", 1, KeyAt(&a1));
  cache.Put("a", 2, KeyAt(&a2));
  cache.Put("b", 1, KeyAt(&b1));
  Mark();
  cache.EraseMerchant("a");
  EXPECT_EQ(cache.Get("a", 1), nullptr);
  EXPECT_EQ(cache.Get("a", 2), nullptr);
  EXPECT_NE(cache.Get("b", 1), nullptr);
  EXPECT_TRUE(WasWiped(a1));
  EXPECT_TRUE(WasWiped(a2));
  EXPECT_FALSE(WasWiped(b1));
  cache.Clear();
  EXPECT_TRUE(WasWiped(b1));
  EXPECT_TRUE(released_.all_zero);
}

}  // namespace
}  // namespace tokenvault
