#include "vault/hmac_sha256.h"

#include <gtest/gtest.h>

#include "tests/support/matchers.h"
#include "tests/support/wycheproof.h"

namespace tokenvault {
namespace {

using testing::HexBytes;

// Every Wycheproof HMAC-SHA256 vector: valid tags must equal our MAC (truncated tags: its
// prefix), invalid ones must not. Key sizes from 0 bits are in the file; HMAC refuses an empty
// key here, which is counted and must only ever be an empty key.
TEST(HmacSha256Test, WycheproofVectors) {
  std::optional<nlohmann::json> file = testing::LoadWycheproof("hmac_sha256_test.json");
  ASSERT_TRUE(file.has_value()) << "missing hmac_sha256_test.json";
  int valid = 0, invalid = 0, empty_keys = 0;
  for (const auto& group : (*file)["testGroups"]) {
    const size_t tag_bytes = group["tagSize"].get<size_t>() / 8;
    for (const auto& t : group["tests"]) {
      const Bytes key = HexBytes(t["key"]);
      const Bytes msg = HexBytes(t["msg"]);
      const Bytes expected = HexBytes(t["tag"]);
      StatusOr<std::unique_ptr<HmacSha256>> mac = HmacSha256::Create(SecretBytes::CopyFrom(key));
      if (!mac.ok()) {
        EXPECT_TRUE(key.empty()) << "tcId " << t["tcId"];
        ++empty_keys;
        continue;
      }
      StatusOr<HmacSha256Tag> tag = (*mac)->Compute(msg);
      ASSERT_TRUE(tag.ok());
      const bool matches = expected.size() == tag_bytes &&
                           std::equal(expected.begin(), expected.end(), tag->begin());
      if (t["result"] == "valid") {
        EXPECT_TRUE(matches) << "tcId " << t["tcId"];
        ++valid;
      } else {
        EXPECT_FALSE(matches) << "tcId " << t["tcId"];
        ++invalid;
      }
    }
  }
  std::printf("HMAC-SHA256 Wycheproof: %d valid, %d invalid checked, %d empty-key skipped\n",
              valid, invalid, empty_keys);
  EXPECT_GT(valid, 50);
  EXPECT_GT(invalid, 50);
}

TEST(HmacSha256Test, FingerprintsAreFortyThreeBase62DigitsAndKeyDependent) {
  auto a = HmacSha256::Create(SecretBytes::CopyFrom(Bytes(32, 1)));
  auto b = HmacSha256::Create(SecretBytes::CopyFrom(Bytes(32, 2)));
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string fa = FingerprintString(*(*a)->Compute(AsBytes("4111111111111111")));
  const std::string fa2 = FingerprintString(*(*a)->Compute(AsBytes("4111111111111111")));
  const std::string fb = FingerprintString(*(*b)->Compute(AsBytes("4111111111111111")));
  EXPECT_EQ(fa.size(), 46u);
  EXPECT_EQ(fa.substr(0, 3), "fp_");
  EXPECT_EQ(fa, fa2);
  EXPECT_NE(fa, fb);
  HmacSha256Tag max;
  max.fill(0xff);
  EXPECT_EQ(FingerprintString(max), "fp_yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");  // 2^256 - 1
  // A value with every limb different, against Python's int -> base62.
  HmacSha256Tag counting;
  for (size_t i = 0; i < counting.size(); ++i) counting[i] = static_cast<uint8_t>(i * 7 + 1);
  EXPECT_EQ(FingerprintString(counting), "fp_0FAE0br7FNXNSiMwMIFF0C1t0KyYFUbUOkYEl9j0BPm");
  HmacSha256Tag zero{};
  EXPECT_EQ(FingerprintString(zero), "fp_" + std::string(43, '0'));
}

}  // namespace
}  // namespace tokenvault
