// Every Wycheproof AES-GCM vector that fits our parameters (256-bit key, 96-bit IV, 128-bit
// tag) through the real AEAD code: valid vectors must give exactly the listed ciphertext and tag
// and decrypt back; invalid ones must be rejected.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "vault/aes_gcm.h"

namespace tokenvault {
namespace {

Bytes Hex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

TEST(AesGcmWycheproofTest, AllApplicableVectors) {
  const std::string path = std::string(TOKENVAULT_TESTDATA_DIR) + "/wycheproof/aes_gcm_test.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "Wycheproof vectors not found at " << path
                  << " (the shared/ folder must sit beside the checkout)";
  const nlohmann::json doc = nlohmann::json::parse(in);
  int valid = 0, invalid = 0;
  for (const auto& group : doc.at("testGroups")) {
    if (group.at("keySize") != 256 || group.at("ivSize") != 96 || group.at("tagSize") != 128) {
      continue;
    }
    for (const auto& t : group.at("tests")) {
      const int id = t.at("tcId");
      SecretBytes key = SecretBytes::CopyFrom(Hex(t.at("key")));
      const Bytes iv = Hex(t.at("iv"));
      const Bytes aad = Hex(t.at("aad"));
      const Bytes msg = Hex(t.at("msg"));
      const Bytes ct = Hex(t.at("ct"));
      const Bytes tag = Hex(t.at("tag"));
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
