#include "vault/base/random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>

#include <atomic>
#include <mutex>

#include <climits>
#include <cstring>

namespace tokenvault {

Status RandomBytes(uint8_t* out, size_t size) {
  while (size > 0) {
    const int chunk = size > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(size);
    if (RAND_bytes(out, chunk) != 1) {
      return InternalError("csprng_failure", "RAND_bytes failed");
    }
    out += chunk;
    size -= static_cast<size_t>(chunk);
  }
  return Status::Ok();
}

StatusOr<SecretBytes> RandomSecret(size_t size) {
  SecretBytes secret(size);
  TV_RETURN_IF_ERROR(RandomBytes(secret.data(), secret.size()));
  return secret;
}

namespace {

constexpr size_t kNoncesPerBlock = 64;

// Bumped in the child after every fork(), so that a block inherited from the parent is never
// used again (the parent goes on using it). Cheaper than a getpid() syscall per nonce.
std::atomic<uint64_t> g_fork_generation{1};
void OnForkChild() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }
std::once_flag g_atfork_once;

struct NonceBlock {
  uint8_t bytes[kNoncesPerBlock * kGcmNonceSize];
  size_t next = kNoncesPerBlock;  // empty
  uint64_t generation = 0;
  ~NonceBlock() { OPENSSL_cleanse(bytes, sizeof(bytes)); }
};

}  // namespace

namespace {
constexpr size_t kFastBlockSize = 1024;
struct FastBlock {
  uint8_t bytes[kFastBlockSize];
  size_t next = kFastBlockSize;  // empty
  uint64_t generation = 0;
  ~FastBlock() { OPENSSL_cleanse(bytes, sizeof(bytes)); }
};
}  // namespace

Status RandomBytesFast(uint8_t* out, size_t size) {
  if (size > kFastBlockSize / 4) return RandomBytes(out, size);
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, &OnForkChild); });
  thread_local FastBlock block;
  const uint64_t generation = g_fork_generation.load(std::memory_order_relaxed);
  if (kFastBlockSize - block.next < size || block.generation != generation) {
    TV_RETURN_IF_ERROR(RandomBytes(block.bytes, sizeof(block.bytes)));
    block.next = 0;
    block.generation = generation;
  }
  std::memcpy(out, block.bytes + block.next, size);
  OPENSSL_cleanse(block.bytes + block.next, size);  // handed out once
  block.next += size;
  return Status::Ok();
}

StatusOr<GcmNonce> RandomNonce() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, &OnForkChild); });
  thread_local NonceBlock block;
  const uint64_t generation = g_fork_generation.load(std::memory_order_relaxed);
  if (block.next >= kNoncesPerBlock || block.generation != generation) {
    TV_RETURN_IF_ERROR(RandomBytes(block.bytes, sizeof(block.bytes)));
    block.next = 0;
    block.generation = generation;
  }
  GcmNonce nonce;
  uint8_t* slot = block.bytes + block.next * kGcmNonceSize;
  std::memcpy(nonce.data(), slot, kGcmNonceSize);
  OPENSSL_cleanse(slot, kGcmNonceSize);  // a nonce is handed out once
  ++block.next;
  return nonce;
}

}  // namespace tokenvault
