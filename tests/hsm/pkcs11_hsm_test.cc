// Pkcs11Hsm against a real SoftHSM2 token in a temp dir (its own softhsm2.conf).
#include "hsm/pkcs11_hsm.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "tests/support/matchers.h"
#include "tests/support/raw_pkcs11.h"
#include "tests/support/softhsm_fixture.h"
#include "vault/base/random.h"
#include "vault/ecdsa_p256.h"

namespace tokenvault::hsm {
namespace {

const Bytes kTag = {0x74, 0x76, 0x01};  // a creation tag

using testing::SoftHsmToken;

const Bytes kAadA = {'m', 'e', 'r', 'c', 'h', 'a', 'n', 't', 'A'};
const Bytes kAadB = {'m', 'e', 'r', 'c', 'h', 'a', 'n', 't', 'B'};

SecretBytes NewDek() { return std::move(*RandomSecret(32)); }

class Pkcs11HsmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StatusOr<std::unique_ptr<Pkcs11Hsm>> hsm = token_.Open();
    ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
    hsm_ = std::move(hsm).value();
  }
  SoftHsmToken token_;
  std::unique_ptr<Pkcs11Hsm> hsm_;
};

TEST_F(Pkcs11HsmTest, KekIsCreatedSensitiveAndNeverExtractable) {
  const KekRef kek{"acme", 1};
  TV_ASSERT_OK(hsm_->CreateKek(kek, kTag));
  EXPECT_EQ(kek.Label(), "tokenvault/kek/acme/v1");
  hsm_.reset();  // finalise our module; look at the token with raw PKCS#11

  std::string pin(AsChars(token_.Pin().view()));
  testing::RawPkcs11 raw(token_.token().config.module_path, token_.token().config.token_label, pin);
  ASSERT_TRUE(raw.ready());
  std::vector<ck_object_handle_t> found = raw.FindByLabel(kek.Label());
  ASSERT_EQ(found.size(), 1u);
  std::vector<unsigned char> v;
  // Reading the key's value must fail, whoever asks.
  EXPECT_EQ(raw.GetAttribute(found[0], CKA_VALUE, &v), static_cast<ck_rv_t>(CKR_ATTRIBUTE_SENSITIVE));
  for (auto [attr, expected] : {std::pair<unsigned long, int>{CKA_SENSITIVE, 1},
                                {CKA_EXTRACTABLE, 0},
                                {CKA_NEVER_EXTRACTABLE, 1},
                                {CKA_ALWAYS_SENSITIVE, 1},
                                {CKA_TOKEN, 1},
                                {CKA_PRIVATE, 1},
                                {CKA_WRAP, 0}}) {
    ASSERT_EQ(raw.GetAttribute(found[0], attr, &v), static_cast<ck_rv_t>(CKR_OK)) << attr;
    ASSERT_EQ(v.size(), 1u);
    EXPECT_EQ(v[0], expected) << "attribute 0x" << std::hex << attr;
  }
  ASSERT_EQ(raw.GetAttribute(found[0], CKA_VALUE_LEN, &v), static_cast<ck_rv_t>(CKR_OK));
  unsigned long len = 0;
  std::memcpy(&len, v.data(), sizeof(len));
  EXPECT_EQ(len, 32u);
  // Nor can it be made extractable afterwards.
  unsigned char yes = 1;
  ck_attribute make_extractable{CKA_EXTRACTABLE, &yes, 1};
  EXPECT_NE(raw.fn()->C_SetAttributeValue(raw.session(), found[0], &make_extractable, 1),
            static_cast<ck_rv_t>(CKR_OK));
}

TEST_F(Pkcs11HsmTest, ASigningKeySignsInsideTheHsmAndOnlyItsPublicHalfLeaves) {
  const SigningKeyRef key{"audit-checkpoint/v1"};
  TV_ASSERT_OK(hsm_->CreateSigningKey(key));
  TV_EXPECT_ERROR(hsm_->CreateSigningKey(key), StatusCode::kAlreadyExists, kReasonKeyExists);
  StatusOr<Bytes> point = hsm_->SigningPublicKey(key);
  TV_ASSERT_OK(point);
  StatusOr<EcdsaP256PublicKey> public_key = EcdsaP256PublicKey::FromPoint(*point);
  TV_ASSERT_OK(public_key);
  const Bytes message = {'c', 'h', 'e', 'c', 'k', 'p', 'o', 'i', 'n', 't'};
  const Sha256Digest digest = Sha256({message});
  StatusOr<Bytes> signature = hsm_->Sign(key, digest);
  TV_ASSERT_OK(signature);
  ASSERT_EQ(signature->size(), kP256SignatureSize);
  EXPECT_TRUE(public_key->Verify(message, *signature));
  EXPECT_FALSE(public_key->Verify(Bytes{'o', 't', 'h', 'e', 'r'}, *signature));
  Bytes flipped = *signature;
  flipped[40] ^= 1;
  EXPECT_FALSE(public_key->Verify(message, flipped));
  // The PEM round-trips to the same key.
  StatusOr<EcdsaP256PublicKey> from_pem = EcdsaP256PublicKey::FromPem(public_key->Pem());
  TV_ASSERT_OK(from_pem);
  EXPECT_EQ(from_pem->KeyId(), public_key->KeyId());
  TV_EXPECT_ERROR(hsm_->Sign(SigningKeyRef{"none"}, digest), StatusCode::kNotFound, kReasonKeyNotFound);

  hsm_.reset();  // look at the private half with raw PKCS#11
  std::string pin(AsChars(token_.Pin().view()));
  {
    testing::RawPkcs11 raw(token_.token().config.module_path, token_.token().config.token_label, pin);
    ASSERT_TRUE(raw.ready());
    std::vector<ck_object_handle_t> found = raw.FindByLabel(key.Label());
    ASSERT_EQ(found.size(), 2u);  // the private and the public key
    int private_keys = 0;
    for (ck_object_handle_t h : found) {
      std::vector<unsigned char> v;
      ASSERT_EQ(raw.GetAttribute(h, CKA_CLASS, &v), static_cast<ck_rv_t>(CKR_OK));
      ck_object_class_t cls = 0;
      std::memcpy(&cls, v.data(), sizeof(cls));
      if (cls != CKO_PRIVATE_KEY) continue;
      ++private_keys;
      EXPECT_EQ(raw.GetAttribute(h, CKA_VALUE, &v), static_cast<ck_rv_t>(CKR_ATTRIBUTE_SENSITIVE));
      for (auto [attr, expected] : {std::pair<unsigned long, int>{CKA_SENSITIVE, 1},
                                    {CKA_EXTRACTABLE, 0},
                                    {CKA_NEVER_EXTRACTABLE, 1},
                                    {CKA_SIGN, 1},
                                    {CKA_DECRYPT, 0},
                                    {CKA_TOKEN, 1}}) {
        ASSERT_EQ(raw.GetAttribute(h, attr, &v), static_cast<ck_rv_t>(CKR_OK)) << attr;
        EXPECT_EQ(v[0], expected) << "attribute 0x" << std::hex << attr;
      }
    }
    EXPECT_EQ(private_keys, 1);
  }
  // A new login (new sessions, new handles) signs with the same key.
  hsm_ = std::move(token_.Open()).value();
  StatusOr<Bytes> again = hsm_->Sign(key, digest);
  TV_ASSERT_OK(again);
  EXPECT_TRUE(public_key->Verify(message, *again));
}

TEST_F(Pkcs11HsmTest, WrapUnwrapRoundTrip) {
  const KekRef kek{"acme", 1};
  TV_ASSERT_OK(hsm_->CreateKek(kek, kTag));
  SecretBytes dek = NewDek();
  StatusOr<Bytes> wrapped = hsm_->Wrap(kek, dek, kAadA);
  TV_ASSERT_OK(wrapped);
  EXPECT_EQ(wrapped->size(), kWrapIvSize + 32 + kWrapTagSize);
  // The DEK does not appear in its wrapped form.
  EXPECT_EQ(std::search(wrapped->begin(), wrapped->end(), dek.data(), dek.data() + 8),
            wrapped->end());
  StatusOr<SecretBytes> back = hsm_->Unwrap(kek, *wrapped, kAadA);
  TV_ASSERT_OK(back);
  EXPECT_TRUE(back->Equals(dek));
  // Two wraps of the same key differ (fresh IV).
  EXPECT_NE(*wrapped, *hsm_->Wrap(kek, dek, kAadA));
}

TEST_F(Pkcs11HsmTest, MerchantAsWrappedDekCannotBeUnwrappedAsMerchantBs) {
  const KekRef kek_a{"a", 1}, kek_b{"b", 1};
  TV_ASSERT_OK(hsm_->CreateKek(kek_a, kTag));
  TV_ASSERT_OK(hsm_->CreateKek(kek_b, kTag));
  const Bytes wrapped_a = *hsm_->Wrap(kek_a, NewDek(), kAadA);
  // Under B's KEK, with A's AAD or B's.
  TV_EXPECT_ERROR(hsm_->Unwrap(kek_b, wrapped_a, kAadA), StatusCode::kDataLoss, kReasonIntegrity);
  TV_EXPECT_ERROR(hsm_->Unwrap(kek_b, wrapped_a, kAadB), StatusCode::kDataLoss, kReasonIntegrity);
  // Under A's own KEK but claiming to be B's key (the AAD names the merchant).
  TV_EXPECT_ERROR(hsm_->Unwrap(kek_a, wrapped_a, kAadB), StatusCode::kDataLoss, kReasonIntegrity);
  TV_EXPECT_OK(hsm_->Unwrap(kek_a, wrapped_a, kAadA));
}

TEST_F(Pkcs11HsmTest, AnyFlippedByteOfAWrappedKeyIsAnIntegrityFailure) {
  const KekRef kek{"acme", 1};
  TV_ASSERT_OK(hsm_->CreateKek(kek, kTag));
  const Bytes wrapped = *hsm_->Wrap(kek, NewDek(), kAadA);
  for (size_t i = 0; i < wrapped.size(); ++i) {
    Bytes bad = wrapped;
    bad[i] ^= 0x01;
    TV_EXPECT_ERROR(hsm_->Unwrap(kek, bad, kAadA), StatusCode::kDataLoss, kReasonIntegrity);
  }
  TV_EXPECT_ERROR(hsm_->Unwrap(kek, ByteView(wrapped).subspan(0, 20), kAadA),
                  StatusCode::kDataLoss, kReasonIntegrity);
  // The session survived all that.
  TV_EXPECT_OK(hsm_->Unwrap(kek, wrapped, kAadA));
}

TEST_F(Pkcs11HsmTest, CreationTagIsKeptWithTheKek) {
  const KekRef kek{"acme", 1};
  TV_EXPECT_ERROR(hsm_->KekCreationTag(kek), StatusCode::kNotFound, kReasonKeyNotFound);
  const Bytes tag = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
  TV_ASSERT_OK(hsm_->CreateKek(kek, tag));
  StatusOr<Bytes> read = hsm_->KekCreationTag(kek);
  TV_ASSERT_OK(read);
  EXPECT_EQ(*read, tag);
  TV_EXPECT_ERROR(hsm_->CreateKek(KekRef{"b", 1}, Bytes()), StatusCode::kInvalidArgument,
                  "bad_creation_tag");
}

TEST_F(Pkcs11HsmTest, KekLifecycleErrorsSayWhich) {
  const KekRef kek{"acme", 1};
  TV_EXPECT_ERROR(hsm_->FindKek(kek), StatusCode::kNotFound, kReasonKeyNotFound);
  TV_EXPECT_ERROR(hsm_->Wrap(kek, NewDek(), kAadA), StatusCode::kNotFound, kReasonKeyNotFound);
  TV_ASSERT_OK(hsm_->CreateKek(kek, kTag));
  TV_EXPECT_ERROR(hsm_->CreateKek(kek, kTag), StatusCode::kAlreadyExists, kReasonKeyExists);
  const Bytes wrapped = *hsm_->Wrap(kek, NewDek(), kAadA);
  TV_ASSERT_OK(hsm_->DestroyKek(kek));
  TV_EXPECT_ERROR(hsm_->FindKek(kek), StatusCode::kNotFound, kReasonKeyNotFound);
  // Crypto-shredding: once the KEK is gone, nothing unwraps.
  TV_EXPECT_ERROR(hsm_->Unwrap(kek, wrapped, kAadA), StatusCode::kNotFound, kReasonKeyNotFound);
  TV_EXPECT_ERROR(hsm_->DestroyKek(kek), StatusCode::kNotFound, kReasonKeyNotFound);
}

TEST_F(Pkcs11HsmTest, RefusesAKekWithUnsafeAttributes) {
  // Keys planted under KEK labels: each is a proper KEK but for one attribute, which makes it
  // readable, exportable, or usable (or changeable) beyond encrypt/decrypt.
  const std::map<std::string, std::map<unsigned long, bool>> planted = {
      {"extractable", {{CKA_SENSITIVE, false}, {CKA_EXTRACTABLE, true}}},
      {"wrap", {{CKA_WRAP, true}}},
      {"verify", {{CKA_VERIFY, true}}},
      {"modifiable", {{CKA_MODIFIABLE, true}}},
  };
  std::string pin(AsChars(token_.Pin().view()));
  hsm_.reset();
  {
    testing::RawPkcs11 raw(token_.token().config.module_path, token_.token().config.token_label, pin);
    ASSERT_TRUE(raw.ready());
    for (const auto& [name, overrides] : planted) {
      ASSERT_EQ(raw.PlantAesKey(KekRef{name, 1}.Label(), overrides), static_cast<ck_rv_t>(CKR_OK)) << name;
    }
    // The control: a key planted with exactly a KEK's attributes is accepted.
    ASSERT_EQ(raw.PlantAesKey(KekRef{"proper", 1}.Label(), {}), static_cast<ck_rv_t>(CKR_OK));
  }
  hsm_ = std::move(token_.Open()).value();
  for (const auto& [name, overrides] : planted) {
    TV_EXPECT_ERROR(hsm_->Wrap(KekRef{name, 1}, NewDek(), kAadA), StatusCode::kFailedPrecondition,
                    kReasonKeyPolicy);
  }
  TV_EXPECT_OK(hsm_->Wrap(KekRef{"proper", 1}, NewDek(), kAadA));
}

TEST_F(Pkcs11HsmTest, ConcurrentWrapsShareTheSessionPool) {
  const KekRef kek{"acme", 1};
  TV_ASSERT_OK(hsm_->CreateKek(kek, kTag));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {  // more threads than sessions (8)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        SecretBytes dek = NewDek();
        StatusOr<Bytes> w = hsm_->Wrap(kek, dek, kAadA);
        StatusOr<SecretBytes> u = w.ok() ? hsm_->Unwrap(kek, *w, kAadA) : w.status();
        if (!u.ok() || !u->Equals(dek)) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(Pkcs11HsmTest, RandomAndPing) {
  uint8_t a[32] = {}, b[32] = {};
  TV_ASSERT_OK(hsm_->GenerateRandom(a, sizeof(a)));
  TV_ASSERT_OK(hsm_->GenerateRandom(b, sizeof(b)));
  EXPECT_NE(std::memcmp(a, b, sizeof(a)), 0);
  TV_EXPECT_OK(hsm_->Ping());
}

// Wrong PIN, missing module, missing token: each its own error, and the token dir is unchanged.
class Pkcs11HsmOpenTest : public ::testing::Test {
 protected:
  SoftHsmToken token_;
};

TEST_F(Pkcs11HsmOpenTest, WrongPinIsRefusedAndWritesNothing) {
  // SoftHSM2 itself records a failed login in the token's own state file (token.object: its
  // PIN-failure flags), as an HSM should. Nothing else may change: no object is created.
  const auto before = testing::SnapshotTreeExcept(token_.token_dir(), "token.object");
  ASSERT_FALSE(before.empty());
  SecretBytes wrong = SecretBytes::CopyFrom(AsBytes("not-the-pin"));
  TV_EXPECT_ERROR(Pkcs11Hsm::Open(token_.token().config, wrong), StatusCode::kUnauthenticated,
                  kReasonLoginRefused);
  EXPECT_EQ(testing::SnapshotTreeExcept(token_.token_dir(), "token.object"), before);
  // The right PIN still works afterwards.
  TV_EXPECT_OK(token_.Open());
}

TEST_F(Pkcs11HsmOpenTest, MissingModuleIsUnavailable) {
  const auto before = testing::SnapshotTree(token_.token_dir());
  Pkcs11Config config = token_.token().config;
  config.module_path = token_.dir().Sub("no-such-module.so");
  StatusOr<std::unique_ptr<Pkcs11Hsm>> hsm = Pkcs11Hsm::Open(config, token_.Pin());
  TV_EXPECT_ERROR(hsm, StatusCode::kUnavailable, kReasonModuleUnavailable);
  EXPECT_TRUE(hsm.status().IsRetryable());
  // A file that is not a PKCS#11 module.
  config.module_path = "libc.so.6";
  TV_EXPECT_ERROR(Pkcs11Hsm::Open(config, token_.Pin()), StatusCode::kUnavailable,
                  kReasonModuleUnavailable);
  EXPECT_EQ(testing::SnapshotTree(token_.token_dir()), before);
}

TEST_F(Pkcs11HsmOpenTest, TwoTokensWithOurLabelAreRefused) {
  // Someone initialises a second token with the same label: which one would get our PIN?
  {
    testing::RawModule module(token_.token().config.module_path);
    ASSERT_TRUE(module.ready());
    ASSERT_TRUE(module.InitFreeToken(token_.token().config.token_label, "attacker-so-pin"));
  }
  TV_EXPECT_ERROR(token_.Open(), StatusCode::kFailedPrecondition, "hsm_token_ambiguous");
}

TEST_F(Pkcs11HsmOpenTest, MissingTokenIsUnavailable) {
  const auto before = testing::SnapshotTree(token_.token_dir());
  Pkcs11Config config = token_.token().config;
  config.token_label = "no-such-token";
  StatusOr<std::unique_ptr<Pkcs11Hsm>> hsm = Pkcs11Hsm::Open(config, token_.Pin());
  TV_EXPECT_ERROR(hsm, StatusCode::kUnavailable, kReasonTokenNotFound);
  EXPECT_EQ(testing::SnapshotTree(token_.token_dir()), before);
}

}  // namespace
}  // namespace tokenvault::hsm
