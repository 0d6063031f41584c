// End to end at the socket: clients that misbehave below HTTP (raw TLS, no libcurl) must never
// take the real server down.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "tests/e2e/http_client.h"
#include "tests/e2e/server_process.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {
namespace {

// One TLS connection to 127.0.0.1:port, certificate checked against 'ca_file'.
class RawTlsConnection {
 public:
  RawTlsConnection(int port, const std::string& ca_file) {
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_ || SSL_CTX_load_verify_locations(ctx_.get(), ca_file.c_str(), nullptr) != 1) return;
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ < 0 || connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return;
    ssl_.reset(SSL_new(ctx_.get()));
    if (!ssl_ || SSL_set_fd(ssl_.get(), fd_) != 1) return;
    connected_ = SSL_connect(ssl_.get()) == 1;
  }
  ~RawTlsConnection() {
    ssl_.reset();
    if (fd_ >= 0) close(fd_);
  }

  bool connected() const { return connected_; }

  bool Write(const std::string& bytes) {
    return SSL_write(ssl_.get(), bytes.data(), static_cast<int>(bytes.size())) ==
           static_cast<int>(bytes.size());
  }

  // Closes with a TCP reset (SO_LINGER 0), without reading anything the server sent.
  void Reset() {
    linger hard{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    ssl_.reset();  // no close_notify: just drop the TLS state
    close(fd_);
    fd_ = -1;
  }

 private:
  struct SslCtxFree {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
  };
  struct SslFree {
    void operator()(SSL* s) const { SSL_free(s); }
  };
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx_;
  std::unique_ptr<SSL, SslFree> ssl_;
  int fd_ = -1;
  bool connected_ = false;
};

TEST(SocketTest, AClientThatResetsWithAnswersInFlightDoesNotKillTheServer) {
  TempDir dir;
  ServerProcess server(dir.Sub("data"), dir.Sub("server.log"));
  ASSERT_TRUE(server.Start()) << "see " << server.log_file();
  // Many pipelined requests, then a reset: the server writes answers to a dead socket, which
  // raises SIGPIPE unless the process ignores it (OpenSSL writes with write(), not send()).
  std::string pipelined;
  for (int i = 0; i < 200; ++i) pipelined += "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  int written = 0;
  for (int i = 0; i < 20; ++i) {
    RawTlsConnection c(server.port(), server.ca_file());
    if (!c.connected()) break;  // the server is gone: checked below
    if (c.Write(pipelined)) ++written;
    c.Reset();
  }
  EXPECT_GT(written, 0);
  HttpClient client(server.base_url(), server.ca_file());
  Reply r = client.Get("/healthz", "");
  EXPECT_EQ(r.status, 200) << "the server died; see " << server.log_file();
  EXPECT_EQ(server.Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace tokenvault::testing
