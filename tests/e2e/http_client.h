// A small HTTPS client over libcurl for end-to-end tests: keep-alive, the server's CA pinned.
#ifndef TOKENVAULT_TESTS_E2E_HTTP_CLIENT_H_
#define TOKENVAULT_TESTS_E2E_HTTP_CLIENT_H_

#include <curl/curl.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tokenvault::testing {

struct Reply {
  long status = 0;  // 0: no answer (connection failed)
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  nlohmann::json Json() const { return nlohmann::json::parse(body, nullptr, false); }
};

class HttpClient {
 public:
  HttpClient(std::string base_url, std::string ca_file);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // 'api_key' empty: no Authorization header. 'content_type' empty: none sent.
  // 'extra_headers': "Name: value" lines.
  Reply Send(const std::string& method, const std::string& path, const std::string& api_key,
             const std::string& body = "", const std::string& content_type = "application/json",
             const std::vector<std::string>& extra_headers = {});
  Reply Get(const std::string& path, const std::string& key) { return Send("GET", path, key); }
  Reply Post(const std::string& path, const std::string& key, const nlohmann::json& body) {
    return Send("POST", path, key, body.dump());
  }
  Reply Delete(const std::string& path, const std::string& key) { return Send("DELETE", path, key); }
  // Connects from this local address (e.g. "127.0.0.2": another client, as the server sees it).
  void set_source_address(std::string address) { source_address_ = std::move(address); }
  // Presents this client certificate (PEM files) in every TLS handshake.
  void set_client_certificate(std::string cert_file, std::string key_file) {
    client_cert_ = std::move(cert_file);
    client_key_ = std::move(key_file);
  }
  // Opens a new connection for every request (TLS sessions are still resumed: curl caches them).
  void set_fresh_connections(bool fresh) { fresh_connections_ = fresh; }
  // The whole request, connection and TLS handshake included, must be answered within this
  // (default 30 s); otherwise Reply.status is 0.
  void set_timeout_ms(long timeout_ms) { timeout_ms_ = timeout_ms; }

 private:
  std::string base_url_, ca_file_;
  std::string source_address_;
  std::string client_cert_, client_key_;
  bool fresh_connections_ = false;
  long timeout_ms_ = 30000;
  CURL* curl_;
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_E2E_HTTP_CLIENT_H_
