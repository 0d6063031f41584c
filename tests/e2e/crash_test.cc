// Key operations killed with SIGKILL at each of their named steps (the server kills itself when
// it reaches the step named in TOKENVAULT_CRASH_AT), then restarted: every token still
// decrypts, and the operation, asked again, finishes. Real binary, real SoftHSM2 token, real
// SQLite file, HTTPS on 127.0.0.1.
#include <gtest/gtest.h>

#include <cstdlib>

#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"));
    Start("");
    admin_ = server_->admin_key();
    ASSERT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "acme"}}).status, 201);
    maker_ = Key("maker", "tokenizer");
    reader_ = Key("reader", "detokenizer");
    for (int i = 0; i < 20; ++i) {
      if (i == 10) {
        ASSERT_EQ(client_->Send("POST", "/v1/merchants/acme/keys/rotate", admin_, "", "").status, 200);
      }
      const std::string value = "value " + std::to_string(i);
      Reply made = client_->Post("/v1/merchants/acme/tokens", maker_, {{"value", value}});
      ASSERT_EQ(made.status, 201);
      tokens_.emplace_back(made.Json()["token"], value);
    }
  }
  void TearDown() override { unsetenv("TOKENVAULT_CRASH_AT"); }

  // Starts the server; with 'crash_at' it kills itself when it reaches that step.
  void Start(const std::string& crash_at) {
    if (crash_at.empty()) {
      unsetenv("TOKENVAULT_CRASH_AT");
    } else {
      setenv("TOKENVAULT_CRASH_AT", crash_at.c_str(), 1);
    }
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
  }
  std::string Key(const std::string& name, const std::string& role) {
    return client_->Post("/v1/principals", admin_, {{"name", name}, {"roles", {role}}, {"merchants", {"acme"}}})
        .Json()["api_key"];
  }
  void ExpectAllReadable() {
    json tokens = json::array();
    for (const auto& t : tokens_) tokens.push_back(t.first);
    Reply r = client_->Post("/v1/merchants/acme/detokenize", reader_, {{"tokens", tokens}, {"reveal", "plain"}});
    ASSERT_EQ(r.status, 200) << r.body;
    for (size_t i = 0; i < tokens_.size(); ++i) {
      EXPECT_EQ(r.Json()["items"][i]["value"], tokens_[i].second) << r.Json()["items"][i].dump();
    }
  }
  json Keys() { return client_->Get("/v1/merchants/acme/keys", admin_).Json(); }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<HttpClient> client_;
  std::string admin_, maker_, reader_;
  std::vector<std::pair<std::string, std::string>> tokens_;
};

TEST_F(CrashTest, KekRotationKilledAtEachStep) {
  int kek_version = 1;
  for (const char* step : {"kek_rotation.intent_recorded", "kek_rotation.kek_created",
                           "kek_rotation.rewrapped", "kek_rotation.committed"}) {
    SCOPED_TRACE(step);
    server_->Stop(SIGTERM);
    Start(step);
    Reply killed = client_->Send("POST", "/v1/merchants/acme/kek/rotate", admin_, "", "");
    EXPECT_EQ(killed.status, 0) << "the server answered instead of dying: " << killed.body;
    EXPECT_EQ(server_->Stop(SIGKILL), -SIGKILL);
    if (std::string(step) == "kek_rotation.committed") ++kek_version;  // it had switched
    Start("");
    ExpectAllReadable();
    EXPECT_EQ(Keys()["dek_versions"][0]["kek_version"], kek_version);
    Reply rotated = client_->Send("POST", "/v1/merchants/acme/kek/rotate", admin_, "", "");
    ASSERT_EQ(rotated.status, 200) << rotated.body;
    EXPECT_EQ(rotated.Json()["kek_version"], ++kek_version);
    ExpectAllReadable();
  }
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
}

TEST_F(CrashTest, ReencryptionKilledAfterABatchResumesAndFinishes) {
  server_->Stop(SIGTERM);
  // The operator command, killed right after its first batch committed.
  const std::string cli = std::string(TOKENVAULT_BINARY) + " keys reencrypt --merchant acme --data-dir " +
                          server_->data_dir() + " >/dev/null 2>&1";
  setenv("TOKENVAULT_CRASH_AT", "reencrypt.batch_committed", 1);
  const int killed = std::system(cli.c_str());
  unsetenv("TOKENVAULT_CRASH_AT");
  EXPECT_TRUE(WIFSIGNALED(killed) || (WIFEXITED(killed) && WEXITSTATUS(killed) == 128 + SIGKILL)) << killed;
  Start("");
  ExpectAllReadable();
  json versions = Keys()["dek_versions"];
  EXPECT_EQ(versions[0]["tokens"], 0);     // the batch that committed moved them
  EXPECT_EQ(versions[0]["state"], "retired");  // killed before it could be destroyed
  server_->Stop(SIGTERM);
  ASSERT_EQ(std::system((std::string(TOKENVAULT_BINARY) + " keys reencrypt --merchant acme --data-dir " +
                         server_->data_dir() + " >/dev/null 2>&1").c_str()), 0);
  Start("");
  ExpectAllReadable();
  versions = Keys()["dek_versions"];
  EXPECT_EQ(versions[0]["state"], "destroyed");
  EXPECT_EQ(versions[1]["tokens"], 20);
}

}  // namespace
}  // namespace tokenvault::testing
