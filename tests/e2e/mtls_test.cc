// Mutual TLS against the real server (HTTPS on 127.0.0.1, SoftHSM2 token, SQLite file): a client
// certificate that chains to the configured client CA and is mapped in the policy file
// authenticates as its principal (auth "mtls" in the audit trail); unknown, expired and
// self-signed certificates are refused in the handshake; an API key sent with a certificate
// must name the same principal, or the answer is 401.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_certs.h"

namespace tokenvault::testing {
namespace {

using json = nlohmann::json;

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_.Sub("client-ca.pem")) << ca_.cert_pem();
    payments_ = ca_.Issue("payments", {"DNS:payments.internal"});
    reader_ = ca_.Issue("reader", {"URI:spiffe://test/reader"});
    operator_ = ca_.Issue("operator");  // chains to the CA but is mapped to nobody
    payments_.Write(dir_.Sub("payments"), &payments_cert_, &payments_key_);
    reader_.Write(dir_.Sub("reader"), &reader_cert_, &reader_key_);
    operator_.Write(dir_.Sub("operator"), &operator_cert_, &operator_key_);
    // payments by fingerprint (as openssl prints it), reader by SAN.
    std::string colons;
    for (size_t i = 0; i < payments_.sha256.size(); i += 2) {
      colons += (i ? ":" : "") + payments_.sha256.substr(i, 2);
    }
    std::ofstream(dir_.Sub("policy.json"))
        << json{{"client_certificates",
                 {{{"principal", "payments"}, {"sha256", colons}},
                  {{"principal", "reader"}, {"san", "URI:spiffe://test/reader"}}}}}.dump();
    Start("required");
    admin_ = server_->admin_key();
    auto admin = Client(operator_cert_, operator_key_);
    ASSERT_EQ(admin->Post("/v1/merchants", admin_, {{"id", "acme"}}).status, 201);
    payments_api_key_ = admin->Post("/v1/principals", admin_,
                                   {{"name", "payments"}, {"roles", {"tokenizer"}}, {"merchants", {"acme"}}})
                            .Json()["api_key"];
    reader_api_key_ = admin->Post("/v1/principals", admin_,
                                 {{"name", "reader"}, {"roles", {"detokenizer"}}, {"merchants", {"acme"}}})
                          .Json()["api_key"];
    ASSERT_FALSE(payments_api_key_.empty());
    ASSERT_FALSE(reader_api_key_.empty());
  }

  void Start(const std::string& client_auth) {
    if (server_) server_->Stop(SIGTERM);
    std::ofstream(dir_.Sub("config.json"))
        << json{{"tls_client_ca", dir_.Sub("client-ca.pem")}, {"tls_client_auth", client_auth}}.dump();
    server_ = std::make_unique<ServerProcess>(
        dir_.Sub("data"), dir_.Sub("server-" + client_auth + ".log"),
        std::vector<std::string>{"--config", dir_.Sub("config.json"), "--policy", dir_.Sub("policy.json")});
    ASSERT_TRUE(server_->Start()) << "see " << server_->log_file();
  }

  std::unique_ptr<HttpClient> Client(const std::string& cert, const std::string& key) {
    auto c = std::make_unique<HttpClient>(server_->base_url(), server_->ca_file());
    if (!cert.empty()) c->set_client_certificate(cert, key);
    return c;
  }

  TempDir dir_;
  TestCa ca_{"tokenvault test client CA"};
  TestCert payments_, reader_, operator_;
  std::string payments_cert_, payments_key_, reader_cert_, reader_key_, operator_cert_, operator_key_;
  std::unique_ptr<ServerProcess> server_;
  std::string admin_, payments_api_key_, reader_api_key_;
};

TEST_F(MtlsTest, AValidClientCertificateMapsToItsPrincipal) {
  auto payments = Client(payments_cert_, payments_key_);
  Reply made = payments->Post("/v1/merchants/acme/tokens", "", {{"value", "4111111111111111"}, {"type", "card"}});
  ASSERT_EQ(made.status, 201) << made.body;
  // The tokenize's own audit record says how the caller authenticated.
  auto admin = Client(operator_cert_, operator_key_);
  json tokenizes = admin->Get("/v1/audit?action=tokens.create&principal=payments", admin_).Json()["records"];
  ASSERT_EQ(tokenizes.size(), 1u);
  EXPECT_EQ(tokenizes[0]["auth"], "mtls");
  EXPECT_EQ(tokenizes[0]["outcome"], "allowed");
  // Mapped by SAN: the reader reveals, with no API key either.
  auto reader = Client(reader_cert_, reader_key_);
  Reply shown = reader->Post("/v1/merchants/acme/detokenize", "",
                            {{"tokens", {made.Json()["token"]}}, {"reveal", "masked"}});
  ASSERT_EQ(shown.status, 200) << shown.body;
  EXPECT_EQ(shown.Json()["items"][0]["value"], "************1111");
  // A mapped certificate grants only its principal's permissions.
  EXPECT_EQ(payments->Post("/v1/merchants/acme/detokenize", "",
                          {{"tokens", {made.Json()["token"]}}, {"reveal", "plain"}}).status, 403);
  // A certificate that chains to the CA but is mapped to nobody, with no API key: 401.
  Reply unmapped = Client(operator_cert_, operator_key_)->Get("/v1/audit", "");
  EXPECT_EQ(unmapped.status, 401);
  EXPECT_EQ(unmapped.Json()["error"]["code"], "unknown_client_certificate");
  // New connections resume their TLS session (Pistache 0.0.5 needs the session id context set).
  auto fresh = Client(payments_cert_, payments_key_);
  fresh->set_fresh_connections(true);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(fresh->Post("/v1/merchants/acme/tokens", "", {{"value", "v" + std::to_string(i)}}).status, 201) << i;
  }
}

TEST_F(MtlsTest, UnknownExpiredAndSelfSignedCertificatesAreRefusedAtTheHandshake) {
  TestCa other("another CA");
  std::string cert, key;
  other.Issue("payments", {"DNS:payments.internal"}).Write(dir_.Sub("unknown"), &cert, &key);
  EXPECT_EQ(Client(cert, key)->Get("/v1/audit", admin_).status, 0) << "unknown CA";
  ca_.Issue("payments", {"DNS:payments.internal"}, -7200, -3600).Write(dir_.Sub("expired"), &cert, &key);
  EXPECT_EQ(Client(cert, key)->Get("/v1/audit", admin_).status, 0) << "expired";
  ca_.Issue("payments", {}, 3600, 7200).Write(dir_.Sub("not-yet"), &cert, &key);
  EXPECT_EQ(Client(cert, key)->Get("/v1/audit", admin_).status, 0) << "not yet valid";
  SelfSignedCert("payments").Write(dir_.Sub("self"), &cert, &key);
  EXPECT_EQ(Client(cert, key)->Get("/v1/audit", admin_).status, 0) << "self-signed";
  EXPECT_EQ(Client("", "")->Get("/v1/audit", admin_).status, 0) << "no certificate";
  // None of them reached the service, and the server still serves.
  EXPECT_EQ(Client(operator_cert_, operator_key_)->Get("/healthz", "").status, 200);
}

TEST_F(MtlsTest, AnApiKeySentWithACertificateMustNameTheSamePrincipal) {
  auto payments = Client(payments_cert_, payments_key_);
  Reply mismatched = payments->Post("/v1/merchants/acme/tokens", reader_api_key_, {{"value", "x"}});
  EXPECT_EQ(mismatched.status, 401) << mismatched.body;
  EXPECT_EQ(mismatched.Json()["error"]["code"], "identity_mismatch");
  Reply bad_key = payments->Post("/v1/merchants/acme/tokens", "tvk_0123456789abcdef0123_" + std::string(64, 'a'),
                                {{"value", "x"}});
  EXPECT_EQ(bad_key.status, 401);
  Reply both = payments->Post("/v1/merchants/acme/tokens", payments_api_key_, {{"value", "x"}});
  EXPECT_EQ(both.status, 201) << both.body;
  auto admin = Client(operator_cert_, operator_key_);
  json denied = admin->Get("/v1/audit?outcome=denied&action=tokens.create", admin_).Json()["records"];
  ASSERT_EQ(denied.size(), 2u);
  EXPECT_NE(denied[0]["reason"].get<std::string>().find("identity_mismatch"), std::string::npos) << denied[0].dump();
}

TEST_F(MtlsTest, OptionalClientAuthLetsApiKeyClientsInButNotBadCertificates) {
  Start("optional");
  EXPECT_EQ(Client("", "")->Get("/v1/audit?limit=1", admin_).status, 200);
  std::string cert, key;
  SelfSignedCert("payments").Write(dir_.Sub("self"), &cert, &key);
  EXPECT_EQ(Client(cert, key)->Get("/v1/audit?limit=1", admin_).status, 0);
  EXPECT_EQ(Client(payments_cert_, payments_key_)->Post("/v1/merchants/acme/tokens", "", {{"value", "y"}}).status, 201);
}

}  // namespace
}  // namespace tokenvault::testing
