// An in-memory Hsm for unit tests of the vault core: KEKs are random keys in a map, wrapping is
// AES-256-GCM in process. Never used on the product path or in end-to-end tests.
#ifndef TOKENVAULT_TESTS_FAKES_FAKE_HSM_H_
#define TOKENVAULT_TESTS_FAKES_FAKE_HSM_H_

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "hsm/hsm.h"

struct evp_pkey_st;

namespace tokenvault::testing {

class FakeHsm final : public hsm::Hsm {
 public:
  Status CreateKek(const hsm::KekRef& kek, ByteView creation_tag) override;
  StatusOr<Bytes> KekCreationTag(const hsm::KekRef& kek) override;
  Status DestroyKek(const hsm::KekRef& kek) override;
  Status FindKek(const hsm::KekRef& kek) override;
  StatusOr<Bytes> Wrap(const hsm::KekRef& kek, const SecretBytes& key, ByteView aad) override;
  StatusOr<SecretBytes> Unwrap(const hsm::KekRef& kek, ByteView wrapped, ByteView aad) override;
  Status GenerateRandom(uint8_t* out, size_t size) override;
  Status CreateSigningKey(const hsm::SigningKeyRef& key) override;
  StatusOr<Bytes> SigningPublicKey(const hsm::SigningKeyRef& key) override;
  StatusOr<Bytes> Sign(const hsm::SigningKeyRef& key, ByteView digest) override;
  ~FakeHsm() override;
  Status Ping() override;

  // While set, every call fails with kUnavailable (an HSM outage).
  void SetUnavailable(bool down) { down_ = down; }
  // While set, Wrap alone fails with kUnavailable.
  void SetWrapFails(bool fails) { wrap_fails_ = fails; }
  int unwrap_calls() const { return unwrap_calls_; }
  int wrap_calls() const { return wrap_calls_; }
  size_t kek_count() const;

 private:
  Status CheckUp() const;
  mutable std::mutex mu_;
  struct Kek {
    SecretBytes key;
    Bytes tag;
  };
  // A copy of the KEK's key, or kNotFound.
  StatusOr<SecretBytes> KeyOf(const hsm::KekRef& kek) const;
  std::map<std::string, Kek> keks_;  // GUARDED_BY(mu_)
  std::map<std::string, evp_pkey_st*> signing_keys_;  // owned; GUARDED_BY(mu_)
  std::atomic<bool> down_{false};
  std::atomic<bool> wrap_fails_{false};
  std::atomic<int> unwrap_calls_{0};
  std::atomic<int> wrap_calls_{0};
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_FAKES_FAKE_HSM_H_
