#include "storage/sqlite_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <future>
#include <thread>
#include <vector>

#include "storage/migrations.h"
#include "storage/sqlite.h"
#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::storage {
namespace {

using testing::TempDir;

MerchantRecord Merchant(const std::string& id) {
  return MerchantRecord{id, 1000, 1, 1, MerchantState::kCreating, Bytes(16, 0x42), std::nullopt};
}

DataKeyRecord Dek(const std::string& merchant, uint32_t version) {
  DataKeyRecord d;
  d.merchant = merchant;
  d.version = version;
  d.kek_version = 1;
  d.wrapped = Bytes(61, 0x11);
  d.created_at_ms = 1000;
  return d;
}

TokenRecord Token(const std::string& token, const std::string& merchant = "acme") {
  TokenRecord t;
  t.token = token;
  t.merchant = merchant;
  t.type = "generic";
  t.format = "random";
  t.record_version = 1;
  t.dek_version = 1;
  t.nonce = Bytes(12, 0x01);
  t.ciphertext = Bytes(5, 0x02);
  t.tag = Bytes(16, 0x03);
  t.created_at_ms = 1234;
  return t;
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = SqliteStore::Open({dir_.Sub("t.db")});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    TV_ASSERT_OK(store_->BeginMerchant(Merchant("acme")));
    TV_ASSERT_OK(store_->CompleteMerchant("acme", Dek("acme", 1)));
  }
  // Occupies the writer thread until 'release' is fulfilled, so that later writes queue up.
  // Returns once the writer is inside the blocking operation.
  std::future<Status> BlockWriter(std::promise<void>& release) {
    std::shared_future<void> gate = release.get_future().share();
    auto entered = std::make_shared<std::promise<void>>();
    std::future<void> inside = entered->get_future();
    std::future<Status> done = std::async(std::launch::async, [this, gate, entered] {
      return store_->Write([gate, entered](Database&) {
        entered->set_value();
        gate.wait();
        return Status::Ok();
      });
    });
    inside.wait();
    return done;
  }
  void WaitForPending(size_t n) {
    while (store_->PendingWrites() < n) std::this_thread::yield();
  }

  TempDir dir_;
  std::unique_ptr<SqliteStore> store_;
};

TEST_F(SqliteStoreTest, OpensWithDurablePragmasAndPrivateFiles) {
  auto db = Database::Open(dir_.Sub("t.db"), {});
  TV_ASSERT_OK(db);
  auto pragma = [&](const char* sql) {
    auto stmt = (*db)->Prepare(sql);
    EXPECT_TRUE(stmt.ok());
    EXPECT_TRUE(*stmt->Step());
    return stmt->ColumnText(0);
  };
  EXPECT_EQ(pragma("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(pragma("PRAGMA synchronous"), "2");  // FULL
  EXPECT_EQ(pragma("PRAGMA foreign_keys"), "1");
  EXPECT_EQ(pragma("PRAGMA secure_delete"), "1");
  EXPECT_EQ(pragma("SELECT MAX(version) FROM schema_migrations"),
            std::to_string(AllMigrations().back().version));
  struct stat st {};
  ASSERT_EQ(stat(dir_.Sub("t.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  ASSERT_EQ(stat(dir_.Sub("t.db-wal").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0);
}

// Another process reading the database (a backup, an operator's sqlite3) must see every commit,
// and must not take itself for the last connection when it closes: if the store had dropped its
// POSIX locks (closing any descriptor of the file does that, process-wide), that reader would
// checkpoint and delete the WAL under the running store, and later commits would go to an
// unlinked file - lost at the next crash.
TEST_F(SqliteStoreTest, AnotherProcessReadingTheDatabaseSeesEveryCommitAndLeavesTheWal) {
  for (int i = 0; i < 3; ++i) TV_ASSERT_OK(store_->InsertToken(Token("tok_" + std::to_string(i))));
  // A separate program (Debian's sqlite3, installed by scripts/setup.sh), not a fork: a forked
  // child would inherit this process's SQLite lock bookkeeping and prove nothing.
  auto count_in_child = [&]() -> int {
    const std::string command = "sqlite3 " + dir_.Sub("t.db") + " 'SELECT count(*) FROM tokens'";
    FILE* out = popen(command.c_str(), "r");
    if (out == nullptr) return -1;
    int n = -1;
    if (fscanf(out, "%d", &n) != 1) n = -1;
    pclose(out);
    return n;
  };
  EXPECT_EQ(count_in_child(), 3);
  EXPECT_TRUE(testing::FileExists(dir_.Sub("t.db-wal"))) << "a reader in another process deleted the live WAL";
  TV_ASSERT_OK(store_->InsertToken(Token("tok_3")));
  EXPECT_EQ(count_in_child(), 4) << "a commit is invisible to other processes";
  EXPECT_TRUE(testing::FileExists(dir_.Sub("t.db-wal")));
}

TEST_F(SqliteStoreTest, InsertAndFindToken) {
  TokenRecord t = Token("tok_a");
  t.expires_at_ms = 99;
  TV_ASSERT_OK(store_->InsertToken(t));
  StatusOr<TokenRecord> found = store_->FindToken("acme", "tok_a");
  TV_ASSERT_OK(found);
  EXPECT_EQ(found->merchant, "acme");
  EXPECT_EQ(found->nonce, t.nonce);
  EXPECT_EQ(found->ciphertext, t.ciphertext);
  EXPECT_EQ(found->tag, t.tag);
  EXPECT_EQ(found->expires_at_ms, 99);
  EXPECT_FALSE(found->deleted_at_ms.has_value());
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_b"), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(store_->InsertToken(Token("tok_a")), StatusCode::kAlreadyExists, kReasonConstraint);
}

TEST_F(SqliteStoreTest, TokensAreUniquePerMerchantOnly) {
  // A preserving token space is the merchant's own: another merchant's tokens never take from it.
  TV_ASSERT_OK(store_->BeginMerchant(Merchant("globex")));
  TV_ASSERT_OK(store_->CompleteMerchant("globex", Dek("globex", 1)));
  TokenRecord mine = Token("912-34-5678", "acme");
  TokenRecord theirs = Token("912-34-5678", "globex");
  theirs.ciphertext = Bytes(5, 0x07);
  TV_ASSERT_OK(store_->InsertToken(mine));
  TV_ASSERT_OK(store_->InsertToken(theirs));
  TV_EXPECT_ERROR(store_->InsertToken(Token("912-34-5678", "acme")), StatusCode::kAlreadyExists,
                  kReasonConstraint);
  EXPECT_EQ(store_->FindToken("acme", "912-34-5678")->ciphertext, mine.ciphertext);
  EXPECT_EQ(store_->FindToken("globex", "912-34-5678")->ciphertext, theirs.ciphertext);
  TV_EXPECT_ERROR(store_->FindToken("initech", "912-34-5678"), StatusCode::kNotFound,
                  "token_not_found");
  // Deleting one merchant's token leaves the other's, cached or not.
  TV_ASSERT_OK(store_->DeleteToken("acme", "912-34-5678", 5));
  EXPECT_TRUE(store_->FindToken("acme", "912-34-5678")->ciphertext.empty());
  EXPECT_EQ(store_->FindToken("globex", "912-34-5678")->ciphertext, theirs.ciphertext);
}

TEST_F(SqliteStoreTest, SchemaRefusesMalformedRows) {
  // CHECK and FOREIGN KEY violations are bugs of ours, not duplicates: kInternal.
  TokenRecord bad_nonce = Token("tok_n");
  bad_nonce.nonce = Bytes(13, 0);
  TV_EXPECT_ERROR(store_->InsertToken(bad_nonce), StatusCode::kInternal, "constraint_violation");
  TokenRecord bad_tag = Token("tok_t");
  bad_tag.tag = Bytes(8, 0);
  TV_EXPECT_ERROR(store_->InsertToken(bad_tag), StatusCode::kInternal, "constraint_violation");
  TV_EXPECT_ERROR(store_->InsertToken(Token("tok_m", "nobody")), StatusCode::kInternal,
                  "constraint_violation");
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_n"), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_m"), StatusCode::kNotFound, "token_not_found");
}

TEST_F(SqliteStoreTest, ConcurrentWritesShareOneTransaction) {
  std::promise<void> release;
  std::future<Status> blocker = BlockWriter(release);
  const SqliteStore::Stats before = store_->GetStats();
  constexpr int kWriters = 50;
  std::vector<std::future<Status>> writes;
  for (int i = 0; i < kWriters; ++i) {
    writes.push_back(std::async(std::launch::async, [this, i] {
      return store_->InsertToken(Token("tok_g" + std::to_string(i)));
    }));
  }
  WaitForPending(kWriters);  // all 50 queued behind the blocked batch
  release.set_value();
  TV_EXPECT_OK(blocker.get());
  for (auto& w : writes) TV_EXPECT_OK(w.get());
  const SqliteStore::Stats after = store_->GetStats();
  // The blocked batch plus one batch for all 50 (max_batch is 256).
  EXPECT_EQ(after.operations - before.operations, kWriters + 1u);
  EXPECT_EQ(after.transactions - before.transactions, 2u);
  for (int i = 0; i < kWriters; ++i) TV_EXPECT_OK(store_->FindToken("acme", "tok_g" + std::to_string(i)));
}

TEST_F(SqliteStoreTest, OneFailingWriteDoesNotUndoItsBatch) {
  TV_ASSERT_OK(store_->InsertToken(Token("tok_dup")));
  std::promise<void> release;
  std::future<Status> blocker = BlockWriter(release);
  auto ok1 = std::async(std::launch::async, [this] { return store_->InsertToken(Token("tok_x1")); });
  WaitForPending(1);
  auto dup = std::async(std::launch::async, [this] { return store_->InsertToken(Token("tok_dup")); });
  WaitForPending(2);
  auto ok2 = std::async(std::launch::async, [this] { return store_->InsertToken(Token("tok_x2")); });
  WaitForPending(3);
  release.set_value();
  TV_EXPECT_OK(blocker.get());
  TV_EXPECT_OK(ok1.get());
  TV_EXPECT_ERROR(dup.get(), StatusCode::kAlreadyExists, kReasonConstraint);
  TV_EXPECT_OK(ok2.get());
  TV_EXPECT_OK(store_->FindToken("acme", "tok_x1"));
  TV_EXPECT_OK(store_->FindToken("acme", "tok_x2"));
}

// SQLite may roll back the whole transaction by itself (SQLITE_FULL, IOERR, BUSY, NOMEM). The
// operation below does what SQLite would do. No operation of that batch may then be reported as
// written, and none may be: neither those before it nor those queued after it.
TEST_F(SqliteStoreTest, ATransactionRolledBackBySqliteFailsTheWholeBatch) {
  for (bool op_reports_error : {true, false}) {
    SCOPED_TRACE(op_reports_error ? "operation reports the error" : "operation swallows it");
    const std::string prefix = op_reports_error ? "tok_e" : "tok_s";
    std::promise<void> release;
    std::future<Status> blocker = BlockWriter(release);
    auto before = std::async(std::launch::async, [&] { return store_->InsertToken(Token(prefix + "1")); });
    WaitForPending(1);
    auto aborting = std::async(std::launch::async, [&] {
      return store_->Write([&](Database& db) -> Status {
        TV_RETURN_IF_ERROR(db.Exec("ROLLBACK"));
        return op_reports_error ? UnavailableError("storage_unavailable", "disk full") : Status::Ok();
      });
    });
    WaitForPending(2);
    auto after = std::async(std::launch::async, [&] { return store_->InsertToken(Token(prefix + "3")); });
    WaitForPending(3);
    release.set_value();
    TV_EXPECT_OK(blocker.get());
    // All three failed, each with the retryable storage error, whatever the operation returned.
    TV_EXPECT_ERROR(before.get(), StatusCode::kUnavailable, kReasonStorageUnavailable);
    TV_EXPECT_ERROR(aborting.get(), StatusCode::kUnavailable, kReasonStorageUnavailable);
    TV_EXPECT_ERROR(after.get(), StatusCode::kUnavailable, kReasonStorageUnavailable);
    TV_EXPECT_ERROR(store_->FindToken("acme", prefix + "1"), StatusCode::kNotFound, "token_not_found");
    TV_EXPECT_ERROR(store_->FindToken("acme", prefix + "3"), StatusCode::kNotFound, "token_not_found");
  }
  // The store keeps working.
  TV_EXPECT_OK(store_->InsertToken(Token("tok_later")));
  TV_EXPECT_OK(store_->FindToken("acme", "tok_later"));
}

TEST_F(SqliteStoreTest, AnOperationThatThrowsFailsAloneAndTheWriterSurvives) {
  std::promise<void> release;
  std::future<Status> blocker = BlockWriter(release);
  auto first = std::async(std::launch::async, [&] { return store_->InsertToken(Token("tok_t1")); });
  WaitForPending(1);
  auto thrower = std::async(std::launch::async, [&] {
    return store_->Write([](Database& db) -> Status {
      auto stmt = db.Prepare("DELETE FROM tokens");  // undone with the throw
      TV_RETURN_IF_ERROR(stmt.status());
      TV_RETURN_IF_ERROR(stmt->Run());
      throw std::runtime_error("boom");
    });
  });
  WaitForPending(2);
  auto last = std::async(std::launch::async, [&] { return store_->InsertToken(Token("tok_t3")); });
  WaitForPending(3);
  release.set_value();
  TV_EXPECT_OK(blocker.get());
  TV_EXPECT_OK(first.get());
  TV_EXPECT_ERROR(thrower.get(), StatusCode::kInternal, "storage_error");
  TV_EXPECT_OK(last.get());
  TV_EXPECT_OK(store_->FindToken("acme", "tok_t1"));
  TV_EXPECT_OK(store_->FindToken("acme", "tok_t3"));
  TV_EXPECT_OK(store_->InsertToken(Token("tok_after_throw")));
}

TEST(DatabaseTest, NestedUseOfTheSameStatementGetsItsOwnCopy) {
  TempDir dir;
  auto db = Database::Open(dir.Sub("d.db"), {});
  TV_ASSERT_OK(db);
  TV_ASSERT_OK((*db)->Exec("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2);"));
  const char* sql = "SELECT v FROM t ORDER BY v";
  auto outer = (*db)->Prepare(sql);
  TV_ASSERT_OK(outer);
  ASSERT_TRUE(*outer->Step());
  EXPECT_EQ(outer->ColumnInt(0), 1);
  {
    auto inner = (*db)->Prepare(sql);  // would reset 'outer' if it shared the statement
    TV_ASSERT_OK(inner);
    ASSERT_TRUE(*inner->Step());
    EXPECT_EQ(inner->ColumnInt(0), 1);
  }
  ASSERT_TRUE(*outer->Step());
  EXPECT_EQ(outer->ColumnInt(0), 2);
}

TEST_F(SqliteStoreTest, AWriteThatFailsHalfWayLeavesNothing) {
  // The operation inserts a row and then fails: its savepoint is rolled back.
  Status s = store_->Write([](Database& db) -> Status {
    auto stmt = db.Prepare("INSERT INTO merchants (id, created_at, kek_version, current_dek_version, "
                           "state, creation_id) VALUES ('half', 1, 1, 1, 'active', x'01')");
    TV_RETURN_IF_ERROR(stmt.status());
    TV_RETURN_IF_ERROR(stmt->Run());
    return UnavailableError("injected", "failure after the first statement");
  });
  TV_EXPECT_ERROR(s, StatusCode::kUnavailable, "injected");
  TV_EXPECT_ERROR(store_->GetMerchant("half"), StatusCode::kNotFound, "merchant_not_found");
}

TEST_F(SqliteStoreTest, MerchantCreationIsTwoSteps) {
  TV_ASSERT_OK(store_->BeginMerchant(Merchant("new")));
  EXPECT_EQ(store_->GetMerchant("new")->state, MerchantState::kCreating);
  TV_EXPECT_ERROR(store_->GetDataKey("new", 1), StatusCode::kNotFound, "dek_not_found");
  TV_ASSERT_OK(store_->AbandonMerchant("new"));
  TV_EXPECT_ERROR(store_->GetMerchant("new"), StatusCode::kNotFound, "merchant_not_found");
  // An active merchant can be neither completed again nor abandoned.
  EXPECT_EQ(store_->GetMerchant("acme")->state, MerchantState::kActive);
  TV_EXPECT_ERROR(store_->CompleteMerchant("acme", Dek("acme", 1)), StatusCode::kFailedPrecondition,
                  "merchant_not_creating");
  TV_EXPECT_ERROR(store_->AbandonMerchant("acme"), StatusCode::kFailedPrecondition,
                  "merchant_not_creating");
  TV_EXPECT_OK(store_->GetDataKey("acme", 1));
}

TEST_F(SqliteStoreTest, MerchantAndKeyVersions) {
  TV_EXPECT_ERROR(store_->BeginMerchant(Merchant("acme")), StatusCode::kAlreadyExists,
                  kReasonConstraint);
  TV_ASSERT_OK(store_->AddDataKeyVersion(Dek("acme", 2)));
  EXPECT_EQ(store_->GetMerchant("acme")->current_dek_version, 2u);
  EXPECT_EQ(store_->GetDataKey("acme", 1)->state, DataKeyState::kRetired);
  EXPECT_EQ(store_->GetDataKey("acme", 2)->state, DataKeyState::kActive);
  // Version 2 again, or skipping to 4: refused.
  TV_EXPECT_ERROR(store_->AddDataKeyVersion(Dek("acme", 2)), StatusCode::kFailedPrecondition,
                  "dek_version_conflict");
  TV_EXPECT_ERROR(store_->AddDataKeyVersion(Dek("acme", 4)), StatusCode::kFailedPrecondition,
                  "dek_version_conflict");
  // Reservations only grow, and only on the active version.
  TV_ASSERT_OK(store_->ReserveEncryptions("acme", 2, 100));
  TV_ASSERT_OK(store_->ReserveEncryptions("acme", 2, 50));
  EXPECT_EQ(store_->GetDataKey("acme", 2)->encryptions_reserved, 100u);
  TV_EXPECT_ERROR(store_->ReserveEncryptions("acme", 1, 10), StatusCode::kFailedPrecondition,
                  "dek_not_active");
}

TEST_F(SqliteStoreTest, PrincipalsAreFoundByKeyIdUntilDeleted) {
  PrincipalRecord p;
  p.name = "app";
  p.roles = {"tokenizer", "support"};
  p.merchants = {"acme", "globex"};
  p.key_id = "0123456789abcdef0123";
  p.key_hash = Bytes(32, 0x5A);
  p.created_at_ms = 5;
  TV_ASSERT_OK(store_->InsertPrincipal(p));
  StatusOr<PrincipalRecord> found = store_->FindPrincipalByKeyId(p.key_id);
  TV_ASSERT_OK(found);
  EXPECT_EQ(found->name, "app");
  EXPECT_EQ(found->roles, p.roles);
  EXPECT_FALSE(found->all_merchants);
  EXPECT_EQ(found->merchants, p.merchants);
  EXPECT_EQ(found->key_hash, p.key_hash);
  TV_EXPECT_ERROR(store_->InsertPrincipal(p), StatusCode::kAlreadyExists, kReasonConstraint);
  PrincipalRecord star = p;
  star.name = "root";
  star.key_id = "ffffffffffffffffffff";
  star.all_merchants = true;
  star.merchants.clear();
  TV_ASSERT_OK(store_->InsertPrincipal(star));
  EXPECT_TRUE(store_->FindPrincipal("root")->all_merchants);
  TV_ASSERT_OK(store_->DeletePrincipal("app", 9));
  TV_EXPECT_ERROR(store_->FindPrincipalByKeyId(p.key_id), StatusCode::kNotFound, "principal_not_found");
  TV_EXPECT_ERROR(store_->DeletePrincipal("app", 10), StatusCode::kNotFound, "principal_not_found");
  EXPECT_EQ(store_->FindPrincipal("app")->deleted_at_ms, 9);  // the name stays taken
}

// An AuditMac that refuses, standing in for an audit write that fails.
class FailingMac final : public AuditMac {
 public:
  StatusOr<Bytes> RecordMac(const AuditRecord&) const override {
    return UnavailableError("audit_down", "no audit");
  }
  StatusOr<Bytes> HeadMac(int64_t, ByteView) const override { return Bytes(32, 0); }
};

class FixedMac final : public AuditMac {
 public:
  StatusOr<Bytes> RecordMac(const AuditRecord&) const override { return Bytes(32, 1); }
  StatusOr<Bytes> HeadMac(int64_t, ByteView) const override { return Bytes(32, 2); }
};

TEST_F(SqliteStoreTest, AChangeCommitsOnlyWithItsAuditRecord) {
  AuditRecord record;
  record.outcome = "allowed";
  FailingMac failing;
  AuditAttachment refused{record, &failing};
  TV_EXPECT_ERROR(store_->InsertToken(Token("tok_audited"), &refused), StatusCode::kUnavailable,
                  "audit_down");
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_audited"), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(store_->GetAuditHead(), StatusCode::kNotFound, "audit_empty");

  FixedMac fixed;
  AuditAttachment accepted{record, &fixed};
  TV_ASSERT_OK(store_->InsertToken(Token("tok_audited"), &accepted));
  EXPECT_EQ(accepted.record.seq, 1);
  TV_EXPECT_OK(store_->FindToken("acme", "tok_audited"));
  // A deletion whose record fails leaves the token alive.
  AuditAttachment refused_delete{record, &failing};
  EXPECT_FALSE(store_->DeleteToken("acme", "tok_audited", 5, &refused_delete).ok());
  EXPECT_FALSE(store_->FindToken("acme", "tok_audited")->deleted_at_ms.has_value());
}

// What an asynchronous write's completion saw.
struct Completed {
  Status status;
  std::thread::id thread;
  bool row_visible = false;  // the token was readable from another connection when it ran
};

TEST_F(SqliteStoreTest, AsyncInsertCompletesAfterCommitOnTheCompletionThread) {
  FixedMac fixed;
  AuditRecord record;
  record.outcome = "allowed";
  std::promise<Completed> done;
  store_->InsertTokenAsync(Token("tok_async"), AuditAttachment{record, &fixed}, [&](Status s) {
    Completed c{s, std::this_thread::get_id(), false};
    c.row_visible = store_->FindToken("acme", "tok_async").ok();
    done.set_value(c);
  });
  Completed c = done.get_future().get();
  TV_EXPECT_OK(c.status);
  EXPECT_NE(c.thread, std::this_thread::get_id());
  // Committed before the completion ran: a reader (another connection) already saw the row.
  EXPECT_TRUE(c.row_visible);
  StatusOr<AuditHead> head = store_->GetAuditHead();
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->seq, 1);  // the attached record went in with it
}

TEST_F(SqliteStoreTest, AsyncWritesJoinABatchAndOneFailureStaysAlone) {
  TV_ASSERT_OK(store_->InsertToken(Token("tok_taken")));
  const SqliteStore::Stats before = store_->GetStats();
  std::promise<void> release;
  std::future<Status> blocker = BlockWriter(release);
  // Queued behind the blocked writer: they commit together in the next transaction.
  std::vector<std::promise<Status>> results(3);
  store_->InsertTokenAsync(Token("tok_a1"), std::nullopt,
                           [&](Status s) { results[0].set_value(s); });
  store_->InsertTokenAsync(Token("tok_taken"), std::nullopt,  // a duplicate: fails alone
                           [&](Status s) { results[1].set_value(s); });
  FixedMac fixed;
  AuditRecord record;
  record.outcome = "allowed";
  store_->AppendAuditAsync(record, fixed, [&](const StatusOr<AuditRecord>& written) {
    results[2].set_value(written.ok() && written->seq == 1 ? Status::Ok() : written.status());
  });
  WaitForPending(3);
  release.set_value();
  TV_ASSERT_OK(blocker.get());
  TV_EXPECT_OK(results[0].get_future().get());
  TV_EXPECT_ERROR(results[1].get_future().get(), StatusCode::kAlreadyExists, kReasonConstraint);
  TV_EXPECT_OK(results[2].get_future().get());
  TV_EXPECT_OK(store_->FindToken("acme", "tok_a1"));
  // The blocker's transaction, then one for the three queued operations.
  EXPECT_EQ(store_->GetStats().transactions - before.transactions, 2u);
}

TEST_F(SqliteStoreTest, AsyncAppendFailureReachesItsCompletion) {
  FailingMac failing;
  AuditRecord record;
  record.outcome = "allowed";
  std::promise<Status> done;
  store_->AppendAuditAsync(record, failing, [&](const StatusOr<AuditRecord>& written) {
    done.set_value(written.status());
  });
  TV_EXPECT_ERROR(done.get_future().get(), StatusCode::kUnavailable, "audit_down");
  TV_EXPECT_ERROR(store_->GetAuditHead(), StatusCode::kNotFound, "audit_empty");
}

TEST(SqliteStoreShutdownTest, PendingAsyncWritesCompleteBeforeTheStoreCloses) {
  TempDir dir;
  std::atomic<int> ok{0};
  {
    auto store = SqliteStore::Open({dir.Sub("t.db")});
    ASSERT_TRUE(store.ok());
    TV_ASSERT_OK((*store)->BeginMerchant(Merchant("acme")));
    TV_ASSERT_OK((*store)->CompleteMerchant("acme", Dek("acme", 1)));
    for (int i = 0; i < 200; ++i) {
      (*store)->InsertTokenAsync(Token("tok_s" + std::to_string(i)), std::nullopt,
                                 [&](Status s) { ok += s.ok() ? 1 : 0; });
    }
  }  // closes at once: queued writes are committed and completed first
  EXPECT_EQ(ok.load(), 200);
  auto reopened = SqliteStore::Open({dir.Sub("t.db")});
  ASSERT_TRUE(reopened.ok());
  TV_EXPECT_OK((*reopened)->FindToken("acme", "tok_s199"));
}

TEST_F(SqliteStoreTest, ADeletedTokenIsNeverServedFromTheRowCache) {
  TV_ASSERT_OK(store_->InsertToken(Token("tok_cached")));
  TV_ASSERT_OK(store_->FindToken("acme", "tok_cached"));  // read once: now cached
  StatusOr<TokenRecord> again = store_->FindToken("acme", "tok_cached");
  TV_ASSERT_OK(again);
  EXPECT_FALSE(again->nonce.empty());
  TV_ASSERT_OK(store_->DeleteToken("acme", "tok_cached", 99));
  StatusOr<TokenRecord> deleted = store_->FindToken("acme", "tok_cached");
  TV_ASSERT_OK(deleted);
  EXPECT_EQ(deleted->deleted_at_ms, 99);
  EXPECT_TRUE(deleted->ciphertext.empty());
  EXPECT_TRUE(deleted->nonce.empty());
}

// Under a steady stream of writes the checkpoint thread never finds the WAL fully copied, and
// SQLite only starts a WAL over when it is: without the writer's own restart it grows forever.
TEST(SqliteStoreWalTest, TheWalStartsOverUnderSteadyWrites) {
  TempDir dir;
  SqliteStoreOptions options{dir.Sub("t.db")};
  options.wal_restart_frames = 64;
  auto store = SqliteStore::Open(options);
  ASSERT_TRUE(store.ok());
  TV_ASSERT_OK((*store)->BeginMerchant(Merchant("acme")));
  TV_ASSERT_OK((*store)->CompleteMerchant("acme", Dek("acme", 1)));
  // 4,000 tokens in batches of 100, back to back: well over 1,000 frames written in all.
  for (int round = 0; round < 40; ++round) {
    std::vector<std::promise<Status>> done(100);
    for (int i = 0; i < 100; ++i) {
      (*store)->InsertTokenAsync(Token("tok_w" + std::to_string(round * 100 + i)), std::nullopt,
                                 [&done, i](Status s) { done[i].set_value(s); });
    }
    for (auto& d : done) TV_ASSERT_OK(d.get_future().get());
  }
  EXPECT_GT((*store)->GetStats().wal_checkpoints_by_writer, 0u);
  struct stat wal{};
  ASSERT_EQ(stat(dir.Sub("t.db-wal").c_str(), &wal), 0);
  // Restarted every ~64 frames, the file stays near 64 frames plus one batch; grown without
  // restarts it would hold every frame written (well over 4 MiB here).
  EXPECT_LT(wal.st_size, 2 * 1024 * 1024) << "WAL of " << wal.st_size << " bytes";
}

TokenWriteResult WriteTokens(Store& store, TokenWrite write) {
  std::promise<TokenWriteResult> done;
  store.WriteTokensAsync(std::move(write), [&](TokenWriteResult r) { done.set_value(std::move(r)); });
  return done.get_future().get();
}

TokenRecord Deterministic(const std::string& token, const std::string& key) {
  TokenRecord t = Token(token);
  t.dedup_key = key;
  return t;
}

TEST_F(SqliteStoreTest, ATokenWriteWithATakenTokenWritesNothingAndNamesEveryTakenOne) {
  TV_ASSERT_OK(store_->InsertToken(Token("tok_b")));
  TV_ASSERT_OK(store_->InsertToken(Token("tok_d")));
  FixedMac fixed;
  AuditRecord record;
  record.outcome = "allowed";
  TokenWrite write;
  write.tokens = {Token("tok_a"), Token("tok_b"), Token("tok_c"), Token("tok_d")};
  write.audit = AuditAttachment{record, &fixed};
  bool completed = false;
  write.complete = [&](const auto&, AuditRecord*, std::optional<IdempotencyRecord>*) {
    completed = true;
    return Status::Ok();
  };
  TokenWriteResult result = WriteTokens(*store_, std::move(write));
  TV_EXPECT_ERROR(result.status, StatusCode::kAlreadyExists, kReasonTokenTaken);
  EXPECT_EQ(result.taken, (std::vector<size_t>{1, 3}));
  EXPECT_FALSE(completed);  // the hook runs only for a write that goes in
  // Nothing of it was written: neither the free tokens nor the audit record.
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_a"), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_c"), StatusCode::kNotFound, "token_not_found");
  TV_EXPECT_ERROR(store_->GetAuditHead(), StatusCode::kNotFound, "audit_empty");
}

TEST_F(SqliteStoreTest, ADeterministicKeyAnswersWithItsLiveTokenUntilTheTokenIsGone) {
  TokenWrite first;
  first.tokens = {Deterministic("tok_first", "card/random/fp_x")};
  TokenWriteResult r1 = WriteTokens(*store_, std::move(first));
  TV_ASSERT_OK(r1.status);
  EXPECT_FALSE(r1.existing[0].has_value());

  // The same key again, twice within one write: the first token answers for both.
  TokenWrite again;
  again.tokens = {Deterministic("tok_second", "card/random/fp_x"),
                  Deterministic("tok_other", "card/random/fp_y"),
                  Deterministic("tok_third", "card/random/fp_y")};
  std::vector<std::optional<TokenRecord>> seen;
  again.complete = [&](const auto& existing, AuditRecord*, std::optional<IdempotencyRecord>*) {
    seen = existing;
    return Status::Ok();
  };
  TokenWriteResult r2 = WriteTokens(*store_, std::move(again));
  TV_ASSERT_OK(r2.status);
  ASSERT_EQ(r2.existing.size(), 3u);
  ASSERT_TRUE(r2.existing[0].has_value());
  EXPECT_EQ(r2.existing[0]->token, "tok_first");
  EXPECT_FALSE(r2.existing[1].has_value());
  ASSERT_TRUE(r2.existing[2].has_value());
  EXPECT_EQ(r2.existing[2]->token, "tok_other");
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_TRUE(seen[0].has_value());
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_second"), StatusCode::kNotFound, "token_not_found");

  // Deleted: the key is free again, and a new token takes it.
  TV_ASSERT_OK(store_->DeleteToken("acme", "tok_first", 2000));
  TokenWriteResult r3 = WriteTokens(*store_, TokenWrite{{Deterministic("tok_fourth", "card/random/fp_x")}, {}, {}});
  TV_ASSERT_OK(r3.status);
  EXPECT_FALSE(r3.existing[0].has_value());

  // Expired (not yet swept): the write that finds it removes its value and replaces it.
  TokenRecord expiring = Deterministic("tok_fifth", "card/random/fp_z");
  expiring.expires_at_ms = 5000;
  TV_ASSERT_OK(WriteTokens(*store_, TokenWrite{{expiring}, {}, {}}).status);
  TokenRecord before_expiry = Deterministic("tok_sixth", "card/random/fp_z");
  before_expiry.created_at_ms = 4999;
  TokenWriteResult live = WriteTokens(*store_, TokenWrite{{before_expiry}, {}, {}});
  ASSERT_TRUE(live.existing[0].has_value());
  EXPECT_EQ(live.existing[0]->token, "tok_fifth");
  TokenRecord after_expiry = Deterministic("tok_seventh", "card/random/fp_z");
  after_expiry.created_at_ms = 5000;
  TokenWriteResult replaced = WriteTokens(*store_, TokenWrite{{after_expiry}, {}, {}});
  TV_ASSERT_OK(replaced.status);
  EXPECT_FALSE(replaced.existing[0].has_value());
  StatusOr<TokenRecord> old = store_->FindToken("acme", "tok_fifth");
  ASSERT_TRUE(old.ok());
  EXPECT_TRUE(old->nonce.empty());  // its sealed value is gone
  EXPECT_FALSE(old->dedup_key.has_value());
  EXPECT_EQ(store_->FindToken("acme", "tok_seventh")->dedup_key, "card/random/fp_z");
}

TEST_F(SqliteStoreTest, IdempotencyRecordsCommitWithTheirTokensAndExpire) {
  IdempotencyRecord idem;
  idem.key_hash = Bytes(32, 0xAA);
  idem.request_hash = Bytes(32, 0xBB);
  idem.status = 201;
  idem.body = R"({"token":"tok_idem"})";
  idem.created_at_ms = 1000;
  idem.expires_at_ms = 2000;
  TokenWrite write;
  write.tokens = {Token("tok_idem")};
  write.complete = [&](const auto&, AuditRecord*, std::optional<IdempotencyRecord>* out) {
    *out = idem;
    return Status::Ok();
  };
  TV_ASSERT_OK(WriteTokens(*store_, std::move(write)).status);
  StatusOr<IdempotencyRecord> found = store_->FindIdempotency(Bytes(32, 0xAA), 1999);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->status, 201);
  EXPECT_EQ(found->body, idem.body);
  EXPECT_EQ(found->request_hash, idem.request_hash);
  // Past its expiry it is not found, and the sweeper deletes it.
  TV_EXPECT_ERROR(store_->FindIdempotency(Bytes(32, 0xAA), 2000), StatusCode::kNotFound,
                  "idempotency_key_not_found");
  EXPECT_EQ(*store_->SweepIdempotency(1999, 10), 0u);
  EXPECT_EQ(*store_->SweepIdempotency(2000, 10), 1u);

  // A hook that fails takes the whole write with it.
  TokenWrite failing;
  failing.tokens = {Token("tok_hook")};
  failing.complete = [](const auto&, AuditRecord*, std::optional<IdempotencyRecord>*) {
    return InternalError("hook_failed", "no");
  };
  TV_EXPECT_ERROR(WriteTokens(*store_, std::move(failing)).status, StatusCode::kInternal, "hook_failed");
  TV_EXPECT_ERROR(store_->FindToken("acme", "tok_hook"), StatusCode::kNotFound, "token_not_found");
}

TEST_F(SqliteStoreTest, OnlyOneStorePerDatabase) {
  TV_EXPECT_ERROR(SqliteStore::Open({dir_.Sub("t.db")}), StatusCode::kFailedPrecondition,
                  "store_locked");
}

TEST_F(SqliteStoreTest, DataSurvivesReopen) {
  TV_ASSERT_OK(store_->InsertToken(Token("tok_keep")));
  store_.reset();
  auto store = SqliteStore::Open({dir_.Sub("t.db")});
  TV_ASSERT_OK(store);
  TV_EXPECT_OK((*store)->FindToken("acme", "tok_keep"));
}

TEST(SqliteStoreSchemaTest, RefusesADatabaseFromANewerVersion) {
  TempDir dir;
  { TV_ASSERT_OK(SqliteStore::Open({dir.Sub("t.db")})); }
  {
    auto db = Database::Open(dir.Sub("t.db"), {});
    TV_ASSERT_OK(db);
    TV_ASSERT_OK((*db)->Exec("INSERT INTO schema_migrations VALUES (999, 'future', 0)"));
  }
  TV_EXPECT_ERROR(SqliteStore::Open({dir.Sub("t.db")}), StatusCode::kFailedPrecondition,
                  "schema_too_new");
}

TEST(SqliteStoreSchemaTest, NoColumnCanHoldAPlaintextValue) {
  // The tokens table holds sealed values only: its columns are exactly these.
  TempDir dir;
  { TV_ASSERT_OK(SqliteStore::Open({dir.Sub("t.db")})); }
  auto db = Database::Open(dir.Sub("t.db"), {});
  TV_ASSERT_OK(db);
  auto stmt = (*db)->Prepare("SELECT group_concat(name, ',') FROM pragma_table_info('tokens')");
  TV_ASSERT_OK(stmt);
  ASSERT_TRUE(*stmt->Step());
  // fingerprint is a keyed HMAC (46 characters, checked by the schema), never the value;
  // metadata holds references whose values the service refuses when they look like a card number
  // or an SSN (ApiTest.TokenMetadataIsKeptAndNeverHoldsValues); dedup_key is type/format/fingerprint.
  EXPECT_EQ(stmt->ColumnText(0),
            "id,token,merchant_id,type,format,record_version,dek_version,nonce,ciphertext,tag,"
            "last4,created_at,expires_at,deleted_at,fingerprint,metadata,dedup_key");
  // Fingerprint keys are stored wrapped only.
  auto keys = (*db)->Prepare("SELECT group_concat(name, ',') FROM pragma_table_info('fingerprint_keys')");
  TV_ASSERT_OK(keys);
  ASSERT_TRUE(*keys->Step());
  EXPECT_EQ(keys->ColumnText(0), "merchant_id,kek_version,wrapped,created_at");
  // Idempotency records: keyed hashes of the key and the request, and the answer (tokens only).
  auto idempotency =
      (*db)->Prepare("SELECT group_concat(name, ',') FROM pragma_table_info('idempotency_keys')");
  TV_ASSERT_OK(idempotency);
  ASSERT_TRUE(*idempotency->Step());
  EXPECT_EQ(idempotency->ColumnText(0), "key_hash,request_hash,status,body,created_at,expires_at");
}

}  // namespace
}  // namespace tokenvault::storage
