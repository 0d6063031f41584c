// The audit chain against every kind of tampering with the database (edit, delete, insert,
// reorder, truncate, recompute without the key). FakeHsm for the key's KEK, real SQLite.
#include "vault/audit_log.h"

#include <gtest/gtest.h>

#include "storage/sqlite.h"
#include "storage/sqlite_store.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"

namespace tokenvault {
namespace {

using storage::AuditRecord;
using storage::Database;

AuditRecord Event(int i) {
  AuditRecord r;
  r.request_id = "req-" + std::to_string(i);
  r.principal = i % 3 == 0 ? "" : "app";
  r.auth = i % 3 == 0 ? "none" : "api_key";
  r.source_ip = "127.0.0.1";
  r.action = i % 2 ? "tokens.detokenize" : "tokens.create";
  r.merchant = i % 4 == 0 ? "" : (i % 2 ? "acme" : "globex");
  r.resource = "tok_" + std::to_string(i);
  if (i % 5 == 0) r.resources = {"tok_a", "tok_b"};
  r.outcome = i % 3 == 0 ? "denied" : "allowed";
  r.status = i % 3 == 0 ? 401 : 200;
  r.reason = "rule " + std::to_string(i);
  return r;
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    log_.reset();
    store_.reset();
    auto store = storage::SqliteStore::Open({dir_.Sub("a.db")});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    auto log = AuditLog::Open(hsm_, *store_, clock_);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    log_ = std::move(log).value();
  }
  void AppendN(int n) {
    for (int i = 1; i <= n; ++i) ASSERT_TRUE(log_->Append(Event(i)).ok());
  }
  // Changes the database behind the log's back.
  void Tamper(const std::string& sql) {
    log_.reset();
    store_.reset();
    {
      auto db = Database::Open(dir_.Sub("a.db"), {});
      ASSERT_TRUE(db.ok());
      Status s = (*db)->Exec(sql);
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    Open();
  }
  void ExpectBadAt(int64_t seq, const std::string& reason_part) {
    StatusOr<AuditVerification> v = log_->Verify();
    TV_ASSERT_OK(v);
    EXPECT_FALSE(v->ok);
    EXPECT_EQ(v->first_bad_seq, seq) << v->reason;
    EXPECT_NE(v->reason.find(reason_part), std::string::npos) << v->reason;
  }

  testing::TempDir dir_;
  testing::FakeHsm hsm_;
  FakeClock clock_;
  std::unique_ptr<storage::SqliteStore> store_;
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditLogTest, AnIntactChainVerifiesAcrossRestarts) {
  StatusOr<AuditVerification> empty = log_->Verify();
  TV_ASSERT_OK(empty);
  EXPECT_TRUE(empty->ok);
  AppendN(50);
  Open();  // the key is unwrapped again from its stored, wrapped form
  AppendN(10);
  StatusOr<AuditVerification> v = log_->Verify();
  TV_ASSERT_OK(v);
  EXPECT_TRUE(v->ok) << v->reason;
  EXPECT_EQ(v->records_checked, 60);
}

TEST_F(AuditLogTest, RecordsAreNumberedAndLinked) {
  StatusOr<AuditRecord> first = log_->Append(Event(1));
  StatusOr<AuditRecord> second = log_->Append(Event(2));
  TV_ASSERT_OK(first);
  TV_ASSERT_OK(second);
  EXPECT_EQ(first->seq, 1);
  EXPECT_EQ(second->seq, 2);
  EXPECT_EQ(first->prev_mac, Bytes(32, 0));
  EXPECT_EQ(second->prev_mac, first->mac);
  EXPECT_EQ(first->time_ms, clock_.NowUnixMillis());
}

TEST_F(AuditLogTest, EditingAnyFieldIsCaught) {
  AppendN(20);
  for (const char* change : {"principal = 'someone-else'", "outcome = 'allowed'", "status = 200",
                             "resource = 'tok_x'", "time = time + 1", "reason = ''",
                             "resources = 'tok_a'"}) {
    SCOPED_TRACE(change);
    Tamper(std::string("UPDATE audit_log SET ") + change + " WHERE seq = 15");
    ExpectBadAt(15, "record altered");
    // Restore from scratch for the next case.
    Tamper("DELETE FROM audit_log; DELETE FROM audit_head;");
    AppendN(20);
  }
}

TEST_F(AuditLogTest, DeletingAMiddleRecordIsCaught) {
  AppendN(20);
  Tamper("DELETE FROM audit_log WHERE seq = 7");
  ExpectBadAt(7, "record missing");
}

TEST_F(AuditLogTest, DeletingTheLastRecordsIsCaught) {
  AppendN(20);
  Tamper("DELETE FROM audit_log WHERE seq > 17");
  ExpectBadAt(18, "truncated");
  // Appending after the truncation keeps the gap: the chain goes on from the recorded head.
  Open();
  ASSERT_TRUE(log_->Append(Event(99)).ok());
  ExpectBadAt(18, "record missing");
  Tamper("DELETE FROM audit_log WHERE seq > 17; UPDATE audit_head SET seq = 20, "
         "mac = (SELECT mac FROM audit_log WHERE seq = 17)");
  // Rewinding the head to the new last record needs the key.
  Tamper("UPDATE audit_head SET seq = 17, mac = (SELECT mac FROM audit_log WHERE seq = 17)");
  ExpectBadAt(17, "head of the log was altered");
}

TEST_F(AuditLogTest, InsertedReorderedOrRecomputedRecordsAreCaught) {
  AppendN(20);
  // A forged record squeezed in: renumber to make room, insert a copy of another record.
  Tamper("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 10;"
         "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1010;"
         "INSERT INTO audit_log SELECT 10, time, request_id, principal, auth, source_ip, action, "
         "merchant, resource, resources, outcome, status, reason, prev_mac, mac "
         "FROM audit_log WHERE seq = 3;");
  ExpectBadAt(10, "chain broken");
}

TEST_F(AuditLogTest, SwappingTwoRecordsIsCaught) {
  AppendN(20);
  Tamper("UPDATE audit_log SET seq = -1 WHERE seq = 5; UPDATE audit_log SET seq = 5 WHERE seq = 6;"
         "UPDATE audit_log SET seq = 6 WHERE seq = -1;");
  ExpectBadAt(5, "chain broken");
}

TEST_F(AuditLogTest, AChainRecomputedWithoutTheKeyIsCaught) {
  AppendN(5);
  // An attacker who rewrites record 3 and "fixes" its mac with a plain SHA-256 (as one could for
  // a hash chain) still fails: the mac needs the audit key.
  Tamper("UPDATE audit_log SET outcome = 'allowed', mac = randomblob(32) WHERE seq = 3;"
         "UPDATE audit_log SET prev_mac = (SELECT mac FROM audit_log WHERE seq = 3) WHERE seq = 4;");
  ExpectBadAt(3, "record altered");
}

TEST_F(AuditLogTest, QueryFiltersAndScopes) {
  AppendN(40);
  storage::AuditQuery q;
  q.limit = 1000;
  q.merchant = "acme";
  StatusOr<std::vector<AuditRecord>> acme = log_->Query(q);
  TV_ASSERT_OK(acme);
  ASSERT_FALSE(acme->empty());
  for (const AuditRecord& r : *acme) EXPECT_EQ(r.merchant, "acme");
  // A reader scoped to globex never sees acme's records or records without a merchant.
  storage::AuditQuery scoped;
  scoped.limit = 1000;
  scoped.all_merchants = false;
  scoped.merchants = {"globex"};
  StatusOr<std::vector<AuditRecord>> globex = log_->Query(scoped);
  TV_ASSERT_OK(globex);
  ASSERT_FALSE(globex->empty());
  for (const AuditRecord& r : *globex) EXPECT_EQ(r.merchant, "globex");
  // Cursor paging visits every record once, in order.
  storage::AuditQuery page;
  page.limit = 7;
  int64_t seen = 0;
  for (;;) {
    StatusOr<std::vector<AuditRecord>> got = log_->Query(page);
    TV_ASSERT_OK(got);
    const std::vector<AuditRecord>& chunk = *got;
    for (const AuditRecord& r : chunk) EXPECT_EQ(r.seq, ++seen);
    if (chunk.size() < page.limit) break;
    page.after_seq = chunk.back().seq;
  }
  EXPECT_EQ(seen, 40);
}

TEST(AuditEncodingTest, IsFrozenAndUnambiguous) {
  AuditRecord a = Event(1), b = Event(1);
  a.seq = b.seq = 9;
  EXPECT_EQ(CanonicalAuditEncoding(a), CanonicalAuditEncoding(b));
  b.principal = a.principal + a.auth;  // moving bytes between fields must change the encoding
  b.auth = "";
  EXPECT_NE(CanonicalAuditEncoding(a), CanonicalAuditEncoding(b));
  AuditRecord empty;
  const Bytes enc = CanonicalAuditEncoding(empty);
  // "tokenvault/audit" (16) + version (1) + seq (8) + time (8) + 7 empty strings (28) + count (4)
  // + outcome (4) + status (4) + reason (4).
  EXPECT_EQ(enc.size(), 16u + 1 + 8 + 8 + 28 + 4 + 4 + 4 + 4);
}

}  // namespace
}  // namespace tokenvault
