// The backup and restore drill (docs/operations.md): `tokenvault backup` taken from a live server
// under tokenize load, `tokenvault restore` into a fresh data dir, the restored server started:
// every token acknowledged before the backup began detokenizes to its exact value, no token
// acknowledged after the backup finished exists, the audit trail verifies and records the restore.
// Real components: the server over HTTPS, SoftHSM2, SQLite, the real binary for both commands.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/leak_scan.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

struct Acked {
  std::string merchant, token, value;
};

// Runs the real binary with 'args'; returns its exit status and, in 'out', what it printed.
int RunCli(const std::string& args, std::string* out) {
  const std::string command = std::string(TOKENVAULT_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) out->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The JSON object a CLI command printed on stdout (its logs go to stderr, mixed in 'out' here).
json PrintedJson(const std::string& out) {
  const size_t begin = out.find("{\n");
  const size_t end = out.rfind("\n}");
  if (begin == std::string::npos || end == std::string::npos) return json();
  return json::parse(out.substr(begin, end + 2 - begin), nullptr, false);
}

class BackupDrillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Checkpoints every 20 records: the backup holds signed checkpoints and their log, which the
    // restored vault must take up again.
    std::ofstream(dir_.Sub("config.json")) << json{{"audit_checkpoint_records", 20}}.dump();
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"),
                                              std::vector<std::string>{"--config", dir_.Sub("config.json")});
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    HttpClient admin(server_->base_url(), server_->ca_file());
    admin_ = server_->admin_key();
    for (const char* m : {"m1", "m2"}) ASSERT_EQ(admin.Post("/v1/merchants", admin_, {{"id", m}}).status, 201);
    app_ = Principal(admin, "app", "tokenizer");
    reader_ = Principal(admin, "reader", "detokenizer");
  }

  std::string Principal(HttpClient& admin, const std::string& name, const std::string& role) {
    Reply r = admin.Post("/v1/principals", admin_, {{"name", name}, {"roles", {role}}, {"merchants", {"m1", "m2"}}});
    EXPECT_EQ(r.status, 201) << r.body;
    return r.Json().value("api_key", "");
  }

  // Tokenizes from 'threads' clients (single requests and batches of 10, both merchants) until
  // 'stop', recording every acknowledged token in order of acknowledgement.
  void Load(int client, const std::atomic<bool>& stop) {
    HttpClient c(server_->base_url(), server_->ca_file());
    for (int i = 0; !stop; ++i) {
      const std::string merchant = i % 2 ? "m2" : "m1";
      const std::string path = "/v1/merchants/" + merchant + "/tokens";
      if (i % 3 == 0) {
        json items = json::array();
        std::vector<std::string> values;
        for (int k = 0; k < 10; ++k) {
          values.push_back("c" + std::to_string(client) + "-b" + std::to_string(i) + "-" + std::to_string(k));
          items.push_back({{"value", values.back()}});
        }
        Reply r = c.Post(path + "/batch", app_, {{"items", items}});
        if (r.status != 200) continue;
        const json j = r.Json();
        std::lock_guard<std::mutex> lock(mu_);
        for (size_t k = 0; k < values.size(); ++k) {
          if (j["items"][k].contains("token")) acked_.push_back({merchant, j["items"][k]["token"], values[k]});
        }
      } else {
        const std::string value = "c" + std::to_string(client) + "-s" + std::to_string(i);
        Reply r = c.Post(path, app_, {{"value", value}});
        if (r.status != 201) continue;
        std::lock_guard<std::mutex> lock(mu_);
        acked_.push_back({merchant, r.Json()["token"], value});
      }
    }
  }

  size_t AckedSoFar() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_.size();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::string admin_, app_, reader_;
  std::mutex mu_;
  std::vector<Acked> acked_;  // GUARDED_BY(mu_)
};

TEST_F(BackupDrillTest, ABackupUnderLoadRestoresEveryTokenAcknowledgedBeforeIt) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) clients.emplace_back([&, i] { Load(i, stop); });
  while (AckedSoFar() < 300) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // ... and a signed checkpoint in the log (the signer polls once a second), bounded.
  const std::string log = server_->data_dir() + "/audit-checkpoints.ndjson";
  for (int i = 0; i < 300 && ReadFileBytes(log).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(ReadFileBytes(log).empty()) << "no audit checkpoint was signed";
  // A DEK rotation under load before the backup: it holds two versions of m1's key.
  {
    HttpClient admin(server_->base_url(), server_->ca_file());
    ASSERT_EQ(admin.Post("/v1/merchants/m1/keys/rotate", admin_, json::object()).status, 200);
  }
  const size_t before_backup = AckedSoFar();
  std::string out;
  const int backup_status =
      RunCli("backup --data-dir " + server_->data_dir() + " --out " + dir_.Sub("backup"), &out);
  const size_t after_backup = AckedSoFar();
  while (AckedSoFar() < after_backup + 50) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop = true;
  for (std::thread& t : clients) t.join();
  ASSERT_EQ(backup_status, 0) << out;
  const json report = PrintedJson(out);
  ASSERT_TRUE(report.is_object()) << out;
  EXPECT_EQ(report["verified"]["merchants"], 2) << out;
  EXPECT_GE(report["verified"]["data_keys_unwrapped"].get<int>(), 3) << out;  // m1: 2 versions, m2: 1
  EXPECT_GT(report["verified"]["audit_records_verified"].get<int>(), 0) << out;
  EXPECT_GT(report["verified"]["audit_checkpoints"].get<int>(), 0) << out;
  EXPECT_GT(after_backup, before_backup) << "the load went on while the backup was taken";
  struct stat st {};
  ASSERT_EQ(stat(dir_.Sub("backup").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  server_->Stop(SIGTERM);

  // No stored value in the backup's files, the database included.
  std::vector<Acked> acked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    acked = acked_;
  }
  std::map<size_t, std::unordered_set<std::string>> needles;
  for (const Acked& a : acked) needles[a.value.size()].insert(a.value);
  for (const char* file : {"tokenvault.db", "audit-checkpoints.ndjson", "MANIFEST.json"}) {
    for (const auto& [length, group] : needles) {
      EXPECT_TRUE(FindNeedles(dir_.Sub("backup") + "/" + file, group).empty()) << file << " holds a value";
    }
  }

  // Restore into a fresh data dir, and serve it.
  out.clear();
  ASSERT_EQ(RunCli("restore --from " + dir_.Sub("backup") + " --data-dir " + dir_.Sub("restored"), &out), 0) << out;
  const json restored = PrintedJson(out);
  ASSERT_TRUE(restored.is_object()) << out;
  ServerProcess again(dir_.Sub("restored"), dir_.Sub("restored.log"),
                      std::vector<std::string>{"--config", dir_.Sub("config.json")});
  ASSERT_TRUE(again.Start()) << "see " << again.log_file();
  HttpClient c(again.base_url(), again.ca_file());

  // Every token acknowledged before the backup began: its exact value.
  std::map<std::string, std::vector<const Acked*>> before;
  for (size_t i = 0; i < before_backup; ++i) before[acked[i].merchant].push_back(&acked[i]);
  size_t checked = 0;
  for (const auto& [merchant, list] : before) {
    for (size_t from = 0; from < list.size(); from += 500) {
      json tokens = json::array();
      for (size_t i = from; i < std::min(list.size(), from + 500); ++i) tokens.push_back(list[i]->token);
      Reply r = c.Post("/v1/merchants/" + merchant + "/detokenize", reader_, {{"tokens", tokens}, {"reveal", "plain"}});
      ASSERT_EQ(r.status, 200) << r.body;
      const json items = r.Json()["items"];
      for (size_t i = 0; i < items.size(); ++i) {
        EXPECT_EQ(items[i].value("value", "<missing: " + items[i].dump() + ">"), list[from + i]->value);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, before_backup);
  // No token acknowledged after the backup finished: the restored vault is the backup's state.
  for (size_t i = after_backup; i < acked.size(); ++i) {
    Reply r = c.Post("/v1/merchants/" + acked[i].merchant + "/detokenize", reader_,
                     {{"tokens", {acked[i].token}}, {"reveal", "plain"}});
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.Json()["items"][0]["error"]["code"], "token_not_found") << r.body;
  }
  // New tokens work, the trail verifies and says it was restored.
  EXPECT_EQ(c.Post("/v1/merchants/m1/tokens", app_, {{"value", "after restore"}}).status, 201);
  Reply verify = c.Get("/v1/audit/verify", admin_);
  ASSERT_EQ(verify.status, 200) << verify.body;
  EXPECT_EQ(verify.Json()["ok"], true) << verify.body;
  Reply audit = c.Get("/v1/audit?action=backup.restored", admin_);
  ASSERT_EQ(audit.status, 200) << audit.body;
  ASSERT_EQ(audit.Json()["records"].size(), 1u) << audit.body;
  EXPECT_EQ(audit.Json()["records"][0]["seq"], restored["audit_seq"]);
  // The restored vault took up the backup's checkpoint log: it signs on, it did not halt.
  Reply halted = c.Get("/v1/audit?action=audit.checkpoints_halted", admin_);
  ASSERT_EQ(halted.status, 200) << halted.body;
  EXPECT_EQ(halted.Json()["records"].size(), 0u) << halted.body;
}

TEST_F(BackupDrillTest, ATamperedOrIncompleteBackupIsRefusedAndNothingIsRestored) {
  std::string out;
  ASSERT_EQ(RunCli("backup --data-dir " + server_->data_dir() + " --out " + dir_.Sub("backup"), &out), 0) << out;
  // Into an existing directory: refused.
  out.clear();
  EXPECT_NE(RunCli("backup --data-dir " + server_->data_dir() + " --out " + dir_.Sub("backup"), &out), 0);
  server_->Stop(SIGTERM);
  struct stat st {};
  {  // an existing directory is never written into
    ASSERT_EQ(mkdir(dir_.Sub("r0").c_str(), 0700), 0);
    std::ofstream(dir_.Sub("r0") + "/mine") << "untouched";
    out.clear();
    EXPECT_NE(RunCli("restore --from " + dir_.Sub("backup") + " --data-dir " + dir_.Sub("r0"), &out), 0);
    EXPECT_EQ(ReadFileBytes(dir_.Sub("r0") + "/mine").size(), 9u);
    EXPECT_FALSE(FileExists(dir_.Sub("r0") + "/tokenvault.db")) << out;
  }
  {  // one byte of the database changed
    std::fstream db(dir_.Sub("backup") + "/tokenvault.db", std::ios::in | std::ios::out | std::ios::binary);
    db.seekg(5000);
    const char was = static_cast<char>(db.get());
    db.seekp(5000);
    db.put(static_cast<char>(was ^ 0x5a));
  }
  out.clear();
  EXPECT_NE(RunCli("restore --from " + dir_.Sub("backup") + " --data-dir " + dir_.Sub("r1"), &out), 0);
  EXPECT_NE(out.find("differs from the backup's manifest"), std::string::npos) << out;
  EXPECT_NE(stat(dir_.Sub("r1").c_str(), &st), 0) << "nothing is restored from a tampered backup";
  EXPECT_NE(stat((dir_.Sub("r1") + ".restoring").c_str(), &st), 0) << "no partial copy is left";
  // No manifest: an incomplete backup.
  ASSERT_EQ(std::remove((dir_.Sub("backup") + "/MANIFEST.json").c_str()), 0);
  out.clear();
  EXPECT_NE(RunCli("restore --from " + dir_.Sub("backup") + " --data-dir " + dir_.Sub("r2"), &out), 0);
  EXPECT_NE(out.find("no manifest"), std::string::npos) << out;
  EXPECT_NE(stat(dir_.Sub("r2").c_str(), &st), 0);
}

}  // namespace
}  // namespace tokenvault::testing
