// HSM outage, end to end: the real server over HTTPS with its SoftHSM2 token reached through a
// fault-injecting PKCS#11 shim (tests/fakes/pkcs11_shim.cc). During each fault the service
// answers 503 with Retry-After, /readyz is 503 and no row is written; once the fault clears it
// reconnects (new sessions, login again) by itself, with no restart.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "storage/sqlite.h"
#include "tests/e2e/http_client.h"
#include "tests/e2e/metrics_scrape.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

class HsmOutageTest : public ::testing::Test {
 protected:
  void StartServer(std::vector<std::string> args = {}) {
    // The server inherits these: its dev token is reached through the shim.
    setenv("TOKENVAULT_PKCS11_MODULE", TOKENVAULT_PKCS11_SHIM, 1);
    setenv("TOKENVAULT_SHIM_FAULT_FILE", fault_file_.c_str(), 1);
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"), std::move(args));
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
    admin_ = server_->admin_key();
    ASSERT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "acme"}}).status, 201);
    maker_ = client_->Post("/v1/principals", admin_,
                           {{"name", "maker"}, {"roles", {"tokenizer"}}, {"merchants", {"acme"}}})
                 .Json()["api_key"];
    reader_ = client_->Post("/v1/principals", admin_,
                            {{"name", "reader"}, {"roles", {"detokenizer"}}, {"merchants", {"acme"}}})
                  .Json()["api_key"];
    Reply made = client_->Post("/v1/merchants/acme/tokens", maker_, {{"value", "before the outage"}});
    ASSERT_EQ(made.status, 201) << made.body;
    token_ = made.Json()["token"];
    ASSERT_EQ(Reveal().status, 200);  // the DEK is now cached
  }
  void TearDown() override {
    std::remove(fault_file_.c_str());
    unsetenv("TOKENVAULT_PKCS11_MODULE");
    unsetenv("TOKENVAULT_SHIM_FAULT_FILE");
  }
  void SetFault(const char* ckr_hex) {
    std::ofstream(fault_file_) << ckr_hex << "\n";
  }
  void ClearFault() { std::remove(fault_file_.c_str()); }
  Reply Reveal() {
    return client_->Post("/v1/merchants/acme/detokenize", reader_, {{"tokens", {token_}}, {"reveal", "plain"}});
  }
  // Tokens made (sealed) at or after 'since_ms', read from the database file itself. Judged by
  // the time each token was made rather than by a count taken before the fault, so that a token
  // made before the fault whose commit a reader sees a moment late cannot pass for one written
  // during it - nor hide one.
  // Token rows in the database, read by another process's connection (as an operator would).
  int64_t TokenRows() {
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {true, 5000});
    if (!db.ok()) return -1;
    auto count = (*db)->Prepare("SELECT COUNT(*) FROM tokens");
    if (!count.ok()) return -1;
    if (!*count->Step()) return -1;
    return count->ColumnInt(0);
  }
  // Polls /readyz until it answers 'status' or 'limit' passes; returns how long that took.
  std::optional<std::chrono::milliseconds> WaitForReady(long status, std::chrono::milliseconds limit) {
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < limit) {
      if (client_->Get("/readyz", "").status == status) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return std::nullopt;
  }

  TempDir dir_;
  const std::string fault_file_ = dir_.Sub("hsm-fault");
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<HttpClient> client_;
  std::string admin_, maker_, reader_, token_;
};

TEST_F(HsmOutageTest, EachDeviceFailureIs503UntilItClearsThenTheServiceReconnectsByItself) {
  StartServer();
  const MetricSeries before = ScrapeMetrics(*client_);
  // CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_HANDLE_INVALID, and
  // the module gone (it cannot even be initialised again until it is back).
  for (const char* fault : {"30", "32", "e0", "b3", "gone"}) {
    SCOPED_TRACE(fault);
    // Rows, not times: the token made just before may carry this very millisecond.
    const int64_t rows_before = TokenRows();
    ASSERT_GE(rows_before, 1) << "the database cannot be read";
    SetFault(fault);
    ASSERT_TRUE(WaitForReady(503, std::chrono::seconds(10))) << "/readyz never turned 503";
    Reply ready = client_->Get("/readyz", "");
    EXPECT_FALSE(ready.headers["retry-after"].empty());
    // Writes and reads that need the HSM: 503 with Retry-After. Fail closed is the default, so
    // the DEK cached before the fault serves nothing either.
    Reply made = client_->Post("/v1/merchants/acme/tokens", maker_, {{"value", "during the outage"}});
    EXPECT_EQ(made.status, 503) << made.body;
    EXPECT_EQ(made.Json()["error"]["type"], "unavailable");
    EXPECT_FALSE(made.headers["retry-after"].empty());
    Reply batch = client_->Post("/v1/merchants/acme/tokens/batch", maker_, {{"items", {{{"value", "x"}}}}});
    EXPECT_EQ(batch.status, 503) << batch.body;
    Reply revealed = Reveal();
    EXPECT_EQ(revealed.status, 503) << revealed.body;
    EXPECT_EQ(revealed.body.find("before the outage"), std::string::npos);
    EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", std::string("m") + fault}}).status, 503);
    EXPECT_EQ(TokenRows(), rows_before) << "a token was made during the fault";

    ClearFault();
    // The promise: back within 5 s of the fault clearing (the probe runs every second and a
    // reconnection is attempted every 250 ms at most), with no restart.
    std::optional<std::chrono::milliseconds> took = WaitForReady(200, std::chrono::seconds(5));
    ASSERT_TRUE(took.has_value()) << "not reconnected within 5 s";
    std::printf("fault %s: ready again after %lld ms\n", fault, static_cast<long long>(took->count()));
    EXPECT_EQ(Reveal().Json()["items"][0]["value"], "before the outage");
    EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", maker_, {{"value", "after the outage"}}).status, 201);
  }
  // The failures are counted (GET /metrics): HSM errors, and the 503s by route.
  const MetricSeries after = ScrapeMetrics(*client_);
  double errors_before = 0, errors_after = 0;
  for (const auto& [series, v] : before) errors_before += series.rfind("tokenvault_hsm_errors_total{", 0) == 0 ? v : 0;
  for (const auto& [series, v] : after) errors_after += series.rfind("tokenvault_hsm_errors_total{", 0) == 0 ? v : 0;
  EXPECT_GT(errors_after, errors_before);
  EXPECT_GE(MetricValue(after, R"(tokenvault_http_requests_total{route="tokens.create",status="503"})"), 5);
  // Every request above, refused or not, is in the audit trail, and the chain is intact.
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
  EXPECT_EQ(server_->Stop(SIGTERM), 0);
}

// A reveal that failed on the HSM revealed nothing, so it costs the caller's budget nothing.
TEST_F(HsmOutageTest, AReveal503DuringAnOutageDoesNotSpendTheBudget) {
  const std::string policy_file = dir_.Sub("budget.json");
  std::ofstream(policy_file) << R"({"budgets":[{"principal":"reader","reveal":"plain","max_values":2,"window_seconds":3600}]})";
  StartServer({"--policy", policy_file});  // its last step reveals once: one of two left
  SetFault("30");
  ASSERT_TRUE(WaitForReady(503, std::chrono::seconds(10)));
  EXPECT_EQ(Reveal().status, 503);
  EXPECT_EQ(Reveal().status, 503);
  ClearFault();
  ASSERT_TRUE(WaitForReady(200, std::chrono::seconds(10)));
  EXPECT_EQ(Reveal().status, 200) << "the failed reveals were charged";
  EXPECT_EQ(Reveal().status, 429) << "the budget no longer holds";
}

TEST_F(HsmOutageTest, ServeCachedKeepsServingCachedKeysWhileTheHsmIsDown) {
  StartServer({"--hsm-outage", "serve_cached"});
  SetFault("30");
  ASSERT_TRUE(WaitForReady(503, std::chrono::seconds(10)));
  // The DEK and fingerprint key were unwrapped before the fault: the policy allows using them.
  Reply revealed = Reveal();
  EXPECT_EQ(revealed.status, 200) << revealed.body;
  EXPECT_EQ(revealed.Json()["items"][0]["value"], "before the outage");
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", maker_, {{"value", "cached keys"}}).status, 201);
  // What needs the HSM itself still fails closed.
  EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "newcomer"}}).status, 503);
  ClearFault();
  EXPECT_TRUE(WaitForReady(200, std::chrono::seconds(5)).has_value());
  EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "newcomer"}}).status, 201);
}

}  // namespace
}  // namespace tokenvault::testing
