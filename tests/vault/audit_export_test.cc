// Signed checkpoints, exports and the offline verifier (docs/audit.md): every attack on an
// export - edit, delete, insert, swap, truncate, a forged or re-signed part - is named by the
// first bad record, and an untouched export verifies. FakeHsm for the keys, real SQLite.
// tests/e2e/audit_export_test.cc repeats the tamper suite on a real server's export with SoftHSM2.
#include "vault/audit_export.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "storage/sqlite.h"
#include "storage/sqlite_store.h"
#include "vault/audit_checkpointer.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"

namespace tokenvault {
namespace {

using storage::AuditRecord;
using storage::Database;
using Lines = std::vector<std::string>;

AuditRecord Event(int i) {
  AuditRecord r;
  r.request_id = "req-" + std::to_string(i);
  r.principal = "app";
  r.auth = "api_key";
  r.source_ip = "127.0.0.1";
  r.action = i % 2 ? "tokens.detokenize" : "tokens.create";
  r.merchant = i % 2 ? "acme" : "globex";
  r.resource = "tok_" + std::to_string(i);
  if (i % 5 == 0) r.resources = {"tok_a", "tok_b"};
  r.outcome = "allowed";
  r.status = 200;
  r.reason = "rule \"" + std::to_string(i) + "\"\n\t\u00e9";  // escapes and non-ASCII survive
  return r;
}

class AuditExportTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    checkpointer_.reset();
    log_.reset();
    store_.reset();
    auto store = storage::SqliteStore::Open({dir_.Sub("a.db")});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    auto log = AuditLog::Open(hsm_, *store_, clock_);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    log_ = std::move(log).value();
    AuditCheckpointOptions options;
    options.records = 10;
    options.interval = std::chrono::milliseconds(0);  // on demand only: the test decides
    options.log_path = dir_.Sub("checkpoints.ndjson");
    auto checkpointer = AuditCheckpointer::Open(hsm_, *store_, *log_, options, clock_);
    ASSERT_TRUE(checkpointer.ok()) << checkpointer.status().ToString();
    checkpointer_ = std::move(checkpointer).value();
  }
  void AppendN(int from, int to) {
    for (int i = from; i <= to; ++i) ASSERT_TRUE(log_->Append(Event(i)).ok());
  }
  Lines Export(size_t max_records = SIZE_MAX, int64_t after = 0) {
    Lines lines;
    storage::AuditQuery all;
    all.after_seq = after;
    Status s = checkpointer_->Export(all, max_records, [&](std::string_view line) {
      lines.emplace_back(line);
      return Status::Ok();
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
    return lines;
  }
  std::string CheckpointLog() {
    std::ifstream in(dir_.Sub("checkpoints.ndjson"));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  ExportVerification Verify(const Lines& lines, const std::string& checkpoint_log = "") {
    AuditExportVerifier verifier(checkpointer_->public_key());
    if (!checkpoint_log.empty()) {
      Status added = verifier.AddCheckpointLog(checkpoint_log);
      EXPECT_TRUE(added.ok()) << added.ToString();
    }
    for (const std::string& line : lines) {
      if (!verifier.Feed(line)) break;
    }
    return verifier.Finish();
  }
  // The index of the line holding record 'seq'.
  static size_t LineOf(const Lines& lines, int64_t seq) {
    const std::string needle = "\"seq\":" + std::to_string(seq) + ",";
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].find("\"type\":\"record\"") != std::string::npos &&
          lines[i].find(needle) != std::string::npos) {
        return i;
      }
    }
    ADD_FAILURE() << "no record " << seq;
    return 0;
  }
  void Sql(const std::string& sql) {
    checkpointer_.reset();
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
  static void ExpectBadAt(const ExportVerification& v, int64_t seq, const std::string& reason_part) {
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.first_bad_seq, seq) << v.reason;
    EXPECT_NE(v.reason.find(reason_part), std::string::npos) << v.reason;
  }

  testing::TempDir dir_;
  testing::FakeHsm hsm_;
  FakeClock clock_;
  std::unique_ptr<storage::SqliteStore> store_;
  std::unique_ptr<AuditLog> log_;
  std::unique_ptr<AuditCheckpointer> checkpointer_;
};

TEST_F(AuditExportTest, AnUntouchedExportVerifiesAndEveryRecordIsCovered) {
  AppendN(1, 35);
  const Lines lines = Export();
  const ExportVerification v = Verify(lines);
  EXPECT_TRUE(v.ok) << v.reason;
  EXPECT_EQ(v.records_checked, 35);
  EXPECT_EQ(v.checkpoints_checked, 4);  // 10 + 10 + 10 + 5: the export checkpointed the tail
  EXPECT_EQ(v.last_seq, 35);
  // The checkpoint log holds the same checkpoints, and agrees.
  EXPECT_TRUE(Verify(lines, CheckpointLog()).ok);
  AuditVerification online;
  TV_ASSERT_OK(checkpointer_->Verify(online));
  EXPECT_TRUE(online.ok) << online.reason;
}

TEST_F(AuditExportTest, AnEmptyTrailExportsAndVerifies) {
  const Lines lines = Export();
  ASSERT_EQ(lines.size(), 2u);  // the header and the signed end
  EXPECT_TRUE(Verify(lines).ok);
}

TEST_F(AuditExportTest, PagesEndAtCheckpointsAndConcatenateIntoOneExport) {
  AppendN(1, 47);
  Lines all;
  int64_t after = 0;
  int pages = 0;
  for (;;) {
    Lines page = Export(15, after);
    ++pages;
    ASSERT_FALSE(page.empty());
    const std::string& end = page.back();
    all.insert(all.end(), page.begin(), page.end());
    const size_t at = end.find("\"next_cursor\":\"");
    if (at == std::string::npos) break;
    after = std::stoll(end.substr(at + 15));
    ASSERT_EQ(after % 10, 0) << "a page ends where a checkpoint does";
    ASSERT_LT(pages, 10);
  }
  EXPECT_GT(pages, 2);
  const ExportVerification v = Verify(all);
  EXPECT_TRUE(v.ok) << v.reason;
  EXPECT_EQ(v.records_checked, 47);
}

TEST_F(AuditExportTest, EditingARecordIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  std::string& line = lines[LineOf(lines, 17)];
  const size_t at = line.find("\"outcome\":\"allowed\"");
  ASSERT_NE(at, std::string::npos);
  line.replace(at, 19, "\"outcome\":\"denied\"");
  ExpectBadAt(Verify(lines), 17, "differs from what the checkpoint");
}

TEST_F(AuditExportTest, DeletingARecordIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  lines.erase(lines.begin() + static_cast<long>(LineOf(lines, 12)));
  ExpectBadAt(Verify(lines), 12, "missing");
}

TEST_F(AuditExportTest, InsertingARecordIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  // A copy of record 8 with another resource, given 8's place; the real 8 follows it.
  std::string forged = lines[LineOf(lines, 8)];
  const size_t at = forged.find("tok_8");
  ASSERT_NE(at, std::string::npos);
  forged.replace(at, 5, "tok_X");
  lines.insert(lines.begin() + static_cast<long>(LineOf(lines, 8)), forged);
  ExpectBadAt(Verify(lines), 8, "record 8");
}

TEST_F(AuditExportTest, SwappingTwoRecordsIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  std::swap(lines[LineOf(lines, 22)], lines[LineOf(lines, 23)]);
  ExpectBadAt(Verify(lines), 22, "missing");
}

TEST_F(AuditExportTest, SwappingTwoRecordsContentsUnderTheirOwnSeqIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  // The attacker keeps the seq fields in order but exchanges everything else.
  std::string a = lines[LineOf(lines, 22)], b = lines[LineOf(lines, 23)];
  auto set_seq = [](std::string& line, int from, int to) {
    const std::string f = "\"seq\":" + std::to_string(from) + ",";
    line.replace(line.find(f), f.size(), "\"seq\":" + std::to_string(to) + ",");
  };
  set_seq(a, 22, 23);
  set_seq(b, 23, 22);
  const size_t i22 = LineOf(lines, 22), i23 = LineOf(lines, 23);
  lines[i22] = b;
  lines[i23] = a;
  ExpectBadAt(Verify(lines), 22, "record 22");
}

TEST_F(AuditExportTest, TruncatingTheTailIsNamed) {
  AppendN(1, 30);
  Lines lines = Export();
  // Cut after record 25: records 26-30, the last checkpoint and the signed end are gone.
  lines.resize(LineOf(lines, 25) + 1);
  ExpectBadAt(Verify(lines), 26, "truncated");
  // Cut exactly after a checkpoint, end line gone: still caught.
  Lines at_checkpoint = Export();
  at_checkpoint.resize(LineOf(at_checkpoint, 20) + 2);
  ASSERT_NE(at_checkpoint.back().find("\"type\":\"checkpoint\""), std::string::npos);
  ExpectBadAt(Verify(at_checkpoint), 21, "truncated");
}

TEST_F(AuditExportTest, AForgedEndOrCheckpointIsRefused) {
  AppendN(1, 30);
  Lines lines = Export();
  // Cut back to record 20 and re-sign nothing: an end claiming 20 with the old signature.
  Lines cut(lines.begin(), lines.begin() + static_cast<long>(LineOf(lines, 20) + 2));
  std::string end = lines.back();
  const size_t at = end.find("\"last_seq\":30");
  ASSERT_NE(at, std::string::npos);
  end.replace(at, 13, "\"last_seq\":20");
  cut.push_back(end);
  ExpectBadAt(Verify(cut), 1, "not signed by this key");
  // A checkpoint whose digests were recomputed for an edited record: its signature fails.
  Lines edited = Export();
  std::string& cp = edited[LineOf(edited, 10) + 1];
  ASSERT_NE(cp.find("\"type\":\"checkpoint\""), std::string::npos);
  const size_t d = cp.find("\"digests\":\"");
  cp[d + 11] = cp[d + 11] == 'a' ? 'b' : 'a';
  ExpectBadAt(Verify(edited), 1, "not signed by this key");
  // Removing a checkpoint line: the next one does not chain.
  Lines dropped = Export();
  dropped.erase(dropped.begin() + static_cast<long>(LineOf(dropped, 10) + 1));
  ExpectBadAt(Verify(dropped), 1, "");
}

TEST_F(AuditExportTest, AnotherKeysExportIsRefused) {
  AppendN(1, 5);
  const Lines lines = Export();
  testing::FakeHsm other;
  ASSERT_TRUE(other.CreateSigningKey(kCheckpointSigningKey).ok());
  auto point = other.SigningPublicKey(kCheckpointSigningKey);
  TV_ASSERT_OK(point);
  auto key = EcdsaP256PublicKey::FromPoint(*point);
  TV_ASSERT_OK(key);
  AuditExportVerifier verifier(*key);
  for (const auto& line : lines) verifier.Feed(line);
  EXPECT_FALSE(verifier.Finish().ok);
}

TEST_F(AuditExportTest, TheCheckpointerNeverSignsARecordTheAuditKeyDoesNotVouchFor) {
  AppendN(1, 12);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());  // 1-10, 11-12
  AppendN(13, 20);
  // Someone with the database but not the HSM edits record 15 before it is checkpointed.
  Sql("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 15");
  StatusOr<int64_t> signed_through = checkpointer_->CheckpointNow();
  EXPECT_EQ(signed_through.status().code(), StatusCode::kDataLoss);
  // The export still carries every record; the verifier names the first one no checkpoint covers.
  ExpectBadAt(Verify(Export()), 13, "not covered");
}

TEST_F(AuditExportTest, RewritingCheckpointedRecordsInTheDatabaseIsNamed) {
  AppendN(1, 30);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());
  const std::string log_before = CheckpointLog();
  Sql("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 14");
  ExpectBadAt(Verify(Export()), 14, "record 14 differs");
  AuditVerification online;
  TV_ASSERT_OK(checkpointer_->Verify(online));
  EXPECT_EQ(online.first_bad_seq, 14) << online.reason;
  // Deleting the database's checkpoints too, so that the export carries none: the checkpoint
  // log still names record 14, and the vault refuses to sign anything until someone looks.
  Sql("DELETE FROM audit_checkpoints");
  EXPECT_EQ(checkpointer_->CheckpointNow().status().code(), StatusCode::kDataLoss);
  const Lines lines = Export();
  ExpectBadAt(Verify(lines), 1, "not covered");
  ExpectBadAt(Verify(lines, log_before), 14, "record 14 differs");
}

TEST_F(AuditExportTest, CuttingTheDatabaseBackIsCaughtByTheCheckpointLog) {
  AppendN(1, 20);
  // A genuine export of an earlier state, its end signed: what an attacker who cut the trail
  // back to record 20 (and so could re-export it) would present.
  const Lines old_export = Export();
  EXPECT_TRUE(Verify(old_export).ok);
  AppendN(21, 30);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());
  // The checkpoint log, kept apart from the database, knows the trail went further.
  ExpectBadAt(Verify(old_export, CheckpointLog()), 21, "checkpoint log covers them");
  // In the vault itself: the database's checkpoints cut back behind the log's.
  Sql("DELETE FROM audit_checkpoints WHERE last_seq > 20");
  AuditVerification online;
  TV_ASSERT_OK(checkpointer_->Verify(online));
  EXPECT_FALSE(online.ok);
  EXPECT_EQ(online.first_bad_seq, 21) << online.reason;
}

TEST_F(AuditExportTest, ACheckpointCommittedButNotLoggedIsLoggedAtTheNextOpen) {
  AppendN(1, 10);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());
  // A crash between the database commit and the log append, modelled by removing the log.
  ASSERT_EQ(std::remove(dir_.Sub("checkpoints.ndjson").c_str()), 0);
  Open();
  EXPECT_NE(CheckpointLog().find("\"last_seq\":10"), std::string::npos);
  // A torn last line (a crash mid-append) is cut off, not taken for tampering.
  { std::ofstream(dir_.Sub("checkpoints.ndjson"), std::ios::app) << "{\"type\":\"checkp"; }
  Open();
  AppendN(11, 12);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());
  EXPECT_TRUE(Verify(Export(), CheckpointLog()).ok);
}

TEST_F(AuditExportTest, TextThatIsNotUtf8IsStoredAsUtf8AndStillVerifies) {
  AuditRecord r = Event(1);
  r.resource = std::string("tok_\xff\xfe") + "\xc0\xaf";  // invalid bytes and an overlong '/'
  TV_ASSERT_OK(log_->Append(r));
  const Lines lines = Export();
  EXPECT_TRUE(Verify(lines).ok) << Verify(lines).reason;
  EXPECT_NE(lines[1].find("tok_\xef\xbf\xbd\xef\xbf\xbd"), std::string::npos) << lines[1];
}

TEST(AuditRecordDigestTest, IsTakenOverTheTextAsExportedAndBindsTheMacs) {
  // A record kept with raw bytes (written before text was made UTF-8 on append) digests like
  // its exported, U+FFFD rendering; a valid one is digested as it is.
  AuditRecord raw = Event(3);
  raw.resources = {std::string("tok_\xff")};
  AuditRecord text = raw;
  text.resources = {"tok_\xef\xbf\xbd"};
  EXPECT_EQ(RecordDigest(raw), RecordDigest(text));
  AuditRecord other = text;
  other.resources = {"tok_x"};
  EXPECT_NE(RecordDigest(other), RecordDigest(text));
  AuditRecord remac = text;
  remac.mac = Bytes(32, 7);
  EXPECT_NE(RecordDigest(remac), RecordDigest(text));
}

TEST_F(AuditExportTest, RecordsAppendedWhileAnExportIsBuiltWaitForTheNextOne) {
  AppendN(1, 25);
  Lines lines;
  storage::AuditQuery all;
  int appended = 0;
  Status s = checkpointer_->Export(all, SIZE_MAX, [&](std::string_view line) {
    lines.emplace_back(line);
    if (appended < 7) {  // a busy server: requests keep being audited during the export
      ++appended;
      return log_->Append(Event(100 + appended)).status();
    }
    return Status::Ok();
  });
  TV_ASSERT_OK(s);
  const ExportVerification v = Verify(lines);
  EXPECT_TRUE(v.ok) << v.reason;
  // The export ends where the trail was checkpointed: the records appended while its lines were
  // written (all but the first, which came before the checkpoint) wait for the next export.
  EXPECT_EQ(v.last_seq, 26);
  const ExportVerification next = Verify(Export());
  EXPECT_TRUE(next.ok) << next.reason;
  EXPECT_EQ(next.last_seq, 32);
}

TEST_F(AuditExportTest, EveryByteOfARecordLineCounts) {
  AppendN(1, 20);
  const Lines lines = Export();
  const size_t i = LineOf(lines, 9);
  {  // the time as text, which nothing signs directly
    Lines t = lines;
    const size_t at = t[i].find("\"time\":\"") + 8;
    t[i][at + 3] = t[i][at + 3] == '1' ? '2' : '1';  // the year's last digit
    ExpectBadAt(Verify(t), 9, "not a record as the vault writes it");
  }
  {  // a field added
    Lines t = lines;
    t[i].insert(t[i].size() - 1, ",\"zz\":1");
    ExpectBadAt(Verify(t), 9, "not a record as the vault writes it");
  }
  {  // a record's hash and the next one's prev_hash rewritten together
    Lines t = lines;
    const std::string old_hash = t[i].substr(t[i].find("\"hash\":\"") + 8, 64);
    const std::string new_hash(64, 'a');
    t[i].replace(t[i].find(old_hash, t[i].find("\"hash\":\"")), 64, new_hash);
    const size_t j = LineOf(t, 10);
    t[j].replace(t[j].find(old_hash), 64, new_hash);
    ExpectBadAt(Verify(t), 9, "record 9");
  }
  {  // nonsense where the type goes does not crash the verifier
    Lines t = lines;
    t.insert(t.begin() + 1, "{\"type\":7}");
    EXPECT_FALSE(Verify(t).ok);
  }
}

TEST_F(AuditExportTest, DroppingTheLastPagesIsCaughtByTheSignedMoreFlag) {
  AppendN(1, 40);
  const Lines first_page = Export(15);  // ends at a checkpoint, more pages follow
  ExpectBadAt(Verify(first_page), 11, "more pages follow");
  // Flipping the unsigned cursor away breaks the signature instead.
  Lines t = first_page;
  const size_t at = t.back().find("\"next_cursor\":\"10\"");
  ASSERT_NE(at, std::string::npos) << t.back();
  t.back().replace(at, 18, "\"next_cursor\":null");
  ExpectBadAt(Verify(t), 1, "not signed by this key");
}

// Found by fuzz/audit_verifier_fuzzer: with the checkpoint log, a copy of the last checkpoint
// moved after the end line verified. Nothing may follow a signed end but the next page's header.
TEST_F(AuditExportTest, NothingButTheNextPagesHeaderFollowsASignedEnd) {
  AppendN(1, 25);
  const Lines lines = Export();
  const std::string log = CheckpointLog();
  ASSERT_TRUE(Verify(lines, log).ok);
  size_t checkpoint = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find("\"type\":\"checkpoint\"") != std::string::npos) checkpoint = i;
  }
  ASSERT_GT(checkpoint, 0u);
  {  // the last checkpoint swapped with the end line
    Lines t = lines;
    std::swap(t[checkpoint], t.back());
    ExpectBadAt(Verify(t, log), 26, "follows the export's last signed end");
    EXPECT_FALSE(Verify(t).ok);
  }
  {  // a record or a header appended after the last end
    Lines t = lines;
    t.push_back(lines[LineOf(lines, 3)]);
    ExpectBadAt(Verify(t, log), 26, "follows the export's last signed end");
    t.back() = lines.front();
    ExpectBadAt(Verify(t, log), 26, "follows the export's last signed end");
  }
  {  // a page that says more follow, then a record without the next page's header
    AppendN(26, 40);
    Lines t = Export(15);
    ASSERT_NE(t.back().find("\"next_cursor\":\"10\""), std::string::npos) << t.back();
    const Lines second = Export(SIZE_MAX, 10);
    t.insert(t.end(), second.begin() + 1, second.end());
    ExpectBadAt(Verify(t), 11, "not the next page's header");
    t.insert(t.begin() + static_cast<std::ptrdiff_t>(t.size() - (second.size() - 1)), second.front());
    EXPECT_TRUE(Verify(t).ok) << Verify(t).reason;
  }
}

TEST_F(AuditExportTest, TheVaultRefusesToSignASecondHistory) {
  AppendN(1, 20);
  ASSERT_TRUE(checkpointer_->CheckpointNow().ok());
  // While it runs, someone with the database deletes the last checkpoint (to re-sign records
  // 11-20 after rewriting them, say).
  {
    auto db = Database::Open(dir_.Sub("a.db"), {});
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("DELETE FROM audit_checkpoints WHERE last_seq = 20").ok());
  }
  AppendN(21, 22);
  EXPECT_EQ(checkpointer_->CheckpointNow().status().code(), StatusCode::kDataLoss);
  // A checkpoint log holding two histories is refused whole by the offline verifier.
  const std::string log = CheckpointLog();
  const std::string first_line = log.substr(0, log.find('\n') + 1);
  AuditExportVerifier verifier(checkpointer_->public_key());
  EXPECT_EQ(verifier.AddCheckpointLog(log + first_line).code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace tokenvault
