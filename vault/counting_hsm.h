// An Hsm that counts every call and every failure, by operation, into the metrics registry
// (tokenvault_hsm_calls_total, tokenvault_hsm_errors_total), then forwards it. Installed by
// Vault::Create around whatever HSM it is given.
#ifndef TOKENVAULT_VAULT_COUNTING_HSM_H_
#define TOKENVAULT_VAULT_COUNTING_HSM_H_

#include <memory>

#include "hsm/hsm.h"
#include "vault/base/metrics.h"

namespace tokenvault {

class CountingHsm final : public hsm::Hsm {
 public:
  explicit CountingHsm(std::shared_ptr<hsm::Hsm> inner);

  Status CreateKek(const hsm::KekRef& kek, ByteView tag) override { return Count("create_kek", inner_->CreateKek(kek, tag)); }
  StatusOr<Bytes> KekCreationTag(const hsm::KekRef& kek) override { return Count("kek_tag", inner_->KekCreationTag(kek)); }
  Status DestroyKek(const hsm::KekRef& kek) override { return Count("destroy_kek", inner_->DestroyKek(kek)); }
  Status FindKek(const hsm::KekRef& kek) override { return Count("find_kek", inner_->FindKek(kek)); }
  StatusOr<Bytes> Wrap(const hsm::KekRef& kek, const SecretBytes& key, ByteView aad) override {
    return Count("wrap", inner_->Wrap(kek, key, aad));
  }
  StatusOr<SecretBytes> Unwrap(const hsm::KekRef& kek, ByteView wrapped, ByteView aad) override {
    return Count("unwrap", inner_->Unwrap(kek, wrapped, aad));
  }
  Status GenerateRandom(uint8_t* out, size_t size) override { return Count("random", inner_->GenerateRandom(out, size)); }
  Status CreateSigningKey(const hsm::SigningKeyRef& key) override { return Count("create_signing_key", inner_->CreateSigningKey(key)); }
  StatusOr<Bytes> SigningPublicKey(const hsm::SigningKeyRef& key) override {
    return Count("public_key", inner_->SigningPublicKey(key));
  }
  StatusOr<Bytes> Sign(const hsm::SigningKeyRef& key, ByteView digest) override { return Count("sign", inner_->Sign(key, digest)); }
  Status Ping() override { return Count("ping", inner_->Ping()); }
  Status Health() override { return inner_->Health(); }  // cheap and frequent: not a call to the HSM

 private:
  // An expected "not found" or "exists" is an answer, not an error.
  static bool IsError(const Status& s) {
    return !s.ok() && s.code() != StatusCode::kNotFound && s.code() != StatusCode::kAlreadyExists;
  }
  Status Count(const char* op, Status s) {
    calls_.Add({{"op", op}});
    if (IsError(s)) errors_.Add({{"op", op}});
    return s;
  }
  template <typename T>
  StatusOr<T> Count(const char* op, StatusOr<T> s) {
    calls_.Add({{"op", op}});
    if (IsError(s.status())) errors_.Add({{"op", op}});
    return s;
  }

  std::shared_ptr<hsm::Hsm> inner_;
  metrics::Family& calls_;
  metrics::Family& errors_;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_COUNTING_HSM_H_
