// Crypto-shredding against a real SoftHSM2 token and a real SQLite file: after it, the merchant's
// KEK is gone from the HSM (searched by its label), its tokens answer gone, its ciphertext leaves
// the database, other merchants are untouched, and the receipt is the audit record.
#include <gtest/gtest.h>

#include "storage/sqlite_store.h"
#include "tests/support/leak_scan.h"
#include "tests/support/matchers.h"
#include "tests/support/softhsm_fixture.h"
#include "tests/support/temp_dir.h"
#include "vault/vault.h"

namespace tokenvault {
namespace {

std::string AcmeKekLabel() { return hsm::KekRef{"acme", 1}.Label(); }

class ShredTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto hsm = token_.Open();
    ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
    hsm_ = std::move(hsm).value();
    OpenVault();
  }
  void OpenVault() {
    vault_.reset();
    store_.reset();
    auto store = storage::SqliteStore::Open({dir_.Sub("vault.db")});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    VaultOptions options;
    options.expiry_sweep_interval = std::chrono::milliseconds(0);  // swept by hand
    auto vault = Vault::Create(hsm_, store_, options);
    ASSERT_TRUE(vault.ok()) << vault.status().ToString();
    vault_ = std::move(vault).value();
  }
  storage::AuditRecord Asked(const std::string& who) {
    storage::AuditRecord r;
    r.request_id = "req_shred";
    r.principal = who;
    r.auth = "api_key";
    r.action = "merchants.shred";
    r.merchant = "acme";
    r.outcome = "allowed";
    r.status = 200;
    return r;
  }

  testing::SoftHsmToken token_;
  testing::TempDir dir_;
  std::shared_ptr<hsm::Hsm> hsm_;
  std::shared_ptr<storage::SqliteStore> store_;
  std::unique_ptr<Vault> vault_;
};

TEST_F(ShredTest, DestroysTheKeksAndLeavesOtherMerchantsUntouched) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  TV_ASSERT_OK(vault_->CreateMerchant("other"));
  const std::string acme_token = vault_->Tokenize("acme", AsBytes("acme secret"), ValueType::kGeneric)->token;
  const std::string other_token = vault_->Tokenize("other", AsBytes("other secret"), ValueType::kGeneric)->token;
  TV_ASSERT_OK(vault_->RotateDataKey("acme"));  // two DEK versions to destroy
  const std::string later = vault_->Tokenize("acme", AsBytes("acme later"), ValueType::kGeneric)->token;
  const Bytes ciphertext = store_->FindToken("acme", acme_token)->ciphertext;
  TV_ASSERT_OK(hsm_->FindKek(hsm::KekRef{"acme", 1}));

  StatusOr<ShredReceipt> receipt = vault_->ShredMerchant("acme", Asked("shredder"));
  TV_ASSERT_OK(receipt);
  EXPECT_EQ(receipt->merchant, "acme");
  EXPECT_EQ(receipt->principal, "shredder");
  EXPECT_EQ(receipt->destroyed,
            (std::vector<std::string>{"kek:" + AcmeKekLabel(), "dek:acme/v1",
                                      "dek:acme/v2", "fingerprint-key:acme"}));
  // The KEK is gone from the HSM: looked for by its label.
  TV_EXPECT_ERROR(hsm_->FindKek(hsm::KekRef{"acme", 1}), StatusCode::kNotFound, hsm::kReasonKeyNotFound);
  TV_EXPECT_OK(hsm_->FindKek(hsm::KekRef{"other", 1}));

  // The receipt is the audit record.
  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  const storage::AuditRecord& record = records->back();
  EXPECT_EQ(record.seq, receipt->audit_seq);
  EXPECT_EQ(record.time_ms, receipt->time_ms);
  EXPECT_EQ(record.principal, receipt->principal);
  EXPECT_EQ(record.resources, receipt->destroyed);
  EXPECT_EQ(record.resource, "merchant:acme");
  EXPECT_EQ(record.action, "merchants.shred");

  // Its tokens are gone; the other merchant's are not.
  for (const std::string& t : {acme_token, later}) {
    TV_EXPECT_ERROR(vault_->Detokenize("acme", t), StatusCode::kNotFound, kReasonTokenGone);
    TV_EXPECT_ERROR(vault_->GetToken("acme", t), StatusCode::kNotFound, kReasonTokenGone);
  }
  EXPECT_EQ(AsChars(vault_->Detokenize("other", other_token)->value.view()), "other secret");
  // Nothing new for it, and its id is not given out again.
  TV_EXPECT_ERROR(vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric), StatusCode::kNotFound,
                  "merchant_not_found");
  TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kAlreadyExists, "merchant_exists");
  TV_EXPECT_ERROR(vault_->ShredMerchant("acme", Asked("again")), StatusCode::kNotFound, "merchant_gone");
  TV_EXPECT_ERROR(vault_->ShredMerchant("nobody", Asked("x")), StatusCode::kNotFound, "merchant_not_found");

  // A fresh process (empty caches, new login) agrees.
  OpenVault();
  TV_EXPECT_ERROR(vault_->Detokenize("acme", acme_token), StatusCode::kNotFound, kReasonTokenGone);
  EXPECT_EQ(AsChars(vault_->Detokenize("other", other_token)->value.view()), "other secret");
  // The sweeper removes the unreadable ciphertext too.
  StatusOr<size_t> swept = store_->SweepShredded(100);
  TV_ASSERT_OK(swept);
  EXPECT_EQ(*swept, 2u);
  TV_ASSERT_OK(vault_->audit().Verify());
  EXPECT_TRUE(vault_->audit().Verify()->ok);
  vault_.reset();
  store_.reset();  // closing checkpoints the WAL into the file (secure_delete zeroes freed bytes)
  EXPECT_TRUE(testing::FindNeedles(dir_.Sub("vault.db"), {std::string(ciphertext.begin(), ciphertext.end())}).empty());
}

TEST_F(ShredTest, AnInterruptedShreddingIsResumed) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const std::string token = vault_->Tokenize("acme", AsBytes("secret"), ValueType::kGeneric)->token;
  // A crash right after step 1: marked, nothing destroyed yet.
  TV_ASSERT_OK(store_->MarkShredded("acme", 1234));
  OpenVault();
  TV_EXPECT_ERROR(vault_->Detokenize("acme", token), StatusCode::kNotFound, kReasonTokenGone);
  TV_ASSERT_OK(hsm_->FindKek(hsm::KekRef{"acme", 1}));  // still there
  // A crash after step 3: the KEK destroyed, the wrapped keys not yet deleted.
  TV_ASSERT_OK(hsm_->DestroyKek(hsm::KekRef{"acme", 1}));
  OpenVault();
  StatusOr<ShredReceipt> receipt = vault_->ShredMerchant("acme", Asked("shredder"));
  TV_ASSERT_OK(receipt);
  EXPECT_EQ(receipt->destroyed.front(), "kek:" + AcmeKekLabel());
  TV_EXPECT_ERROR(hsm_->FindKek(hsm::KekRef{"acme", 1}), StatusCode::kNotFound, hsm::kReasonKeyNotFound);
  TV_EXPECT_ERROR(vault_->ShredMerchant("acme", Asked("again")), StatusCode::kNotFound, "merchant_gone");
}

}  // namespace
}  // namespace tokenvault
