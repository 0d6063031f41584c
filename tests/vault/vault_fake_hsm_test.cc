// Unit tests of the vault core with an in-memory HSM (tests/fakes) and a real SQLite file.
// The same behaviours are exercised against SoftHSM2 in vault_softhsm_test.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "storage/sqlite.h"
#include "storage/sqlite_store.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/leak_scan.h"
#include "tests/support/matchers.h"
#include "tests/support/test_values.h"
#include "tests/support/temp_dir.h"
#include "vault/value_type.h"
#include "vault/vault.h"

namespace tokenvault {
namespace {

using testing::FakeHsm;
using testing::TempDir;

class VaultFakeHsmTest : public ::testing::Test {
 protected:
  void Open(const VaultOptions& options = {}) {
    vault_.reset();
    store_.reset();
    storage::SqliteStoreOptions so;
    so.path = dir_.Sub("vault.db");
    auto store = storage::SqliteStore::Open(so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    auto vault = Vault::Create(hsm_, store_, options);
    ASSERT_TRUE(vault.ok()) << vault.status().ToString();
    vault_ = std::move(vault).value();
  }
  void SetUp() override { Open(); }

  TempDir dir_;
  std::shared_ptr<FakeHsm> hsm_ = std::make_shared<FakeHsm>();
  std::shared_ptr<storage::SqliteStore> store_;
  std::unique_ptr<Vault> vault_;
};

TEST_F(VaultFakeHsmTest, CreateMerchantValidatesAndRefusesDuplicates) {
  const size_t base = hsm_->kek_count();  // the audit key's KEK
  StatusOr<MerchantInfo> m = vault_->CreateMerchant("acme");
  TV_ASSERT_OK(m);
  EXPECT_EQ(m->kek_version, 1u);
  EXPECT_EQ(m->dek_version, 1u);
  EXPECT_EQ(hsm_->kek_count(), base + 1);
  TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kAlreadyExists, "merchant_exists");
  TV_EXPECT_ERROR(vault_->CreateMerchant("Bad Id"), StatusCode::kInvalidArgument, "invalid_merchant");
  EXPECT_EQ(hsm_->kek_count(), base + 1);
}

TEST_F(VaultFakeHsmTest, TokenizeAndDetokenizeEachType) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  struct Case {
    ValueType type;
    std::string in, normalized;
    std::optional<std::string> last4;
  };
  for (const Case& c : {Case{ValueType::kCard, "4111-1111-1111-1111", "4111111111111111", "1111"},
                        Case{ValueType::kSsn, "123456789", "123-45-6789", "6789"},
                        Case{ValueType::kGeneric, "hello", "hello", std::nullopt}}) {
    StatusOr<TokenInfo> t = vault_->Tokenize("acme", AsBytes(c.in), c.type);
    TV_ASSERT_OK(t);
    EXPECT_EQ(t->last4, c.last4);
    StatusOr<RevealedValue> v = vault_->Detokenize("acme", t->token);
    TV_ASSERT_OK(v);
    EXPECT_EQ(v->type, c.type);
    EXPECT_EQ(AsChars(v->value.view()), c.normalized);
  }
}

TEST_F(VaultFakeHsmTest, TokenMetadataAndDeletion) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  TV_ASSERT_OK(vault_->CreateMerchant("other"));
  const std::string token =
      vault_->Tokenize("acme", AsBytes("4111111111111111"), ValueType::kCard)->token;
  StatusOr<TokenInfo> info = vault_->GetToken("acme", token);
  TV_ASSERT_OK(info);
  EXPECT_EQ(info->type, ValueType::kCard);
  EXPECT_EQ(info->format, "random");
  EXPECT_EQ(info->last4, "1111");
  TV_EXPECT_ERROR(vault_->GetToken("other", token), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(vault_->DeleteToken("other", token), StatusCode::kNotFound, "token_not_found");
  TV_ASSERT_OK(vault_->DeleteToken("acme", token));
  TV_EXPECT_ERROR(vault_->Detokenize("acme", token), StatusCode::kNotFound, "token_gone");
  TV_EXPECT_ERROR(vault_->GetToken("acme", token), StatusCode::kNotFound, "token_gone");
  TV_EXPECT_ERROR(vault_->DeleteToken("acme", token), StatusCode::kNotFound, "token_gone");
  // Another merchant still cannot tell the deleted token from an unknown one.
  TV_EXPECT_ERROR(vault_->Detokenize("other", token), StatusCode::kNotFound, "token_not_found");
  // The sealed value is gone from the row.
  StatusOr<storage::TokenRecord> row = store_->FindToken("acme", token);
  TV_ASSERT_OK(row);
  EXPECT_TRUE(row->nonce.empty() && row->ciphertext.empty() && row->tag.empty());
}

TEST_F(VaultFakeHsmTest, BadInputChangesNothing) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const auto before = store_->GetStats();
  TV_EXPECT_ERROR(vault_->Tokenize("acme", AsBytes("4111111111111112"), ValueType::kCard),
                  StatusCode::kInvalidArgument, "invalid_card");
  TV_EXPECT_ERROR(vault_->Tokenize("acme", AsBytes(""), ValueType::kGeneric),
                  StatusCode::kInvalidArgument, "invalid_value");
  TV_EXPECT_ERROR(vault_->Tokenize("nope", AsBytes("x"), ValueType::kGeneric),
                  StatusCode::kNotFound, "merchant_not_found");
  TV_EXPECT_ERROR(vault_->Detokenize("acme", "tok_bad"), StatusCode::kInvalidArgument,
                  "invalid_token");
  EXPECT_EQ(store_->GetStats().operations, before.operations);
}

TEST_F(VaultFakeHsmTest, AnotherMerchantsTokenLooksExactlyLikeAnUnknownOne) {
  TV_ASSERT_OK(vault_->CreateMerchant("a"));
  TV_ASSERT_OK(vault_->CreateMerchant("b"));
  const std::string token = vault_->Tokenize("a", AsBytes("secret"), ValueType::kGeneric)->token;
  Status foreign = vault_->Detokenize("b", token).status();
  Status unknown = vault_->Detokenize("b", "tok_0000000000000000000000").status();
  Status no_merchant = vault_->Detokenize("zzz", token).status();
  EXPECT_EQ(foreign.code(), StatusCode::kNotFound);
  EXPECT_EQ(foreign.ToString(), unknown.ToString());
  EXPECT_EQ(foreign.ToString(), no_merchant.ToString());
}

TEST_F(VaultFakeHsmTest, EncryptionCounterForcesNewDekVersions) {
  VaultOptions options;
  options.keys.max_encryptions_per_dek = 10;
  options.keys.reservation_block = 4;
  Open(options);
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  std::vector<TokenInfo> tokens;
  std::set<uint32_t> versions;
  for (int i = 0; i < 35; ++i) {
    StatusOr<TokenInfo> t =
        vault_->Tokenize("acme", AsBytes("v" + std::to_string(i)), ValueType::kGeneric);
    TV_ASSERT_OK(t);
    versions.insert(t->dek_version);
    tokens.push_back(*t);
  }
  // 35 encryptions at 10 per key: versions 1..4, each used at most 10 times.
  EXPECT_EQ(versions, (std::set<uint32_t>{1, 2, 3, 4}));
  for (uint32_t v = 1; v <= 4; ++v) {
    EXPECT_LE(std::count_if(tokens.begin(), tokens.end(),
                            [v](const TokenInfo& t) { return t.dek_version == v; }),
              10);
  }
  EXPECT_EQ(store_->GetDataKey("acme", 1)->state, storage::DataKeyState::kRetired);
  EXPECT_EQ(store_->GetDataKey("acme", 4)->state, storage::DataKeyState::kActive);
  for (int i = 0; i < 35; ++i) {
    StatusOr<RevealedValue> v = vault_->Detokenize("acme", tokens[i].token);
    TV_ASSERT_OK(v);
    EXPECT_EQ(AsChars(v->value.view()), "v" + std::to_string(i));
  }
}

TEST_F(VaultFakeHsmTest, ABatchThatDoesNotFitTheDeksBudgetGoesToTheNextVersionWhole) {
  VaultOptions options;
  options.keys.max_encryptions_per_dek = 10;
  options.keys.reservation_block = 4;
  Open(options);
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  auto batch = [&](int n, int first) {
    std::vector<std::string> values;
    for (int i = 0; i < n; ++i) values.push_back("b" + std::to_string(first + i));
    std::vector<TokenizeItem> items;
    for (const std::string& v : values) items.push_back(TokenizeItem{AsBytes(v), ValueType::kGeneric, {}, false, {}});
    std::promise<StatusOr<std::vector<TokenizeOutcome>>> done;
    vault_->TokenizeBatchAsync("acme", items, std::nullopt, nullptr,
                               [&](StatusOr<std::vector<TokenizeOutcome>> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  // 6 fit in version 1; the next 6 do not fit in its remaining 4: version 2, all six, at once.
  for (int round = 0; round < 2; ++round) {
    StatusOr<std::vector<TokenizeOutcome>> out = batch(6, round * 6);
    TV_ASSERT_OK(out);
    for (size_t i = 0; i < out->size(); ++i) {
      const TokenizeOutcome& o = (*out)[i];
      TV_ASSERT_OK(o.token);
      EXPECT_EQ(o.token->dek_version, static_cast<uint32_t>(round + 1));
      EXPECT_EQ(AsChars(vault_->Detokenize("acme", o.token->token)->value.view()),
                "b" + std::to_string(round * 6 + static_cast<int>(i)));
    }
  }
  // More than a whole DEK may encrypt: refused as a whole, nothing written.
  TV_EXPECT_ERROR(batch(11, 100).status(), StatusCode::kInvalidArgument, "too_many_encryptions");
}

TEST(VaultKeyEventsTest, RotationsAreAuditedAndDeksRotateByAgeAndBudget) {
  TempDir dir;
  FakeClock clock;
  auto hsm = std::make_shared<FakeHsm>();
  auto store = storage::SqliteStore::Open({dir.Sub("vault.db")});
  ASSERT_TRUE(store.ok());
  std::shared_ptr<storage::SqliteStore> shared = std::move(store).value();
  VaultOptions options;
  options.expiry_sweep_interval = std::chrono::milliseconds(0);
  options.keys.max_dek_age = std::chrono::hours(1);
  options.keys.max_encryptions_per_dek = 5;
  options.keys.reservation_block = 2;
  auto vault = Vault::Create(hsm, shared, options, clock);
  ASSERT_TRUE(vault.ok());
  Vault& v = **vault;
  TV_ASSERT_OK(v.CreateMerchant("acme"));
  auto tokenize = [&](const std::string& value) {
    StatusOr<TokenInfo> t = v.Tokenize("acme", AsBytes(value), ValueType::kGeneric);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? t->dek_version : 0u;
  };
  EXPECT_EQ(tokenize("a"), 1u);

  // Asked for: the record who asked for it commits with the new version and names both keys.
  storage::AuditRecord asked;
  asked.request_id = "req_rotate";
  asked.principal = "keyadmin";
  asked.action = "keys.rotate";
  asked.outcome = "allowed";
  asked.status = 200;
  StatusOr<uint32_t> rotated = v.RotateDataKey("acme", &asked);
  TV_ASSERT_OK(rotated);
  EXPECT_EQ(*rotated, 2u);
  auto last_record = [&] {
    StatusOr<std::vector<storage::AuditRecord>> records = v.audit().Query({});
    EXPECT_TRUE(records.ok() && !records->empty());
    return records->back();
  };
  storage::AuditRecord r = last_record();
  EXPECT_EQ(r.request_id, "req_rotate");
  EXPECT_EQ(r.principal, "keyadmin");
  EXPECT_EQ(r.resource, "dek:acme/v2");
  EXPECT_EQ(r.resources, (std::vector<std::string>{"dek:acme/v2", "dek:acme/v1"}));
  EXPECT_NE(r.reason.find("version 1 retired"), std::string::npos) << r.reason;

  // Age: an hour later the next use rotates, as principal "system".
  EXPECT_EQ(tokenize("b"), 2u);
  clock.Advance(std::chrono::hours(1));
  EXPECT_EQ(tokenize("c"), 3u);
  r = last_record();
  EXPECT_EQ(r.principal, "system");
  EXPECT_EQ(r.action, "keys.rotate");
  EXPECT_NE(r.reason.find("maximum age"), std::string::npos) << r.reason;

  // Budget: five encryptions per version.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(tokenize("d" + std::to_string(i)), 3u);
  EXPECT_EQ(tokenize("e"), 4u);
  r = last_record();
  EXPECT_EQ(r.principal, "system");
  EXPECT_NE(r.reason.find("budget"), std::string::npos) << r.reason;

  // The status lists every version and the live tokens each one encrypts.
  StatusOr<std::vector<storage::DataKeyUsage>> keys = v.DataKeys("acme");
  TV_ASSERT_OK(keys);
  ASSERT_EQ(keys->size(), 4u);
  std::vector<uint64_t> tokens;
  for (const auto& k : *keys) tokens.push_back(k.live_tokens);
  EXPECT_EQ(tokens, (std::vector<uint64_t>{1, 1, 5, 1}));
  EXPECT_EQ((*keys)[3].state, storage::DataKeyState::kActive);
  EXPECT_EQ((*keys)[0].state, storage::DataKeyState::kRetired);
  TV_EXPECT_ERROR(v.DataKeys("nobody"), StatusCode::kNotFound, "merchant_not_found");
  TV_ASSERT_OK(v.audit().Verify());
  EXPECT_TRUE(v.audit().Verify()->ok);
}

TEST_F(VaultFakeHsmTest, RestartResumesAboveEveryReservedCount) {
  VaultOptions options;
  options.keys.max_encryptions_per_dek = 10;
  options.keys.reservation_block = 4;
  Open(options);
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  TV_ASSERT_OK(vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric));  // reserves 4
  EXPECT_EQ(store_->GetDataKey("acme", 1)->encryptions_reserved, 4u);
  Open(options);  // a restart: 4 reserved counts as 4 used
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(vault_->Tokenize("acme", AsBytes("y"), ValueType::kGeneric)->dek_version, 1u);
  }
  // 4 + 6 = 10: the next encryption must use a new key.
  EXPECT_EQ(vault_->Tokenize("acme", AsBytes("z"), ValueType::kGeneric)->dek_version, 2u);
}

TEST_F(VaultFakeHsmTest, RotationKeepsOldTokensReadable) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const std::string old_token = vault_->Tokenize("acme", AsBytes("old"), ValueType::kGeneric)->token;
  StatusOr<uint32_t> v2 = vault_->RotateDataKey("acme");
  TV_ASSERT_OK(v2);
  EXPECT_EQ(*v2, 2u);
  StatusOr<TokenInfo> fresh = vault_->Tokenize("acme", AsBytes("new"), ValueType::kGeneric);
  EXPECT_EQ(fresh->dek_version, 2u);
  EXPECT_EQ(AsChars(vault_->Detokenize("acme", old_token)->value.view()), "old");
  EXPECT_EQ(AsChars(vault_->Detokenize("acme", fresh->token)->value.view()), "new");
}

TEST_F(VaultFakeHsmTest, TokenizeAsyncCommitsTheTokenWithItsAuditRecord) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  storage::AuditRecord audit;
  audit.request_id = "req_async";
  audit.action = "tokens.create";
  audit.outcome = "allowed";
  audit.status = 201;
  std::promise<StatusOr<TokenInfo>> done;
  vault_->TokenizeAsync("acme", AsBytes("4111 1111 1111 1111"), ValueType::kCard, {}, {}, audit,
                        [&](StatusOr<TokenInfo> t) { done.set_value(std::move(t)); });
  StatusOr<TokenInfo> t = done.get_future().get();
  TV_ASSERT_OK(t);
  EXPECT_EQ(t->last4, "1111");
  EXPECT_EQ(AsChars(vault_->Detokenize("acme", t->token)->value.view()), "4111111111111111");
  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  ASSERT_FALSE(records->empty());
  EXPECT_EQ(records->back().request_id, "req_async");
  EXPECT_EQ(records->back().resource, t->token);  // the record names the new token
}

TEST_F(VaultFakeHsmTest, TokenizeAsyncReportsBadInputWithoutWriting) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const uint64_t before = store_->GetStats().operations;
  std::promise<Status> bad_card, bad_merchant;
  vault_->TokenizeAsync("acme", AsBytes("4111 1111 1111 1112"), ValueType::kCard, {}, {}, std::nullopt,
                        [&](StatusOr<TokenInfo> t) { bad_card.set_value(t.status()); });
  vault_->TokenizeAsync("Bad Id", AsBytes("x"), ValueType::kGeneric, {}, {}, std::nullopt,
                        [&](StatusOr<TokenInfo> t) { bad_merchant.set_value(t.status()); });
  EXPECT_EQ(bad_card.get_future().get().code(), StatusCode::kInvalidArgument);
  TV_EXPECT_ERROR(bad_merchant.get_future().get(), StatusCode::kInvalidArgument, "invalid_merchant");
  EXPECT_EQ(store_->GetStats().operations, before);
}

TEST_F(VaultFakeHsmTest, RotationWaitsUntilAPendingAsyncInsertHasCommitted) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  // Loads the merchant's keys and reserves a block of encryptions, so that the tokenize below
  // needs no write of its own before its insert.
  TV_ASSERT_OK(vault_->Tokenize("acme", AsBytes("warm-up"), ValueType::kGeneric));
  // Hold the store's writer so that the insert below stays queued, its DEK lease held.
  std::promise<void> release, entered;
  std::shared_future<void> gate = release.get_future().share();
  std::thread blocker([&] {
    TV_EXPECT_OK(store_->Write([&](storage::Database&) {
      entered.set_value();
      gate.wait();
      return Status::Ok();
    }));
  });
  entered.get_future().wait();
  std::promise<StatusOr<TokenInfo>> done;
  vault_->TokenizeAsync("acme", AsBytes("pending"), ValueType::kGeneric, {}, {}, std::nullopt,
                        [&](StatusOr<TokenInfo> t) { done.set_value(std::move(t)); });
  ASSERT_EQ(store_->PendingWrites(), 1u);
  std::promise<StatusOr<uint32_t>> rotated;
  std::thread rotator([&] { rotated.set_value(vault_->RotateDataKey("acme")); });
  // A rotation that did not wait would queue its new DEK version behind the insert. Give it
  // every chance to (this can only miss a bug, never fail a correct vault).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(store_->PendingWrites(), 1u);
  release.set_value();
  blocker.join();
  StatusOr<TokenInfo> t = done.get_future().get();
  TV_ASSERT_OK(t);
  EXPECT_EQ(t->dek_version, 1u);  // sealed under version 1, committed before version 2 existed
  rotator.join();
  StatusOr<uint32_t> v = rotated.get_future().get();
  TV_ASSERT_OK(v);
  EXPECT_EQ(*v, 2u);
  EXPECT_EQ(AsChars(vault_->Detokenize("acme", t->token)->value.view()), "pending");
}

// Tokenizes every value (asynchronously, at most 512 in flight) and returns the results in order.
std::vector<StatusOr<TokenInfo>> TokenizeAll(Vault& vault, const std::vector<std::string>& values,
                                             ValueType type, const TokenFormatOptions& format) {
  std::vector<StatusOr<TokenInfo>> results(values.size(), InternalError("unset", "unset"));
  std::mutex mu;
  std::condition_variable cv;
  size_t in_flight = 0, done = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight < 512; });
      ++in_flight;
    }
    vault.TokenizeAsync("acme", AsBytes(values[i]), type, format, {}, std::nullopt,
                        [&, i](StatusOr<TokenInfo> t) {
                          std::lock_guard<std::mutex> lock(mu);
                          results[i] = std::move(t);
                          --in_flight;
                          ++done;
                          cv.notify_all();
                        });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == values.size(); });
  return results;
}

TEST_F(VaultFakeHsmTest, HundredThousandTokensPerFormatAreDistinctAndRoundTrip) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  std::mt19937_64 rng(2026);
  struct Case {
    ValueType type;
    TokenFormatOptions format;
    std::function<std::string()> value;
  };
  const std::vector<Case> cases = {
      {ValueType::kGeneric, {}, [&] { return "v" + std::to_string(rng()); }},
      {ValueType::kCard, {TokenFormat::kPreserving, false}, [&] { return testing::RandomCard(rng, 16); }},
      {ValueType::kSsn, {TokenFormat::kPreserving, false}, [&] { return testing::RandomSsn(rng); }},
  };
  for (const Case& c : cases) {
    std::vector<std::string> values(100000);
    for (auto& v : values) v = c.value();
    std::vector<StatusOr<TokenInfo>> tokens = TokenizeAll(*vault_, values, c.type, c.format);
    std::set<std::string> distinct;
    for (const auto& t : tokens) {
      ASSERT_TRUE(t.ok()) << t.status().ToString();
      distinct.insert(t->token);
    }
    EXPECT_EQ(distinct.size(), values.size()) << ValueTypeName(c.type);
    // A sample reads back to its (normalised) value.
    for (size_t i = 0; i < values.size(); i += 9973) {
      StatusOr<RevealedValue> v = vault_->Detokenize("acme", tokens[i]->token);
      TV_ASSERT_OK(v);
      EXPECT_EQ(AsChars(v->value.view()), values[i]);
    }
  }
}

TEST_F(VaultFakeHsmTest, APreservingBucketFillsWithoutDuplicatesThenSaysSo) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  // An SSN token keeps the last four and draws four digits: at most 10,000 tokens for one last
  // four. 11,000 requests for one SSN must fill the bucket and be told so.
  const std::vector<std::string> values(11000, "123-45-6789");
  std::vector<StatusOr<TokenInfo>> tokens =
      TokenizeAll(*vault_, values, ValueType::kSsn, {TokenFormat::kPreserving, false});
  std::set<std::string> distinct;
  size_t exhausted = 0;
  for (const auto& t : tokens) {
    if (t.ok()) {
      distinct.insert(t->token);
      EXPECT_EQ(t->token.substr(7), "6789");
    } else {
      EXPECT_EQ(t.status().reason(), "token_space_exhausted") << t.status().ToString();
      ++exhausted;
    }
  }
  EXPECT_EQ(distinct.size() + exhausted, values.size());  // no token was handed out twice
  EXPECT_LE(distinct.size(), 10000u);
  EXPECT_GE(exhausted, 1000u);  // pigeonhole: 11,000 requests, 10,000 tokens at most
}

// A taken token is drawn again on the store's completion thread. If that retry asked for a new
// DEK lease it could wait behind a rotation that waits for leases only that thread releases: a
// deadlock (ctest's timeout is the guard). Many retries (one small bucket) race many rotations.
TEST_F(VaultFakeHsmTest, RetriesOfTakenTokensDoNotDeadlockWithRotations) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const std::vector<std::string> values(12000, "123-45-6789");  // one 10,000-token bucket
  std::atomic<bool> stop{false};
  std::atomic<int> rotations{0};
  std::thread rotator([&] {
    while (!stop) {
      if (vault_->RotateDataKey("acme").ok()) ++rotations;
    }
  });
  std::vector<StatusOr<TokenInfo>> tokens =
      TokenizeAll(*vault_, values, ValueType::kSsn, {TokenFormat::kPreserving, false});
  stop = true;
  rotator.join();
  std::set<std::string> distinct;
  for (const auto& t : tokens) {
    if (t.ok()) {
      EXPECT_TRUE(distinct.insert(t->token).second);
    } else {
      EXPECT_EQ(t.status().reason(), "token_space_exhausted") << t.status().ToString();
    }
  }
  EXPECT_GT(rotations.load(), 0);
  EXPECT_GT(distinct.size(), 0u);
}

TEST_F(VaultFakeHsmTest, FingerprintsMatchWithinAMerchantAndNeverAcross) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  TV_ASSERT_OK(vault_->CreateMerchant("globex"));
  auto fp = [&](const std::string& merchant, const std::string& value, ValueType type) {
    StatusOr<TokenInfo> t = vault_->Tokenize(merchant, AsBytes(value), type);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_TRUE(t.ok() && t->fingerprint.has_value());
    return t.ok() && t->fingerprint ? *t->fingerprint : std::string();
  };
  const std::string a1 = fp("acme", "4111 1111 1111 1111", ValueType::kCard);
  const std::string a2 = fp("acme", "4111-1111-1111-1111", ValueType::kCard);  // same card
  const std::string g1 = fp("globex", "4111111111111111", ValueType::kCard);
  const std::string other = fp("acme", "5555555555554444", ValueType::kCard);
  EXPECT_EQ(a1.size(), 46u);
  EXPECT_EQ(a1.substr(0, 3), "fp_");
  EXPECT_EQ(a1, a2);      // equal values in one merchant share it (normalised first)
  EXPECT_NE(a1, g1);      // across merchants they never do
  EXPECT_NE(a1, other);
  // The key is stored wrapped, and a reopened vault (cold caches) computes the same fingerprints.
  StatusOr<storage::DataKeyRecord> wrapped = store_->GetFingerprintKey("acme");
  TV_ASSERT_OK(wrapped);
  EXPECT_GT(wrapped->wrapped.size(), 32u);
  Open();
  EXPECT_EQ(fp("acme", "4111111111111111", ValueType::kCard), a1);
  EXPECT_EQ(fp("globex", "4111111111111111", ValueType::kCard), g1);
  // The token object carries it too.
  StatusOr<TokenInfo> t = vault_->Tokenize("acme", AsBytes("4111111111111111"), ValueType::kCard);
  TV_ASSERT_OK(t);
  EXPECT_EQ(vault_->GetToken("acme", t->token)->fingerprint, a1);
}

// Rows of 'merchant' in the tokens table, counted from another connection.
int64_t TokenRows(const std::string& db_path, const std::string& where) {
  auto db = storage::Database::Open(db_path, {true, 5000});
  if (!db.ok()) return -1;
  auto stmt = (*db)->Prepare("SELECT COUNT(*) FROM tokens WHERE " + where);
  if (!stmt.ok() || !*stmt->Step()) return -1;
  return stmt->ColumnInt(0);
}

TEST_F(VaultFakeHsmTest, EightThreadsTokenizingOneValueDeterministicallyMakeOneTokenOneRow) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  TV_ASSERT_OK(vault_->CreateMerchant("other"));
  const std::string card = "4242 4242 4242 4242";
  constexpr int kThreads = 8;
  std::vector<StatusOr<TokenizeOutcome>> results(kThreads, InternalError("unset", ""));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      ++ready;
      while (ready.load() < kThreads) std::this_thread::yield();  // all start together
      results[i] = vault_->Tokenize("acme", TokenizeItem{AsBytes(card), ValueType::kCard, {}, true, {}});
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> tokens;
  int created = 0;
  for (const auto& r : results) {
    TV_ASSERT_OK(r);
    tokens.insert(r->token->token);
    created += r->existing ? 0 : 1;
  }
  EXPECT_EQ(tokens.size(), 1u);
  EXPECT_EQ(created, 1);  // one request made it; the seven others were answered with it
  const std::string token = *tokens.begin();
  EXPECT_EQ(TokenRows(dir_.Sub("vault.db"), "merchant_id = 'acme'"), 1);
  EXPECT_EQ(AsChars(vault_->Detokenize("acme", token)->value.view()), "4242424242424242");

  // The same value as another type, another format, non-deterministically, or in another
  // merchant: another token each time.
  auto tokenize = [&](const std::string& merchant, ValueType type, TokenFormatOptions format,
                      bool deterministic) {
    StatusOr<TokenizeOutcome> o =
        vault_->Tokenize(merchant, TokenizeItem{AsBytes(card), type, format, deterministic, {}});
    EXPECT_TRUE(o.ok()) << o.status().ToString();
    return o.ok() ? o->token->token : std::string();
  };
  const std::string generic = tokenize("acme", ValueType::kGeneric, {}, true);
  const std::string preserving = tokenize("acme", ValueType::kCard, {TokenFormat::kPreserving, false}, true);
  const std::string with_bin = tokenize("acme", ValueType::kCard, {TokenFormat::kPreserving, true}, true);
  const std::string plain = tokenize("acme", ValueType::kCard, {}, false);
  const std::string elsewhere = tokenize("other", ValueType::kCard, {}, true);
  EXPECT_EQ(std::set<std::string>({token, generic, preserving, with_bin, plain, elsewhere}).size(), 6u);
  // Each deterministic one is found again (normalisation applies: dashes instead of spaces).
  EXPECT_EQ(tokenize("acme", ValueType::kCard, {TokenFormat::kPreserving, true}, true), with_bin);
  StatusOr<TokenizeOutcome> dashed = vault_->Tokenize(
      "acme", TokenizeItem{AsBytes("4242-4242-4242-4242"), ValueType::kCard, {}, true, {}});
  TV_ASSERT_OK(dashed);
  EXPECT_EQ(dashed->token->token, token);
  EXPECT_TRUE(dashed->existing);

  // Deleted: the next deterministic request makes a new token.
  TV_ASSERT_OK(vault_->DeleteToken("acme", token));
  StatusOr<TokenizeOutcome> fresh =
      vault_->Tokenize("acme", TokenizeItem{AsBytes(card), ValueType::kCard, {}, true, {}});
  TV_ASSERT_OK(fresh);
  EXPECT_FALSE(fresh->existing);
  EXPECT_NE(fresh->token->token, token);
}

// Runs a batch and waits for it.
StatusOr<std::vector<TokenizeOutcome>> Batch(Vault& vault, const std::string& merchant,
                                             const std::vector<TokenizeItem>& items,
                                             std::optional<storage::AuditRecord> audit = std::nullopt) {
  std::promise<StatusOr<std::vector<TokenizeOutcome>>> done;
  vault.TokenizeBatchAsync(merchant, items, std::move(audit), nullptr,
                           [&](StatusOr<std::vector<TokenizeOutcome>> r) { done.set_value(std::move(r)); });
  return done.get_future().get();
}

TEST_F(VaultFakeHsmTest, ABatchOfAThousandIsOneWriteWithOneAuditRecordAndPerItemAnswers) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  // Loads the merchant's keys, its fingerprint key and a block of reserved encryptions, so
  // that the batch below needs no write besides its own.
  TV_ASSERT_OK(vault_->Tokenize("acme", AsBytes("warm up"), ValueType::kGeneric));
  std::mt19937_64 rng(7);
  std::vector<std::string> values;
  std::vector<TokenizeItem> items;
  values.reserve(1000);
  for (int i = 0; i < 1000; ++i) values.push_back(testing::RandomCard(rng, 16));
  const std::set<int> bad = {3, 500, 998};
  const std::string short_card = "4222222222222";  // 13 digits, Luhn-valid
  for (int i : bad) values[i].back() = values[i].back() == '9' ? '0' : values[i].back() + 1;  // Luhn fails
  for (int i = 0; i < 1000; ++i) {
    TokenizeItem item{AsBytes(values[i]), ValueType::kCard, {}, false, {}};
    if (i % 3 == 1) item.format = {TokenFormat::kPreserving, false};
    if (i == 700) item.format = {TokenFormat::kPreserving, false}, item.type = ValueType::kGeneric;  // not applicable
    if (i == 800) item.format = {TokenFormat::kPreserving, true}, item.value = AsBytes(short_card);  // BIN needs 15+
    items.push_back(item);
  }
  storage::AuditRecord audit;
  audit.request_id = "req_batch";
  audit.action = "tokens.batch";
  audit.outcome = "allowed";
  audit.status = 200;
  const int64_t seq_before = store_->GetAuditHead().ok() ? store_->GetAuditHead()->seq : 0;
  const storage::SqliteStore::Stats before = store_->GetStats();
  StatusOr<std::vector<TokenizeOutcome>> outcomes = Batch(*vault_, "acme", items, audit);
  TV_ASSERT_OK(outcomes);
  const storage::SqliteStore::Stats after = store_->GetStats();
  EXPECT_EQ(after.operations - before.operations, 1u);  // one write, so one transaction, one fsync
  EXPECT_EQ(after.transactions - before.transactions, 1u);
  ASSERT_EQ(outcomes->size(), 1000u);
  for (int i = 0; i < 1000; ++i) {
    const TokenizeOutcome& o = (*outcomes)[i];
    if (bad.count(i)) {
      TV_EXPECT_ERROR(o.token, StatusCode::kInvalidArgument, "invalid_card");
      continue;
    }
    if (i == 700 || i == 800) {
      TV_EXPECT_ERROR(o.token, StatusCode::kInvalidArgument, "invalid_format");
      continue;
    }
    TV_ASSERT_OK(o.token);
    EXPECT_EQ(o.token->last4, values[i].substr(12));
    EXPECT_EQ(o.token->format, i % 3 == 1 ? "preserving" : "random");
    EXPECT_EQ(AsChars(vault_->Detokenize("acme", o.token->token)->value.view()), values[i]) << i;
  }
  // One audit record names every item's outcome, in order.
  StatusOr<std::vector<storage::AuditRecord>> records = vault_->audit().Query({});
  TV_ASSERT_OK(records);
  EXPECT_EQ(store_->GetAuditHead()->seq, seq_before + 1);
  const storage::AuditRecord& record = records->back();
  EXPECT_EQ(record.request_id, "req_batch");
  ASSERT_EQ(record.resources.size(), 1000u);
  EXPECT_EQ(record.resources[0], (*outcomes)[0].token->token);
  EXPECT_EQ(record.resources[3], "error:invalid_card");
  EXPECT_EQ(record.resources[700], "error:invalid_format");
}

TEST_F(VaultFakeHsmTest, TakenTokensInABatchAreDrawnAgainWithinTheSameWrite) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  // 2,000 SSN tokens for one last four share a bucket of 10,000: about 200 draws collide with
  // another item of the same batch, and each is drawn again before anything commits.
  const std::string ssn = "123-45-6789";
  std::vector<TokenizeItem> items(2000, TokenizeItem{AsBytes(ssn), ValueType::kSsn,
                                                     {TokenFormat::kPreserving, false}, false, {}});
  StatusOr<std::vector<TokenizeOutcome>> outcomes = Batch(*vault_, "acme", items);
  TV_ASSERT_OK(outcomes);
  std::set<std::string> distinct;
  for (const TokenizeOutcome& o : *outcomes) {
    TV_ASSERT_OK(o.token);
    distinct.insert(o.token->token);
  }
  EXPECT_EQ(distinct.size(), 2000u);
  EXPECT_EQ(TokenRows(dir_.Sub("vault.db"), "merchant_id = 'acme'"), 2000);
}

TEST_F(VaultFakeHsmTest, ABatchForAnUnknownMerchantFailsAsAWholeAndWritesNothing) {
  const uint64_t before = store_->GetStats().operations;
  std::vector<TokenizeItem> items(3, TokenizeItem{AsBytes("x"), ValueType::kGeneric, {}, false, {}});
  TV_EXPECT_ERROR(Batch(*vault_, "nobody", items).status(), StatusCode::kNotFound, "merchant_not_found");
  // Also when no item is valid (nothing would be sealed, but the audit record would be written).
  std::vector<TokenizeItem> invalid(2, TokenizeItem{AsBytes("4111"), ValueType::kCard, {}, false, {}});
  TV_EXPECT_ERROR(Batch(*vault_, "nobody", invalid).status(), StatusCode::kNotFound, "merchant_not_found");
  TV_EXPECT_ERROR(Batch(*vault_, "nobody", {}).status(), StatusCode::kNotFound, "merchant_not_found");
  EXPECT_EQ(store_->GetStats().operations, before);
}

TEST(VaultExpiryTest, AnExpiredTokenIsGoneAndTheSweeperRemovesItsCiphertext) {
  TempDir dir;
  FakeClock clock;
  auto hsm = std::make_shared<FakeHsm>();
  Bytes ciphertext;
  std::string token;
  {
    auto store = storage::SqliteStore::Open({dir.Sub("vault.db")});
    ASSERT_TRUE(store.ok());
    std::shared_ptr<storage::SqliteStore> shared = std::move(store).value();
    VaultOptions options;
    options.expiry_sweep_interval = std::chrono::milliseconds(0);  // swept by hand below
    auto vault = Vault::Create(hsm, shared, options, clock);
    ASSERT_TRUE(vault.ok());
    TV_ASSERT_OK((*vault)->CreateMerchant("acme"));
    StatusOr<TokenInfo> t = (*vault)->Tokenize("acme", AsBytes("short-lived value"),
                                              ValueType::kGeneric, nullptr, {}, {std::nullopt, 1});
    TV_ASSERT_OK(t);
    token = t->token;
    ASSERT_TRUE(t->expires_at_ms.has_value());
    EXPECT_EQ(*t->expires_at_ms, t->created_at_ms + 1000);
    for (const char* other : {"also brief 1", "also brief 2"}) {  // three due at once
      TV_ASSERT_OK((*vault)->Tokenize("acme", AsBytes(other), ValueType::kGeneric, nullptr, {},
                                      {std::nullopt, 1}));
    }
    StatusOr<TokenInfo> forever = (*vault)->Tokenize("acme", AsBytes("long-lived"), ValueType::kGeneric);
    TV_ASSERT_OK(forever);
    ciphertext = shared->FindToken("acme", token)->ciphertext;
    TV_ASSERT_OK((*vault)->Detokenize("acme", token));  // also puts the row in the row cache

    clock.Advance(std::chrono::milliseconds(999));
    TV_ASSERT_OK((*vault)->Detokenize("acme", token));
    clock.Advance(std::chrono::milliseconds(1));
    TV_EXPECT_ERROR((*vault)->Detokenize("acme", token), StatusCode::kNotFound, kReasonTokenGone);
    TV_EXPECT_ERROR((*vault)->GetToken("acme", token), StatusCode::kNotFound, kReasonTokenGone);

    StatusOr<size_t> swept = (*vault)->SweepExpired();
    TV_ASSERT_OK(swept);
    EXPECT_EQ(*swept, 3u);
    StatusOr<storage::TokenRecord> row = shared->FindToken("acme", token);
    TV_ASSERT_OK(row);
    EXPECT_TRUE(row->ciphertext.empty());  // the row stays, the sealed value does not
    EXPECT_EQ(*(*vault)->SweepExpired(), 0u);
    TV_EXPECT_OK((*vault)->Detokenize("acme", forever->token));
  }  // closing checkpoints the WAL into the file (secure_delete zeroes freed bytes)
  ASSERT_FALSE(ciphertext.empty());
  EXPECT_TRUE(testing::FindNeedles(dir.Sub("vault.db"),
                                   {std::string(ciphertext.begin(), ciphertext.end())})
                  .empty());
}

TEST_F(VaultFakeHsmTest, DisabledCacheAsksTheHsmEveryTime) {
  VaultOptions options;
  options.keys.dek_cache_max_entries = 0;
  Open(options);
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const std::string token = vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric)->token;
  const int before = hsm_->unwrap_calls();
  for (int i = 0; i < 5; ++i) TV_ASSERT_OK(vault_->Detokenize("acme", token));
  EXPECT_EQ(hsm_->unwrap_calls() - before, 5);
}

TEST_F(VaultFakeHsmTest, EnabledCacheUnwrapsOnce) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  const std::string token = vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric)->token;
  Open();  // empty cache
  const int before = hsm_->unwrap_calls();
  for (int i = 0; i < 5; ++i) TV_ASSERT_OK(vault_->Detokenize("acme", token));
  EXPECT_EQ(hsm_->unwrap_calls() - before, 1);
}

TEST_F(VaultFakeHsmTest, HsmOutageFailsClosedAndWritesNothing) {
  TV_ASSERT_OK(vault_->CreateMerchant("acme"));
  Open();  // empty cache, so the DEK must come from the HSM
  const auto before = store_->GetStats();
  hsm_->SetUnavailable(true);
  TV_EXPECT_ERROR(vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric),
                  StatusCode::kUnavailable, "hsm_unavailable");
  EXPECT_EQ(store_->GetStats().operations, before.operations);  // not even a reservation
  // Creating a merchant leaves only its intent, which serves nothing and is resumed later.
  TV_EXPECT_ERROR(vault_->CreateMerchant("other"), StatusCode::kUnavailable, "hsm_unavailable");
  EXPECT_EQ(store_->GetMerchant("other")->state, storage::MerchantState::kCreating);
  hsm_->SetUnavailable(false);
  TV_EXPECT_ERROR(vault_->Tokenize("other", AsBytes("x"), ValueType::kGeneric),
                  StatusCode::kNotFound, "merchant_not_found");
  TV_EXPECT_OK(vault_->CreateMerchant("other"));
  TV_EXPECT_OK(vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric));
}

TEST_F(VaultFakeHsmTest, AKekThisDatabaseNeverAskedForIsNeverDestroyed) {
  // The HSM holds a KEK for "acme", but this database never started creating "acme" (a token
  // shared with another deployment, a database restored from an older backup...).
  TV_ASSERT_OK(hsm_->CreateKek(hsm::KekRef{"acme", 1}, Bytes{1, 2, 3}));
  for (int attempt = 0; attempt < 2; ++attempt) {
    TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kFailedPrecondition,
                    "kek_exists_without_merchant");
    TV_EXPECT_OK(hsm_->FindKek(hsm::KekRef{"acme", 1}));  // untouched
    TV_EXPECT_ERROR(store_->GetMerchant("acme"), StatusCode::kNotFound, "merchant_not_found");
  }
}

TEST_F(VaultFakeHsmTest, AnIntentRowDoesNotLicenseDestroyingAForeignKek) {
  // A 'creating' row (restored, edited, or left by a failed abandon) for a merchant whose KEK
  // some other creation made: resuming must not destroy that KEK.
  TV_ASSERT_OK(hsm_->CreateKek(hsm::KekRef{"acme", 1}, Bytes{1, 2, 3}));
  TV_ASSERT_OK(store_->BeginMerchant(storage::MerchantRecord{
      "acme", 1, 1, 1, storage::MerchantState::kCreating, Bytes(16, 0x77), std::nullopt}));
  TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kFailedPrecondition,
                  "kek_exists_without_merchant");
  TV_EXPECT_OK(hsm_->FindKek(hsm::KekRef{"acme", 1}));
  EXPECT_EQ(*hsm_->KekCreationTag(hsm::KekRef{"acme", 1}), (Bytes{1, 2, 3}));
}

TEST_F(VaultFakeHsmTest, AnInterruptedCreationResumes) {
  const size_t base = hsm_->kek_count();
  // The first attempt dies after making the KEK, before the wrapped DEK is stored.
  hsm_->SetWrapFails(true);
  TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kUnavailable, "hsm_unavailable");
  hsm_->SetWrapFails(false);
  EXPECT_EQ(store_->GetMerchant("acme")->state, storage::MerchantState::kCreating);
  TV_EXPECT_OK(hsm_->FindKek(hsm::KekRef{"acme", 1}));
  // Not usable while creating.
  TV_EXPECT_ERROR(vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric), StatusCode::kNotFound,
                  "merchant_not_found");
  Open();  // even across a restart
  StatusOr<MerchantInfo> m = vault_->CreateMerchant("acme");
  TV_ASSERT_OK(m);
  EXPECT_EQ(hsm_->kek_count(), base + 1);
  const std::string token = vault_->Tokenize("acme", AsBytes("x"), ValueType::kGeneric)->token;
  Open();
  TV_EXPECT_OK(vault_->Detokenize("acme", token));
  TV_EXPECT_ERROR(vault_->CreateMerchant("acme"), StatusCode::kAlreadyExists, "merchant_exists");
}

TEST_F(VaultFakeHsmTest, UnknownMerchantsDoNotPileUpAndCanBeCreatedLater) {
  for (int i = 0; i < 3; ++i) {
    TV_EXPECT_ERROR(vault_->Tokenize("later", AsBytes("x"), ValueType::kGeneric),
                    StatusCode::kNotFound, "merchant_not_found");
  }
  TV_ASSERT_OK(vault_->CreateMerchant("later"));
  TV_EXPECT_OK(vault_->Tokenize("later", AsBytes("x"), ValueType::kGeneric));
}

TEST_F(VaultFakeHsmTest, EncryptionLimitMustStayFarBelowTwoToThe32) {
  VaultOptions options;
  options.keys.max_encryptions_per_dek = uint64_t{1} << 32;
  TV_EXPECT_ERROR(Vault::Create(hsm_, store_, options), StatusCode::kInvalidArgument, "bad_config");
  options.keys.max_encryptions_per_dek = 0;
  TV_EXPECT_ERROR(Vault::Create(hsm_, store_, options), StatusCode::kInvalidArgument, "bad_config");
}

}  // namespace
}  // namespace tokenvault
