#include "tests/fakes/fake_hsm.h"

#include "vault/aes_gcm.h"
#include "vault/base/random.h"

namespace tokenvault::testing {

Status FakeHsm::CheckUp() const {
  if (down_) return UnavailableError(hsm::kReasonDeviceError, "fake HSM is down");
  return Status::Ok();
}

size_t FakeHsm::kek_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keks_.size();
}

Status FakeHsm::CreateKek(const hsm::KekRef& kek, ByteView creation_tag) {
  TV_RETURN_IF_ERROR(CheckUp());
  TV_ASSIGN_OR_RETURN(SecretBytes key, RandomSecret(32));
  std::lock_guard<std::mutex> lock(mu_);
  if (keks_.count(kek.Label())) return AlreadyExistsError(hsm::kReasonKeyExists, kek.Label());
  keks_.emplace(kek.Label(), Kek{std::move(key), Bytes(creation_tag.begin(), creation_tag.end())});
  return Status::Ok();
}

StatusOr<Bytes> FakeHsm::KekCreationTag(const hsm::KekRef& kek) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keks_.find(kek.Label());
  if (it == keks_.end()) return NotFoundError(hsm::kReasonKeyNotFound, kek.Label());
  return it->second.tag;
}

StatusOr<SecretBytes> FakeHsm::KeyOf(const hsm::KekRef& kek) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keks_.find(kek.Label());
  if (it == keks_.end()) return NotFoundError(hsm::kReasonKeyNotFound, kek.Label());
  return it->second.key.Clone();
}

Status FakeHsm::DestroyKek(const hsm::KekRef& kek) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  if (keks_.erase(kek.Label()) == 0) return NotFoundError(hsm::kReasonKeyNotFound, kek.Label());
  return Status::Ok();
}

Status FakeHsm::FindKek(const hsm::KekRef& kek) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  if (!keks_.count(kek.Label())) return NotFoundError(hsm::kReasonKeyNotFound, kek.Label());
  return Status::Ok();
}

StatusOr<Bytes> FakeHsm::Wrap(const hsm::KekRef& kek, const SecretBytes& key, ByteView aad) {
  TV_RETURN_IF_ERROR(CheckUp());
  if (wrap_fails_) return UnavailableError(hsm::kReasonDeviceError, "fake HSM wrap fails");
  ++wrap_calls_;
  TV_ASSIGN_OR_RETURN(SecretBytes kek_bytes, KeyOf(kek));
  TV_ASSIGN_OR_RETURN(AesGcm256 aead, AesGcm256::Create(std::move(kek_bytes)));
  TV_ASSIGN_OR_RETURN(SealedBox box, aead.Encrypt(key.view(), aad));
  Bytes out(box.nonce.begin(), box.nonce.end());
  AppendBytes(out, box.ciphertext);
  AppendBytes(out, box.tag);
  return out;
}

StatusOr<SecretBytes> FakeHsm::Unwrap(const hsm::KekRef& kek, ByteView wrapped, ByteView aad) {
  TV_RETURN_IF_ERROR(CheckUp());
  ++unwrap_calls_;
  if (wrapped.size() <= hsm::kWrapIvSize + hsm::kWrapTagSize) {
    return DataLossError(hsm::kReasonIntegrity, "short");
  }
  TV_ASSIGN_OR_RETURN(SecretBytes kek_bytes, KeyOf(kek));
  TV_ASSIGN_OR_RETURN(AesGcm256 aead, AesGcm256::Create(std::move(kek_bytes)));
  const size_t ct_len = wrapped.size() - hsm::kWrapIvSize - hsm::kWrapTagSize;
  return aead.Decrypt(wrapped.subspan(0, hsm::kWrapIvSize),
                      wrapped.subspan(hsm::kWrapIvSize, ct_len),
                      wrapped.subspan(hsm::kWrapIvSize + ct_len), aad);
}

Status FakeHsm::GenerateRandom(uint8_t* out, size_t size) {
  TV_RETURN_IF_ERROR(CheckUp());
  return RandomBytes(out, size);
}

Status FakeHsm::Ping() { return CheckUp(); }

}  // namespace tokenvault::testing
