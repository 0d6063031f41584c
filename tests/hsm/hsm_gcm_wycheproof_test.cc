// The DEK-wrapping mechanism (AES-GCM inside the HSM through C_Encrypt/C_Decrypt, with the exact
// CK_GCM_PARAMS Pkcs11Hsm builds) against the Wycheproof AES-GCM vectors on a real SoftHSM2
// token: valid vectors give exactly the listed ciphertext and tag (so a wrapped DEK is standard
// AES-GCM, portable to any HSM), invalid ones are rejected as integrity failures.
#include <gtest/gtest.h>

#include "hsm/internal/gcm.h"
#include "tests/support/raw_pkcs11.h"
#include "tests/support/softhsm_fixture.h"
#include "tests/support/wycheproof.h"

namespace tokenvault::hsm {
namespace {

using testing::HexBytes;

// A session object (CKA_TOKEN=false: gone when the session closes) holding the vector's key.
ck_object_handle_t ImportKey(testing::RawPkcs11& raw, const Bytes& key) {
  ck_object_class_t cls = CKO_SECRET_KEY;
  ck_key_type_t type = CKK_AES;
  unsigned char yes = 1, no = 0;
  ck_attribute templ[] = {{CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_KEY_TYPE, &type, sizeof(type)},
                          {CKA_TOKEN, &no, 1},
                          {CKA_ENCRYPT, &yes, 1},
                          {CKA_DECRYPT, &yes, 1},
                          {CKA_VALUE, const_cast<uint8_t*>(key.data()), key.size()}};
  ck_object_handle_t h = 0;
  EXPECT_EQ(raw.fn()->C_CreateObject(raw.session(), templ, 6, &h), static_cast<ck_rv_t>(CKR_OK));
  return h;
}

TEST(HsmGcmWycheproofTest, AllApplicableVectorsThroughSoftHsm) {
  testing::SoftHsmToken token;
  const std::string pin(AsChars(token.Pin().view()));
  testing::RawPkcs11 raw(token.token().config.module_path, token.token().config.token_label, pin);
  ASSERT_TRUE(raw.ready());
  std::optional<nlohmann::json> doc = testing::LoadWycheproof("aes_gcm_test.json");
  ASSERT_TRUE(doc.has_value()) << "Wycheproof vectors not found under " << TOKENVAULT_TESTDATA_DIR;
  int valid = 0, invalid = 0;
  for (const auto& group : doc->at("testGroups")) {
    if (!testing::IsOurGcmGroup(group)) continue;
    for (const auto& t : group.at("tests")) {
      const int id = t.at("tcId");
      const Bytes iv = HexBytes(t.at("iv"));
      const Bytes aad = HexBytes(t.at("aad"));
      const Bytes msg = HexBytes(t.at("msg"));
      Bytes ct_tag = HexBytes(t.at("ct"));
      AppendBytes(ct_tag, HexBytes(t.at("tag")));
      const ck_object_handle_t key = ImportKey(raw, HexBytes(t.at("key")));
      if (t.at("result") == "valid") {
        ++valid;
        StatusOr<Bytes> sealed = internal::HsmGcmEncrypt(raw.fn(), raw.session(), key, iv, aad, msg);
        ASSERT_TRUE(sealed.ok()) << "tcId " << id << ": " << sealed.status().ToString();
        EXPECT_EQ(*sealed, ct_tag) << "tcId " << id;
        if (!msg.empty()) {  // SoftHSM2 refuses to decrypt to an empty output buffer
          StatusOr<SecretBytes> opened =
              internal::HsmGcmDecrypt(raw.fn(), raw.session(), key, iv, aad, ct_tag);
          ASSERT_TRUE(opened.ok()) << "tcId " << id << ": " << opened.status().ToString();
          EXPECT_TRUE(opened->EqualsBytes(msg)) << "tcId " << id;
        }
      } else {
        ++invalid;
        StatusOr<SecretBytes> opened =
            internal::HsmGcmDecrypt(raw.fn(), raw.session(), key, iv, aad, ct_tag);
        EXPECT_FALSE(opened.ok()) << "tcId " << id << " was accepted by the HSM";
        if (!opened.ok()) {
          EXPECT_EQ(opened.status().code(), StatusCode::kDataLoss)
              << "tcId " << id << ": " << opened.status().ToString();
        }
      }
      raw.fn()->C_DestroyObject(raw.session(), key);
    }
  }
  std::printf("Wycheproof AES-GCM through SoftHSM2 C_Encrypt/C_Decrypt: %d vectors run, "
              "%d valid, %d invalid\n", valid + invalid, valid, invalid);
  EXPECT_EQ(valid + invalid, 66);
}

}  // namespace
}  // namespace tokenvault::hsm
