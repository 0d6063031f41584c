#include "tests/e2e/nginx_front.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

namespace tokenvault::testing {

NginxFront::~NginxFront() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
}

std::string NginxFront::Start(const std::string& data_dir, int upstream_port) {
  if (access("/usr/sbin/nginx", X_OK) != 0) return "nginx is missing: scripts/setup.sh installs it";
  std::string cert, key;
  ca_.IssueServer("nginx front", {"IP:127.0.0.1"}).Write(dir_.Sub("front"), &cert, &key);
  port_ = FreeLoopbackPort();
  const std::string render = std::string(TOKENVAULT_SOURCE_DIR) + "/deploy/nginx/render.sh" +
                             " --data-dir " + data_dir + " --cert " + cert + " --key " + key +
                             " --client-ca " + client_ca_file_ + " --listen 127.0.0.1:" +
                             std::to_string(port_) + " --upstream 127.0.0.1:" +
                             std::to_string(upstream_port) + " --verify-client optional" +
                             " --access-log " + dir_.Sub("nginx-access.log") + " --out " +
                             dir_.Sub("site.conf");
  if (std::system(render.c_str()) != 0) return "render.sh failed: " + render;
  const std::string tmp = dir_.Sub("nginx-tmp");
  if (mkdir(tmp.c_str(), 0700) != 0) return "cannot make " + tmp;
  // Enough connections and descriptors for the abuse tests' thousand idle clients.
  std::ofstream(dir_.Sub("nginx.conf"))
      << "daemon off;\nworker_processes 1;\nworker_rlimit_nofile 8192;\npid " << dir_.Sub("nginx.pid") << ";\n"
      << "error_log " << dir_.Sub("nginx-error.log") << " info;\n"
      << (geteuid() == 0 ? "user root;\n" : "") << "events { worker_connections 4096; }\n"
      << "http {\n  client_body_temp_path " << tmp << "/body;\n  proxy_temp_path " << tmp << "/proxy;\n"
      << "  fastcgi_temp_path " << tmp << "/fastcgi;\n  uwsgi_temp_path " << tmp << "/uwsgi;\n"
      << "  scgi_temp_path " << tmp << "/scgi;\n  include " << dir_.Sub("site.conf") << ";\n}\n";
  pid_ = fork();
  if (pid_ == 0) {
    const std::string log = dir_.Sub("nginx-stderr.log");
    if (!freopen(log.c_str(), "w", stdout) || !freopen(log.c_str(), "a", stderr)) _exit(126);
    execl("/usr/sbin/nginx", "nginx", "-p", dir_.path().c_str(), "-c", dir_.Sub("nginx.conf").c_str(),
          "-e", dir_.Sub("nginx-error.log").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 200 && !CanConnect(port_); ++i) {  // bounded: up to 10 s
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!CanConnect(port_)) return "nginx did not start; see " + dir_.Sub("nginx-error.log");
  return "";
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool CanConnect(int port) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return false;
  close(fd);
  return true;
}

std::string RawTlsExchange(int port, const std::string& bytes, bool* handshake_ok) {
  signal(SIGPIPE, SIG_IGN);  // the peer may close while we still write
  std::string answer;
  const int fd = ConnectLoopback(port);
  if (handshake_ok) *handshake_ok = false;
  if (fd < 0) return answer;
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) == 1) {
    if (handshake_ok) *handshake_ok = true;
    for (size_t off = 0; off < bytes.size();) {
      const int n = SSL_write(ssl, bytes.data() + off,
                              static_cast<int>(std::min<size_t>(16384, bytes.size() - off)));
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    char buf[16384];
    for (int n; (n = SSL_read(ssl, buf, sizeof(buf))) > 0;) answer.append(buf, static_cast<size_t>(n));
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
  return answer;
}

}  // namespace tokenvault::testing
