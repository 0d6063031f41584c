// SecretBytes: the only container for key material and plaintext values.
//
// - Its storage is wiped with OPENSSL_cleanse before it returns to the heap: on destruction, on
//   reallocation, on Wipe(). Moving transfers the buffer; copying needs an explicit Clone(), so a
//   secret is never duplicated by accident.
// - It has no begin()/end(), no conversion to string and no operator<<: fmt, spdlog and iostreams
//   cannot print it. Raw access is through data()/size() only, which is easy to grep for.
// - Equality is constant time (CRYPTO_memcmp).
// Never hold a secret in std::string: short strings live inline where no allocator wipes them.
#ifndef TOKENVAULT_VAULT_BASE_SECRET_BYTES_H_
#define TOKENVAULT_VAULT_BASE_SECRET_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "vault/base/bytes.h"

namespace tokenvault {

namespace internal {

// Called with a buffer after it was cleansed and before it is freed. Tests install one to prove
// that every released buffer is zero; production never does. Not thread-safe to change while
// SecretBytes are being freed on other threads.
using WipeObserver = void (*)(const uint8_t* data, size_t size);
void SetWipeObserverForTesting(WipeObserver observer);

void CleanseAndRelease(void* p, size_t bytes);

template <typename T>
struct CleansingAllocator {
  using value_type = T;
  CleansingAllocator() = default;
  template <typename U>
  CleansingAllocator(const CleansingAllocator<U>&) {}  // NOLINT
  T* allocate(size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, size_t n) { CleanseAndRelease(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const CleansingAllocator<U>&) const { return true; }
};

}  // namespace internal

class SecretBytes {
 public:
  SecretBytes() = default;
  // 'size' zero bytes.
  explicit SecretBytes(size_t size) : bytes_(size) {}
  static SecretBytes CopyFrom(ByteView data);

  SecretBytes(SecretBytes&&) noexcept = default;
  SecretBytes& operator=(SecretBytes&& other) noexcept {
    if (this != &other) {
      Wipe();
      bytes_ = std::move(other.bytes_);
    }
    return *this;
  }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  ~SecretBytes() = default;  // the allocator wipes

  // An explicit, greppable copy.
  SecretBytes Clone() const { return CopyFrom(view()); }

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  ByteView view() const { return ByteView(bytes_.data(), bytes_.size()); }

  // Shrinks to 'size' bytes (REQUIRES: size <= size()); the dropped tail is wiped.
  void Truncate(size_t size);
  // Appends bytes (may reallocate: the old buffer is wiped by the allocator).
  void Append(ByteView data) { bytes_.insert(bytes_.end(), data.begin(), data.end()); }
  void Reserve(size_t size) { bytes_.reserve(size); }
  // Wipes and releases the buffer now.
  void Wipe();

  // Constant time in the length of the buffers.
  bool Equals(const SecretBytes& other) const { return EqualsBytes(other.view()); }
  bool EqualsBytes(ByteView other) const;

 private:
  std::vector<uint8_t, internal::CleansingAllocator<uint8_t>> bytes_;
};

// Constant-time equality of two byte strings of public length.
bool ConstantTimeEquals(ByteView a, ByteView b);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_SECRET_BYTES_H_
