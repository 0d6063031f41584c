// Debian's nginx in front of a tokenvault server, as deploy/nginx/ sets it up (render.sh), for
// end-to-end tests: a child process with its own prefix, config and logs in a test's temp dir.
#ifndef TOKENVAULT_TESTS_E2E_NGINX_FRONT_H_
#define TOKENVAULT_TESTS_E2E_NGINX_FRONT_H_

#include <sys/types.h>

#include <string>

#include "tests/support/temp_dir.h"
#include "tests/support/test_certs.h"

namespace tokenvault::testing {

class NginxFront {
 public:
  // 'dir' holds the front's files; its certificate is issued by 'ca' for 127.0.0.1, and clients
  // may present certificates of the CA in 'client_ca_file' (verify-client optional).
  NginxFront(const TempDir& dir, TestCa& ca, std::string client_ca_file)
      : dir_(dir), ca_(ca), client_ca_file_(std::move(client_ca_file)) {}
  ~NginxFront();
  NginxFront(const NginxFront&) = delete;
  NginxFront& operator=(const NginxFront&) = delete;

  // Renders the site for the tokenvault on 'upstream_port' (data dir 'data_dir', for the proxy
  // secret) and starts nginx; waits (bounded) until it accepts connections. "" or what failed.
  std::string Start(const std::string& data_dir, int upstream_port);

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }

 private:
  const TempDir& dir_;
  TestCa& ca_;
  std::string client_ca_file_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A free TCP port on 127.0.0.1 (bound, read and released: another process may take it first).
int FreeLoopbackPort();
// Whether something accepts TCP connections on 127.0.0.1:port.
bool CanConnect(int port);
// A TCP connection to 127.0.0.1:port, or -1.
int ConnectLoopback(int port);
// Sends 'bytes' on one TLS connection to 127.0.0.1:port (the certificate is not checked) and
// returns everything answered until the peer closes (or 10 s pass). 'handshake_ok' says whether
// the TLS handshake succeeded.
std::string RawTlsExchange(int port, const std::string& bytes, bool* handshake_ok = nullptr);

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_E2E_NGINX_FRONT_H_
