// Two threads tokenizing and detokenizing at once against one Vault on SoftHSM2 + SQLite for a
// few seconds (a bounded loop; nothing is asserted about time), both on the same merchant so that
// they contend on its keys and counter. A third thread rotates the DEK, and a small per-DEK limit
// forces counter-driven rotations too.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"
#include "vault/embedded.h"

namespace tokenvault {
namespace {

TEST(VaultConcurrencyTest, TwoThreadsRoundTripWhileKeysRotate) {
  testing::TempDir dir;
  EmbeddedConfig config;
  config.data_dir = dir.Sub("data");
  config.vault.keys.max_encryptions_per_dek = 300;
  config.vault.keys.reservation_block = 64;
  StatusOr<std::unique_ptr<Vault>> opened = OpenEmbeddedVault(config);
  TV_ASSERT_OK(opened);
  Vault& vault = **opened;
  TV_ASSERT_OK(vault.CreateMerchant("m1"));

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  std::atomic<int> errors{0}, mismatches{0}, round_trips{0};
  auto worker = [&](int id) {
    const std::string merchant = "m1";
    std::vector<std::pair<std::string, std::string>> mine;
    for (int i = 0; std::chrono::steady_clock::now() < deadline && i < 200000; ++i) {
      const std::string value = "t" + std::to_string(id) + "-" + std::to_string(i);
      StatusOr<TokenInfo> t = vault.Tokenize(merchant, AsBytes(value), ValueType::kGeneric);
      if (!t.ok()) {
        ++errors;
        ADD_FAILURE() << t.status().ToString();
        continue;
      }
      mine.emplace_back(t->token, value);
      // Read back this one and an older one (likely under an older DEK).
      for (const auto& [token, expected] : {mine.back(), mine[i / 2]}) {
        StatusOr<RevealedValue> v = vault.Detokenize(merchant, token);
        if (!v.ok()) {
          ++errors;
          ADD_FAILURE() << v.status().ToString();
        } else if (AsChars(v->value.view()) != expected) {
          ++mismatches;
        } else {
          ++round_trips;
        }
      }
    }
  };
  std::atomic<int> rotations{0};
  std::thread rotator([&] {
    while (std::chrono::steady_clock::now() < deadline && rotations < 20) {
      if (vault.RotateDataKey("m1").ok()) ++rotations;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  rotator.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_GT(round_trips.load(), 0);
  EXPECT_GT(rotations.load(), 0);
  // How many counter-driven rotations the run above saw depends on the machine's speed, so it is
  // only printed; that the budget forces a new version is checked deterministically here: 301
  // encryptions after the run cannot all fit under one 300-encryption key.
  StatusOr<TokenInfo> first = vault.Tokenize("m1", AsBytes("after-0"), ValueType::kGeneric);
  TV_ASSERT_OK(first);
  uint32_t last_version = first->dek_version;
  for (int i = 1; i <= 300; ++i) {
    StatusOr<TokenInfo> t = vault.Tokenize("m1", AsBytes("after-" + std::to_string(i)), ValueType::kGeneric);
    TV_ASSERT_OK(t);
    last_version = t->dek_version;
  }
  EXPECT_GT(last_version, first->dek_version);
  std::printf("DEK versions used: %u (explicit rotations: %d)\n", first->dek_version, rotations.load());
  std::printf("round trips: %d, explicit rotations of m1: %d\n", round_trips.load(), rotations.load());
}

}  // namespace
}  // namespace tokenvault
