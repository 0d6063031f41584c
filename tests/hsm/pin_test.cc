#include "hsm/pin.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::hsm {
namespace {

using testing::TempDir;

std::string Write(const TempDir& dir, const std::string& name, const std::string& content,
                  mode_t mode) {
  const std::string path = dir.Sub(name);
  std::ofstream(path) << content;
  chmod(path.c_str(), mode);
  return path;
}

TEST(PinTest, ReadsAPrivateFileWithoutTheTrailingNewline) {
  TempDir dir;
  StatusOr<SecretBytes> pin = LoadPin({Write(dir, "pin", "1234\n", 0600), ""});
  TV_ASSERT_OK(pin);
  EXPECT_EQ(AsChars(pin->view()), "1234");
}

TEST(PinTest, RefusesFilesOthersCanRead) {
  TempDir dir;
  TV_EXPECT_ERROR(LoadPin({Write(dir, "pin", "1234", 0644), ""}), StatusCode::kFailedPrecondition,
                  "pin_file_permissions");
  TV_EXPECT_ERROR(LoadPin({Write(dir, "pin2", "1234", 0640), ""}), StatusCode::kFailedPrecondition,
                  "pin_file_permissions");
}

TEST(PinTest, MissingOrEmptySourcesAreErrors) {
  TempDir dir;
  TV_EXPECT_ERROR(LoadPin({dir.Sub("absent"), ""}), StatusCode::kFailedPrecondition, "pin_unreadable");
  TV_EXPECT_ERROR(LoadPin({Write(dir, "empty", "\n", 0600), ""}), StatusCode::kFailedPrecondition,
                  "pin_unreadable");
  TV_EXPECT_ERROR(LoadPin({"", ""}), StatusCode::kFailedPrecondition, "pin_missing");
  unsetenv("TV_TEST_PIN_UNSET");
  TV_EXPECT_ERROR(LoadPin({"", "TV_TEST_PIN_UNSET"}), StatusCode::kFailedPrecondition, "pin_missing");
}

TEST(PinTest, ReadsTheEnvironment) {
  setenv("TV_TEST_PIN", "from-env", 1);
  StatusOr<SecretBytes> pin = LoadPin({"", "TV_TEST_PIN"});
  TV_ASSERT_OK(pin);
  EXPECT_EQ(AsChars(pin->view()), "from-env");
  EXPECT_NE(std::getenv("TV_TEST_PIN"), nullptr);  // still there for a retry of the login
  ForgetEnvPin({"", "TV_TEST_PIN"});
  EXPECT_EQ(std::getenv("TV_TEST_PIN"), nullptr);
}

TEST(PinTest, ErrorMessagesNeverContainThePin) {
  TempDir dir;
  Status s = LoadPin({Write(dir, "pin", "supersecretpin", 0644), ""}).status();
  EXPECT_EQ(s.ToString().find("supersecretpin"), std::string::npos);
}

}  // namespace
}  // namespace tokenvault::hsm
