#include "vault/base/random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <unistd.h>

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

struct NonceBlock {
  uint8_t bytes[kNoncesPerBlock * kGcmNonceSize];
  size_t next = kNoncesPerBlock;  // empty
  pid_t owner = 0;
  ~NonceBlock() { OPENSSL_cleanse(bytes, sizeof(bytes)); }
};

}  // namespace

StatusOr<GcmNonce> RandomNonce() {
  thread_local NonceBlock block;
  const pid_t pid = getpid();
  if (block.next >= kNoncesPerBlock || block.owner != pid) {
    TV_RETURN_IF_ERROR(RandomBytes(block.bytes, sizeof(block.bytes)));
    block.next = 0;
    block.owner = pid;
  }
  GcmNonce nonce;
  uint8_t* slot = block.bytes + block.next * kGcmNonceSize;
  std::memcpy(nonce.data(), slot, kGcmNonceSize);
  OPENSSL_cleanse(slot, kGcmNonceSize);  // a nonce is handed out once
  ++block.next;
  return nonce;
}

}  // namespace tokenvault
