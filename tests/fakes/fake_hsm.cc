#include "tests/fakes/fake_hsm.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

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

FakeHsm::~FakeHsm() {
  for (auto& [label, key] : signing_keys_) EVP_PKEY_free(key);
}

Status FakeHsm::CreateSigningKey(const hsm::SigningKeyRef& key) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  if (signing_keys_.count(key.Label())) return AlreadyExistsError(hsm::kReasonKeyExists, key.Label());
  EVP_PKEY* pkey = EVP_EC_gen("P-256");
  if (pkey == nullptr) return InternalError("crypto_error", "EC key generation failed");
  signing_keys_[key.Label()] = pkey;
  return Status::Ok();
}

StatusOr<Bytes> FakeHsm::SigningPublicKey(const hsm::SigningKeyRef& key) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = signing_keys_.find(key.Label());
  if (it == signing_keys_.end()) return NotFoundError(hsm::kReasonKeyNotFound, key.Label());
  Bytes point(hsm::kP256PointSize);
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(it->second, OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                      point.size(), &len) != 1 ||
      len != point.size()) {
    return InternalError("crypto_error", "cannot read the public point");
  }
  return point;
}

StatusOr<Bytes> FakeHsm::Sign(const hsm::SigningKeyRef& key, ByteView digest) {
  TV_RETURN_IF_ERROR(CheckUp());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = signing_keys_.find(key.Label());
  if (it == signing_keys_.end()) return NotFoundError(hsm::kReasonKeyNotFound, key.Label());
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, it->second, nullptr);
  unsigned char der[80];
  size_t der_len = sizeof(der);
  const bool ok = ctx != nullptr && EVP_PKEY_sign_init(ctx) == 1 &&
                  EVP_PKEY_sign(ctx, der, &der_len, digest.data(), digest.size()) == 1;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return InternalError("crypto_error", "ECDSA signing failed");
  const unsigned char* p = der;
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
  if (sig == nullptr) return InternalError("crypto_error", "bad ECDSA signature");
  Bytes out(hsm::kP256SignatureSize);
  BN_bn2binpad(ECDSA_SIG_get0_r(sig), out.data(), 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig), out.data() + 32, 32);
  ECDSA_SIG_free(sig);
  return out;
}

}  // namespace tokenvault::testing
