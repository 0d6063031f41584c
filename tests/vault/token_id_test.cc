#include "vault/token_id.h"

#include <gtest/gtest.h>

#include <set>

namespace tokenvault {
namespace {

TEST(TokenIdTest, RandomTokensHaveTheContractShape) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string t = *NewRandomToken();
    ASSERT_EQ(t.size(), 26u);
    ASSERT_EQ(t.substr(0, 4), "tok_");
    ASSERT_TRUE(IsWellFormedRandomToken(t)) << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(TokenIdTest, Base62EncodesTheFull128BitRange) {
  std::array<uint8_t, 16> zero{};
  std::array<uint8_t, 16> max;
  max.fill(0xFF);
  EXPECT_EQ(Base62Encode128(zero), std::string(22, '0'));
  // 2^128 - 1 in base62.
  EXPECT_EQ(Base62Encode128(max), "7n42DGM5Tflk9n8mt7Fhc7");
  EXPECT_TRUE(IsWellFormedRandomToken("tok_7n42DGM5Tflk9n8mt7Fhc7"));
  EXPECT_FALSE(IsWellFormedRandomToken("tok_7n42DGM5Tflk9n8mt7Fhc8"));  // 2^128
}

TEST(TokenIdTest, MalformedTokensAreRejectedByShape) {
  for (const char* bad : {"", "tok_", "tok_short", "TOK_0000000000000000000000",
                          "tok_000000000000000000000!", "tok_00000000000000000000000",
                          "tok_../../../../etc/passwd", "tok_%2e%2e00000000000000000",
                          "tok_0000000000000000000\0000"}) {
    EXPECT_FALSE(IsWellFormedRandomToken(bad)) << bad;
  }
}

TEST(TokenIdTest, MerchantIds) {
  EXPECT_TRUE(IsValidMerchantId("acme"));
  EXPECT_TRUE(IsValidMerchantId("0-a_b"));
  EXPECT_TRUE(IsValidMerchantId(std::string(64, 'a')));
  EXPECT_FALSE(IsValidMerchantId(std::string(65, 'a')));
  EXPECT_FALSE(IsValidMerchantId(""));
  EXPECT_FALSE(IsValidMerchantId("-acme"));
  EXPECT_FALSE(IsValidMerchantId("Acme"));
  EXPECT_FALSE(IsValidMerchantId("ac/me"));
  EXPECT_FALSE(IsValidMerchantId(std::string("ac\0me", 5)));
}

}  // namespace
}  // namespace tokenvault
