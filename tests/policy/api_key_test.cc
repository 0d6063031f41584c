#include "policy/api_key.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/support/matchers.h"

namespace tokenvault::policy {
namespace {

TEST(ApiKeyTest, GeneratedKeysParseAndVerify) {
  StatusOr<NewApiKey> key = GenerateApiKey();
  TV_ASSERT_OK(key);
  const std::string full(AsChars(key->full_key.view()));
  ASSERT_EQ(full.size(), 4u + 20 + 1 + 64);
  EXPECT_EQ(full.substr(0, 4), "tvk_");
  EXPECT_EQ(full.substr(4, 20), key->key_id);
  StatusOr<ApiKey> parsed = ParseApiKey(full);
  TV_ASSERT_OK(parsed);
  EXPECT_EQ(parsed->key_id, key->key_id);
  EXPECT_TRUE(ApiKeySecretMatches(parsed->secret, key->secret_hash));
  // The stored hash is not the secret.
  EXPECT_EQ(full.find(std::string(AsChars(key->secret_hash))), std::string::npos);
}

TEST(ApiKeyTest, AnyChangedSecretDigitFails) {
  NewApiKey key = *GenerateApiKey();
  std::string full(AsChars(key.full_key.view()));
  for (size_t i = 25; i < full.size(); ++i) {
    std::string changed = full;
    changed[i] = changed[i] == 'a' ? 'b' : 'a';
    StatusOr<ApiKey> parsed = ParseApiKey(changed);
    TV_ASSERT_OK(parsed);
    EXPECT_FALSE(ApiKeySecretMatches(parsed->secret, key.secret_hash)) << i;
  }
}

TEST(ApiKeyTest, MalformedKeysAreRefused) {
  const std::string good(AsChars(GenerateApiKey()->full_key.view()));
  for (std::string bad : {std::string(), std::string("tvk_"), good.substr(1), good + "0",
                          "tvx_" + good.substr(4), good.substr(0, 24) + "-" + good.substr(25),
                          good.substr(0, 30) + "G" + good.substr(31)}) {
    TV_EXPECT_ERROR(ParseApiKey(bad), StatusCode::kUnauthenticated, "bad_api_key");
  }
}

TEST(ApiKeyTest, KeysAreUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.insert(GenerateApiKey()->key_id);
  EXPECT_EQ(ids.size(), 1000u);
}

}  // namespace
}  // namespace tokenvault::policy
