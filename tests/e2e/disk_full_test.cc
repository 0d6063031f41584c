// Disk full (reliability.md T3): the real server, its data dir on a "full" filesystem - every write
// that would add bytes to a file under the data dir fails with ENOSPC (tests/fakes/enospc_shim.cc,
// LD_PRELOAD'ed into the server only, switched by a flag file) - SoftHSM2 and SQLite real.
// While full: writes answer 503 with Retry-After and leave nothing behind; reads answer 503 too,
// because every read must first leave its audit record (no audit record, no plaintext: fail
// closed) - never a value without one; the health endpoint stays up. Once space returns the
// service recovers by itself, without a restart: old and new tokens read back exactly, the
// database passes integrity_check, the audit chain verifies.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "storage/sqlite.h"
#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    flag_ = dir_.Sub("disk-is-full");
    // Only the server's process tree gets the shim (this test process never execs with it).
    setenv("LD_PRELOAD", TOKENVAULT_ENOSPC_SHIM, 1);
    setenv("TOKENVAULT_ENOSPC_FLAG", flag_.c_str(), 1);
    setenv("TOKENVAULT_ENOSPC_DIR", dir_.Sub("data").c_str(), 1);
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"));
    const bool started = server_->Start();
    unsetenv("LD_PRELOAD");
    ASSERT_TRUE(started) << "see " << server_->log_file();
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
    admin_ = server_->admin_key();
    ASSERT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "m1"}}).status, 201);
    app_ = Principal("app", "tokenizer");
    reader_ = Principal("reader", "detokenizer");
  }

  std::string Principal(const std::string& name, const std::string& role) {
    Reply r = client_->Post("/v1/principals", admin_, {{"name", name}, {"roles", {role}}, {"merchants", {"m1"}}});
    EXPECT_EQ(r.status, 201) << r.body;
    return r.Json().value("api_key", "");
  }

  void SetFull(bool full) {
    if (full) {
      std::ofstream(flag_) << "full\n";
    } else {
      std::remove(flag_.c_str());
    }
  }

  Reply Tokenize(const std::string& value) {
    return client_->Post("/v1/merchants/m1/tokens", app_, {{"type", "card"}, {"value", value}});
  }
  Reply Detokenize(const std::vector<std::string>& tokens) {
    return client_->Post("/v1/merchants/m1/detokenize", reader_, {{"tokens", tokens}, {"reveal", "plain"}});
  }

  int64_t Rows(const std::string& sql) {
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {.read_only = true});
    EXPECT_TRUE(db.ok());
    auto stmt = (*db)->Prepare(sql);
    EXPECT_TRUE(stmt.ok());
    auto row = stmt->Step();
    EXPECT_TRUE(row.ok() && *row);
    return stmt->ColumnInt(0);
  }

  TempDir dir_;
  std::string flag_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<HttpClient> client_;
  std::string admin_, app_, reader_;
};

TEST_F(DiskFullTest, WritesAnswer503AndLeaveNothingReadsFailClosedAndTheServiceRecovers) {
  const std::vector<std::string> cards = {"4111111111111111", "5500005555555559", "340000000000009"};
  std::vector<std::string> tokens;
  for (const std::string& card : cards) {
    Reply r = Tokenize(card);
    ASSERT_EQ(r.status, 201) << r.body;
    tokens.push_back(r.Json()["token"]);
  }
  const int64_t tokens_before = Rows("SELECT count(*) FROM tokens");
  const int64_t audit_before = Rows("SELECT count(*) FROM audit_log");

  SetFull(true);
  for (int i = 0; i < 5; ++i) {
    Reply single = Tokenize("4012888888881881");
    EXPECT_EQ(single.status, 503) << single.body;
    EXPECT_FALSE(single.headers["retry-after"].empty()) << single.body;
    EXPECT_EQ(single.body.find("401288"), std::string::npos);
    Reply batch = client_->Post("/v1/merchants/m1/tokens/batch", app_,
                                {{"items", {{{"value", "a"}}, {{"value", "b"}}}}});
    EXPECT_EQ(batch.status, 503) << batch.body;
    // A read must leave its audit record first: with no room for it, no value.
    Reply read = Detokenize(tokens);
    EXPECT_EQ(read.status, 503) << read.body;
    EXPECT_EQ(read.body.find("4111111111111111"), std::string::npos) << read.body;
    EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "m2"}}).status, 503);
  }
  EXPECT_EQ(client_->Get("/healthz", "").status, 200);

  // Nothing was written meanwhile: no token row, no audit record, a sound database.
  EXPECT_EQ(Rows("SELECT count(*) FROM tokens"), tokens_before);
  EXPECT_EQ(Rows("SELECT count(*) FROM audit_log"), audit_before);

  SetFull(false);
  // Recovery without a restart (bounded: the store's writer may back off after a failure).
  Reply again;
  for (int i = 0; i < 100; ++i) {
    again = Tokenize("4012888888881881");
    if (again.status == 201) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(again.status, 201) << "the service did not recover: " << again.body;
  tokens.push_back(again.Json()["token"]);
  Reply read = Detokenize(tokens);
  ASSERT_EQ(read.status, 200) << read.body;
  const json items = read.Json()["items"];
  for (size_t i = 0; i < cards.size(); ++i) EXPECT_EQ(items[i]["value"], cards[i]) << read.body;
  EXPECT_EQ(items[3]["value"], "4012888888881881");
  EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "m2"}}).status, 201);
  EXPECT_EQ(Rows("SELECT count(*) FROM tokens"), tokens_before + 1);
  Reply verify = client_->Get("/v1/audit/verify", admin_);
  ASSERT_EQ(verify.status, 200) << verify.body;
  EXPECT_EQ(verify.Json()["ok"], true) << verify.body;

  server_->Stop(SIGTERM);
  auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {.read_only = true});
  ASSERT_TRUE(db.ok());
  auto check = (*db)->Prepare("PRAGMA integrity_check");
  ASSERT_TRUE(check.ok());
  auto row = check->Step();
  ASSERT_TRUE(row.ok() && *row);
  EXPECT_EQ(check->ColumnText(0), "ok");
}

}  // namespace
}  // namespace tokenvault::testing
