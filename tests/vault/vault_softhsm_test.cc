// The vault on the product path: a real SoftHSM2 token in a temp dir (own softhsm2.conf) and a
// real SQLite file, through OpenEmbeddedVault exactly as the service opens it.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <unordered_set>

#include "hsm/dev_token.h"
#include "tests/support/leak_scan.h"
#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"
#include "vault/base/random.h"
#include "vault/embedded.h"

extern char** environ;

namespace tokenvault {
namespace {

using testing::TempDir;

constexpr int kValues = 10000;
constexpr int kCards = 1000;  // of the 10,000, these are card numbers; the rest generic strings
constexpr char kPhase2Env[] = "TOKENVAULT_TEST_PHASE2_DIR";

std::string RandomHex(size_t bytes) {
  std::vector<uint8_t> b(bytes);
  EXPECT_TRUE(RandomBytes(b.data(), b.size()).ok());
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (uint8_t x : b) {
    out.push_back(kHex[x >> 4]);
    out.push_back(kHex[x & 15]);
  }
  return out;
}

// A random 16-digit Luhn-valid number (test PAN).
std::string RandomCard() {
  std::vector<uint8_t> b(15);
  EXPECT_TRUE(RandomBytes(b.data(), b.size()).ok());
  std::string digits = "4";
  for (int i = 1; i < 15; ++i) digits.push_back(static_cast<char>('0' + b[i] % 10));
  for (char check = '0'; check <= '9'; ++check) {
    std::string candidate = digits + check;
    if (LuhnValid(AsBytes(candidate))) return candidate;
  }
  return "";
}

struct Entry {
  std::string token, type, value;
};

EmbeddedConfig Config(const std::string& data_dir) {
  EmbeddedConfig config;
  config.data_dir = data_dir;
  return config;
}

void CheckNoPlaintextAtRest(const std::string& data_dir, const std::vector<Entry>& entries) {
  std::unordered_set<std::string> cards, generics, tokens;
  for (const Entry& e : entries) {
    (e.type == "card" ? cards : generics).insert(e.value);
    tokens.insert(e.token);
  }
  const std::string db = EmbeddedDatabasePath(data_dir);
  std::unordered_set<std::string> tokens_seen;
  for (const std::string& file : {db, db + "-wal", db + "-shm"}) {
    if (!testing::FileExists(file)) continue;
    EXPECT_TRUE(testing::FindNeedles(file, cards).empty()) << "card number in " << file;
    EXPECT_TRUE(testing::FindNeedles(file, generics).empty()) << "value in " << file;
    for (const std::string& t : testing::FindNeedles(file, tokens)) tokens_seen.insert(t);
  }
  // Positive control: the same scan does find what is stored in clear (the tokens), so an
  // unreadable or empty file cannot make this check pass.
  EXPECT_EQ(tokens_seen.size(), tokens.size());
}

// Phase 2 runs in a fresh process (see below): empty cache, new PKCS#11 login, new connections.
TEST(VaultSoftHsmTest, DISABLED_Phase2DetokenizesEverythingInAFreshProcess) {
  const char* dir = std::getenv(kPhase2Env);
  ASSERT_NE(dir, nullptr);
  std::ifstream in(std::string(dir) + "/expected.txt");
  std::vector<Entry> entries;
  for (Entry e; in >> e.token >> e.type >> e.value;) entries.push_back(e);
  ASSERT_EQ(entries.size(), static_cast<size_t>(kValues));
  StatusOr<std::unique_ptr<Vault>> vault = OpenEmbeddedVault(Config(std::string(dir) + "/data"));
  TV_ASSERT_OK(vault);
  EXPECT_EQ((*vault)->keyring().cache().size(), 0u);
  int ok = 0;
  for (const Entry& e : entries) {
    StatusOr<RevealedValue> v = (*vault)->Detokenize("acme", e.token);
    if (v.ok() && AsChars(v->value.view()) == e.value && ValueTypeName(v->type) == e.type) ++ok;
  }
  EXPECT_EQ(ok, kValues);
  std::printf("fresh process detokenized %d of %d\n", ok, kValues);
}

TEST(VaultSoftHsmTest, TenThousandValuesRoundTripAndSurviveARestart) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  std::vector<Entry> entries(kValues);
  for (int i = 0; i < kValues; ++i) {
    entries[i].type = i < kCards ? "card" : "generic";
    entries[i].value = i < kCards ? RandomCard() : "secret-" + RandomHex(12);
  }
  {
    StatusOr<std::unique_ptr<Vault>> opened = OpenEmbeddedVault(Config(data_dir));
    TV_ASSERT_OK(opened);
    Vault& vault = **opened;
    TV_ASSERT_OK(vault.CreateMerchant("acme"));
    // Several writers, so that group commit batches them as the service's workers would.
    std::atomic<int> next{0}, failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next++) < kValues;) {
          const ValueType type = entries[i].type == "card" ? ValueType::kCard : ValueType::kGeneric;
          StatusOr<TokenInfo> token = vault.Tokenize("acme", AsBytes(entries[i].value), type);
          if (!token.ok()) {
            ++failures;
            continue;
          }
          entries[i].token = token->token;
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_EQ(failures.load(), 0);
    std::unordered_set<std::string> tokens;
    for (const Entry& e : entries) tokens.insert(e.token);
    EXPECT_EQ(tokens.size(), static_cast<size_t>(kValues));
    int ok = 0;
    for (const Entry& e : entries) {
      StatusOr<RevealedValue> v = vault.Detokenize("acme", e.token);
      if (v.ok() && AsChars(v->value.view()) == e.value) ++ok;
    }
    EXPECT_EQ(ok, kValues);
    CheckNoPlaintextAtRest(data_dir, entries);  // while the WAL is live
  }
  CheckNoPlaintextAtRest(data_dir, entries);  // after a clean close

  // Phase 2 in a new process of this same binary.
  {
    std::ofstream out(dir.Sub("expected.txt"));
    for (const Entry& e : entries) out << e.token << ' ' << e.type << ' ' << e.value << '\n';
  }
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back(std::string(kPhase2Env) + "=" + dir.path());
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=VaultSoftHsmTest.DISABLED_Phase2DetokenizesEverythingInAFreshProcess";
  std::string also = "--gtest_also_run_disabled_tests";
  char* argv[] = {self.data(), filter.data(), also.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the fresh process could not detokenize every value";
}

// A wrong PIN, a missing module or a missing token: a clear error, and nothing written - the
// database is not even created.
TEST(VaultSoftHsmTest, HsmFailuresAtOpenWriteNothing) {
  TempDir dir;
  StatusOr<hsm::DevToken> token = hsm::EnsureDevToken(dir.Sub("hsm"));
  TV_ASSERT_OK(token);
  struct Case {
    std::string what;
    hsm::Pkcs11Config config;
    std::string pin;
    StatusCode code;
    std::string reason;
  };
  hsm::Pkcs11Config good = token->config;
  hsm::Pkcs11Config no_module = good;
  no_module.module_path = dir.Sub("absent.so");
  hsm::Pkcs11Config no_token = good;
  no_token.token_label = "absent";
  const std::string right_pin(AsChars(hsm::LoadPin(token->pin)->view()));
  std::string token_object;
  for (const auto& [path, bytes] : testing::SnapshotTree(dir.Sub("hsm/tokens"))) {
    if (path.size() >= 12 && path.substr(path.size() - 12) == "token.object") token_object = path;
  }
  ASSERT_FALSE(token_object.empty());
  for (const Case& c : {Case{"wrong pin", good, "wrong", StatusCode::kUnauthenticated, "hsm_login_refused"},
                        Case{"no module", no_module, right_pin, StatusCode::kUnavailable, "hsm_module_unavailable"},
                        Case{"no token", no_token, right_pin, StatusCode::kUnavailable, "hsm_token_not_found"}}) {
    // SoftHSM2 records a failed login in token.object (its own PIN-failure state); nothing else
    // in the HSM dir may change, and no token object may appear.
    const auto hsm_before = testing::SnapshotTreeExcept(dir.Sub("hsm"), "token.object");
    const Bytes token_object_before = testing::ReadFileBytes(token_object);
    setenv("TOKENVAULT_TEST_PIN", c.pin.c_str(), 1);
    EmbeddedConfig config;
    config.data_dir = dir.Sub("data");
    config.hsm = c.config;
    config.pin.env_var = "TOKENVAULT_TEST_PIN";
    StatusOr<std::unique_ptr<Vault>> vault = OpenEmbeddedVault(config);
    TV_EXPECT_ERROR(vault, c.code, c.reason);
    EXPECT_EQ(vault.status().ToString().find(right_pin), std::string::npos) << c.what;
    EXPECT_FALSE(testing::FileExists(EmbeddedDatabasePath(dir.Sub("data")))) << c.what;
    EXPECT_EQ(testing::SnapshotTreeExcept(dir.Sub("hsm"), "token.object"), hsm_before) << c.what;
    if (c.code != StatusCode::kUnauthenticated) {
      // Without a login attempt even the token's own state is untouched.
      EXPECT_EQ(testing::ReadFileBytes(token_object), token_object_before) << c.what;
    }
  }
  unsetenv("TOKENVAULT_TEST_PIN");
}

}  // namespace
}  // namespace tokenvault
