#include "hsm/dev_token.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <vector>
#include <filesystem>
#include <fstream>

#include "tests/support/matchers.h"
#include "tests/support/raw_pkcs11.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::hsm {
namespace {

const Bytes kTag = {0x74, 0x76, 0x01};  // a creation tag

using testing::TempDir;

int Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

std::set<std::string> Listing(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) out.insert(e.path().string());
  return out;
}

TEST(DevTokenTest, CreatesATokenInsideTheDataDirOnly) {
  TempDir dir;
  // The system-wide SoftHSM2 token dir must not change.
  const auto global_before = Listing("/var/lib/softhsm/tokens");
  StatusOr<DevToken> token = EnsureDevToken(dir.Sub("hsm"));
  TV_ASSERT_OK(token);
  EXPECT_EQ(Listing("/var/lib/softhsm/tokens"), global_before);

  EXPECT_EQ(token->config.softhsm2_conf, dir.Sub("hsm/softhsm2.conf"));
  EXPECT_EQ(token->config.token_label, "tokenvault-dev");
  std::ifstream conf(token->config.softhsm2_conf);
  std::string text((std::istreambuf_iterator<char>(conf)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("directories.tokendir = " + dir.Sub("hsm/tokens")), std::string::npos);
  EXPECT_EQ(Listing(dir.Sub("hsm/tokens")).size(), 1u);  // one token directory

  EXPECT_EQ(Mode(dir.Sub("hsm")), 0700);
  EXPECT_EQ(Mode(dir.Sub("hsm/user.pin")), 0600);
  EXPECT_EQ(Mode(dir.Sub("hsm/so.pin")), 0600);

  StatusOr<SecretBytes> pin = LoadPin(token->pin);
  TV_ASSERT_OK(pin);
  EXPECT_EQ(pin->size(), 32u);
  TV_EXPECT_OK(Pkcs11Hsm::Open(token->config, *pin));
}

TEST(DevTokenTest, SecondCallFindsTheSameToken) {
  TempDir dir;
  StatusOr<DevToken> first = EnsureDevToken(dir.Sub("hsm"));
  TV_ASSERT_OK(first);
  const auto pin_before = testing::ReadFileBytes(dir.Sub("hsm/user.pin"));
  {
    auto hsm = Pkcs11Hsm::Open(first->config, *LoadPin(first->pin));
    TV_ASSERT_OK(hsm);
    TV_ASSERT_OK((*hsm)->CreateKek(KekRef{"acme", 1}, kTag));
  }
  StatusOr<DevToken> second = EnsureDevToken(dir.Sub("hsm"));
  TV_ASSERT_OK(second);
  EXPECT_EQ(testing::ReadFileBytes(dir.Sub("hsm/user.pin")), pin_before);
  EXPECT_EQ(Listing(dir.Sub("hsm/tokens")).size(), 1u);
  auto hsm = Pkcs11Hsm::Open(second->config, *LoadPin(second->pin));
  TV_ASSERT_OK(hsm);
  TV_EXPECT_OK((*hsm)->FindKek(KekRef{"acme", 1}));  // same token, key still there
}

// A first run died between C_InitToken and C_InitPIN: the token exists, its user PIN does not.
TEST(DevTokenTest, FinishesATokenWhoseUserPinWasNeverSet) {
  TempDir dir;
  const std::string hsm_dir = dir.Sub("hsm");
  ASSERT_EQ(mkdir(hsm_dir.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((hsm_dir + "/tokens").c_str(), 0700), 0);
  auto write = [](const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
    chmod(path.c_str(), 0600);
  };
  write(hsm_dir + "/softhsm2.conf", "directories.tokendir = " + hsm_dir + "/tokens\n"
                                    "objectstore.backend = file\nlog.level = ERROR\n");
  const std::string so_pin = "so-pin-of-the-first-run", user_pin = "user-pin-of-the-first-run";
  write(hsm_dir + "/so.pin", so_pin);
  write(hsm_dir + "/user.pin", user_pin);
  setenv("SOFTHSM2_CONF", (hsm_dir + "/softhsm2.conf").c_str(), 1);
  {
    testing::RawModule module(DefaultModulePath());
    ASSERT_TRUE(module.ready());
    ASSERT_TRUE(module.InitFreeToken("tokenvault-dev", so_pin));  // and then the "crash"
  }
  StatusOr<DevToken> token = EnsureDevToken(hsm_dir);
  TV_ASSERT_OK(token);
  TV_EXPECT_OK(Pkcs11Hsm::Open(token->config, SecretBytes::CopyFrom(AsBytes(user_pin))));
}

TEST(DevTokenTest, AMissingModuleWritesNothing) {
  TempDir dir;
  TV_EXPECT_ERROR(EnsureDevToken(dir.Sub("hsm"), dir.Sub("absent.so")), StatusCode::kUnavailable,
                  kReasonModuleUnavailable);
  TV_EXPECT_ERROR(EnsureDevToken(dir.Sub("hsm"), "libc.so.6"), StatusCode::kUnavailable,
                  kReasonModuleUnavailable);
  EXPECT_FALSE(testing::FileExists(dir.Sub("hsm")));
}

}  // namespace
}  // namespace tokenvault::hsm
