#include "vault/base/random.h"

#include <gtest/gtest.h>
#include <cstring>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <thread>
#include <vector>

namespace tokenvault {
namespace {

TEST(RandomTest, SecretsHaveTheRequestedSizeAndDiffer) {
  StatusOr<SecretBytes> a = RandomSecret(32);
  StatusOr<SecretBytes> b = RandomSecret(32);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_FALSE(a->Equals(*b));
}

TEST(RandomTest, NoncesNeverRepeatAcrossThreads) {
  constexpr int kThreads = 4, kPerThread = 20000;
  std::vector<std::vector<GcmNonce>> drawn(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) drawn[t].push_back(*RandomNonce());
    });
  }
  for (auto& th : threads) th.join();
  std::set<GcmNonce> unique;
  for (auto& v : drawn) unique.insert(v.begin(), v.end());
  EXPECT_EQ(unique.size(), size_t{kThreads} * kPerThread);
}

TEST(RandomTest, ForkedChildDoesNotReuseParentNonces) {
  (void)*RandomNonce();  // fill this thread's block
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    GcmNonce n = *RandomNonce();
    ssize_t w = write(pipefd[1], n.data(), n.size());
    _exit(w == static_cast<ssize_t>(n.size()) ? 0 : 1);
  }
  GcmNonce parent = *RandomNonce();
  GcmNonce child{};
  ASSERT_EQ(read(pipefd[0], child.data(), child.size()), static_cast<ssize_t>(child.size()));
  int status = 0;
  waitpid(pid, &status, 0);
  close(pipefd[0]);
  close(pipefd[1]);
  // Without the fork check both would take the next nonce of the same inherited block.
  EXPECT_NE(parent, child);
}

TEST(RandomTest, FastBytesNeverRepeatAndAreNotReusedAcrossFork) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {  // crosses many block refills
    uint8_t b[16];
    ASSERT_TRUE(RandomBytesFast(b, sizeof(b)).ok());
    ASSERT_TRUE(seen.insert(std::string(reinterpret_cast<char*>(b), sizeof(b))).second);
  }
  uint8_t warm[16];
  ASSERT_TRUE(RandomBytesFast(warm, sizeof(warm)).ok());  // this thread's block is partly used
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    uint8_t c[16];
    const bool ok = RandomBytesFast(c, sizeof(c)).ok();
    ssize_t w = write(pipefd[1], c, sizeof(c));
    _exit(ok && w == 16 ? 0 : 1);
  }
  uint8_t parent[16], child[16] = {};
  ASSERT_TRUE(RandomBytesFast(parent, sizeof(parent)).ok());
  ASSERT_EQ(read(pipefd[0], child, sizeof(child)), 16);
  int status = 0;
  waitpid(pid, &status, 0);
  close(pipefd[0]);
  close(pipefd[1]);
  EXPECT_NE(std::memcmp(parent, child, 16), 0);
}

}  // namespace
}  // namespace tokenvault
