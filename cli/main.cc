// tokenvault: the service binary.
//   tokenvault init  --data-dir DIR     create the data dir, dev HSM token, database, admin key
//   tokenvault serve --data-dir DIR     the same on first start, then serve HTTPS
// Settings: built-in defaults < --config FILE (JSON) < TOKENVAULT_* environment < flags.
// The HSM PIN is never a flag (argv is visible to every local user): a file or the environment.
#include <signal.h>
#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "vault/base/random.h"
#include "vault/base/sanitizers.h"
#include "vault/token_id.h"

#include "api/http_server.h"
#include "cli/json_log.h"
#include "api/service.h"
#include "policy/policy_file.h"
#include "vault/backup.h"
#include "vault/embedded.h"

namespace {

using namespace tokenvault;

struct Settings {
  std::string data_dir = "./tokenvault-data";
  std::string listen = "127.0.0.1";
  int port = 8443;
  bool plain_http = false;
  int io_threads = 2;
  int worker_threads = 16;
  long long token_cache_entries = 65536;  // token rows kept after a read (ciphertext only)
  long long max_body_bytes = 1 << 20;      // API.md: 1 MiB by default, configurable
  long long expiry_sweep_seconds = 30;     // how often expired tokens and idempotency records go
  std::string pkcs11_module;               // the dev token's module (default SoftHSM2)
  std::string hsm_outage = "fail_closed";  // or "serve_cached" (docs/keys.md)
  long long auth_lockout_failures = 10;    // bad API keys from one address before it is locked out
  long long auth_lockout_minutes = 30;     // how long (PCI DSS 8.3.4: at least 30)
  std::string policy_file;
  std::string log_format = "text";  // or "json": JSON lines (cli/json_log.h)
  std::string log_level;            // trace, debug, info, warn, error, critical, off ("": SPDLOG_LEVEL or info)
  bool trust_proxy = false;  // behind deploy/nginx: trust its identity headers (with the secret)
  std::string tls_client_ca;                 // mTLS: client certificates chain to this CA file
  std::string tls_client_auth = "required";  // or "optional": API-key-only clients may connect too
  long long audit_checkpoint_records = 1000;  // a signed audit checkpoint at least every N records
  long long audit_checkpoint_seconds = 10;    // and at least this often
};

#if !TOKENVAULT_ASAN
// True if the process may lock memory without limit: CAP_IPC_LOCK in its effective set (bit 14
// of CapEff in /proc/self/status), or an unlimited RLIMIT_MEMLOCK.
bool MayLockAllMemory() {
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) == 0 && limit.rlim_cur == RLIM_INFINITY) return true;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const unsigned long long caps = std::strtoull(line.c_str() + 7, nullptr, 16);
    return (caps >> 14) & 1;  // CAP_IPC_LOCK
  }
  return false;
}
#endif

// Returns what to log once logging is set up (empty: nothing to say).
std::string HardenProcess() {
  // No core dumps: a core of a running vault would hold unwrapped keys and values.
  rlimit none{0, 0};
  setrlimit(RLIMIT_CORE, &none);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  // Unwrapped keys and values must never reach swap. Every page is locked as it is first
  // touched (MCL_ONFAULT: thread stacks and maps are not populated up front), when the process
  // may lock without limit; under a limit, locking everything would make allocations fail once
  // it is reached, so the vault runs unlocked and says so. AddressSanitizer's shadow memory is
  // not meant to be locked.
#if TOKENVAULT_ASAN
  return "";
#else
  if (const char* off = std::getenv("TOKENVAULT_MLOCK"); off != nullptr && std::string(off) == "0") {
    return "memory locking disabled (TOKENVAULT_MLOCK=0): keys and values may reach swap";
  }
  if (!MayLockAllMemory()) {
    return "memory not locked: keys and values may reach swap; grant CAP_IPC_LOCK or an "
           "unlimited RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity), or disable swap";
  }
  if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0) {
    return std::string("mlockall failed (") + std::strerror(errno) +
           "): keys and values may reach swap";
  }
  return "";
#endif
}

bool ReadConfigFile(const std::string& path, Settings* s) {
  std::ifstream in(path);
  if (!in) {
    spdlog::error("cannot read config file {}", path);
    return false;
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    spdlog::error("config file {} is not a JSON object", path);
    return false;
  }
  try {
    for (const auto& [key, value] : j.items()) {
      if (key == "data_dir") s->data_dir = value.get<std::string>();
      else if (key == "listen") s->listen = value.get<std::string>();
      else if (key == "port") s->port = value.get<int>();
      else if (key == "plain_http") s->plain_http = value.get<bool>();
      else if (key == "io_threads") s->io_threads = value.get<int>();
      else if (key == "worker_threads") s->worker_threads = value.get<int>();
      else if (key == "token_cache_entries") s->token_cache_entries = value.get<long long>();
      else if (key == "max_body_bytes") s->max_body_bytes = value.get<long long>();
      else if (key == "expiry_sweep_seconds") s->expiry_sweep_seconds = value.get<long long>();
      else if (key == "pkcs11_module") s->pkcs11_module = value.get<std::string>();
      else if (key == "hsm_outage") s->hsm_outage = value.get<std::string>();
      else if (key == "auth_lockout_failures") s->auth_lockout_failures = value.get<long long>();
      else if (key == "auth_lockout_minutes") s->auth_lockout_minutes = value.get<long long>();
      else if (key == "tls_client_ca") s->tls_client_ca = value.get<std::string>();
      else if (key == "trust_proxy") s->trust_proxy = value.get<bool>();
      else if (key == "log_format") s->log_format = value.get<std::string>();
      else if (key == "log_level") s->log_level = value.get<std::string>();
      else if (key == "tls_client_auth") s->tls_client_auth = value.get<std::string>();
      else if (key == "audit_checkpoint_records") s->audit_checkpoint_records = value.get<long long>();
      else if (key == "audit_checkpoint_seconds") s->audit_checkpoint_seconds = value.get<long long>();
      else if (key == "policy_file") s->policy_file = value.get<std::string>();
      else {
        spdlog::error("config file {}: unknown setting '{}'", path, key);
        return false;
      }
    }
  } catch (const nlohmann::json::exception&) {
    spdlog::error("config file {}: a setting has the wrong type", path);
    return false;
  }
  return true;
}

void ReadEnvironment(Settings* s) {
  if (const char* v = std::getenv("TOKENVAULT_DATA_DIR")) s->data_dir = v;
  if (const char* v = std::getenv("TOKENVAULT_LISTEN")) s->listen = v;
  if (const char* v = std::getenv("TOKENVAULT_PORT")) {
    char* end = nullptr;
    const long port = std::strtol(v, &end, 10);
    s->port = (*v != '\0' && *end == '\0') ? static_cast<int>(port) : -1;  // -1: refused below
  }
  if (const char* v = std::getenv("TOKENVAULT_POLICY_FILE")) s->policy_file = v;
  if (const char* v = std::getenv("TOKENVAULT_PKCS11_MODULE")) s->pkcs11_module = v;
}

// Opens the vault (making the data dir, dev token and database on first use) and the bootstrap
// admin key. Returns null on failure, having logged why.
EmbeddedConfig EmbeddedConfigFor(const Settings& s) {
  EmbeddedConfig config;
  config.data_dir = s.data_dir;
  config.token_cache_entries = static_cast<size_t>(s.token_cache_entries);
  config.vault.expiry_sweep_interval = std::chrono::seconds(s.expiry_sweep_seconds);
  config.vault.audit_checkpoints.records = static_cast<size_t>(s.audit_checkpoint_records);
  config.vault.audit_checkpoints.interval = std::chrono::seconds(s.audit_checkpoint_seconds);
  config.dev_module_path = s.pkcs11_module;
  config.vault.keys.serve_cached_keys_when_hsm_down = s.hsm_outage == "serve_cached";
  // Crash tests only (tests/e2e/crash_test.cc): the process kills itself with SIGKILL when a key
  // operation reaches the named step ("kek_rotation.kek_created", "reencrypt.batch_committed",
  // ...), so that the tests restart it exactly there. Whoever can set this variable can kill the
  // process anyway.
  if (const char* step = std::getenv("TOKENVAULT_CRASH_AT"); step != nullptr && *step != '\0') {
    config.vault.keys.fault_injection = [at = std::string(step)](std::string_view reached) {
      if (reached == at) raise(SIGKILL);
      return Status::Ok();
    };
  }
  return config;
}

std::unique_ptr<Vault> OpenVault(const Settings& s) {
  StatusOr<std::unique_ptr<Vault>> vault = OpenEmbeddedVault(EmbeddedConfigFor(s));
  if (!vault.ok()) {
    spdlog::error("cannot open the vault in {}: {}", s.data_dir, vault.status().ToString());
    return nullptr;
  }
  spdlog::warn("using the development SoftHSM2 token in {}/hsm: its PIN sits beside the "
               "database; configure a real HSM for production", s.data_dir);
  return std::move(vault).value();
}

// Writes the key to a temporary file (0600), fsyncs it and renames it over 'path': the file is
// either the whole new key or untouched.
Status WriteAdminKey(const std::string& path, const SecretBytes& key) {
  const std::string tmp = path + ".tmp";
  unlink(tmp.c_str());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return FailedPreconditionError("data_dir_unwritable", "cannot create " + tmp);
  const bool ok = write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) &&
                  write(fd, "\n", 1) == 1 && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return FailedPreconditionError("data_dir_unwritable", "cannot write " + path);
  }
  return Status::Ok();
}

// The secret the nginx front (deploy/nginx) sends with the client identity it verified:
// 32 random bytes in hex, in <data_dir>/proxy-secret (0600), made once.
// An existing file is never replaced (nginx holds the same secret): a malformed one, or one that
// others can read, stops the server instead.
StatusOr<std::string> EnsureProxySecret(const std::string& data_dir) {
  const std::string path = data_dir + "/proxy-secret";
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) {
    if ((st.st_mode & 077) != 0) {
      return FailedPreconditionError("proxy_secret", path + " is readable by others: chmod 600 it");
    }
    std::ifstream in(path);
    std::string secret;
    std::getline(in, secret);
    while (!secret.empty() && (secret.back() == '\r' || secret.back() == ' ')) secret.pop_back();
    if (secret.size() != 64 || secret.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return FailedPreconditionError("proxy_secret", path + " is not 64 lower-case hex digits");
    }
    return secret;
  }
  TV_ASSIGN_OR_RETURN(SecretBytes random, RandomSecret(32));
  const std::string secret = HexEncode(random.view());
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return FailedPreconditionError("proxy_secret", "cannot write " + tmp);
  const std::string line = secret + "\n";
  const bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    return FailedPreconditionError("proxy_secret", "cannot write " + path);
  }
  return secret;
}

bool Bootstrap(api::Service& service, const Settings& s) {
  const std::string key_path = s.data_dir + "/admin.key";
  StatusOr<bool> created = service.EnsureBootstrapAdmin(
      [&](const SecretBytes& key) { return WriteAdminKey(key_path, key); });
  if (!created.ok()) {
    spdlog::error("cannot create the bootstrap admin: {}", created.status().ToString());
    return false;
  }
  if (*created) {
    spdlog::info("bootstrap principal 'admin' created; its API key is in {} (mode 0600)", key_path);
  }
  return true;
}

int Init(const Settings& s) {
  std::unique_ptr<Vault> vault = OpenVault(s);
  if (!vault) return 1;
  api::Service service(*vault, std::make_shared<const policy::Policy>(policy::Policy::BuiltIn()));
  if (!Bootstrap(service, s)) return 1;
  std::string cert, key;
  Status tls = api::EnsureDevCertificate(s.data_dir + "/tls", &cert, &key);
  if (!tls.ok()) {
    spdlog::error("{}", tls.ToString());
    return 1;
  }
  if (StatusOr<std::string> secret = EnsureProxySecret(s.data_dir); !secret.ok()) {
    spdlog::error("{}", secret.status().ToString());
    return 1;
  }
  std::cout << "data dir:    " << s.data_dir << "\n"
            << "admin key:   " << s.data_dir << "/admin.key\n"
            << "CA cert:     " << cert << "\n"
            << "proxy secret: " << s.data_dir << "/proxy-secret (for deploy/nginx)\n";
  return 0;
}

// SIGHUP: the policy file read again and swapped in whole, or - if it is unreadable or invalid -
// refused with the reason logged, the running policy unchanged.
void ReloadPolicy(api::Service& service, const Settings& s) {
  if (s.policy_file.empty()) {
    spdlog::warn("SIGHUP: no policy file configured; the built-in roles stay");
    return;
  }
  StatusOr<policy::Policy> loaded = policy::LoadPolicyFile(s.policy_file);
  if (!loaded.ok()) {
    spdlog::error("SIGHUP: policy file {} refused, the running policy stays: {}", s.policy_file,
                  loaded.status().ToString());
    return;
  }
  Status replaced = service.ReplacePolicy(
      std::make_shared<const policy::Policy>(std::move(loaded).value()), s.policy_file);
  if (!replaced.ok()) {
    spdlog::error("SIGHUP: the policy change cannot be audited, the running policy stays: {}",
                  replaced.ToString());
    return;
  }
  spdlog::info("SIGHUP: policy file {} reloaded", s.policy_file);
}

// `tokenvault policy reload`: signals the server running on this data dir.
int SignalReload(const Settings& s) {
  std::ifstream in(s.data_dir + "/tokenvault.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) {
    spdlog::error("no running server found ({}/tokenvault.pid)", s.data_dir);
    return 1;
  }
  // Only a tokenvault process: a stale pid file must not make us signal someone else.
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(comm, name);
  if (name != "tokenvault" || kill(pid, SIGHUP) != 0) {
    spdlog::error("process {} is not a running tokenvault", pid);
    return 1;
  }
  std::cout << "policy reload requested from process " << pid << " (see its log)" << std::endl;
  return 0;
}

int Serve(const Settings& s) {
  // Block the signals before any thread exists; the main thread sigwait()s for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // re-read the policy file
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::shared_ptr<const policy::Policy> policy;
  if (s.policy_file.empty()) {
    policy = std::make_shared<const policy::Policy>(policy::Policy::BuiltIn());
  } else {
    StatusOr<policy::Policy> loaded = policy::LoadPolicyFile(s.policy_file);
    if (!loaded.ok()) {
      spdlog::error("policy file {}: {}", s.policy_file, loaded.status().ToString());
      return 1;
    }
    policy = std::make_shared<const policy::Policy>(std::move(loaded).value());
  }
  std::unique_ptr<Vault> vault = OpenVault(s);
  if (!vault) return 1;
  api::ServiceOptions service_options;
  service_options.lockout.max_failures = static_cast<size_t>(s.auth_lockout_failures);
  service_options.lockout.lockout = std::chrono::minutes(s.auth_lockout_minutes);
  api::Service service(*vault, policy, service_options);
  if (Status loaded = service.LoadBudgetCounters(); !loaded.ok()) {
    spdlog::error("cannot read the detokenize budget counters: {}", loaded.ToString());
    return 1;
  }
  if (!Bootstrap(service, s)) return 1;
  if (Status loaded = service.LoadPrincipals(); !loaded.ok()) {
    spdlog::error("cannot read the principals: {}", loaded.ToString());
    return 1;
  }

  api::ServerConfig config;
  config.bind_address = s.listen;
  config.port = static_cast<uint16_t>(s.port);
  config.tls = !s.plain_http;
  config.io_threads = s.io_threads;
  config.worker_threads = static_cast<size_t>(s.worker_threads);
  config.max_body_bytes = static_cast<size_t>(s.max_body_bytes);
  config.client_ca_file = s.tls_client_ca;
  if (s.trust_proxy) {
    StatusOr<std::string> secret = EnsureProxySecret(s.data_dir);
    if (!secret.ok()) {
      spdlog::error("{}", secret.status().ToString());
      return 1;
    }
    config.trusted_proxy_secret = *secret;
  }
  config.client_cert_required = s.tls_client_auth == "required";
  if (config.tls) {
    Status tls = api::EnsureDevCertificate(s.data_dir + "/tls", &config.cert_file, &config.key_file);
    if (!tls.ok()) {
      spdlog::error("{}", tls.ToString());
      return 1;
    }
  }
  StatusOr<std::unique_ptr<api::HttpServer>> server = api::HttpServer::Start(config, service);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  // The service, and with it its audit logging, starts: recorded, or it does not serve at all.
  Status started = service.AuditServiceEvent(
      "service.start", "serving on " + s.listen + ":" + std::to_string((*server)->port()));
  if (!started.ok()) {
    spdlog::error("the start of the service cannot be audited, stopping: {}", started.ToString());
    (*server)->Shutdown();
    return 1;
  }
  spdlog::info("tokenvault serving on {}://{}:{} (CA certificate: {})",
               config.tls ? "https" : "http", s.listen, (*server)->port(),
               config.tls ? config.cert_file : "none");
  // Tests and scripts read the port from here when they ask for port 0.
  std::cout << "listening " << (*server)->port() << std::endl;

  // `tokenvault policy reload` finds the server here.
  const std::string pid_file = s.data_dir + "/tokenvault.pid";
  {
    std::ofstream pid(pid_file, std::ios::trunc);
    pid << getpid() << "\n";
  }
  chmod(pid_file.c_str(), 0600);

  int sig = 0;
  for (;;) {
    sigwait(&signals, &sig);
    if (sig != SIGHUP) break;
    ReloadPolicy(service, s);
  }
  unlink(pid_file.c_str());
  spdlog::info("signal {}: draining in-flight requests", sig);
  (*server)->Shutdown();
  server->reset();
  // Every request is answered and recorded by now: the last record says the service stopped.
  Status stopped = service.AuditServiceEvent("service.stop", "signal " + std::to_string(sig));
  if (!stopped.ok()) spdlog::error("the stop of the service cannot be audited: {}", stopped.ToString());
  vault.reset();  // closes the database cleanly
  spdlog::info("stopped");
  return 0;
}

// The audit record of an operator command run on this machine: who (the Unix user), from where
// ("local"), which command. The vault completes it like a request's.
storage::AuditRecord OperatorAudit(const std::string& action, const std::string& merchant) {
  storage::AuditRecord r;
  const char* user = std::getenv("USER");
  r.request_id = "cli";
  r.principal = std::string("operator:") + (user != nullptr ? user : std::to_string(getuid()));
  r.auth = "local";
  r.source_ip = "local";
  r.action = action;
  r.merchant = merchant;
  r.outcome = "allowed";
  r.status = 200;
  return r;
}

// `tokenvault keys status|rotate|rotate-kek|reencrypt --merchant M` and `tokenvault merchant
// shred --merchant M`: the vault's own code paths, each key event audited as above. They open the
// data dir themselves, so the server must be stopped (one process owns the database; while it
// runs, use the HTTP API, which does the same). Prints JSON.
int KeysCommand(const Settings& s, const std::string& command, const std::string& merchant) {
  // stdout is for the JSON answer: logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_logger_mt("tokenvault-cli"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  if (!IsValidMerchantId(merchant)) {
    spdlog::error("--merchant must be a merchant id");
    return 2;
  }
  std::unique_ptr<Vault> vault = OpenVault(s);
  if (!vault) return 1;
  auto fail = [](const Status& status) {
    spdlog::error("{}", status.ToString());
    return 1;
  };
  nlohmann::json out;
  if (command == "status") {
    StatusOr<std::vector<storage::DataKeyUsage>> keys = vault->DataKeys(merchant);
    if (!keys.ok()) return fail(keys.status());
    out = {{"merchant", merchant}, {"dek_versions", nlohmann::json::array()}};
    for (const auto& k : *keys) {
      out["dek_versions"].push_back(
          {{"version", k.version},
           {"state", k.state == storage::DataKeyState::kActive    ? "active"
                     : k.state == storage::DataKeyState::kRetired ? "retired"
                                                                  : "destroyed"},
           {"kek_version", k.kek_version},
           {"tokens", k.live_tokens}});
    }
  } else if (command == "rotate") {
    const storage::AuditRecord audit = OperatorAudit("keys.rotate", merchant);
    StatusOr<uint32_t> v = vault->RotateDataKey(merchant, &audit);
    if (!v.ok()) return fail(v.status());
    out = {{"dek_version", *v}};
  } else if (command == "rotate-kek") {
    const storage::AuditRecord audit = OperatorAudit("kek.rotate", merchant);
    StatusOr<Keyring::KekRotated> r = vault->RotateKek(merchant, &audit);
    if (!r.ok()) return fail(r.status());
    out = {{"kek_version", r->kek_version}, {"rewrapped", r->rewrapped}};
  } else if (command == "reencrypt") {
    size_t moved = 0;
    for (;;) {
      StatusOr<size_t> batch = vault->ReencryptBatch(merchant, 1000);
      if (!batch.ok()) return fail(batch.status());
      if (*batch == 0) break;
      moved += *batch;
    }
    StatusOr<size_t> destroyed = vault->DestroyUnusedDataKeys(merchant);
    if (!destroyed.ok()) return fail(destroyed.status());
    out = {{"moved", moved}, {"destroyed_versions", *destroyed}};
  } else if (command == "shred") {
    StatusOr<ShredReceipt> receipt = vault->ShredMerchant(merchant, OperatorAudit("merchants.shred", merchant));
    if (!receipt.ok()) return fail(receipt.status());
    out = {{"merchant", receipt->merchant},
           {"destroyed", receipt->destroyed},
           {"time", Rfc3339(receipt->time_ms)},
           {"principal", receipt->principal},
           {"audit_seq", receipt->audit_seq}};
  } else {
    spdlog::error("unknown command {}", command);
    return 2;
  }
  std::cout << out.dump(2) << std::endl;
  return 0;
}

void LogToStderr() {
  spdlog::set_default_logger(spdlog::stderr_logger_mt("tokenvault-cli"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
}

// VerifyBackup in a child process: each check initialises a PKCS#11 module of its own (the scratch
// copy's token), which a process does once.
StatusOr<BackupCheck> VerifyBackupInChild(const std::string& backup_dir, const EmbeddedConfig& config) {
  int fds[2];
  if (pipe(fds) != 0) return UnavailableError("backup_failed", "pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return UnavailableError("backup_failed", "fork failed");
  if (pid == 0) {
    close(fds[0]);
    StatusOr<BackupCheck> check = VerifyBackup(backup_dir, config);
    nlohmann::json out;
    if (check.ok()) {
      out = {{"ok", true}, {"merchants", check->merchants}, {"data_keys", check->data_keys},
             {"audit_records", check->audit_records}, {"audit_checkpoints", check->audit_checkpoints}};
    } else {
      out = {{"ok", false}, {"error", check.status().ToString()}};
    }
    const std::string text = out.dump();
    const bool written = write(fds[1], text.data(), text.size()) == static_cast<ssize_t>(text.size());
    _exit(written ? 0 : 1);
  }
  close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const nlohmann::json out = nlohmann::json::parse(text, nullptr, false);
  if (!out.is_object() || !out.contains("ok")) {
    return DataLossError("backup_unusable", "the verification process failed (status " + std::to_string(status) + ")");
  }
  if (!out["ok"].get<bool>()) return DataLossError("backup_unusable", out.value("error", ""));
  BackupCheck check;
  check.merchants = out["merchants"].get<int64_t>();
  check.data_keys = out["data_keys"].get<int64_t>();
  check.audit_records = out["audit_records"].get<int64_t>();
  check.audit_checkpoints = out["audit_checkpoints"].get<int64_t>();
  return check;
}

nlohmann::json CheckJson(const BackupCheck& c) {
  return {{"merchants", c.merchants}, {"data_keys_unwrapped", c.data_keys},
          {"audit_records_verified", c.audit_records}, {"audit_checkpoints", c.audit_checkpoints}};
}

// `tokenvault backup --out DIR`: a copy of the data dir, taken while the server runs, then proved
// to restore (VerifyBackup). A copy that does not verify - a KEK made while it was taken, by a
// merchant created or a KEK rotated meanwhile - is taken again, at most three times. Prints JSON.
int BackupCommand(const Settings& s, const std::string& out_dir) {
  LogToStderr();
  if (out_dir.empty()) {
    spdlog::error("backup needs --out DIR (a directory that does not exist yet)");
    return 2;
  }
  struct stat st {};
  if (lstat(out_dir.c_str(), &st) == 0) {
    spdlog::error("{} exists: a backup never writes into an existing directory", out_dir);
    return 2;
  }
  for (int attempt = 1; attempt <= 3; ++attempt) {
    StatusOr<BackupManifest> manifest = BackupDataDir(s.data_dir, out_dir);
    if (!manifest.ok() && manifest.status().reason() == kReasonBackupTargetExists) {
      spdlog::error("{}", manifest.status().ToString());  // not ours: nothing to clean up
      return 2;
    }
    StatusOr<BackupCheck> check = manifest.ok() ? VerifyBackupInChild(out_dir, EmbeddedConfigFor(s))
                                                : StatusOr<BackupCheck>(manifest.status());
    if (check.ok()) {
      nlohmann::json out = {{"backup", out_dir},
                            {"created", Rfc3339(manifest->created_ms)},
                            {"files", manifest->files.size()},
                            {"includes_hsm_token", manifest->includes_hsm_token},
                            {"verified", CheckJson(*check)}};
      std::cout << out.dump(2) << std::endl;
      if (manifest->includes_hsm_token) {
        spdlog::warn("the backup holds the development HSM token and its PIN: it decrypts everything; "
                     "keep it as you keep the data dir");
      } else {
        spdlog::warn("the KEKs stay in the HSM: back them up with the HSM's own tools");
      }
      return 0;
    }
    std::error_code ignored;
    std::filesystem::remove_all(out_dir, ignored);  // ours: it did not exist before
    // A copy that failed, or that does not verify (a file removed or a KEK made while it was
    // taken), is taken again.
    spdlog::warn("backup attempt {} failed ({}); taking it again", attempt, check.status().ToString());
  }
  spdlog::error("no backup verified in three attempts");
  return 1;
}

// `tokenvault restore --from DIR --data-dir D`: a new data dir from a backup (checked against its
// manifest and proved to open first). The restore is itself an event of the restored trail: the
// records after the backup are gone from it, and this record says so.
int RestoreCommand(const Settings& s, const std::string& from) {
  LogToStderr();
  if (from.empty()) {
    spdlog::error("restore needs --from DIR (a backup made by tokenvault backup)");
    return 2;
  }
  StatusOr<BackupManifest> manifest = ReadBackupManifest(from);
  if (!manifest.ok()) {
    spdlog::error("{}", manifest.status().ToString());
    return 1;
  }
  StatusOr<BackupCheck> check = VerifyBackupInChild(from, EmbeddedConfigFor(s));
  if (!check.ok()) {
    spdlog::error("the backup does not verify, nothing restored: {}", check.status().ToString());
    return 1;
  }
  if (Status restored = RestoreDataDir(from, s.data_dir); !restored.ok()) {
    spdlog::error("restore failed, nothing restored: {}", restored.ToString());
    return 1;
  }
  // The data dir exists now, whole; it is the restore's until it holds the restore's audit record.
  auto undo = [&](const std::string& why) {
    std::error_code ignored;
    std::filesystem::remove_all(s.data_dir, ignored);
    spdlog::error("{}; nothing restored", why);
    return 1;
  };
  StatusOr<storage::AuditRecord> audited = InternalError("restore", "not audited");
  {
    std::unique_ptr<Vault> vault = OpenVault(s);
    if (!vault) return undo("the restored data dir does not open");
    storage::AuditRecord record = OperatorAudit("backup.restored", "");
    record.resource = from;
    record.reason = "restored from the backup taken at " + Rfc3339(manifest->created_ms) +
                    ": records appended after it are not in this trail";
    audited = vault->audit().Append(std::move(record));
  }
  if (!audited.ok()) return undo("the restore cannot be audited: " + audited.status().ToString());
  nlohmann::json out = {{"data_dir", s.data_dir},
                        {"backup_created", Rfc3339(manifest->created_ms)},
                        {"verified", CheckJson(*check)},
                        {"audit_seq", audited->seq}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

// `tokenvault audit export --out F`: a full export of a stopped server's trail (the running server
// serves the same at GET /v1/audit/export), read by this operator and so audited as such.
int AuditExport(const Settings& s, const std::string& out_path) {
  spdlog::set_default_logger(spdlog::stderr_logger_mt("tokenvault-cli"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  std::unique_ptr<Vault> vault = OpenVault(s);
  if (!vault) return 1;
  StatusOr<storage::AuditRecord> audited = vault->audit().Append(OperatorAudit("audit.export", ""));
  if (!audited.ok()) {
    spdlog::error("the export cannot be audited, so it is not made: {}", audited.status().ToString());
    return 1;
  }
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) {
    spdlog::error("cannot write {}", out_path);
    return 1;
  }
  storage::AuditQuery all;
  Status exported = vault->audit_checkpoints().Export(all, SIZE_MAX, [&](std::string_view line) {
    out << line << '\n';
    return out ? Status::Ok() : UnavailableError("write_failed", "cannot write " + out_path);
  });
  out.close();
  if (!exported.ok() || !out) {
    spdlog::error("export failed: {}", exported.ok() ? "cannot write " + out_path : exported.ToString());
    return 1;
  }
  return 0;
}

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("file_not_found", "cannot read " + path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return data;
}

// `tokenvault audit verify --file F --public-key P [--checkpoints L]`: offline, with no HSM, no
// database and no audit key. Prints the result as JSON; exit 0 only if the export verifies.
int AuditVerify(const std::string& file, const std::string& public_key_path,
                const std::string& checkpoints_path) {
  StatusOr<std::string> pem = ReadWholeFile(public_key_path);
  if (!pem.ok()) {
    std::cerr << pem.status().message() << std::endl;
    return 2;
  }
  StatusOr<EcdsaP256PublicKey> key = EcdsaP256PublicKey::FromPem(*pem);
  if (!key.ok()) {
    std::cerr << public_key_path << ": " << key.status().message() << std::endl;
    return 2;
  }
  AuditExportVerifier verifier(*key);
  if (!checkpoints_path.empty()) {
    StatusOr<std::string> log = ReadWholeFile(checkpoints_path);
    if (!log.ok()) {
      std::cerr << log.status().message() << std::endl;
      return 2;
    }
    Status added = verifier.AddCheckpointLog(*log);
    if (!added.ok()) {
      std::cout << nlohmann::json{{"ok", false}, {"reason", added.message()}}.dump(2) << std::endl;
      return 1;
    }
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::cerr << "cannot read " << file << std::endl;
    return 2;
  }
  std::string line;
  while (std::getline(in, line) && verifier.Feed(line)) {
  }
  const ExportVerification v = verifier.Finish();
  nlohmann::json out = {{"ok", v.ok},
                        {"records_checked", v.records_checked},
                        {"checkpoints_checked", v.checkpoints_checked},
                        {"last_seq", v.last_seq}};
  if (!v.ok) {
    out["first_bad_seq"] = v.first_bad_seq ? nlohmann::json(*v.first_bad_seq) : nlohmann::json(nullptr);
    out["reason"] = v.reason;
    if (v.line > 0) out["line"] = v.line;
  }
  std::cout << out.dump(2) << std::endl;
  return v.ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string hardening_warning = HardenProcess();
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=warn silences the per-request lines
  if (!hardening_warning.empty()) spdlog::warn("{}", hardening_warning);
  CLI::App app{"tokenvault: a self-hosted tokenization vault"};
  app.require_subcommand(1);
  Settings settings;
  std::string config_file;
  std::string data_dir, listen, policy_file;
  int port = -1;
  bool plain_http = false;
  int io_threads = -1, worker_threads = -1;
  long long token_cache_entries = -1;
  long long max_body_bytes = -1;
  long long expiry_sweep_seconds = -1;
  std::string hsm_outage;

  auto add_common = [&](CLI::App* cmd) {
    cmd->add_option("--config", config_file, "JSON settings file");
    cmd->add_option("--data-dir", data_dir, "data directory (TOKENVAULT_DATA_DIR)");
  };
  CLI::App* init = app.add_subcommand("init", "create the data dir, dev HSM token, database and admin key");
  add_common(init);
  CLI::App* serve = app.add_subcommand("serve", "serve the HTTPS API");
  add_common(serve);
  serve->add_option("--listen", listen, "address to bind (default 127.0.0.1)");
  serve->add_option("--port", port, "port (default 8443; 0 = any free port)");
  serve->add_flag("--plain-http", plain_http, "serve plain HTTP (loopback only)");
  serve->add_option("--io-threads", io_threads, "HTTP worker threads");
  serve->add_option("--worker-threads", worker_threads, "vault worker threads");
  serve->add_option("--token-cache", token_cache_entries,
                    "token rows cached after a read (ciphertext only; 0 = off)");
  // Operator commands on a stopped server's data dir (KeysCommand).
  std::string merchant_arg;
  std::string keys_command;
  CLI::App* keys = app.add_subcommand("keys", "key status and rotation for one merchant (server stopped)");
  add_common(keys);
  keys->add_option("command", keys_command, "status | rotate | rotate-kek | reencrypt")
      ->required()
      ->check(CLI::IsMember({"status", "rotate", "rotate-kek", "reencrypt"}));
  keys->add_option("--merchant", merchant_arg, "merchant id")->required();
  CLI::App* policy_cmd = app.add_subcommand("policy", "policy file administration");
  add_common(policy_cmd);
  std::string policy_command;
  policy_cmd->add_option("command", policy_command, "reload: the running server re-reads its policy file")
      ->required()
      ->check(CLI::IsMember({"reload"}));
  CLI::App* merchant_cmd = app.add_subcommand("merchant", "merchant administration (server stopped)");
  add_common(merchant_cmd);
  std::string merchant_command;
  merchant_cmd->add_option("command", merchant_command, "shred")->required()->check(CLI::IsMember({"shred"}));
  merchant_cmd->add_option("--merchant", merchant_arg, "merchant id")->required();
  CLI::App* audit_cmd = app.add_subcommand("audit", "audit trail export (server stopped) and offline verification");
  add_common(audit_cmd);
  std::string audit_command, audit_file, audit_out, audit_key, audit_checkpoints;
  audit_cmd->add_option("command", audit_command, "export | verify")
      ->required()
      ->check(CLI::IsMember({"export", "verify"}));
  audit_cmd->add_option("--out", audit_out, "export: the NDJSON file to write");
  audit_cmd->add_option("--file", audit_file, "verify: the export to verify");
  audit_cmd->add_option("--public-key", audit_key, "verify: the checkpoint public key (PEM)");
  audit_cmd->add_option("--checkpoints", audit_checkpoints,
                        "verify: the checkpoint log (<data_dir>/audit-checkpoints.ndjson), to catch a trail cut back");
  CLI::App* backup_cmd = app.add_subcommand("backup", "a verified copy of the data dir (the server may run)");
  add_common(backup_cmd);
  std::string backup_out, restore_from;
  backup_cmd->add_option("--out", backup_out, "the backup directory to create")->required();
  CLI::App* restore_cmd = app.add_subcommand("restore", "a new data dir from a backup (server stopped)");
  add_common(restore_cmd);
  restore_cmd->add_option("--from", restore_from, "the backup directory")->required();
  serve->add_option("--max-body-bytes", max_body_bytes,
                    "largest request body accepted, batches included (default 1 MiB)");
  serve->add_option("--expiry-sweep-seconds", expiry_sweep_seconds,
                    "how often expired tokens lose their sealed value (default 30)");
  serve->add_option("--hsm-outage", hsm_outage,
                    "while the HSM is down: fail_closed (default) or serve_cached");
  serve->add_option("--policy", policy_file, "JSON policy file with custom roles");
  CLI11_PARSE(app, argc, argv);

  if (!config_file.empty() && !ReadConfigFile(config_file, &settings)) return 2;
  ReadEnvironment(&settings);
  if (!data_dir.empty()) settings.data_dir = data_dir;
  if (!listen.empty()) settings.listen = listen;
  if (port >= 0) settings.port = port;
  if (plain_http) settings.plain_http = true;
  if (io_threads > 0) settings.io_threads = io_threads;
  if (worker_threads > 0) settings.worker_threads = worker_threads;
  if (token_cache_entries >= 0) settings.token_cache_entries = token_cache_entries;
  if (max_body_bytes >= 0) settings.max_body_bytes = max_body_bytes;
  if (expiry_sweep_seconds >= 0) settings.expiry_sweep_seconds = expiry_sweep_seconds;
  if (!hsm_outage.empty()) settings.hsm_outage = hsm_outage;
  if (!policy_file.empty()) settings.policy_file = policy_file;
  if (settings.port < 0 || settings.port > 65535) {
    spdlog::error("the port must be a number from 0 to 65535");
    return 2;
  }
  if (settings.io_threads < 1 || settings.io_threads > 64 || settings.worker_threads < 1 ||
      settings.worker_threads > 1024) {
    spdlog::error("thread counts must be positive (io 1-64, workers 1-1024)");
    return 2;
  }
  if (settings.token_cache_entries < 0 || settings.token_cache_entries > 10'000'000) {
    spdlog::error("token_cache_entries must be from 0 to 10000000");
    return 2;
  }
  // 1 KiB to 64 MiB: Pistache buffers four times this much per request before answering 413.
  if (settings.max_body_bytes < 1024 || settings.max_body_bytes > (64LL << 20)) {
    spdlog::error("max_body_bytes must be from 1024 to 67108864");
    return 2;
  }
  if (settings.auth_lockout_failures < 0 || settings.auth_lockout_failures > 1000 ||
      settings.auth_lockout_minutes < 1 || settings.auth_lockout_minutes > 24 * 60) {
    spdlog::error("auth_lockout_failures is 0 (off) to 1000, auth_lockout_minutes 1 to 1440");
    return 2;
  }
  if (settings.hsm_outage != "fail_closed" && settings.hsm_outage != "serve_cached") {
    spdlog::error("hsm_outage is fail_closed or serve_cached");
    return 2;
  }
  if (settings.log_format != "text" && settings.log_format != "json") {
    spdlog::error("log_format is text or json");
    return 2;
  }
  if (!settings.log_level.empty()) {
    const spdlog::level::level_enum level = spdlog::level::from_str(settings.log_level);
    // from_str answers "off" for anything it does not know: only "off" itself may mean off.
    if (level == spdlog::level::off && settings.log_level != "off") {
      spdlog::error("log_level is trace, debug, info, warn, error, critical or off");
      return 2;
    }
    spdlog::set_level(level);
  }
  if (settings.log_format == "json") spdlog::set_formatter(std::make_unique<cli::JsonLineFormatter>());
  if (settings.tls_client_auth != "required" && settings.tls_client_auth != "optional") {
    spdlog::error("tls_client_auth is required or optional");
    return 2;
  }
  if (!settings.tls_client_ca.empty() && settings.plain_http) {
    spdlog::error("tls_client_ca needs TLS: it cannot be used with plain_http");
    return 2;
  }
  if (settings.audit_checkpoint_records < 1 || settings.audit_checkpoint_records > 10000 ||
      settings.audit_checkpoint_seconds < 1 || settings.audit_checkpoint_seconds > 3600) {
    spdlog::error("audit_checkpoint_records is 1 to 10000, audit_checkpoint_seconds 1 to 3600");
    return 2;
  }
  if (settings.expiry_sweep_seconds < 1 || settings.expiry_sweep_seconds > 86400) {
    spdlog::error("expiry_sweep_seconds must be from 1 to 86400");
    return 2;
  }
  if (policy_cmd->parsed()) return SignalReload(settings);
  if (audit_cmd->parsed()) {
    if (audit_command == "verify") {
      if (audit_file.empty() || audit_key.empty()) {
        spdlog::error("audit verify needs --file and --public-key");
        return 2;
      }
      return AuditVerify(audit_file, audit_key, audit_checkpoints);
    }
    if (audit_out.empty()) {
      spdlog::error("audit export needs --out");
      return 2;
    }
    return AuditExport(settings, audit_out);
  }
  if (backup_cmd->parsed()) return BackupCommand(settings, backup_out);
  if (restore_cmd->parsed()) return RestoreCommand(settings, restore_from);
  if (keys->parsed()) return KeysCommand(settings, keys_command, merchant_arg);
  if (merchant_cmd->parsed()) return KeysCommand(settings, merchant_command, merchant_arg);
  return init->parsed() ? Init(settings) : Serve(settings);
}
