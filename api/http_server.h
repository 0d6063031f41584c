// Pistache 0.0.5 in front of Service, with the workarounds of ../shared/research/pistache.md:
// useSSL after init, the keep-alive middleware, every method pre-registered (router race), JSON
// 404/405, generic 500s, handlers offloaded to our own executor so no Pistache worker ever
// blocks on the HSM or the disk, and an application-level drain on shutdown.
#ifndef TOKENVAULT_API_HTTP_SERVER_H_
#define TOKENVAULT_API_HTTP_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "api/service.h"

namespace tokenvault::api {

struct ServerConfig {
  std::string bind_address = "127.0.0.1";
  uint16_t port = 8443;  // 0: any free port (tests)
  bool tls = true;
  std::string cert_file;
  std::string key_file;
  // mTLS: client certificates are verified against this CA file (chain, dates, client-auth
  // purpose) during the handshake. Empty: no client certificates.
  std::string client_ca_file;
  // With a client CA: true refuses a handshake without a certificate; false lets such clients
  // in to authenticate with an API key (a bad certificate is refused either way).
  bool client_cert_required = true;
  // Behind a TLS-terminating proxy (deploy/nginx): the proxy sends this secret in
  // X-Tokenvault-Proxy-Secret and the client certificate it verified, URL-escaped PEM, in
  // X-Client-Cert. Without the secret both headers are ignored. Empty: no proxy trusted.
  std::string trusted_proxy_secret;
  int io_threads = 2;            // Pistache workers
  size_t worker_threads = 16;    // executor threads running vault work (never waiting on commits)
  size_t max_queued = 4096;      // requests waiting for a worker; beyond, 503
  size_t max_body_bytes = 1 << 20;
  std::chrono::seconds header_timeout{5};
  std::chrono::seconds body_timeout{10};
  std::chrono::seconds keepalive_timeout{15};
};

class HttpServer {
 public:
  // Binds and starts serving. kInvalidArgument (bad_config) for plain HTTP on a non-loopback
  // address; kUnavailable (bind_failed) when the port cannot be bound.
  static StatusOr<std::unique_ptr<HttpServer>> Start(const ServerConfig& config, Service& service);
  ~HttpServer();

  uint16_t port() const;
  // Stops taking requests, waits for those in flight to be answered, then stops the endpoint.
  void Shutdown();

 private:
  class Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Creates a self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost in 'dir' (cert.pem,
// key.pem with mode 0600) unless both files exist. It is also the CA clients pin (--cacert).
Status EnsureDevCertificate(const std::string& dir, std::string* cert_file, std::string* key_file);

}  // namespace tokenvault::api

#endif  // TOKENVAULT_API_HTTP_SERVER_H_
