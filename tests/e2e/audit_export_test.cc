// The tamper suite on a real export: the real server (HTTPS on 127.0.0.1, SoftHSM2 token, SQLite
// file) exports its audit trail over GET /v1/audit/export; `tokenvault audit verify` checks it
// offline with only the public key (and the checkpoint log), and names the first bad record for
// each of edit, delete, insert, swap, truncate, and a rewrite with full database access but no
// HSM. An untouched export verifies.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "storage/sqlite.h"
#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;
using Lines = std::vector<std::string>;

constexpr int kCheckpointRecords = 20;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

Lines SplitLines(const std::string& text) {
  Lines lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string JoinLines(const Lines& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// The index of the line holding record 'seq'.
size_t LineOf(const Lines& lines, int64_t seq) {
  for (size_t i = 0; i < lines.size(); ++i) {
    json j = json::parse(lines[i], nullptr, false);
    if (j.is_object() && j.value("type", "") == "record" && j.value("seq", int64_t{0}) == seq) return i;
  }
  ADD_FAILURE() << "no record " << seq;
  return 0;
}

class AuditExportE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.Sub("config.json"),
              json{{"audit_checkpoint_records", kCheckpointRecords}}.dump());
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"),
                                              std::vector<std::string>{"--config", dir_.Sub("config.json")});
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    Connect();
    admin_ = server_->admin_key();
    ASSERT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "acme"}}).status, 201);
    const std::string maker = Key("maker", "tokenizer", json::array({"acme"}));
    const std::string reader = Key("reader", "support", json::array({"acme"}));
    // Traffic of every kind: created, revealed, refused, unauthenticated, not found.
    for (int i = 0; i < 40; ++i) {
      Reply made = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "value " + std::to_string(i)}});
      ASSERT_EQ(made.status, 201);
      if (i % 4 == 0) {
        EXPECT_EQ(client_->Post("/v1/merchants/acme/detokenize", reader,
                                {{"tokens", {made.Json()["token"]}}, {"reveal", "masked"}}).status, 200);
      }
      if (i % 10 == 0) {
        EXPECT_EQ(client_->Post("/v1/merchants/acme/detokenize", reader,
                                {{"tokens", {made.Json()["token"]}}, {"reveal", "plain"}}).status, 403);
        EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/tok_nope", "tvk_bad_key").status, 401);
      }
    }
    auditor_ = admin_;
    Reply key = client_->Get("/v1/audit/checkpoint-key", auditor_);
    ASSERT_EQ(key.status, 200) << key.body;
    public_key_ = dir_.Sub("checkpoint.pem");
    WriteFile(public_key_, key.Json()["public_key_pem"].get<std::string>());
    // The embedded deployment writes the same key next to its data.
    EXPECT_EQ(ReadFile(server_->data_dir() + "/audit-checkpoint.pem"), ReadFile(public_key_));
  }

  void Connect() { client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file()); }

  std::string Key(const std::string& name, const std::string& role, const json& merchants) {
    Reply r = client_->Post("/v1/principals", admin_, {{"name", name}, {"roles", {role}}, {"merchants", merchants}});
    EXPECT_EQ(r.status, 201) << r.body;
    return r.Json().value("api_key", "");
  }

  // A full export, over HTTP, in pages of about 'limit' records, concatenated.
  Lines Export(int limit = 10000, const std::string& key = "") {
    Lines all;
    std::string cursor;
    for (int page = 0; page < 100; ++page) {
      Reply r = client_->Get("/v1/audit/export?limit=" + std::to_string(limit) +
                                 (cursor.empty() ? "" : "&cursor=" + cursor),
                             key.empty() ? auditor_ : key);
      EXPECT_EQ(r.status, 200) << r.body;
      Lines lines = SplitLines(r.body);
      if (lines.empty()) break;
      all.insert(all.end(), lines.begin(), lines.end());
      json end = json::parse(lines.back(), nullptr, false);
      if (!end.is_object() || !end["next_cursor"].is_string()) break;
      cursor = end["next_cursor"].get<std::string>();
    }
    return all;
  }

  // `tokenvault audit verify` on 'lines'; its JSON answer, with "exit" added.
  json Verify(const Lines& lines, bool with_checkpoint_log = false) {
    const std::string file = dir_.Sub("export-" + std::to_string(++exports_) + ".ndjson");
    WriteFile(file, JoinLines(lines));
    std::string command = std::string(TOKENVAULT_BINARY) + " audit verify --file " + file +
                          " --public-key " + public_key_;
    if (with_checkpoint_log) command += " --checkpoints " + server_->data_dir() + "/audit-checkpoints.ndjson";
    std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr) return json();
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
    const int status = pclose(pipe);
    json j = json::parse(out, nullptr, false);
    if (!j.is_object()) {
      ADD_FAILURE() << "verify printed: " << out;
      return json::object();
    }
    j["exit"] = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return j;
  }

  void ExpectBadAt(const json& v, int64_t seq, const std::string& what) {
    EXPECT_EQ(v.value("exit", -2), 1) << what << ": " << v.dump();
    EXPECT_FALSE(v.value("ok", true)) << what;
    EXPECT_EQ(v.value("first_bad_seq", int64_t{-1}), seq) << what << ": " << v.dump();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<HttpClient> client_;
  std::string admin_, auditor_, public_key_;
  int exports_ = 0;
};

TEST_F(AuditExportE2eTest, AnUntouchedExportVerifiesAndEveryTamperingNamesTheFirstBadRecord) {
  const Lines lines = Export();
  ASSERT_GT(lines.size(), 60u);
  json v = Verify(lines);
  EXPECT_EQ(v["exit"], 0) << v.dump();
  EXPECT_TRUE(v["ok"].get<bool>());
  const int64_t last = v["last_seq"].get<int64_t>();
  EXPECT_EQ(v["records_checked"], last);
  EXPECT_GE(v["checkpoints_checked"].get<int64_t>(), last / kCheckpointRecords);
  EXPECT_EQ(Verify(lines, /*with_checkpoint_log=*/true)["exit"], 0);

  {  // edit: one field of record 30
    Lines t = lines;
    json r = json::parse(t[LineOf(t, 30)]);
    r["reason"] = "nothing happened";
    t[LineOf(t, 30)] = r.dump();
    ExpectBadAt(Verify(t), 30, "edit");
  }
  {  // delete record 12
    Lines t = lines;
    t.erase(t.begin() + static_cast<long>(LineOf(t, 12)));
    ExpectBadAt(Verify(t), 12, "delete");
  }
  {  // insert a forged record before record 45, under its number
    Lines t = lines;
    json forged = json::parse(t[LineOf(t, 45)]);
    forged["action"] = "tokens.delete";
    t.insert(t.begin() + static_cast<long>(LineOf(t, 45)), forged.dump());
    ExpectBadAt(Verify(t), 45, "insert");
  }
  {  // swap records 22 and 23
    Lines t = lines;
    std::swap(t[LineOf(t, 22)], t[LineOf(t, 23)]);
    ExpectBadAt(Verify(t), 22, "swap");
  }
  {  // truncate the tail: the last five records and what follows them
    Lines t = lines;
    t.resize(LineOf(t, last - 5) + 1);
    ExpectBadAt(Verify(t), last - 4, "truncate");
  }
  // Concatenated pages verify as one export.
  json paged = Verify(Export(25));
  EXPECT_EQ(paged["exit"], 0) << paged.dump();
  EXPECT_GE(paged["records_checked"].get<int64_t>(), last);
}

TEST_F(AuditExportE2eTest, AScopedOrFilteredExportIsReadableButNotVerifiedWhole) {
  const std::string scoped = Key("acme-auditor", "auditor", json::array({"acme"}));
  const Lines lines = Export(10000, scoped);
  ASSERT_FALSE(lines.empty());
  EXPECT_FALSE(json::parse(lines.front())["complete"].get<bool>());
  for (size_t i = 1; i + 1 < lines.size(); ++i) {
    json j = json::parse(lines[i]);
    EXPECT_EQ(j["type"], "record");
    EXPECT_EQ(j["merchant"], "acme");
  }
  EXPECT_FALSE(json::parse(lines.back())["complete"].get<bool>());
  json v = Verify(lines);
  EXPECT_EQ(v["exit"], 1);
  EXPECT_NE(v["reason"].get<std::string>().find("filtered"), std::string::npos) << v.dump();
  EXPECT_EQ(client_->Get("/v1/audit/export?limit=0", auditor_).status, 400);
  EXPECT_EQ(client_->Get("/v1/audit/export?bogus=1", auditor_).status, 400);
  EXPECT_EQ(client_->Get("/v1/audit/export", Key("maker2", "tokenizer", json::array({"acme"}))).status, 403);
}

TEST_F(AuditExportE2eTest, RewritingTheDatabaseWithoutTheHsmIsNamedOffline) {
  ASSERT_EQ(Verify(Export())["exit"], 0);  // the trail so far is checkpointed and logged
  server_->Stop(SIGTERM);
  {
    // Full database access, no HSM: record 7 rewritten, and the checkpoints that would give it
    // away deleted. Nothing keyed can be recomputed.
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("UPDATE audit_log SET principal = 'nobody' WHERE seq = 7").ok());
    ASSERT_TRUE((*db)->Exec("DELETE FROM audit_checkpoints").ok());
  }
  ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
  Connect();
  const Lines lines = Export();
  // Without the checkpoint log the export carries no checkpoint: nothing in it is vouched for.
  ExpectBadAt(Verify(lines), 1, "no checkpoint");
  // With it, the rewritten record itself is named.
  json v = Verify(lines, /*with_checkpoint_log=*/true);
  ExpectBadAt(v, 7, "rewrite");
  EXPECT_NE(v["reason"].get<std::string>().find("record 7 differs"), std::string::npos) << v.dump();
  // The vault says so too, and says why it signs nothing more.
  json online = client_->Get("/v1/audit/verify", auditor_).Json();
  EXPECT_FALSE(online["ok"].get<bool>());
  EXPECT_EQ(online["first_bad_seq"], 7) << online.dump();
  EXPECT_NE(ReadFile(server_->log_file()).find("checkpoint log holds a checkpoint"), std::string::npos);
}

}  // namespace
}  // namespace tokenvault::testing
