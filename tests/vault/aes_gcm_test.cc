#include "vault/aes_gcm.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/support/matchers.h"

namespace tokenvault {
namespace {

AesGcm256 NewAead() {
  StatusOr<SecretBytes> key = RandomSecret(kAesGcmKeySize);
  return std::move(*AesGcm256::Create(std::move(key).value()));
}

const Bytes kAad = {'a', 'a', 'd'};
const std::string kValue = "4111111111111111";

TEST(AesGcmAeadTest, RoundTrips) {
  AesGcm256 aead = NewAead();
  StatusOr<SealedBox> box = aead.Encrypt(AsBytes(kValue), kAad);
  TV_ASSERT_OK(box);
  EXPECT_EQ(box->ciphertext.size(), kValue.size());
  EXPECT_NE(AsChars(box->ciphertext), kValue);
  StatusOr<SecretBytes> pt = aead.Decrypt(box->nonce, box->ciphertext, box->tag, kAad);
  TV_ASSERT_OK(pt);
  EXPECT_TRUE(pt->EqualsBytes(AsBytes(kValue)));
}

TEST(AesGcmAeadTest, EveryEncryptionDrawsAFreshNonce) {
  AesGcm256 aead = NewAead();
  std::set<GcmNonce> nonces;
  for (int i = 0; i < 1000; ++i) nonces.insert(aead.Encrypt(AsBytes(kValue), kAad)->nonce);
  EXPECT_EQ(nonces.size(), 1000u);
}

TEST(AesGcmAeadTest, RejectsKeysOfTheWrongSize) {
  TV_EXPECT_ERROR(AesGcm256::Create(SecretBytes(16)), StatusCode::kInvalidArgument, "bad_key");
  TV_EXPECT_ERROR(AesGcm256::Create(SecretBytes(33)), StatusCode::kInvalidArgument, "bad_key");
}

TEST(AesGcmAeadTest, DecryptFailsWhenAnyPartIsChanged) {
  AesGcm256 aead = NewAead();
  SealedBox box = *aead.Encrypt(AsBytes(kValue), kAad);
  for (size_t i = 0; i < box.nonce.size(); ++i) {
    SealedBox b = box;
    b.nonce[i] ^= 0x01;
    TV_EXPECT_ERROR(aead.Decrypt(b.nonce, b.ciphertext, b.tag, kAad), StatusCode::kDataLoss,
                    "integrity_failure");
  }
  for (size_t i = 0; i < box.ciphertext.size(); ++i) {
    SealedBox b = box;
    b.ciphertext[i] ^= 0x80;
    TV_EXPECT_ERROR(aead.Decrypt(b.nonce, b.ciphertext, b.tag, kAad), StatusCode::kDataLoss,
                    "integrity_failure");
  }
  for (size_t i = 0; i < box.tag.size(); ++i) {
    SealedBox b = box;
    b.tag[i] ^= 0x01;
    TV_EXPECT_ERROR(aead.Decrypt(b.nonce, b.ciphertext, b.tag, kAad), StatusCode::kDataLoss,
                    "integrity_failure");
  }
  Bytes other_aad = kAad;
  other_aad.push_back('!');
  TV_EXPECT_ERROR(aead.Decrypt(box.nonce, box.ciphertext, box.tag, other_aad),
                  StatusCode::kDataLoss, "integrity_failure");
  // Truncated tag or ciphertext.
  TV_EXPECT_ERROR(aead.Decrypt(box.nonce, box.ciphertext, ByteView(box.tag).subspan(0, 15), kAad),
                  StatusCode::kDataLoss, "integrity_failure");
  TV_EXPECT_ERROR(aead.Decrypt(box.nonce, ByteView(box.ciphertext).subspan(1), box.tag, kAad),
                  StatusCode::kDataLoss, "integrity_failure");
}

TEST(AesGcmAeadTest, AnotherKeyCannotDecrypt) {
  AesGcm256 a = NewAead();
  AesGcm256 b = NewAead();
  SealedBox box = *a.Encrypt(AsBytes(kValue), kAad);
  TV_EXPECT_ERROR(b.Decrypt(box.nonce, box.ciphertext, box.tag, kAad), StatusCode::kDataLoss,
                  "integrity_failure");
}

}  // namespace
}  // namespace tokenvault
