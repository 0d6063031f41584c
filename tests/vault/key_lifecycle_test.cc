// KEK rotation against a real SoftHSM2 token and a real SQLite file: every key rewrapped, no
// token re-encrypted, the old KEK destroyed, each event audited; and the rotation interrupted at
// each of its named steps (as a crash would: the vault is dropped and opened afresh on the same
// database and token) leaves every token readable and finishes when asked again.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

#include "storage/sqlite_store.h"
#include "tests/support/matchers.h"
#include "tests/support/softhsm_fixture.h"
#include "tests/support/temp_dir.h"
#include "vault/vault.h"

namespace tokenvault {
namespace {

class KeyLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto hsm = token_.Open();
    ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
    hsm_ = std::move(hsm).value();
    OpenVault();
  }
  // A "restart": everything in memory is gone; the database and the HSM token stay.
  void OpenVault(std::string crash_at = "", std::chrono::milliseconds reencrypt_interval = std::chrono::milliseconds(0)) {
    vault_.reset();
    store_.reset();
    auto store = storage::SqliteStore::Open({dir_.Sub("vault.db")});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    VaultOptions options;
    options.expiry_sweep_interval = std::chrono::milliseconds(0);
    options.reencrypt_interval = reencrypt_interval;  // 0: run by hand
    options.reencrypt_batch = 4;
    options.reencrypt_pause = std::chrono::milliseconds(1);
    if (!crash_at.empty()) {
      options.keys.fault_injection = [crash_at](std::string_view step) {
        return step == crash_at ? UnavailableError("crashed", "simulated crash") : Status::Ok();
      };
    }
    auto vault = Vault::Create(hsm_, store_, options);
    ASSERT_TRUE(vault.ok()) << vault.status().ToString();
    vault_ = std::move(vault).value();
  }
  // Tokens under several DEK versions, and a fingerprint key.
  void MakeTokens() {
    TV_ASSERT_OK(vault_->CreateMerchant("acme"));
    TV_ASSERT_OK(vault_->CreateMerchant("other"));
    for (int i = 0; i < 6; ++i) {
      if (i == 3) TV_ASSERT_OK(vault_->RotateDataKey("acme"));
      const std::string value = "value " + std::to_string(i);
      StatusOr<TokenInfo> t = vault_->Tokenize("acme", AsBytes(value), ValueType::kGeneric);
      TV_ASSERT_OK(t);
      tokens_.emplace_back(t->token, value);
    }
    other_ = vault_->Tokenize("other", AsBytes("other value"), ValueType::kGeneric)->token;
  }
  void ExpectAllReadable() {
    for (const auto& [token, value] : tokens_) {
      StatusOr<RevealedValue> v = vault_->Detokenize("acme", token);
      ASSERT_TRUE(v.ok()) << token << ": " << v.status().ToString();
      EXPECT_EQ(AsChars(v->value.view()), value);
    }
    EXPECT_EQ(AsChars(vault_->Detokenize("other", other_)->value.view()), "other value");
  }
  // Which of the merchant's KEK versions 1..n the HSM holds.
  std::vector<uint32_t> KeksInHsm(uint32_t up_to) {
    std::vector<uint32_t> present;
    for (uint32_t v = 1; v <= up_to; ++v) {
      if (hsm_->FindKek(hsm::KekRef{"acme", v}).ok()) present.push_back(v);
    }
    return present;
  }

  testing::SoftHsmToken token_;
  testing::TempDir dir_;
  std::shared_ptr<hsm::Hsm> hsm_;
  std::shared_ptr<storage::SqliteStore> store_;
  std::unique_ptr<Vault> vault_;
  std::vector<std::pair<std::string, std::string>> tokens_;
  std::string other_;
};

TEST_F(KeyLifecycleTest, KekRotationRewrapsEveryKeyAndDestroysTheOldKek) {
  MakeTokens();
  const Bytes ciphertext_before = store_->FindToken("acme", tokens_[0].first)->ciphertext;
  storage::AuditRecord asked;
  asked.request_id = "req_kek";
  asked.principal = "keyadmin";
  asked.action = "kek.rotate";
  asked.merchant = "acme";
  asked.outcome = "allowed";
  asked.status = 200;
  for (uint32_t expected = 2; expected <= 3; ++expected) {
    StatusOr<Keyring::KekRotated> rotated = vault_->RotateKek("acme", &asked);
    TV_ASSERT_OK(rotated);
    EXPECT_EQ(rotated->kek_version, expected);
    EXPECT_EQ(rotated->rewrapped, 3u);  // DEK versions 1 and 2, and the fingerprint key
    EXPECT_EQ(KeksInHsm(3), std::vector<uint32_t>{expected});
    ExpectAllReadable();
  }
  // No token was re-encrypted: its ciphertext is the same bytes.
  EXPECT_EQ(store_->FindToken("acme", tokens_[0].first)->ciphertext, ciphertext_before);
  StatusOr<std::vector<storage::DataKeyRecord>> deks = store_->GetDataKeys("acme");
  TV_ASSERT_OK(deks);
  for (const auto& dek : *deks) EXPECT_EQ(dek.kek_version, 3u);
  EXPECT_EQ(store_->GetFingerprintKey("acme")->kek_version, 3u);
  // Fresh process: nothing cached, every key unwrapped by the new KEK.
  OpenVault();
  ExpectAllReadable();
  StatusOr<TokenInfo> again = vault_->Tokenize("acme", AsBytes("value 0"), ValueType::kGeneric);
  TV_ASSERT_OK(again);
  EXPECT_EQ(again->fingerprint, vault_->GetToken("acme", tokens_[0].first)->fingerprint);
  // Each rotation and each destruction is in the audit trail.
  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  int rotations = 0, destructions = 0;
  for (const auto& r : *records) {
    if (r.resource.rfind("kek:", 0) != 0) continue;
    EXPECT_EQ(r.principal, "keyadmin");
    if (r.reason.find("rewrapped") != std::string::npos) ++rotations;
    if (r.reason.find("destroyed") != std::string::npos) ++destructions;
  }
  EXPECT_EQ(rotations, 2);
  EXPECT_EQ(destructions, 2);
  EXPECT_TRUE(vault_->audit().Verify()->ok);
}

TEST_F(KeyLifecycleTest, AKekRotationCrashedAtAnyStepLosesNothingAndFinishes) {
  MakeTokens();
  uint32_t current = 1;
  for (const char* step : {"kek_rotation.intent_recorded", "kek_rotation.kek_created",
                           "kek_rotation.rewrapped", "kek_rotation.committed"}) {
    SCOPED_TRACE(step);
    OpenVault(step);
    TV_EXPECT_ERROR(vault_->RotateKek("acme").status(), StatusCode::kUnavailable, "crashed");
    // After the switch committed, the new KEK is current; before, the old one still is.
    const bool committed = std::string(step) == "kek_rotation.committed";
    if (committed) ++current;
    OpenVault();  // the restart
    ExpectAllReadable();
    EXPECT_EQ(store_->GetMerchant("acme")->kek_version, current);
    // Asked again, the rotation finishes (or, after a committed one, the next one runs and
    // destroys the KEK the crash left behind).
    StatusOr<Keyring::KekRotated> rotated = vault_->RotateKek("acme");
    TV_ASSERT_OK(rotated);
    EXPECT_EQ(rotated->kek_version, current + 1);
    ++current;
    ExpectAllReadable();
    EXPECT_EQ(KeksInHsm(current + 1), std::vector<uint32_t>{current});
  }
  OpenVault();
  ExpectAllReadable();
  EXPECT_TRUE(vault_->audit().Verify()->ok);
}

TEST_F(KeyLifecycleTest, AKekUnderTheNewLabelThatThisDatabaseDidNotMakeIsNeverAdopted) {
  MakeTokens();
  // Someone else's key under the label the rotation would use.
  TV_ASSERT_OK(hsm_->CreateKek(hsm::KekRef{"acme", 2}, AsBytes("somebody else")));
  TV_EXPECT_ERROR(vault_->RotateKek("acme").status(), StatusCode::kFailedPrecondition,
                  "kek_exists_without_merchant");
  EXPECT_EQ(store_->GetMerchant("acme")->kek_version, 1u);
  TV_EXPECT_OK(hsm_->FindKek(hsm::KekRef{"acme", 2}));  // not destroyed either: not ours
  OpenVault();
  ExpectAllReadable();
}

// Versions of acme by state, and the live tokens under versions that are not current.
struct Versions {
  int retired = 0, destroyed = 0;
  uint64_t tokens_off_current = 0;
};
Versions Count(Vault& vault) {
  Versions v;
  StatusOr<std::vector<storage::DataKeyUsage>> keys = vault.DataKeys("acme");
  EXPECT_TRUE(keys.ok());
  if (!keys.ok()) return v;
  for (const auto& k : *keys) {
    if (k.state == storage::DataKeyState::kRetired) ++v.retired;
    if (k.state == storage::DataKeyState::kDestroyed) ++v.destroyed;
    if (k.state != storage::DataKeyState::kActive) v.tokens_off_current += k.live_tokens;
  }
  return v;
}

TEST_F(KeyLifecycleTest, ReencryptionCrashedAfterABatchResumesAndDestroysTheOldVersions) {
  MakeTokens();  // 3 tokens under v1, 3 under v2
  TV_ASSERT_OK(vault_->RotateDataKey("acme"));  // v3 current: 6 tokens to move, in batches of 4
  OpenVault("reencrypt.batch_committed");
  TV_EXPECT_ERROR(vault_->RunReencryption().status(), StatusCode::kUnavailable, "crashed");
  OpenVault();  // the restart
  ExpectAllReadable();
  EXPECT_EQ(Count(*vault_).tokens_off_current, 2u);  // one batch of 4 had committed
  StatusOr<size_t> moved = vault_->RunReencryption();
  TV_ASSERT_OK(moved);
  EXPECT_EQ(*moved, 2u);
  const Versions v = Count(*vault_);
  EXPECT_EQ(v.tokens_off_current, 0u);
  EXPECT_EQ(v.retired, 0);
  EXPECT_EQ(v.destroyed, 2);
  ExpectAllReadable();
  OpenVault();  // no cached key: everything reads under v3
  ExpectAllReadable();
  // The destruction of each version is in the audit trail.
  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  int destroyed = 0;
  for (const auto& r : *records) destroyed += r.action == "keys.dek_destroy";
  EXPECT_EQ(destroyed, 2);
  EXPECT_TRUE(vault_->audit().Verify()->ok);
}

// The load test: several threads tokenize and detokenize while the DEK rotates ten
// times and the KEK twice, with the re-encryption job running: no request fails, every value
// round-trips, and at the end no token is left on an old version and every old version is
// destroyed.
TEST_F(KeyLifecycleTest, RotationsUnderLoadLoseNothingAndLeaveOnlyTheCurrentVersion) {
  OpenVault("", std::chrono::milliseconds(5));  // the background job, every 5 ms
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  constexpr int kThreads = 4;
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::vector<std::vector<std::pair<std::string, std::string>>> made(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !done.load() || i < 50; ++i) {
        const std::string value = "t" + std::to_string(t) + "-" + std::to_string(i);
        StatusOr<TokenInfo> token = vault_->Tokenize("acme", AsBytes(value), ValueType::kGeneric);
        if (!token.ok()) {
          ADD_FAILURE() << "tokenize: " << token.status().ToString();
          ++failures;
          continue;
        }
        made[t].emplace_back(token->token, value);
        // Read back something made earlier (maybe under an older version, maybe moved since).
        const auto& [old_token, old_value] = made[t][made[t].size() / 2];
        StatusOr<RevealedValue> v = vault_->Detokenize("acme", old_token);
        if (!v.ok() || AsChars(v->value.view()) != old_value) {
          ADD_FAILURE() << "detokenize: " << (v.ok() ? "wrong value" : v.status().ToString());
          ++failures;
        }
      }
    });
  }
  for (int round = 0; round < 10; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let tokens pile up
    TV_EXPECT_OK(vault_->RotateDataKey("acme").status());
    if (round == 3 || round == 7) TV_EXPECT_OK(vault_->RotateKek("acme").status());
  }
  done = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  // The job catches up (by hand here, so that the test does not wait for its timer).
  for (int i = 0; i < 100 && Count(*vault_).retired > 0; ++i) TV_ASSERT_OK(vault_->RunReencryption().status());
  const Versions v = Count(*vault_);
  EXPECT_EQ(v.tokens_off_current, 0u);
  EXPECT_EQ(v.retired, 0);
  EXPECT_EQ(v.destroyed, 10);
  EXPECT_EQ(KeksInHsm(3), std::vector<uint32_t>{3});
  size_t checked = 0;
  OpenVault();
  for (const auto& per_thread : made) {
    for (const auto& [token, value] : per_thread) {
      StatusOr<RevealedValue> r = vault_->Detokenize("acme", token);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      EXPECT_EQ(AsChars(r->value.view()), value);
      ++checked;
    }
  }
  EXPECT_GE(checked, static_cast<size_t>(kThreads * 50));
  EXPECT_TRUE(vault_->audit().Verify()->ok);
}

// PCI DSS 3.6/10.2: every key event, with who and when. One merchant's life: created (its KEK and
// first DEK), its fingerprint key made on first use, its DEK rotated (the old version retired),
// its KEK rotated (every key rewrapped, the old KEK destroyed), the retired version destroyed
// after re-encryption, and the merchant shredded.
std::string KekName(uint32_t version) { return "kek:" + hsm::KekRef{"acme", version}.Label(); }

TEST_F(KeyLifecycleTest, EveryKeyEventIsInTheAuditTrailWithWhoAndWhen) {
  auto asked = [](const std::string& action) {
    storage::AuditRecord r;
    r.request_id = "req_" + action;
    r.principal = "officer";
    r.auth = "api_key";
    r.action = action;
    r.merchant = "acme";
    r.outcome = "allowed";
    r.status = 200;
    return r;
  };
  const storage::AuditRecord create = asked("merchants.create");
  TV_ASSERT_OK(vault_->CreateMerchant("acme", &create));
  TV_ASSERT_OK(vault_->Tokenize("acme", AsBytes("a value"), ValueType::kGeneric));
  const storage::AuditRecord rotate = asked("keys.rotate");
  TV_ASSERT_OK(vault_->RotateDataKey("acme", &rotate));
  const storage::AuditRecord rotate_kek = asked("kek.rotate");
  TV_ASSERT_OK(vault_->RotateKek("acme", &rotate_kek));
  TV_ASSERT_OK(vault_->RunReencryption());
  TV_ASSERT_OK(vault_->ShredMerchant("acme", asked("merchants.shred")));

  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  std::map<std::string, std::string> events;  // event -> the record's resource
  for (const storage::AuditRecord& r : *records) {
    EXPECT_FALSE(r.principal.empty()) << r.action;
    EXPECT_GT(r.time_ms, 0) << r.action;
    if (r.action == "merchants.create") events["create KEK and DEK"] = r.resource;
    if (r.action == "keys.fingerprint_key_create") events["create fingerprint key"] = r.resource;
    if (r.action == "keys.rotate" && r.reason.find("version 1 retired") != std::string::npos) {
      events["rotate and retire"] = r.resource;
    }
    if (r.action == "kek.rotate" && r.reason.find("rewrapped") != std::string::npos) events["rewrap"] = r.resource;
    if (r.action == "kek.rotate" && r.reason.find("destroyed in the HSM") != std::string::npos) {
      events["destroy KEK"] = r.resource;
    }
    if (r.action == "keys.dek_destroy") events["destroy DEK"] = r.resource;
    if (r.action == "merchants.shred") events["shred"] = r.resource;
  }
  EXPECT_EQ(events["create KEK and DEK"], KekName(1));
  EXPECT_EQ(events["create fingerprint key"], "fingerprint-key:acme");
  EXPECT_EQ(events["rotate and retire"], "dek:acme/v2");
  EXPECT_EQ(events["rewrap"], KekName(2));
  EXPECT_EQ(events["destroy KEK"], KekName(1));
  EXPECT_EQ(events["destroy DEK"], "dek:acme/v1");
  EXPECT_EQ(events["shred"], "merchant:acme");
  EXPECT_TRUE(vault_->audit().Verify()->ok);
}

}  // namespace
}  // namespace tokenvault
