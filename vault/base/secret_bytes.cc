#include "vault/base/secret_bytes.h"

#include <openssl/crypto.h>

#include <atomic>

namespace tokenvault {
namespace internal {
namespace {
std::atomic<WipeObserver> g_wipe_observer{nullptr};
}  // namespace

void SetWipeObserverForTesting(WipeObserver observer) { g_wipe_observer.store(observer); }

void CleanseAndRelease(void* p, size_t bytes) {
  if (p == nullptr) return;
  OPENSSL_cleanse(p, bytes);
  if (WipeObserver observer = g_wipe_observer.load(std::memory_order_relaxed)) {
    observer(static_cast<const uint8_t*>(p), bytes);
  }
  std::allocator<uint8_t>().deallocate(static_cast<uint8_t*>(p), bytes);
}

}  // namespace internal

SecretBytes SecretBytes::CopyFrom(ByteView data) {
  SecretBytes out;
  out.bytes_.assign(data.begin(), data.end());
  return out;
}

void SecretBytes::Truncate(size_t size) {
  if (size >= bytes_.size()) return;
  OPENSSL_cleanse(bytes_.data() + size, bytes_.size() - size);
  bytes_.resize(size);
}

void SecretBytes::Wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
  bytes_.shrink_to_fit();  // hands the (cleansed) buffer back through the allocator
}

bool SecretBytes::EqualsBytes(ByteView other) const { return ConstantTimeEquals(view(), other); }

bool ConstantTimeEquals(ByteView a, ByteView b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace tokenvault
