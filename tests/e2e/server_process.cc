#include "tests/e2e/server_process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace tokenvault::testing {

ServerProcess::ServerProcess(std::string data_dir, std::string log_file,
                             std::vector<std::string> extra_args)
    : data_dir_(std::move(data_dir)), log_file_(std::move(log_file)), extra_args_(std::move(extra_args)) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

bool ServerProcess::Start() {
  std::vector<std::string> args = {TOKENVAULT_BINARY, "serve", "--data-dir", data_dir_, "--port", "0"};
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_file_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  pid_ = pid;
  // The server prints "listening <port>" once it serves. The log may hold lines of earlier
  // runs: wait for one more such line than there were before.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(log_file_);
    std::string line;
    int found = 0, count = 0;
    while (std::getline(in, line)) {
      if (line.rfind("listening ", 0) == 0) {
        found = std::stoi(line.substr(10));
        ++count;
      }
    }
    if (count > starts_) {
      starts_ = count;
      port_ = found;
      return true;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int ServerProcess::Stop(int sig) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  int status = 0;
  // A server that does not stop within 60 s is killed: the suite must not hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
}

std::string ServerProcess::admin_key() const {
  std::ifstream in(data_dir_ + "/admin.key");
  std::string key;
  std::getline(in, key);
  return key;
}

}  // namespace tokenvault::testing
