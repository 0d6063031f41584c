// The real tokenvault binary as a child process, for end-to-end tests: a fresh data dir (real
// SoftHSM2 token, real SQLite file), HTTPS on 127.0.0.1 with a port from the OS, its log in a file.
#ifndef TOKENVAULT_TESTS_E2E_SERVER_PROCESS_H_
#define TOKENVAULT_TESTS_E2E_SERVER_PROCESS_H_

#include <signal.h>

#include <string>
#include <vector>

namespace tokenvault::testing {

class ServerProcess {
 public:
  // 'data_dir' is created by the server on first start. 'log_file' receives stdout and stderr.
  ServerProcess(std::string data_dir, std::string log_file, std::vector<std::string> extra_args = {});
  ~ServerProcess();

  // Starts the server and waits (bounded) until it prints its port. False on failure.
  bool Start();
  // Sends 'sig' and waits for the process to end; returns its exit status (or -signal).
  int Stop(int sig = SIGTERM);
  bool running() const { return pid_ > 0; }

  int port() const { return port_; }
  int pid() const { return pid_; }
  std::string base_url() const { return "https://127.0.0.1:" + std::to_string(port_); }
  std::string ca_file() const { return data_dir_ + "/tls/cert.pem"; }
  std::string admin_key() const;
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_file() const { return log_file_; }

 private:
  std::string data_dir_, log_file_;
  std::vector<std::string> extra_args_;
  int pid_ = -1;
  int port_ = 0;
  int starts_ = 0;  // "listening" lines seen in the log so far
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_E2E_SERVER_PROCESS_H_
