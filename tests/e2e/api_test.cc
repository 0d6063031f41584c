// End to end: the real tokenvault binary over HTTPS on 127.0.0.1 (port from the OS), with a
// real SoftHSM2 token and a real SQLite file in a temp dir, driven through libcurl.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <set>
#include <thread>
#include <unordered_set>

#include "storage/sqlite.h"
#include "vault/base/sanitizers.h"
#include "tests/e2e/http_client.h"
#include "tests/e2e/metrics_scrape.h"
#include "tests/e2e/nginx_front.h"
#include "tests/e2e/server_process.h"
#include "tests/support/leak_scan.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_certs.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server.log"));
    ASSERT_TRUE(server_->Start()) << "the server did not start; see " << server_->log_file();
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
    admin_ = server_->admin_key();
    ASSERT_EQ(admin_.size(), 89u);
  }

  // Restarts the server on the same data dir with 'args' (a policy or config file), logging to
  // 'log' in the test's dir.
  void RestartWith(std::vector<std::string> args, const std::string& log = "server2.log") {
    server_->Stop(SIGTERM);
    server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub(log), std::move(args));
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
  }

  void Restart(int sig = SIGTERM) {
    server_->Stop(sig);
    ASSERT_TRUE(server_->Start());
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
  }

  // Creates a principal and returns its API key.
  std::string Principal(const std::string& name, const std::vector<std::string>& roles,
                        const json& merchants) {
    Reply r = client_->Post("/v1/principals", admin_,
                            {{"name", name}, {"roles", roles}, {"merchants", merchants}});
    EXPECT_EQ(r.status, 201) << r.body;
    return r.Json().value("api_key", "");
  }

  void Merchant(const std::string& id) {
    Reply r = client_->Post("/v1/merchants", admin_, {{"id", id}});
    EXPECT_EQ(r.status, 201) << r.body;
  }

  int64_t AuditCount() {
    int64_t n = 0;
    std::string cursor;
    for (;;) {
      Reply r = client_->Get("/v1/audit?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor), admin_);
      EXPECT_EQ(r.status, 200);
      json j = r.Json();
      n += static_cast<int64_t>(j["records"].size());
      if (j["next_cursor"].is_null()) break;
      cursor = j["next_cursor"].get<std::string>();
    }
    return n;
  }

  // No submitted value in the DB file, WAL, or log. Positive control: 'stored' (something the
  // database does hold in clear, such as a principal's name) must be found by the same scan, so
  // an empty or unreadable file cannot pass.
  void ExpectNoValuesAtRest(const std::unordered_set<std::string>& values, const std::string& stored) {
    const std::string db = server_->data_dir() + "/tokenvault.db";
    ASSERT_TRUE(FileExists(db));
    ASSERT_TRUE(FileExists(server_->log_file()));
    bool control_found = false;
    for (const std::string& file : {db, db + "-wal"}) {
      if (FileExists(file)) control_found |= !FindNeedles(file, {stored}).empty();
    }
    EXPECT_TRUE(control_found) << "the scan did not even find '" << stored << "'";
    for (const std::string& file : {db, db + "-wal", db + "-shm", server_->log_file()}) {
      if (!FileExists(file)) continue;
      std::map<size_t, std::unordered_set<std::string>> by_length;
      for (const std::string& v : values) by_length[v.size()].insert(v);
      for (const auto& [len, group] : by_length) {
        std::vector<std::string> hits = FindNeedles(file, group);
        EXPECT_TRUE(hits.empty()) << hits.size() << " submitted value(s) found in " << file;
      }
    }
  }

  // Rows in the tokens table. REQUIRES: the server is stopped.
  int64_t TokenRows() {
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
    EXPECT_TRUE(db.ok());
    if (!db.ok()) return -1;
    auto count = (*db)->Prepare("SELECT COUNT(*) FROM tokens");
    EXPECT_TRUE(count.ok() && *count->Step());
    return count.ok() ? count->ColumnInt(0) : -1;
  }

  // SIGTERM or SIGKILL in the middle of a stream of tokenize calls: every token answered 201
  // detokenizes to its value after the restart.
  void StreamAndInterrupt(int sig);

  // The authorization matrix (every route x every built-in role x in and out of scope) and the
  // bad-input matrix, run against client_: tokenvault itself, or the nginx front before it.
  void AuthorizationMatrixChecks();
  // 'behind_proxy': nginx answers the oversized body itself (413, its own audit is its access log).
  void BadInputChecks(bool behind_proxy);

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<HttpClient> client_;
  std::string admin_;
};

// The README's curl session, step by step.
TEST_F(ApiTest, ReadmeSession) {
  EXPECT_EQ(client_->Get("/healthz", "").status, 200);
  EXPECT_EQ(client_->Get("/readyz", "").status, 200);
  Merchant("acme");
  const std::string app = Principal("checkout", {"tokenizer"}, {"acme"});
  const std::string settle = Principal("settlement", {"detokenizer"}, {"acme"});
  const std::string helpdesk = Principal("helpdesk", {"support"}, {"acme"});

  Reply t = client_->Post("/v1/merchants/acme/tokens", app, {{"value", "4111 1111 1111 1111"}, {"type", "card"}});
  ASSERT_EQ(t.status, 201) << t.body;
  const json token = t.Json();
  EXPECT_EQ(token["type"], "card");
  EXPECT_EQ(token["last4"], "1111");
  EXPECT_EQ(token["merchant"], "acme");
  EXPECT_EQ(token["token"].get<std::string>().rfind("tok_", 0), 0u);
  EXPECT_EQ(t.body.find("4111111111111111"), std::string::npos);
  EXPECT_FALSE(t.headers["request-id"].empty());

  const json ask = {{"tokens", {token["token"]}}, {"reveal", "plain"}};
  Reply plain = client_->Post("/v1/merchants/acme/detokenize", settle, ask);
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(plain.Json()["items"][0]["value"], "4111111111111111");

  Reply masked = client_->Post("/v1/merchants/acme/detokenize", helpdesk,
                               {{"tokens", {token["token"]}}, {"reveal", "masked"}});
  ASSERT_EQ(masked.status, 200);
  EXPECT_EQ(masked.Json()["items"][0]["value"], "************1111");

  Reply denied = client_->Post("/v1/merchants/acme/detokenize", helpdesk, ask);
  EXPECT_EQ(denied.status, 403);
  EXPECT_EQ(denied.Json()["error"]["type"], "permission_denied");
  EXPECT_EQ(denied.body.find("4111"), std::string::npos);

  Reply audit = client_->Get("/v1/audit?outcome=denied&principal=helpdesk", admin_);
  ASSERT_EQ(audit.status, 200);
  const json records = audit.Json()["records"];
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["action"], "tokens.detokenize");
  EXPECT_EQ(records[0]["status"], 403);
  EXPECT_EQ(records[0]["request_id"], denied.headers["request-id"]);
  EXPECT_EQ(records[0]["resources"][0], token["token"]);

  Reply verify = client_->Get("/v1/audit/verify", admin_);
  ASSERT_EQ(verify.status, 200);
  EXPECT_TRUE(verify.Json()["ok"].get<bool>()) << verify.body;
  ExpectNoValuesAtRest({"4111111111111111", "4111 1111 1111 1111"}, token["token"]);
}

// Every built-in role x every endpoint x own and other merchant.
TEST_F(ApiTest, AuthorizationMatrix) { AuthorizationMatrixChecks(); }

void ApiTest::AuthorizationMatrixChecks() {
  Merchant("acme");
  Merchant("globex");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  auto tokenize = [&](const std::string& m) {
    return client_->Post("/v1/merchants/" + m + "/tokens", maker, {{"value", "v"}})
        .Json()["token"].get<std::string>();
  };
  const std::vector<std::string> roles = {"admin", "tokenizer", "detokenizer", "support", "auditor"};
  std::map<std::string, std::string> keys;
  for (const std::string& role : roles) keys[role] = Principal("p-" + role, {role}, {"acme"});

  struct Call {
    std::string name;
    std::function<Reply(const std::string& key, const std::string& merchant)> run;
    std::set<std::string> allowed;  // roles that may, inside their scope
    long ok_status;
    bool merchant_scoped;
  };
  int n = 0;
  const std::vector<Call> calls = {
      // Principals: managed only within the manager's own merchant scope.
      {"create principal",
       [&](const std::string& k, const std::string& m) {
         return client_->Post("/v1/principals", k, {{"name", "x" + std::to_string(++n)}, {"roles", {"auditor"}}, {"merchants", {m}}});
       }, {"admin"}, 201, true},
      {"delete principal",
       [&](const std::string& k, const std::string& m) {
         Principal("d" + std::to_string(++n), {"auditor"}, {m});
         return client_->Delete("/v1/principals/d" + std::to_string(n), k);
       }, {"admin"}, 204, true},
      {"create merchant (exists)",
       [&](const std::string& k, const std::string& m) { return client_->Post("/v1/merchants", k, {{"id", m}}); },
       {"admin"}, 409, true},
      {"tokenize",
       [&](const std::string& k, const std::string& m) {
         return client_->Post("/v1/merchants/" + m + "/tokens", k, {{"value", "v"}});
       }, {"tokenizer"}, 201, true},
      {"read token",
       [&](const std::string& k, const std::string& m) {
         return client_->Get("/v1/merchants/" + m + "/tokens/" + tokenize(m), k);
       }, {"tokenizer", "detokenizer", "support"}, 200, true},
      {"delete token",
       [&](const std::string& k, const std::string& m) {
         return client_->Delete("/v1/merchants/" + m + "/tokens/" + tokenize(m), k);
       }, {"tokenizer"}, 204, true},
      {"detokenize plain",
       [&](const std::string& k, const std::string& m) {
         return client_->Post("/v1/merchants/" + m + "/detokenize", k, {{"tokens", {tokenize(m)}}, {"reveal", "plain"}});
       }, {"detokenizer"}, 200, true},
      {"detokenize masked",
       [&](const std::string& k, const std::string& m) {
         return client_->Post("/v1/merchants/" + m + "/detokenize", k, {{"tokens", {tokenize(m)}}, {"reveal", "masked"}});
       }, {"detokenizer", "support"}, 200, true},
      {"read audit", [&](const std::string& k, const std::string&) { return client_->Get("/v1/audit", k); },
       {"admin", "auditor"}, 200, false},
      {"verify audit", [&](const std::string& k, const std::string&) { return client_->Get("/v1/audit/verify", k); },
       {"admin", "auditor"}, 200, false},
  };
  int cells = 0;
  for (const Call& call : calls) {
    for (const std::string& role : roles) {
      for (const std::string merchant : {"acme", "globex"}) {
        const bool in_scope = !call.merchant_scoped || merchant == "acme";
        const long expected = call.allowed.count(role) && in_scope ? call.ok_status : 403;
        Reply r = call.run(keys[role], merchant);
        EXPECT_EQ(r.status, expected) << call.name << " as " << role << " on " << merchant << ": " << r.body;
        ++cells;
      }
    }
  }
  EXPECT_EQ(cells, 10 * 5 * 2);
  // A scoped administrator cannot mint a principal with more reach than its own.
  Reply wider = client_->Post("/v1/principals", keys["admin"], {{"name", "wide"}, {"roles", {"detokenizer"}}, {"merchants", "*"}});
  EXPECT_EQ(wider.status, 403) << wider.body;
  Reply mixed = client_->Post("/v1/principals", keys["admin"], {{"name", "mixed"}, {"roles", {"detokenizer"}}, {"merchants", {"acme", "globex"}}});
  EXPECT_EQ(mixed.status, 403) << mixed.body;
  EXPECT_EQ(client_->Delete("/v1/principals/admin", keys["admin"]).status, 403);
  // No key, a malformed key, an unknown key id, a known id with a wrong secret, a deleted
  // principal's key: 401.
  EXPECT_EQ(client_->Get("/v1/audit", "").status, 401);
  EXPECT_EQ(client_->Get("/v1/audit", "not-a-key").status, 401);
  EXPECT_EQ(client_->Get("/v1/audit", "tvk_00000000000000000000_" + std::string(64, '0')).status, 401);
  std::string wrong_secret = admin_;
  wrong_secret.back() = wrong_secret.back() == '0' ? '1' : '0';
  Reply w = client_->Get("/v1/audit", wrong_secret);
  EXPECT_EQ(w.status, 401);
  EXPECT_EQ(w.headers["www-authenticate"], "Bearer");
  std::string gone = Principal("gone", {"auditor"}, "*");
  EXPECT_EQ(client_->Get("/v1/audit", gone).status, 200);
  ASSERT_EQ(client_->Delete("/v1/principals/gone", admin_).status, 204);
  EXPECT_EQ(client_->Get("/v1/audit", gone).status, 401);
  // Separation of duties is refused at creation.
  Reply sod = client_->Post("/v1/principals", admin_, {{"name", "both"}, {"roles", {"admin", "detokenizer"}}, {"merchants", "*"}});
  EXPECT_EQ(sod.status, 400);
  EXPECT_EQ(sod.Json()["error"]["code"], "separation_of_duties");
}

TEST_F(ApiTest, AnotherMerchantsTokenAnswersLikeAnUnknownOne) {
  Merchant("acme");
  Merchant("globex");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string acme_token =
      client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "secret"}}).Json()["token"];
  const std::string unknown = "tok_0000000000000000000000";
  auto item = [&](const std::string& t) {
    json j = client_->Post("/v1/merchants/globex/detokenize", reader, {{"tokens", {t}}, {"reveal", "plain"}}).Json();
    j["items"][0].erase("token");
    return j["items"][0].dump();
  };
  EXPECT_EQ(item(acme_token), item(unknown));
  Reply a = client_->Get("/v1/merchants/globex/tokens/" + acme_token, maker);
  Reply b = client_->Get("/v1/merchants/globex/tokens/" + unknown, maker);
  EXPECT_EQ(a.status, 404);
  EXPECT_EQ(a.status, b.status);
  json ja = a.Json(), jb = b.Json();
  ja["error"].erase("request_id");
  jb["error"].erase("request_id");
  EXPECT_EQ(ja, jb);
}

TEST_F(ApiTest, FormatPreservingTokensOverHttp) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string card = "4242424242424242";
  Reply made = client_->Post("/v1/merchants/acme/tokens", maker,
                             {{"value", card}, {"type", "card"}, {"format", "preserving"}, {"keep_bin", true}});
  ASSERT_EQ(made.status, 201) << made.body;
  const std::string token = made.Json()["token"];
  EXPECT_EQ(made.Json()["format"], "preserving");
  EXPECT_EQ(token.size(), card.size());
  EXPECT_EQ(token.substr(0, 6), "424242");
  EXPECT_EQ(token.substr(12), "4242");
  EXPECT_NE(token, card);
  Reply ssn = client_->Post("/v1/merchants/acme/tokens", maker,
                            {{"value", "123-45-6789"}, {"type", "ssn"}, {"format", "preserving"}});
  ASSERT_EQ(ssn.status, 201) << ssn.body;
  const std::string ssn_token = ssn.Json()["token"];
  EXPECT_EQ(ssn_token.substr(0, 1), "9");
  EXPECT_EQ(ssn_token.substr(7), "6789");

  // Keyed fingerprints: the same card in the same merchant shares one, whatever the format.
  Reply again = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", card}, {"type", "card"}});
  ASSERT_EQ(again.status, 201);
  EXPECT_EQ(again.Json()["fingerprint"], made.Json()["fingerprint"]);
  EXPECT_EQ(made.Json()["fingerprint"].get<std::string>().substr(0, 3), "fp_");
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, maker).status, 200);
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + ssn_token, maker).status, 200);
  json revealed = client_->Post("/v1/merchants/acme/detokenize", reader,
                                {{"tokens", {token, ssn_token, card}}, {"reveal", "plain"}}).Json();
  EXPECT_EQ(revealed["items"][0]["value"], card);
  EXPECT_EQ(revealed["items"][1]["value"], "123-45-6789");
  // A real card number where a token belongs is malformed: not looked up, not named anywhere.
  EXPECT_EQ(revealed["items"][2]["error"]["code"], "invalid_token");
  json records = client_->Get("/v1/audit?action=tokens.detokenize", admin_).Json()["records"];
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.back()["resources"].dump().find(card), std::string::npos);

  for (const json& bad : {json{{"value", "secret"}, {"format", "preserving"}},
                          json{{"value", card}, {"type", "card"}, {"keep_bin", true}},
                          json{{"value", "123-45-6789"}, {"type", "ssn"}, {"format", "preserving"}, {"keep_bin", true}},
                          json{{"value", card}, {"type", "card"}, {"format", "fpe"}}}) {
    Reply r = client_->Post("/v1/merchants/acme/tokens", maker, bad);
    EXPECT_EQ(r.status, 400) << bad.dump();
    EXPECT_EQ(r.Json()["error"]["code"], "invalid_format") << r.body;
  }
}

TEST_F(ApiTest, DeterministicTokensOverHttp) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const json body = {{"value", "4000 0566 5566 5556"}, {"type", "card"}, {"deterministic", true}};
  // Eight clients at once: one token, one 201; the others get it with 200.
  constexpr int kClients = 8;
  std::vector<Reply> replies(kClients);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      HttpClient client(server_->base_url(), server_->ca_file());
      ++ready;
      while (ready.load() < kClients) std::this_thread::yield();
      replies[i] = client.Post("/v1/merchants/acme/tokens", maker, body);
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> tokens;
  int created = 0;
  for (const Reply& r : replies) {
    ASSERT_TRUE(r.status == 200 || r.status == 201) << r.status << " " << r.body;
    created += r.status == 201;
    tokens.insert(r.Json()["token"].get<std::string>());
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(tokens.size(), 1u);
  // Not deterministic, or another format: new tokens.
  Reply plain = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "4000056655665556"}, {"type", "card"}});
  EXPECT_EQ(plain.status, 201);
  EXPECT_NE(plain.Json()["token"], *tokens.begin());
  Reply wrong = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "x"}, {"deterministic", "yes"}});
  EXPECT_EQ(wrong.status, 400);
  EXPECT_EQ(wrong.Json()["error"]["code"], "invalid_deterministic");
  // The audit trail says which request made the token and which were answered with it.
  json records = client_->Get("/v1/audit?action=tokens.create&limit=1000", admin_).Json()["records"];
  int audited_200 = 0;
  for (const json& r : records) audited_200 += r["status"] == 200 && r["resource"] == *tokens.begin();
  EXPECT_EQ(audited_200, kClients - 1);
  server_->Stop(SIGTERM);
  EXPECT_EQ(TokenRows(), 2);
}

TEST_F(ApiTest, ABatchAnswersEachItemInOrderAndCommitsOnce) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  std::vector<std::string> values;
  json items = json::array();
  for (int i = 0; i < 1000; ++i) {
    if (i == 10) {
      items.push_back({{"value", "4111 1111 1111 1112"}, {"type", "card"}});  // fails Luhn
    } else if (i == 20) {
      items.push_back({{"value", 42}});  // not a string
    } else if (i == 30) {
      items.push_back("not an object");
    } else if (i == 40) {
      items.push_back({{"value", "x"}, {"colour", "blue"}});  // unknown field
    } else {
      values.push_back("batch value " + std::to_string(i));
      items.push_back({{"value", values.back()}});
      continue;
    }
    values.push_back("");
  }
  const int64_t audit_before = AuditCount();
  Reply r = client_->Post("/v1/merchants/acme/tokens/batch", maker, {{"items", items}});
  ASSERT_EQ(r.status, 200) << r.body.substr(0, 300);
  const json answer = r.Json()["items"];
  ASSERT_EQ(answer.size(), 1000u);
  EXPECT_EQ(answer[10]["error"]["code"], "invalid_card");
  EXPECT_EQ(answer[20]["error"]["code"], "invalid_value");
  EXPECT_EQ(answer[30]["error"]["code"], "invalid_item");
  EXPECT_EQ(answer[40]["error"]["code"], "unknown_field");
  EXPECT_EQ(answer[10]["error"]["type"], "invalid_request");
  json tokens = json::array();
  for (int i = 0; i < 1000; ++i) {
    if (values[i].empty()) continue;
    ASSERT_TRUE(answer[i].contains("token")) << i << ": " << answer[i].dump();
    tokens.push_back(answer[i]["token"]);
  }
  // One audit record for the batch, naming every item's outcome.
  // The batch, the merchant's fingerprint key (made on first use: a key event of its own), and
  // the audit read just above.
  EXPECT_EQ(AuditCount(), audit_before + 3);
  json records = client_->Get("/v1/audit?action=tokens.batch", admin_).Json()["records"];
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["resources"].size(), 1000u);
  EXPECT_EQ(records[0]["resources"][10], "error:invalid_card");
  EXPECT_EQ(records[0]["resources"][0], answer[0]["token"]);
  EXPECT_EQ(records[0]["reason"], "1000 items: 996 created, 0 existing, 4 failed");

  // Detokenize the 996: every value comes back, in order.
  Reply revealed = client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", tokens}, {"reveal", "plain"}});
  ASSERT_EQ(revealed.status, 200);
  size_t k = 0;
  for (int i = 0; i < 1000; ++i) {
    if (values[i].empty()) continue;
    EXPECT_EQ(revealed.Json()["items"][k++]["value"], values[i]) << i;
  }

  // 1001 items: refused as a whole, nothing made.
  json too_many = json::array();
  for (int i = 0; i < 1001; ++i) too_many.push_back({{"value", "v"}});
  Reply refused = client_->Post("/v1/merchants/acme/tokens/batch", maker, {{"items", too_many}});
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(refused.Json()["error"]["code"], "too_many_items");
  for (const json& bad : {json{{"items", json::array()}}, json{{"items", "x"}}, json::object(),
                          json{{"items", {{{"value", "v"}}}}, {"extra", 1}}}) {
    Reply b = client_->Post("/v1/merchants/acme/tokens/batch", maker, bad);
    EXPECT_EQ(b.status, 400) << bad.dump();
  }
  // Only tokens:create may batch; another merchant's scope is refused.
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens/batch", reader, {{"items", {{{"value", "v"}}}}}).status, 403);
  EXPECT_EQ(client_->Post("/v1/merchants/nobody/tokens/batch", maker, {{"items", {{{"value", "v"}}}}}).status, 404);
  server_->Stop(SIGTERM);
  EXPECT_EQ(TokenRows(), 996);
  std::unordered_set<std::string> stored(values.begin(), values.end());
  stored.erase("");
  ExpectNoValuesAtRest(stored, "maker");
}

TEST_F(ApiTest, IdempotencyKeysReplayTheFirstAnswerAndAreScopedToThePrincipal) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string other = Principal("other", {"tokenizer"}, "*");
  auto post = [&](const std::string& path, const std::string& key, const json& body,
                  const std::string& idempotency_key) {
    return client_->Send("POST", path, key, body.dump(), "application/json",
                         {"Idempotency-Key: " + idempotency_key});
  };
  const json body = {{"value", "4111111111111111"}, {"type", "card"}, {"metadata", {{"order", "A-1"}}}};
  Reply first = post("/v1/merchants/acme/tokens", maker, body, "order-A-1");
  ASSERT_EQ(first.status, 201) << first.body;
  Reply replay = post("/v1/merchants/acme/tokens", maker, body, "order-A-1");
  EXPECT_EQ(replay.status, 201);
  EXPECT_EQ(replay.body, first.body);  // byte for byte
  EXPECT_NE(replay.headers["request-id"], first.headers["request-id"]);
  // Another body under the same key: 409, nothing made.
  Reply reused = post("/v1/merchants/acme/tokens", maker, {{"value", "4242424242424242"}, {"type", "card"}}, "order-A-1");
  EXPECT_EQ(reused.status, 409);
  EXPECT_EQ(reused.Json()["error"]["type"], "conflict");
  EXPECT_EQ(reused.Json()["error"]["code"], "idempotency_key_reused");
  // The same key from another principal is its own.
  Reply theirs = post("/v1/merchants/acme/tokens", other, body, "order-A-1");
  EXPECT_EQ(theirs.status, 201);
  EXPECT_NE(theirs.Json()["token"], first.Json()["token"]);
  // Batches too; the same key on the other route is another request.
  const json batch = {{"items", {{{"value", "one"}}, {{"value", 1}}, {{"value", "two"}, {"deterministic", true}}}}};
  Reply b1 = post("/v1/merchants/acme/tokens/batch", maker, batch, "batch-7");
  ASSERT_EQ(b1.status, 200) << b1.body;
  Reply b2 = post("/v1/merchants/acme/tokens/batch", maker, batch, "batch-7");
  EXPECT_EQ(b2.status, 200);
  EXPECT_EQ(b2.body, b1.body);
  EXPECT_EQ(post("/v1/merchants/acme/tokens/batch", maker, batch, "order-A-1").status, 409);
  // Malformed keys are refused before anything happens.
  for (const std::string& bad : {std::string(256, 'k'), std::string("caf\xc3\xa9")}) {
    Reply r = post("/v1/merchants/acme/tokens", maker, body, bad);
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_EQ(r.Json()["error"]["code"], "invalid_idempotency_key");
  }
  // Authorisation comes first: a caller who may not tokenize learns 403, whatever its key.
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  EXPECT_EQ(post("/v1/merchants/acme/tokens", reader, body, std::string(256, 'k')).status, 403);
  EXPECT_EQ(post("/v1/merchants/acme/tokens", reader, body, "order-A-1").status, 403);
  // An error answer is not kept: the request can be corrected and sent again with the key.
  Reply bad_card = post("/v1/merchants/acme/tokens", maker, {{"value", "4111111111111112"}, {"type", "card"}}, "fixme");
  EXPECT_EQ(bad_card.status, 400);
  EXPECT_EQ(post("/v1/merchants/acme/tokens", maker, body, "fixme").status, 201);
  // Replays are audited like any request.
  json records = client_->Get("/v1/audit?principal=maker&action=tokens.create", admin_).Json()["records"];
  int replays = 0;
  for (const json& r : records) replays += r["reason"] == "idempotent replay";
  EXPECT_EQ(replays, 1);

  // Eight clients at once with one new key: one token; every other answer is either the same
  // bytes (sent after the first committed) or 409 idempotency_key_in_use (sent meanwhile).
  constexpr int kClients = 8;
  const json racing = {{"value", "racing value"}};
  std::vector<Reply> replies(kClients);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      HttpClient client(server_->base_url(), server_->ca_file());
      ++ready;
      while (ready.load() < kClients) std::this_thread::yield();
      replies[i] = client.Send("POST", "/v1/merchants/acme/tokens", maker, racing.dump(),
                               "application/json", {"Idempotency-Key: race"});
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> bodies;
  for (const Reply& r : replies) {
    if (r.status == 201) {
      bodies.insert(r.body);
    } else {
      EXPECT_EQ(r.status, 409) << r.body;
      EXPECT_EQ(r.Json()["error"]["code"], "idempotency_key_in_use") << r.body;
    }
  }
  EXPECT_EQ(bodies.size(), 1u);

  server_->Stop(SIGTERM);
  // 1 + 1 (other) + 2 (batch) + 1 (fixme) + 1 (race): replays made nothing.
  EXPECT_EQ(TokenRows(), 6);
  // Neither the keys nor the bodies are stored in clear.
  const std::string db = server_->data_dir() + "/tokenvault.db";
  for (const std::string& file : {db, db + "-wal"}) {
    if (!FileExists(file)) continue;
    EXPECT_TRUE(FindNeedles(file, {"order-A-1", "batch-7", "fixme"}).empty()) << file;
  }
}

TEST_F(ApiTest, KeyAdministratorsRotateDeksAndSeeTheirUse) {
  Merchant("acme");
  Merchant("other");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string keyadmin = Principal("keyadmin", {"admin"}, {"acme"});
  const std::string before = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "before rotation"}}).Json()["token"];
  // No body at all (no Content-Type either) is how a body-less POST is sent.
  Reply rotated = client_->Send("POST", "/v1/merchants/acme/keys/rotate", keyadmin, "", "");
  ASSERT_EQ(rotated.status, 200) << rotated.body;
  EXPECT_EQ(rotated.Json()["dek_version"], 2);
  EXPECT_EQ(client_->Post("/v1/merchants/acme/keys/rotate", keyadmin, json::object()).Json()["dek_version"], 3);
  const std::string after = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "after rotation"}}).Json()["token"];
  json revealed = client_->Post("/v1/merchants/acme/detokenize", reader,
                                {{"tokens", {before, after}}, {"reveal", "plain"}}).Json()["items"];
  EXPECT_EQ(revealed[0]["value"], "before rotation");
  EXPECT_EQ(revealed[1]["value"], "after rotation");

  Reply keys = client_->Get("/v1/merchants/acme/keys", keyadmin);
  ASSERT_EQ(keys.status, 200) << keys.body;
  const json versions = keys.Json()["dek_versions"];
  ASSERT_EQ(versions.size(), 3u);
  EXPECT_EQ(versions[0]["state"], "retired");
  EXPECT_EQ(versions[0]["tokens"], 1);
  EXPECT_EQ(versions[1]["tokens"], 0);
  EXPECT_EQ(versions[2]["state"], "active");
  EXPECT_EQ(versions[2]["tokens"], 1);
  EXPECT_EQ(keys.body.find("wrapped"), std::string::npos);

  // The KEK too: a new KEK in the HSM; the three DEK versions and the fingerprint key rewrapped.
  Reply kek = client_->Send("POST", "/v1/merchants/acme/kek/rotate", keyadmin, "", "");
  ASSERT_EQ(kek.status, 200) << kek.body;
  EXPECT_EQ(kek.Json()["kek_version"], 2);
  EXPECT_EQ(kek.Json()["rewrapped"], 4);
  revealed = client_->Post("/v1/merchants/acme/detokenize", reader,
                           {{"tokens", {before, after}}, {"reveal", "plain"}}).Json()["items"];
  EXPECT_EQ(revealed[0]["value"], "before rotation");
  EXPECT_EQ(revealed[1]["value"], "after rotation");
  EXPECT_EQ(client_->Get("/v1/merchants/acme/keys", keyadmin).Json()["dek_versions"][0]["kek_version"], 2);
  EXPECT_EQ(client_->Send("POST", "/v1/merchants/acme/kek/rotate", maker, "", "").status, 403);
  // Key administration is its own permission, scoped to merchants.
  EXPECT_EQ(client_->Send("POST", "/v1/merchants/acme/keys/rotate", maker, "", "").status, 403);
  EXPECT_EQ(client_->Get("/v1/merchants/acme/keys", reader).status, 403);
  EXPECT_EQ(client_->Send("POST", "/v1/merchants/other/keys/rotate", keyadmin, "", "").status, 403);
  EXPECT_EQ(client_->Send("POST", "/v1/merchants/nobody/keys/rotate", admin_, "", "").status, 404);
  EXPECT_EQ(client_->Post("/v1/merchants/acme/keys/rotate", keyadmin, {{"version", 9}}).status, 400);
  // Each rotation is in the audit trail with who asked and which keys.
  json records = client_->Get("/v1/audit?action=keys.rotate", admin_).Json()["records"];
  int allowed = 0;
  for (const json& r : records) {
    if (r["outcome"] != "allowed") continue;
    ++allowed;
    EXPECT_EQ(r["principal"], "keyadmin");
    EXPECT_EQ(r["resource"].get<std::string>().rfind("dek:acme/v", 0), 0u);
  }
  EXPECT_EQ(allowed, 2);
}

TEST_F(ApiTest, ShreddingAMerchantAnswersAReceiptThatIsItsAuditRecord) {
  Merchant("acme");
  Merchant("other");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string acme = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "acme value"}}).Json()["token"];
  const std::string other = client_->Post("/v1/merchants/other/tokens", maker, {{"value", "other value"}}).Json()["token"];
  // Only merchants:shred may shred.
  EXPECT_EQ(client_->Delete("/v1/merchants/acme", maker).status, 403);
  Reply shred = client_->Delete("/v1/merchants/acme", admin_);
  ASSERT_EQ(shred.status, 200) << shred.body;
  const json receipt = shred.Json();
  EXPECT_EQ(receipt["merchant"], "acme");
  EXPECT_EQ(receipt["principal"], "admin");
  EXPECT_EQ(receipt["destroyed"][0], "kek:tokenvault/kek/acme/v1");
  EXPECT_EQ(receipt["destroyed"][1], "dek:acme/v1");
  // The same facts are in the audit trail, at the sequence number the receipt names.
  json records = client_->Get("/v1/audit?action=merchants.shred", admin_).Json()["records"];
  ASSERT_EQ(records.size(), 2u);  // the 403 and the shredding
  const json& record = records[1];
  EXPECT_EQ(record["seq"], receipt["audit_seq"]);
  EXPECT_EQ(record["time"], receipt["time"]);
  EXPECT_EQ(record["principal"], receipt["principal"]);
  EXPECT_EQ(record["resources"], receipt["destroyed"]);
  EXPECT_EQ(record["outcome"], "allowed");
  // Its tokens are gone, the other merchant's are not.
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + acme, maker).status, 410);
  json items = client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", {acme}}, {"reveal", "plain"}}).Json()["items"];
  EXPECT_EQ(items[0]["error"]["type"], "gone");
  EXPECT_EQ(client_->Post("/v1/merchants/other/detokenize", reader, {{"tokens", {other}}, {"reveal", "plain"}})
                .Json()["items"][0]["value"], "other value");
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "new"}}).status, 404);
  EXPECT_EQ(client_->Delete("/v1/merchants/acme", admin_).status, 410);
  EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "acme"}}).status, 409);
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
}

// Runs `tokenvault <args>` on the (stopped) server's data dir; returns its stdout, or "" when it
// failed.
std::string RunCli(const std::string& data_dir, const std::string& args) {
  const std::string command = std::string(TOKENVAULT_BINARY) + " " + args + " --data-dir " + data_dir + " 2>/dev/null";
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
  return pclose(pipe) == 0 ? out : "";
}

TEST_F(ApiTest, OperatorKeyCommandsUseTheSamePathsAndAreAudited) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "kept"}}).Json()["token"];
  server_->Stop(SIGTERM);
  const std::string data = server_->data_dir();
  EXPECT_EQ(json::parse(RunCli(data, "keys rotate --merchant acme"))["dek_version"], 2);
  const json kek = json::parse(RunCli(data, "keys rotate-kek --merchant acme"));
  EXPECT_EQ(kek["kek_version"], 2);
  const json moved = json::parse(RunCli(data, "keys reencrypt --merchant acme"));
  EXPECT_EQ(moved["moved"], 1);
  EXPECT_EQ(moved["destroyed_versions"], 1);
  const json status = json::parse(RunCli(data, "keys status --merchant acme"));
  EXPECT_EQ(status["dek_versions"][0]["state"], "destroyed");
  EXPECT_EQ(status["dek_versions"][1]["tokens"], 1);
  EXPECT_EQ(RunCli(data, "keys rotate --merchant nobody"), "");  // fails, non-zero exit
  Restart();
  EXPECT_EQ(client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", {token}}, {"reveal", "plain"}})
                .Json()["items"][0]["value"], "kept");
  json records = client_->Get("/v1/audit?merchant=acme&limit=1000", admin_).Json()["records"];
  int by_operator = 0;
  for (const json& r : records) by_operator += r["principal"].get<std::string>().rfind("operator:", 0) == 0;
  EXPECT_GE(by_operator, 3);  // rotate, rotate-kek (and the old KEK's destruction)
  server_->Stop(SIGTERM);
  const json receipt = json::parse(RunCli(data, "merchant shred --merchant acme"));
  EXPECT_EQ(receipt["merchant"], "acme");
  EXPECT_EQ(receipt["principal"].get<std::string>().rfind("operator:", 0), 0u);
  Restart();
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, maker).status, 410);
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
}

// What /proc says of the running server: no core file can be written, and (when the process may
// lock memory without limit, as root can) its memory is locked, so keys never reach swap.
TEST_F(ApiTest, TheServerCannotDumpCoreAndLocksItsMemory) {
  auto proc_line = [&](const std::string& file, const std::string& prefix) {
    std::ifstream in("/proc/" + std::to_string(server_->pid()) + "/" + file);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix, 0) == 0) return line;
    }
    return std::string();
  };
  const std::string core = proc_line("limits", "Max core file size");
  ASSERT_FALSE(core.empty());
  EXPECT_NE(core.find(" 0 "), std::string::npos) << core;
#if TOKENVAULT_ASAN
  GTEST_SKIP() << "memory is not locked under AddressSanitizer";
#else
  const std::string caps = proc_line("status", "CapEff:");
  const bool may_lock = !caps.empty() && ((std::strtoull(caps.c_str() + 7, nullptr, 16) >> 14) & 1);
  if (!may_lock) GTEST_SKIP() << "no CAP_IPC_LOCK here: the server warns instead";
  const std::string locked = proc_line("status", "VmLck:");
  ASSERT_FALSE(locked.empty());
  EXPECT_GT(std::strtoull(locked.c_str() + 6, nullptr, 10), 0u) << locked;
#endif
}

TEST_F(ApiTest, TenBadKeysLockTheirAddressOutEvenForAGoodKey) {
  const std::string wrong = "tvk_0123456789abcdef0123_" + std::string(64, 'a');
  for (int i = 0; i < 10; ++i) {
    Reply r = client_->Get("/v1/audit", wrong);
    EXPECT_EQ(r.status, 401) << i;
  }
  // 127.0.0.1 is locked out now: the administrator's good key from there is refused too.
  Reply refused = client_->Get("/v1/audit", admin_);
  EXPECT_EQ(refused.status, 429) << refused.body;
  EXPECT_EQ(refused.Json()["error"]["code"], "locked_out");
  const int retry_after = std::stoi(refused.headers["retry-after"]);
  EXPECT_GT(retry_after, 29 * 60);
  EXPECT_LE(retry_after, 30 * 60);
  // Another address is not affected, and sees the lockout in the audit trail.
  HttpClient other(server_->base_url(), server_->ca_file());
  other.set_source_address("127.0.0.2");
  Reply audit = other.Get("/v1/audit?outcome=denied&limit=1000", admin_);
  ASSERT_EQ(audit.status, 200) << audit.body;
  const json records = audit.Json()["records"];
  int failures = 0, lockouts = 0, refusals = 0;
  for (const json& r : records) {
    EXPECT_EQ(r["source_ip"], "127.0.0.1");
    if (r["status"] == 401) ++failures;
    if (r["reason"].get<std::string>().find("now locked out") != std::string::npos) ++lockouts;
    if (r["status"] == 429) ++refusals;
  }
  EXPECT_EQ(failures, 10);
  EXPECT_EQ(lockouts, 1);
  EXPECT_EQ(refusals, 1);
}

TEST_F(ApiTest, ABudgetOf100PlainRevealsPerMinuteRefusesTheRestAuditsThemAndSurvivesACrash) {
  const std::string policy_file = dir_.Sub("budgets.json");
  std::ofstream(policy_file) << R"({"budgets":[
      {"principal":"bulk","reveal":"plain","max_values":100,"window_seconds":60}]})";
  RestartWith({"--policy", policy_file}, "server2.log");
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string bulk = Principal("bulk", {"detokenizer"}, json::array({"acme"}));
  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "4111"}}).Json()["token"];
  const json one = {{"tokens", {token}}, {"reveal", "plain"}};
  // 150 plain reveals from three connections at once, well within 10 s (each takes milliseconds).
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::thread> senders;
  for (int t = 0; t < 3; ++t) {
    senders.emplace_back([&] {
      HttpClient client(server_->base_url(), server_->ca_file());
      for (int i = 0; i < 50; ++i) {
        Reply r = client.Post("/v1/merchants/acme/detokenize", bulk, one);
        if (r.status == 200 && r.Json()["items"][0]["value"] == "4111") {
          ++ok;
        } else if (r.status == 429 && r.Json()["error"]["code"] == "budget_exceeded" &&
                   r.Json()["error"]["type"] == "rate_limited" && std::stoi(r.headers["retry-after"]) >= 1 &&
                   std::stoi(r.headers["retry-after"]) <= 70) {
          ++refused;
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& s : senders) s.join();
  EXPECT_EQ(ok, 100);
  EXPECT_EQ(refused, 50);
  EXPECT_EQ(other, 0);
  // Every refusal is in the audit trail, denied, with the budget as its reason.
  Reply denied = client_->Get("/v1/audit?principal=bulk&outcome=denied&limit=1000", admin_);
  ASSERT_EQ(denied.status, 200);
  int audited = 0;
  const json records = denied.Json()["records"];
  for (const json& r : records) {
    EXPECT_EQ(r["status"], 429);
    EXPECT_NE(r["reason"].get<std::string>().find("budget exceeded"), std::string::npos) << r.dump();
    EXPECT_EQ(r["resources"][0], token);
    ++audited;
  }
  EXPECT_EQ(audited, 50);
  // Masked reveals have a budget of their own (none here).
  EXPECT_EQ(client_->Post("/v1/merchants/acme/detokenize", bulk, {{"tokens", {token}}, {"reveal", "masked"}}).status, 200);
  // The counters are committed with the reveals' audit records: a crash does not refill them.
  server_->Stop(SIGKILL);
  ASSERT_TRUE(server_->Start());
  client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
  Reply after = client_->Post("/v1/merchants/acme/detokenize", bulk, one);
  EXPECT_EQ(after.status, 429) << after.body;
  EXPECT_EQ(after.Json()["error"]["code"], "budget_exceeded");
}

TEST_F(ApiTest, SighupReloadsThePolicyFileAndRefusesAnInvalidOne) {
  const std::string policy_file = dir_.Sub("policy.json");
  auto write_policy = [&](const std::string& text) { std::ofstream(policy_file) << text; };
  write_policy(R"({"roles":[{"name":"reconciler","permissions":["tokens:read"]}]})");
  RestartWith({"--policy", policy_file}, "server2.log");
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reconciler = Principal("recon", {"reconciler"}, "*");
  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "v"}}).Json()["token"];
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, reconciler).status, 200);
  // The role loses tokens:read; SIGHUP (what `tokenvault policy reload` sends) applies it.
  write_policy(R"({"roles":[{"name":"reconciler","permissions":["audit:read"]}]})");
  ASSERT_EQ(std::system((std::string(TOKENVAULT_BINARY) + " policy reload --data-dir " +
                         server_->data_dir() + " >/dev/null 2>&1").c_str()), 0);
  long status = 0;
  for (int i = 0; i < 100 && status != 403; ++i) {  // the reload is asynchronous: poll, bounded
    status = client_->Get("/v1/merchants/acme/tokens/" + token, reconciler).status;
    if (status != 403) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 403);
  EXPECT_EQ(client_->Get("/v1/audit?limit=1", reconciler).status, 200);
  // An invalid file (separation of duties broken, then not JSON at all) is refused: the running
  // policy stays. One signal at a time: signals sent together may arrive as one.
  auto refusals_logged = [&] {
    std::ifstream log(server_->log_file());
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    int n = 0;
    for (size_t at = text.find("refused, the running policy stays"); at != std::string::npos;
         at = text.find("refused, the running policy stays", at + 1)) {
      ++n;
    }
    return n;
  };
  int expected = 0;
  for (const char* invalid : {R"({"roles":[{"name":"reconciler","permissions":["keys:rotate","tokens:detokenize:plain"]}]})",
                              "not json"}) {
    write_policy(invalid);
    kill(server_->pid(), SIGHUP);
    ++expected;
    for (int i = 0; i < 200 && refusals_logged() < expected; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(refusals_logged(), expected) << "see " << server_->log_file();
  }
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, reconciler).status, 403);
  EXPECT_EQ(client_->Get("/v1/audit?limit=1", reconciler).status, 200);
  // The one reload that took effect is in the audit trail.
  json records = client_->Get("/v1/audit?action=policy.reload", admin_).Json()["records"];
  ASSERT_EQ(records.size(), 1u);
  // It names exactly what was loaded: the file's SHA-256.
  const std::string reason = records[0]["reason"];
  const size_t at = reason.find("sha256 ");
  ASSERT_NE(at, std::string::npos) << reason;
  EXPECT_EQ(reason.substr(at + 7).find_first_not_of("0123456789abcdef"), std::string::npos) << reason;
  EXPECT_EQ(reason.size() - at - 7, 64u) << reason;
}

TEST_F(ApiTest, PurposeBoundRevealsNeedAnAllowedPurposeAndRecordIt) {
  const std::string policy_file = dir_.Sub("policy.json");
  std::ofstream(policy_file) << R"({"roles":[{"name":"chargebacks",)"
                                R"("permissions":["tokens:detokenize:plain"],"purposes":["chargeback","refund"]}]})";
  RestartWith({"--policy", policy_file}, "server2.log");
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string agent = Principal("agent", {"chargebacks"}, {"acme"});
  const std::string settle = Principal("settle", {"detokenizer"}, {"acme"});
  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "purpose value"}}).Json()["token"];
  auto reveal = [&](const std::string& key, const json& purpose) {
    json body = {{"tokens", {token}}, {"reveal", "plain"}};
    if (!purpose.is_null()) body["purpose"] = purpose;
    return client_->Post("/v1/merchants/acme/detokenize", key, body);
  };
  Reply missing = reveal(agent, nullptr);
  EXPECT_EQ(missing.status, 403);
  EXPECT_EQ(missing.Json()["error"]["code"], "purpose_required");
  Reply wrong = reveal(agent, "marketing");
  EXPECT_EQ(wrong.status, 403);
  EXPECT_EQ(wrong.Json()["error"]["code"], "purpose_not_allowed");
  EXPECT_EQ(wrong.body.find("purpose value"), std::string::npos);
  EXPECT_EQ(reveal(agent, "Not A Purpose").status, 400);
  Reply allowed = reveal(agent, "chargeback");
  ASSERT_EQ(allowed.status, 200) << allowed.body;
  EXPECT_EQ(allowed.Json()["items"][0]["value"], "purpose value");
  EXPECT_EQ(reveal(settle, nullptr).status, 200);  // a role without purposes needs none
  // Every attempt is recorded with its purpose (or the lack of one).
  json records = client_->Get("/v1/audit?action=tokens.detokenize&principal=agent", admin_).Json()["records"];
  ASSERT_EQ(records.size(), 4u);  // missing, not allowed, malformed, allowed
  EXPECT_EQ(records[0]["outcome"], "denied");
  EXPECT_EQ(records[0]["reason"].get<std::string>().rfind("purpose_required", 0), 0u) << records[0]["reason"];
  EXPECT_EQ(records[1]["outcome"], "denied");
  EXPECT_NE(records[1]["reason"].get<std::string>().find("purpose: marketing"), std::string::npos)
      << records[1]["reason"];
  EXPECT_EQ(records[2]["status"], 400);
  EXPECT_EQ(records[3]["outcome"], "allowed");
  EXPECT_NE(records[3]["reason"].get<std::string>().find("purpose: chargeback"), std::string::npos)
      << records[3]["reason"];
}

// PCI DSS 10.2.1: the start and stop of the service (and so of its audit logging) are in the
// trail, in order, around the requests they bracket.
TEST_F(ApiTest, StartAndStopOfTheServiceAreAudited) {
  EXPECT_EQ(client_->Get("/v1/audit/verify", admin_).status, 200);
  Restart();
  json records = client_->Get("/v1/audit?principal=system&limit=1000", admin_).Json()["records"];
  std::vector<std::string> events;
  for (const json& r : records) {
    if (r["action"].get<std::string>().rfind("service.", 0) == 0) events.push_back(r["action"]);
  }
  EXPECT_EQ(events, (std::vector<std::string>{"service.start", "service.stop", "service.start"}));
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
}

// PCI DSS 10.2.1: each event class it names is in the trail, with who, what, when and outcome.
TEST_F(ApiTest, EveryPciDssEventClassLandsInTheAuditTrail) {
  Merchant("acme");                                                                 // merchant created
  const std::string maker = Principal("maker", {"tokenizer"}, json::array({"acme"}));  // credential issued
  const std::string reader = Principal("reader", {"support"}, json::array({"acme"}));
  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "v"}}).Json()["token"];
  client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", {token}}, {"reveal", "masked"}});  // allowed
  client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", {token}}, {"reveal", "plain"}});   // denied
  client_->Get("/v1/audit", "tvk_00000000000000000000_" + std::string(64, '0'));  // invalid access
  client_->Send("POST", "/v1/merchants/acme/keys/rotate", admin_, "", "");         // key created, retired
  client_->Send("POST", "/v1/merchants/acme/kek/rotate", admin_, "", "");
  client_->Get("/v1/audit/verify", admin_);                                         // audit trail reads
  client_->Get("/v1/audit/export?limit=10", admin_);
  client_->Get("/v1/audit/checkpoint-key", admin_);
  client_->Delete("/v1/principals/reader", admin_);                                 // credential revoked
  Merchant("globex");
  client_->Delete("/v1/merchants/globex", admin_);                                  // merchant deleted
  Restart();                                                                        // stop and start

  std::vector<json> all;
  std::string cursor;
  for (;;) {
    json page = client_->Get("/v1/audit?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor), admin_).Json();
    for (const json& r : page["records"]) all.push_back(r);
    if (page["next_cursor"].is_null()) break;
    cursor = page["next_cursor"].get<std::string>();
  }
  auto has = [&](const std::string& action, const std::string& outcome) {
    for (const json& r : all) {
      if (r["action"] == action && (outcome.empty() || r["outcome"] == outcome)) {
        // Who, when, where, what and how it ended are always there.
        EXPECT_FALSE(r["time"].get<std::string>().empty());
        EXPECT_FALSE(r["source_ip"].get<std::string>().empty());
        EXPECT_GT(r["status"].get<int>(), 0);
        return true;
      }
    }
    return false;
  };
  const std::vector<std::pair<std::string, std::string>> classes = {
      {"tokens.detokenize", "allowed"},   // every access to cardholder data
      {"tokens.detokenize", "denied"},    // ... and every refused one
      {"audit.read", "denied"},           // invalid logical access (the unknown key's 401)
      {"principals.bootstrap", ""},       // the first administrator
      {"principals.create", "allowed"},   // credentials: created
      {"principals.delete", "allowed"},   // ... and deleted
      {"merchants.create", "allowed"},    // administrative actions
      {"keys.rotate", "allowed"},
      {"kek.rotate", "allowed"},
      {"merchants.shred", "allowed"},     // deletion of a merchant and its keys
      {"audit.verify", "allowed"},        // access to the audit trail itself
      {"audit.export", "allowed"},
      {"audit.checkpoint_key", "allowed"},
      {"service.start", "allowed"},       // start of the service and of its audit logging
      {"service.stop", "allowed"},        // ... and their stop
  };
  for (const auto& [action, outcome] : classes) {
    EXPECT_TRUE(has(action, outcome)) << action << " " << outcome;
  }
  // Key creation and destruction inside these (KEK and DEK named in the merchant's creation, the
  // rotations and the shred) are checked record by record in KeyLifecycleTest.
  EXPECT_TRUE(client_->Get("/v1/audit/verify", admin_).Json()["ok"].get<bool>());
}

// GET /metrics is scraped and parsed; each family is present and moves when its event happens.
// (HSM errors move in HsmOutageTest, which can make the HSM fail.)
TEST_F(ApiTest, MetricsAreScrapedParsedAndMoveWithTheirEvents) {
  const std::string policy_file = dir_.Sub("budget.json");
  std::ofstream(policy_file) << R"({"budgets":[{"principal":"bulk","reveal":"plain","max_values":1,"window_seconds":60}]})";
  RestartWith({"--policy", policy_file}, "server2.log");
  const MetricSeries before = ScrapeMetrics(*client_);
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string bulk = Principal("bulk", {"detokenizer"}, "*");

  const std::string token = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "one"}}).Json()["token"];
  ASSERT_EQ(client_->Post("/v1/merchants/acme/tokens/batch", maker,
                          {{"items", {{{"value", "a"}}, {{"value", "b"}}, {{"value", "c"}}}}}).status, 200);
  ASSERT_EQ(client_->Post("/v1/merchants/acme/detokenize", bulk, {{"tokens", {token}}, {"reveal", "masked"}}).status, 200);
  ASSERT_EQ(client_->Post("/v1/merchants/acme/detokenize", bulk, {{"tokens", {token}}, {"reveal", "plain"}}).status, 200);
  ASSERT_EQ(client_->Post("/v1/merchants/acme/detokenize", bulk, {{"tokens", {token}}, {"reveal", "plain"}}).status, 429);
  ASSERT_EQ(client_->Get("/v1/audit/export?limit=10", admin_).status, 200);  // forces a checkpoint

  // The audit gauges are refreshed by the checkpoint thread (every 200 ms): poll, bounded.
  MetricSeries after;
  for (int i = 0; i < 100; ++i) {
    after = ScrapeMetrics(*client_);
    if (MetricValue(after, "tokenvault_audit_records_total") > MetricValue(before, "tokenvault_audit_records_total")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto moved = [&](const std::string& series, double by_at_least) {
    const double delta = MetricValue(after, series) - MetricValue(before, series);
    EXPECT_GE(delta, by_at_least) << series << " moved by " << delta;
  };
  moved(R"(tokenvault_http_requests_total{route="tokens.create",status="201"})", 1);
  moved(R"(tokenvault_http_requests_total{route="tokens.detokenize",status="429"})", 1);
  moved(R"(tokenvault_http_request_duration_seconds_count{route="tokens.create"})", 1);
  moved(R"(tokenvault_http_request_duration_seconds_bucket{route="tokens.create",le="+Inf"})", 1);
  moved(R"(tokenvault_tokenize_values_total{merchant="acme"})", 4);
  moved(R"(tokenvault_detokenize_values_total{merchant="acme",reveal="masked"})", 1);
  moved(R"(tokenvault_detokenize_values_total{merchant="acme",reveal="plain"})", 1);
  moved(R"(tokenvault_budget_denials_total{reveal="plain"})", 1);
  moved(R"(tokenvault_hsm_calls_total{op="create_kek"})", 1);
  moved(R"(tokenvault_hsm_calls_total{op="wrap"})", 1);
  moved(R"(tokenvault_hsm_calls_total{op="sign"})", 1);
  EXPECT_GE(MetricValue(after, R"(tokenvault_dek_cache_lookups_total{result="hit"})") +
                MetricValue(after, R"(tokenvault_dek_cache_lookups_total{result="miss"})") -
                MetricValue(before, R"(tokenvault_dek_cache_lookups_total{result="hit"})") -
                MetricValue(before, R"(tokenvault_dek_cache_lookups_total{result="miss"})"),
            2);
  moved("tokenvault_store_group_commit_operations_count", 3);
  moved("tokenvault_store_commit_seconds_count", 3);
  moved("tokenvault_audit_records_total", 5);
  moved("tokenvault_audit_checkpoints_total", 1);
  EXPECT_TRUE(after.count("tokenvault_audit_checkpoint_lag_records")) << "no checkpoint lag gauge";
  // Never a value, a key or a token in it.
  const std::string text = client_->Get("/metrics", "").body;
  for (const std::string& secret : {std::string("one"), token, admin_, maker}) {
    EXPECT_EQ(text.find("\"" + secret + "\""), std::string::npos) << secret;
  }
  EXPECT_EQ(text.find(admin_), std::string::npos);
}

// log_format json: one JSON object per line, the request lines with their fields; never a value
// or a secret in any line.
TEST_F(ApiTest, JsonLogsHaveOneObjectPerLineWithRequestFieldsAndNoSecrets) {
  std::ofstream(dir_.Sub("json-log.json")) << R"({"log_format": "json", "log_level": "info"})";
  RestartWith({"--config", dir_.Sub("json-log.json")}, "server-json.log");
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  const std::string secret = "JSON-LOG-SECRET-4111111111111111";
  const std::string token =
      client_->Post("/v1/merchants/acme/tokens", maker, {{"value", secret}}).Json()["token"];
  ASSERT_EQ(client_->Post("/v1/merchants/acme/detokenize", reader, {{"tokens", {token}}, {"reveal", "plain"}})
                .Json()["items"][0]["value"], secret);
  EXPECT_EQ(client_->Get("/v1/audit", "tvk_00000000000000000000_" + std::string(64, '0')).status, 401);
  server_->Stop(SIGTERM);  // flushes the log

  std::ifstream log(server_->log_file());
  int objects = 0, request_lines = 0;
  bool saw_tokenize = false;
  for (std::string line; std::getline(log, line);) {
    EXPECT_EQ(line.find(secret), std::string::npos) << "a value in the log";
    for (const std::string& key : {admin_, maker, reader}) {
      EXPECT_EQ(line.find(key.substr(25)), std::string::npos) << "an API key secret in the log";
    }
    if (line.rfind("listening ", 0) == 0) continue;  // the readiness line on stdout, for supervisors
    json j = json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "not a JSON line: " << line;
    EXPECT_TRUE(j["time"].is_string() && j["level"].is_string() && j["msg"].is_string()) << line;
    ++objects;
    if (j.contains("request_id")) {
      ++request_lines;
      EXPECT_TRUE(j["route"].is_string() && j["principal"].is_string()) << line;
      EXPECT_TRUE(j["status"].is_number_integer() && j["latency_us"].is_number_integer()) << line;
      saw_tokenize |= j["route"] == "tokens.create" && j["status"] == 201 && j["principal"] == "maker";
    }
  }
  EXPECT_GT(objects, request_lines);  // start, stop and the like too
  EXPECT_GE(request_lines, 6);
  EXPECT_TRUE(saw_tokenize);
}

TEST_F(ApiTest, TokenMetadataIsKeptAndNeverHoldsValues) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const json metadata = {{"order", "A-1001"}, {"customer", "cus_42"}};
  Reply made = client_->Post("/v1/merchants/acme/tokens", maker,
                             {{"value", "secret"}, {"metadata", metadata}});
  ASSERT_EQ(made.status, 201) << made.body;
  EXPECT_EQ(made.Json()["metadata"], metadata);
  const std::string token = made.Json()["token"];
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, maker).Json()["metadata"], metadata);

  json seventeen = json::object();
  for (int i = 0; i < 17; ++i) seventeen["k" + std::to_string(i)] = "v";
  const std::vector<std::pair<json, std::string>> bad = {
      {seventeen, "invalid_metadata"},
      {{{std::string(65, 'k'), "v"}}, "invalid_metadata"},
      {{{"k", std::string(257, 'v')}}, "invalid_metadata"},
      {{{"k", 7}}, "invalid_metadata"},
      {json::array({"k", "v"}), "invalid_metadata"},
      {{{"note", "card 4242 4242 4242 4242"}}, "metadata_holds_a_value"},
      {{{"note", "4242-4242-4242-4242"}}, "metadata_holds_a_value"},
      {{{"ssn", "123-45-6789"}}, "metadata_holds_a_value"},
      {{{"ssn", "123 45 6789"}}, "metadata_holds_a_value"},
      {{{"note", "ref 1 4111 1111 1111 1111"}}, "metadata_holds_a_value"},  // inside a longer run
      {{{"note", "4111--1111..1111/1111"}}, "metadata_holds_a_value"},
      {{{"note", "\uFF14\uFF11\uFF11\uFF11 1111 1111 1111"}}, "metadata_holds_a_value"},
      {{{"note", "4242424242424241"}}, "metadata_holds_a_value"},  // Luhn or not: 16 digits
      {[] {
         json m = json::object();
         for (int i = 0; i < 16; ++i) m["k" + std::to_string(i)] = std::string(200, '\x01');
         return m;
       }(),
       "invalid_metadata"},  // 16 x 200 control characters escape to far more than 8192 bytes
  };
  for (const auto& [m, code] : bad) {
    Reply r = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "secret"}, {"metadata", m}});
    EXPECT_EQ(r.status, 400) << m.dump();
    EXPECT_EQ(r.Json()["error"]["code"], code) << r.body;
    EXPECT_EQ(r.body.find("4242"), std::string::npos);  // the input is never echoed
  }
  // References with letters, or shorter numbers, are fine.
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", maker,
                          {{"value", "secret"}, {"metadata", {{"invoice", "INV-2026-000123"}, {"zip", "94107-1234"}}}}).status,
            201);
  server_->Stop();
  EXPECT_EQ(TokenRows(), 2);  // the refused requests stored nothing
  ASSERT_TRUE(server_->Start());
}

TEST_F(ApiTest, AnExpiredTokenAnswersGone) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  const std::string reader = Principal("reader", {"detokenizer"}, "*");
  Reply made = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "brief"}, {"ttl_seconds", 1}});
  ASSERT_EQ(made.status, 201) << made.body;
  EXPECT_TRUE(made.Json()["expires_at"].is_string());
  const std::string token = made.Json()["token"];
  // Waits for the expiry (not a timing assertion: the token must be gone afterwards).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  Reply read = client_->Get("/v1/merchants/acme/tokens/" + token, maker);
  EXPECT_EQ(read.status, 410) << read.body;
  json items = client_->Post("/v1/merchants/acme/detokenize", reader,
                             {{"tokens", {token}}, {"reveal", "plain"}}).Json()["items"];
  EXPECT_EQ(items[0]["error"]["type"], "gone");
  EXPECT_FALSE(items[0].contains("value"));
  for (const json& ttl : {json(0), json(-5), json(1.5), json("60"), json(316224001)}) {
    Reply r = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "x"}, {"ttl_seconds", ttl}});
    EXPECT_EQ(r.status, 400) << ttl.dump();
    EXPECT_EQ(r.Json()["error"]["code"], "invalid_ttl") << r.body;
  }
}

// The sealed value of an expired token leaves the database file (and WAL) once the sweeper has
// run; settings from the command line (sweep interval, body limit) take effect.
TEST_F(ApiTest, TheSweeperRemovesAnExpiredTokensCiphertextFromTheDatabase) {
  Merchant("acme");
  const std::string maker = Principal("maker", {"tokenizer"}, "*");
  Reply made = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", "sweep me"}, {"ttl_seconds", 1}});
  ASSERT_EQ(made.status, 201) << made.body;
  const std::string token = made.Json()["token"];
  server_->Stop(SIGTERM);
  const std::string db_path = server_->data_dir() + "/tokenvault.db";
  // What the sweeper has to remove, and whether it did: read from the file itself.
  auto sealed = [&]() -> std::optional<std::string> {
    auto db = storage::Database::Open(db_path, {true, 5000});
    if (!db.ok()) return std::nullopt;
    auto row = (*db)->Prepare("SELECT ciphertext FROM tokens WHERE token = ?1");
    if (!row.ok()) return std::nullopt;
    row->Bind(1, std::string_view(token));
    if (!*row->Step() || row->ColumnIsNull(0)) return std::nullopt;
    Bytes b = row->ColumnBlob(0);
    return std::string(b.begin(), b.end());
  };
  const std::optional<std::string> ciphertext = sealed();
  ASSERT_TRUE(ciphertext.has_value());
  ASSERT_FALSE(FindNeedles(db_path, {*ciphertext}).empty());  // positive control for the scan

  server_ = std::make_unique<ServerProcess>(dir_.Sub("data"), dir_.Sub("server2.log"),
                                            std::vector<std::string>{"--expiry-sweep-seconds", "1",
                                                                     "--max-body-bytes", "2048"});
  ASSERT_TRUE(server_->Start());
  client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
  // The sweeper runs every second; wait for it (bounded, generously: this asserts that it
  // happens, not how fast).
  bool swept = false;
  for (int i = 0; i < 300 && !swept; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    swept = !sealed().has_value();
  }
  EXPECT_TRUE(swept) << "the sweeper never removed the expired token's sealed value";
  EXPECT_EQ(client_->Get("/v1/merchants/acme/tokens/" + token, maker).status, 410);
  // --max-body-bytes 2048: a 3000-byte value is too large, a 1000-byte one is not.
  Reply big = client_->Post("/v1/merchants/acme/tokens", maker, {{"value", std::string(3000, 'x')}});
  EXPECT_EQ(big.status, 413) << big.body;
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", maker, {{"value", std::string(1000, 'y')}}).status, 201);
  server_->Stop(SIGTERM);
  for (const std::string& file : {db_path, db_path + "-wal"}) {
    if (FileExists(file)) {
      EXPECT_TRUE(FindNeedles(file, {*ciphertext}).empty()) << file;
    }
  }
}

TEST_F(ApiTest, BadInputGetsAJsonErrorStoresNothingAndIsAudited) { BadInputChecks(false); }

void ApiTest::BadInputChecks(bool behind_proxy) {
  Merchant("acme");
  const std::string app = Principal("app", {"tokenizer", "support"}, {"acme"});
  const std::string secret = "SECRET-VALUE-7f3a9c";
  const std::string big(2 << 20, 'x');
  std::string many = "[";
  for (int i = 0; i < 1001; ++i) many += std::string(i ? "," : "") + "\"tok_0000000000000000000000\"";
  many += "]";
  struct Case {
    std::string name, method, path, content_type, body;
    long status;
    std::string code;
  };
  const std::string tokens = "/v1/merchants/acme/tokens";
  const std::vector<Case> cases = {
      {"malformed json", "POST", tokens, "application/json", "{\"value\": \"" + secret, 400, "malformed_json"},
      {"not an object", "POST", tokens, "application/json", "[\"" + secret + "\"]", 400, "malformed_json"},
      {"wrong content type", "POST", tokens, "text/plain", "{\"value\":\"" + secret + "\"}", 415, "unsupported_media_type"},
      {"2 MiB body", "POST", tokens, "application/json", "{\"value\":\"" + big + "\"}", 413, "payload_too_large"},
      {"value not a string", "POST", tokens, "application/json", R"({"value": 4111111111111111})", 400, "invalid_value"},
      {"invalid utf-8", "POST", tokens, "application/json", "{\"value\":\"\xff\xfe" + secret + "\"}", 400, "malformed_json"},
      {"empty value", "POST", tokens, "application/json", R"({"value": ""})", 400, "invalid_value"},
      {"oversized value", "POST", tokens, "application/json", "{\"value\":\"" + std::string(4097, 'a') + "\"}", 400, "invalid_value"},
      {"bad card", "POST", tokens, "application/json", R"({"value": "4111111111111112", "type": "card"})", 400, "invalid_card"},
      {"unknown type", "POST", tokens, "application/json", "{\"value\":\"" + secret + "\",\"type\":\"iban\"}", 400, "invalid_type"},
      {"unknown field", "POST", tokens, "application/json", "{\"value\":\"" + secret + "\",\"cvv\":\"123\"}", 400, "unknown_field"},
      {"1001 tokens", "POST", "/v1/merchants/acme/detokenize", "application/json",
       "{\"reveal\":\"masked\",\"tokens\":" + many + "}", 400, "too_many_tokens"},
      {"bad merchant id", "POST", "/v1/merchants/ACME!/tokens", "application/json", "{\"value\":\"" + secret + "\"}", 400, "invalid_merchant"},
      {"bad token", "GET", "/v1/merchants/acme/tokens/tok_short", "", "", 400, "invalid_token"},
      // 26 characters like a real token, so only the alphabet check can refuse it.
      {"percent-encoded token", "GET", "/v1/merchants/acme/tokens/tok_%2e%2e%2f0000000000000", "", "", 400, "invalid_token"},
      {"unknown route", "GET", "/v1/nothing/here", "", "", 404, "no_route"},
      {"wrong method", "PUT", "/v1/merchants", "application/json", "{\"id\":\"" + secret + "\"}", 405, "method_not_allowed"},
  };
  const int64_t audit_before = AuditCount();  // this call is audited too (after the count)
  for (const Case& c : cases) {
    Reply r = client_->Send(c.method, c.path, app, c.body, c.content_type);
    EXPECT_EQ(r.status, c.status) << c.name << ": " << r.body.substr(0, 200);
    json j = r.Json();
    ASSERT_TRUE(j.is_object()) << c.name << ": not JSON: " << r.body.substr(0, 200);
    EXPECT_EQ(j["error"]["code"], c.code) << c.name;
    EXPECT_FALSE(j["error"]["type"].get<std::string>().empty());
    EXPECT_EQ(j["error"]["request_id"], r.headers["request-id"]) << c.name;
    EXPECT_EQ(r.body.find(secret), std::string::npos) << c.name << " echoed the value";
    EXPECT_EQ(client_->Get("/healthz", "").status, 200) << "server died after " << c.name;
  }
  // Exactly one audit record per request (+1 for the first count itself), each an error. Behind
  // nginx the oversized body never reaches tokenvault (nginx refuses it and logs it).
  const int64_t reached = static_cast<int64_t>(cases.size()) - (behind_proxy ? 1 : 0);
  EXPECT_EQ(AuditCount(), audit_before + 1 + reached);
  Reply errors = client_->Get("/v1/audit?outcome=error&principal=app&limit=1000", admin_);
  EXPECT_EQ(static_cast<int64_t>(errors.Json()["records"].size()), reached);
  // Nothing stored.
  server_->Stop();
  EXPECT_EQ(TokenRows(), 0);
  ExpectNoValuesAtRest({secret}, "principal:app");
}

class AuditTamperTest : public ApiTest {
 protected:
  void MakeTraffic() {
    Merchant("acme");
    const std::string app = Principal("app", {"tokenizer"}, {"acme"});
    for (int i = 0; i < 10; ++i) client_->Post("/v1/merchants/acme/tokens", app, {{"value", "v" + std::to_string(i)}});
  }
  json TamperAndVerify(const std::string& sql) {
    server_->Stop();
    {
      auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
      EXPECT_TRUE(db.ok());
      EXPECT_TRUE((*db)->Exec(sql).ok()) << sql;
    }
    EXPECT_TRUE(server_->Start());
    client_ = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
    Reply v = client_->Get("/v1/audit/verify", admin_);
    EXPECT_EQ(v.status, 200);
    return v.Json();
  }
};

TEST_F(AuditTamperTest, IntactChainVerifies) {
  MakeTraffic();
  Reply v = client_->Get("/v1/audit/verify", admin_);
  EXPECT_TRUE(v.Json()["ok"].get<bool>()) << v.body;
  EXPECT_GE(v.Json()["records_checked"].get<int>(), 12);
}

TEST_F(AuditTamperTest, EditedRecordIsNamed) {
  MakeTraffic();
  // A real change whatever record 5 is (setting a field to the value it already has would test
  // nothing).
  json v = TamperAndVerify("UPDATE audit_log SET reason = reason || ' (edited)', status = status + 1 WHERE seq = 5");
  EXPECT_FALSE(v["ok"].get<bool>());
  EXPECT_EQ(v["first_bad_seq"], 5) << v.dump();
}

TEST_F(AuditTamperTest, DeletedMiddleRecordIsNamed) {
  MakeTraffic();
  json v = TamperAndVerify("DELETE FROM audit_log WHERE seq = 6");
  EXPECT_FALSE(v["ok"].get<bool>());
  EXPECT_EQ(v["first_bad_seq"], 6) << v.dump();
}

TEST_F(AuditTamperTest, DeletedLastRecordsAreDetected) {
  MakeTraffic();
  json v = TamperAndVerify("DELETE FROM audit_log WHERE seq > 9");
  EXPECT_FALSE(v["ok"].get<bool>());
  EXPECT_EQ(v["first_bad_seq"], 10) << v.dump();
}

TEST_F(ApiTest, ServerRefusesToStartWithoutAudit) {
  server_->Stop();
  {
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TRIGGER audit_read_only BEFORE INSERT ON audit_log "
                            "BEGIN SELECT RAISE(ABORT, 'audit log is read-only'); END;").ok());
  }
  EXPECT_FALSE(server_->Start()) << "served without being able to audit its start";
}

TEST_F(ApiTest, AuditFailureMeansNoValue) {
  Merchant("acme");
  const std::string app = Principal("app", {"tokenizer"}, {"acme"});
  const std::string settle = Principal("settle", {"detokenizer"}, {"acme"});
  const std::string token = client_->Post("/v1/merchants/acme/tokens", app, {{"value", "TOP-SECRET-91"}}).Json()["token"];
  {
    // The audit table refuses every insert from now on, while the server runs (a server that
    // cannot audit its own start does not start at all: ServerRefusesToStartWithoutAudit).
    auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TRIGGER audit_read_only BEFORE INSERT ON audit_log "
                            "BEGIN SELECT RAISE(ABORT, 'audit log is read-only'); END;").ok());
  }
  Reply r = client_->Post("/v1/merchants/acme/detokenize", settle, {{"tokens", {token}}, {"reveal", "plain"}});
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.Json()["error"]["code"], "audit_unavailable") << r.body;
  EXPECT_EQ(r.body.find("TOP-SECRET-91"), std::string::npos);
  EXPECT_FALSE(r.headers["retry-after"].empty());
  EXPECT_FALSE(r.headers["request-id"].empty());
  EXPECT_EQ(r.Json()["error"]["request_id"], r.headers["request-id"]);
  // A batch too: its tokens and its record are one transaction.
  Reply b = client_->Post("/v1/merchants/acme/tokens/batch", app, {{"items", {{{"value", "BATCH-SECRET-93"}}}}});
  EXPECT_EQ(b.status, 503) << b.body;
  EXPECT_EQ(b.Json()["error"]["request_id"], b.headers["request-id"]);
  // No change without its audit record: each is one transaction with its record.
  Reply t = client_->Post("/v1/merchants/acme/tokens", app, {{"value", "ANOTHER-SECRET-92"}});
  EXPECT_EQ(t.status, 503) << t.body;
  EXPECT_EQ(client_->Delete("/v1/merchants/acme/tokens/" + token, app).status, 503);
  Reply p = client_->Post("/v1/principals", admin_, {{"name", "late"}, {"roles", {"auditor"}}, {"merchants", "*"}});
  EXPECT_EQ(p.status, 503);
  EXPECT_EQ(p.body.find("tvk_"), std::string::npos) << "an API key was shown without an audit record";
  EXPECT_EQ(client_->Delete("/v1/principals/app", admin_).status, 503);
  EXPECT_EQ(client_->Post("/v1/merchants", admin_, {{"id", "late"}}).status, 503);
  server_->Stop();
  EXPECT_EQ(TokenRows(), 1);
  auto db = storage::Database::Open(server_->data_dir() + "/tokenvault.db", {});
  ASSERT_TRUE(db.ok());
  auto q = (*db)->Prepare(
      "SELECT (SELECT COUNT(*) FROM tokens WHERE deleted_at IS NOT NULL), "
      "(SELECT COUNT(*) FROM principals WHERE name = 'late'), "
      "(SELECT COUNT(*) FROM principals WHERE name = 'app' AND deleted_at IS NOT NULL), "
      "(SELECT COUNT(*) FROM merchants WHERE id = 'late' AND state = 'active')");
  ASSERT_TRUE(q.ok() && *q->Step());
  EXPECT_EQ(q->ColumnInt(0), 0) << "token deleted without an audit record";
  EXPECT_EQ(q->ColumnInt(1), 0) << "principal created without an audit record";
  EXPECT_EQ(q->ColumnInt(2), 0) << "principal deleted without an audit record";
  EXPECT_EQ(q->ColumnInt(3), 0) << "merchant activated without an audit record";
}

void ApiTest::StreamAndInterrupt(int sig) {
  ServerProcess& server = *server_;
  HttpClient& admin_client = *client_;
  const std::string& admin = admin_;
  admin_client.Post("/v1/merchants", admin, {{"id", "acme"}});
  std::string app = admin_client.Post("/v1/principals", admin, {{"name", "app"}, {"roles", {"tokenizer"}}, {"merchants", {"acme"}}}).Json()["api_key"];
  std::string reader = admin_client.Post("/v1/principals", admin, {{"name", "reader"}, {"roles", {"detokenizer"}}, {"merchants", {"acme"}}}).Json()["api_key"];
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> acked;
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      HttpClient c(server.base_url(), server.ca_file());
      for (int i = 0; !stop && i < 5000; ++i) {
        const std::string value = "stream-" + std::to_string(w) + "-" + std::to_string(i);
        Reply r = c.Post("/v1/merchants/acme/tokens", app, {{"value", value}});
        if (r.status == 0) break;  // the server is gone
        if (r.status == 201) {
          std::lock_guard<std::mutex> lock(mu);
          acked.emplace_back(r.Json()["token"], value);
        }
      }
    });
  }
  // Interrupt once 200 tokens are acknowledged (bounded: a server that stops acknowledging fails
  // the test instead of hanging it).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (acked.size() >= 200) break;
    }
    if (std::chrono::steady_clock::now() > give_up) {
      stop = true;
      for (auto& t : writers) t.join();
      FAIL() << "fewer than 200 tokens acknowledged in 120 s";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server.Stop(sig);
  stop = true;
  for (auto& t : writers) t.join();
  ASSERT_TRUE(server.Start());
  HttpClient c(server.base_url(), server.ca_file());
  size_t ok = 0;
  for (size_t i = 0; i < acked.size(); i += 100) {
    json ask = {{"reveal", "plain"}, {"tokens", json::array()}};
    for (size_t j = i; j < std::min(acked.size(), i + 100); ++j) ask["tokens"].push_back(acked[j].first);
    json items = c.Post("/v1/merchants/acme/detokenize", reader, ask).Json()["items"];
    for (size_t j = i; j < std::min(acked.size(), i + 100); ++j) {
      if (items[j - i].value("value", "") == acked[j].second) ++ok;
    }
  }
  EXPECT_EQ(ok, acked.size()) << "after signal " << sig;
  std::printf("signal %d: %zu acknowledged tokens, all readable after restart: %s\n", sig,
              acked.size(), ok == acked.size() ? "yes" : "NO");
  std::unordered_set<std::string> values;
  for (const auto& [token, value] : acked) values.insert(value);
  ExpectNoValuesAtRest(values, acked.front().first);
}

TEST_F(ApiTest, SigtermMidStreamLosesNoAcknowledgedToken) {
  StreamAndInterrupt(SIGTERM);
}

TEST_F(ApiTest, SigkillMidStreamLosesNoAcknowledgedToken) {
  StreamAndInterrupt(SIGKILL);
}

// nginx from Debian in front of the real binary, configured by the shipped deploy/nginx files
// (render.sh): the authorization and bad-input matrices through it; an oversized body followed
// by a second request on the same connection is 413 and the second request never reaches
// tokenvault; identity headers forged by a client are ignored. tokenvault listens on loopback,
// plain HTTP, and trusts the front's headers only with the secret `init` made.
class NginxFrontTest : public ApiTest {
 protected:
  void SetUp() override {
    ApiTest::SetUp();  // the data dir, its admin key, the proxy secret (first start)
    server_->Stop(SIGTERM);
    std::ofstream(dir_.Sub("client-ca.pem")) << ca_.cert_pem();
    payments_ = ca_.Issue("payments", {"DNS:payments.internal"});
    payments_.Write(dir_.Sub("payments"), &payments_cert_, &payments_key_);
    std::ofstream(dir_.Sub("policy.json"))
        << json{{"client_certificates", {{{"principal", "payments"}, {"sha256", payments_.sha256}}}}}.dump();
    std::ofstream(dir_.Sub("behind.json")) << json{{"plain_http", true}, {"trust_proxy", true}}.dump();
    server_ = std::make_unique<ServerProcess>(
        dir_.Sub("data"), dir_.Sub("server-behind.log"),
        std::vector<std::string>{"--config", dir_.Sub("behind.json"), "--policy", dir_.Sub("policy.json")});
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
    nginx_ = std::make_unique<NginxFront>(dir_, ca_, dir_.Sub("client-ca.pem"));
    const std::string started = nginx_->Start(server_->data_dir(), server_->port());
    ASSERT_EQ(started, "");
    client_ = std::make_unique<HttpClient>(FrontUrl(), dir_.Sub("client-ca.pem"));
    ASSERT_EQ(client_->Get("/healthz", "").status, 200) << "nginx does not reach tokenvault";
  }

  std::string FrontUrl() const { return nginx_->url(); }

  // Sends 'bytes' on one TLS connection to the front and returns everything it answers until it
  // closes (or 10 s pass).
  std::string RawExchange(const std::string& bytes) {
    bool handshake_ok = false;
    std::string answer = RawTlsExchange(nginx_->port(), bytes, &handshake_ok);
    EXPECT_TRUE(handshake_ok) << "TLS handshake with the front failed";
    return answer;
  }

  TestCa ca_{"tokenvault test client CA"};
  TestCert payments_;
  std::string payments_cert_, payments_key_;
  std::unique_ptr<NginxFront> nginx_;
};

TEST_F(NginxFrontTest, AuthorizationMatrixThroughNginx) { AuthorizationMatrixChecks(); }

TEST_F(NginxFrontTest, BadInputMatrixThroughNginx) { BadInputChecks(/*behind_proxy=*/true); }

TEST_F(NginxFrontTest, AnOversizedBodyIs413AndTheRequestAfterItNeverReachesTokenvault) {
  Merchant("acme");
  const std::string app = Principal("app", {"tokenizer"}, json::array({"acme"}));
  const std::string marker = "tok_NeverReachesTokenvault";
  const std::string body = "{\"value\":\"" + std::string(2 << 20, 'x') + "\"}";
  const std::string pipelined =
      "POST /v1/merchants/acme/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + app +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body +
      "GET /v1/merchants/acme/tokens/" + marker + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + app +
      "\r\n\r\n";
  const std::string answer = RawExchange(pipelined);
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer.substr(0, 300);
  EXPECT_NE(answer.find("\"code\":\"payload_too_large\""), std::string::npos) << answer.substr(0, 600);
  size_t responses = 0;
  for (size_t at = answer.find("HTTP/1.1 "); at != std::string::npos; at = answer.find("HTTP/1.1 ", at + 1)) ++responses;
  EXPECT_EQ(responses, 1u) << "the request after the oversized body was answered: " << answer;
  // tokenvault saw neither: no tokenize from 'app', no read of the marker.
  json records = client_->Get("/v1/audit?principal=app&limit=1000", admin_).Json()["records"];
  EXPECT_TRUE(records.empty()) << records.dump();
  // And the same connection trick against tokenvault's own limits is not needed: it never sees
  // a byte nginx did not accept whole. A normal request still works.
  EXPECT_EQ(client_->Post("/v1/merchants/acme/tokens", app, {{"value", "fine"}}).status, 201);
}

TEST_F(NginxFrontTest, ClientCertificatesPassThroughAndForgedIdentityHeadersAreIgnored) {
  Merchant("acme");
  ASSERT_EQ(client_->Post("/v1/principals", admin_,
                          {{"name", "payments"}, {"roles", {"tokenizer"}}, {"merchants", {"acme"}}}).status, 201);
  // A certificate nginx verified authenticates through it, with the client's own address.
  HttpClient with_cert(FrontUrl(), dir_.Sub("client-ca.pem"));
  with_cert.set_client_certificate(payments_cert_, payments_key_);
  ASSERT_EQ(with_cert.Post("/v1/merchants/acme/tokens", "", {{"value", "v"}}).status, 201);
  json made = client_->Get("/v1/audit?principal=payments&action=tokens.create", admin_).Json()["records"];
  ASSERT_EQ(made.size(), 1u);
  EXPECT_EQ(made[0]["auth"], "mtls");
  EXPECT_EQ(made[0]["source_ip"], "127.0.0.1");
  // A client without a certificate forging the headers - even with the real secret - is not
  // believed: nginx replaces them.
  std::string escaped;
  for (unsigned char c : payments_.cert_pem) {
    char hex[4];
    std::snprintf(hex, sizeof(hex), "%%%02X", c);
    escaped += std::isalnum(c) ? std::string(1, static_cast<char>(c)) : std::string(hex);
  }
  std::ifstream secret_file(server_->data_dir() + "/proxy-secret");
  std::string secret;
  std::getline(secret_file, secret);
  ASSERT_EQ(secret.size(), 64u);
  const std::vector<std::string> forged = {"X-Client-Cert: " + escaped, "X-Tokenvault-Proxy-Secret: " + secret,
                                           "X-Real-IP: 203.0.113.9"};
  Reply through_front = client_->Send("POST", "/v1/merchants/acme/tokens", "", "{\"value\":\"v\"}",
                                      "application/json", forged);
  EXPECT_EQ(through_front.status, 401) << through_front.body;
  EXPECT_EQ(through_front.Json()["error"]["code"], "missing_api_key");
  // Straight to tokenvault's loopback port with a wrong secret: refused whole (not taken for
  // nginx, whose address the lockout would then block), health checks excepted.
  HttpClient direct("http://127.0.0.1:" + std::to_string(server_->port()), dir_.Sub("client-ca.pem"));
  std::string wrong = secret;
  wrong[0] = wrong[0] == 'a' ? 'b' : 'a';
  Reply bypass = direct.Send("POST", "/v1/merchants/acme/tokens", "", "{\"value\":\"v\"}", "application/json",
                             {"X-Client-Cert: " + escaped, "X-Tokenvault-Proxy-Secret: " + wrong});
  EXPECT_EQ(bypass.status, 403) << bypass.body;
  EXPECT_EQ(bypass.Json()["error"]["code"], "untrusted_proxy");
  EXPECT_EQ(direct.Get("/v1/audit", admin_).status, 403) << "an API key does not make up for the secret";
  EXPECT_EQ(direct.Get("/healthz", "").status, 200);
  // Metrics are for the loopback port, not the front.
  EXPECT_EQ(direct.Get("/metrics", "").status, 200);
  EXPECT_EQ(client_->Get("/metrics", "").status, 404);
  for (const char* spelling : {"/metrics/", "//metrics", "/metrics//", "//metrics/"}) {
    EXPECT_EQ(client_->Get(spelling, "").status, 404) << spelling;  // nginx, or tokenvault behind it
  }
  // The rendering script refuses a value that could smuggle nginx directives in.
  EXPECT_NE(std::system((std::string(TOKENVAULT_SOURCE_DIR) + "/deploy/nginx/render.sh --data-dir " +
                         server_->data_dir() + " --cert '/x\\x3b ssl_verify_client off' --key k --client-ca c --out " +
                         dir_.Sub("evil.conf") + " 2>/dev/null").c_str()), 0);
  // A certificate nginx cannot verify is refused by nginx, in tokenvault's error shape.
  std::string cert, key;
  SelfSignedCert("payments").Write(dir_.Sub("self"), &cert, &key);
  HttpClient self_signed(FrontUrl(), dir_.Sub("client-ca.pem"));
  self_signed.set_client_certificate(cert, key);
  Reply refused = self_signed.Post("/v1/merchants/acme/tokens", "", {{"value", "v"}});
  EXPECT_EQ(refused.status, 401) << refused.body;
  EXPECT_EQ(refused.Json()["error"]["code"], "bad_client_certificate");
  // None of the refused attempts made a token: only the one made with the real certificate.
  json denied = client_->Get("/v1/audit?action=tokens.create&outcome=denied", admin_).Json()["records"];
  ASSERT_EQ(denied.size(), 2u) << denied.dump();  // the forged headers, the bypass
  EXPECT_EQ(denied[0]["source_ip"], "127.0.0.1");  // nginx's X-Real-IP, not the forged one
}

}  // namespace
}  // namespace tokenvault::testing
