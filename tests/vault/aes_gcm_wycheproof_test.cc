// Every Wycheproof AES-GCM vector that fits our parameters (256-bit key, 96-bit IV, 128-bit
// tag) through the real AEAD code: valid vectors must give exactly the listed ciphertext and tag
// and decrypt back; invalid ones must be rejected.
#include <gtest/gtest.h>

#include "tests/support/wycheproof.h"
#include "vault/aes_gcm.h"

namespace tokenvault {
namespace {

using testing::HexBytes;

TEST(AesGcmWycheproofTest, AllApplicableVectors) {
  std::optional<nlohmann::json> doc = testing::LoadWycheproof("aes_gcm_test.json");
  ASSERT_TRUE(doc.has_value()) << "Wycheproof vectors not found under " << TOKENVAULT_TESTDATA_DIR
                               << " (the shared/ folder must sit beside the checkout)";
  int valid = 0, invalid = 0;
  for (const auto& group : doc->at("testGroups")) {
    if (!testing::IsOurGcmGroup(group)) continue;
    for (const auto& t : group.at("tests")) {
      const int id = t.at("tcId");
      SecretBytes key = SecretBytes::CopyFrom(HexBytes(t.at("key")));
      const Bytes iv = HexBytes(t.at("iv"));
      const Bytes aad = HexBytes(t.at("aad"));
      const Bytes msg = HexBytes(t.at("msg"));
      const Bytes ct = HexBytes(t.at("ct"));
      const Bytes tag = HexBytes(t.at("tag"));
      const std::string result = t.at("result");
      ASSERT_TRUE(result == "valid" || result == "invalid") << "tcId " << id << ": " << result;
      if (result == "valid") {
        ++valid;
        Bytes out_ct(msg.size());
        Bytes out_tag(kAesGcmTagSize);
        ASSERT_TRUE(internal::AesGcmSealWithNonce(key, iv, msg, aad, out_ct.data(), out_tag.data()).ok())
            << "tcId " << id;
        EXPECT_EQ(out_ct, ct) << "tcId " << id;
        EXPECT_EQ(out_tag, tag) << "tcId " << id;
        StatusOr<SecretBytes> pt = internal::AesGcmOpen(key, iv, ct, tag, aad);
        ASSERT_TRUE(pt.ok()) << "tcId " << id << ": " << pt.status().ToString();
        EXPECT_TRUE(pt->EqualsBytes(msg)) << "tcId " << id;
      } else {
        ++invalid;
        StatusOr<SecretBytes> pt = internal::AesGcmOpen(key, iv, ct, tag, aad);
        EXPECT_FALSE(pt.ok()) << "tcId " << id << " was accepted";
        if (!pt.ok()) {
          EXPECT_EQ(pt.status().code(), StatusCode::kDataLoss) << "tcId " << id;
        }
      }
    }
  }
  std::printf("Wycheproof AES-GCM (256-bit key, 96-bit IV, 128-bit tag): %d vectors run, "
              "%d valid, %d invalid\n", valid + invalid, valid, invalid);
  // The file has 66 such vectors; fewer means the filter or the file is wrong.
  EXPECT_EQ(valid + invalid, 66);
  EXPECT_GT(invalid, 0);
}

}  // namespace
}  // namespace tokenvault
