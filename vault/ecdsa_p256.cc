#include "vault/ecdsa_p256.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstring>

namespace tokenvault {
namespace {

constexpr char kCurve[] = "prime256v1";

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using EcdsaSig = std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG, ECDSA_SIG_free>>;

std::shared_ptr<EVP_PKEY> Own(EVP_PKEY* key) { return std::shared_ptr<EVP_PKEY>(key, EVP_PKEY_free); }

bool IsP256(EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "EC") != 1) return false;
  char group[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &len) != 1) {
    return false;
  }
  return std::string_view(group, len) == kCurve;
}

bool PublicKeyIsValid(EVP_PKEY* key) {
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  return ctx != nullptr && EVP_PKEY_public_check(ctx.get()) == 1;
}

}  // namespace

Sha256Digest Sha256(std::initializer_list<ByteView> parts) {
  // Fetched once: EVP_sha256() would look the implementation up on every call.
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  Sha256Digest out{};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx != nullptr && md != nullptr && EVP_DigestInit_ex2(ctx, md, nullptr) == 1;
  for (ByteView p : parts) ok = ok && EVP_DigestUpdate(ctx, p.data(), p.size()) == 1;
  unsigned int len = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, out.data(), &len) == 1 && len == out.size();
  EVP_MD_CTX_free(ctx);
  // SHA-256 over memory fails only if OpenSSL itself is broken; an all-zero digest then matches
  // nothing that was signed, so verification fails closed.
  if (!ok) out.fill(0);
  return out;
}

StatusOr<EcdsaP256PublicKey> EcdsaP256PublicKey::FromPoint(ByteView point) {
  if (point.size() != 65 || point[0] != 0x04) {
    return InvalidArgumentError("bad_public_key", "not an uncompressed P-256 point");
  }
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(kCurve), 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, const_cast<uint8_t*>(point.data()),
                                        point.size()),
      OSSL_PARAM_construct_end()};
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* key = nullptr;
  if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params) != 1 || key == nullptr) {
    return InvalidArgumentError("bad_public_key", "not a P-256 point");
  }
  std::shared_ptr<EVP_PKEY> owned = Own(key);
  if (!PublicKeyIsValid(key)) return InvalidArgumentError("bad_public_key", "not a point on P-256");
  return EcdsaP256PublicKey(std::move(owned));
}

StatusOr<EcdsaP256PublicKey> EcdsaP256PublicKey::FromPem(std::string_view pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return InternalError("crypto_error", "BIO_new_mem_buf failed");
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) return InvalidArgumentError("bad_public_key", "not a PEM public key");
  std::shared_ptr<EVP_PKEY> owned = Own(key);
  if (!IsP256(key) || !PublicKeyIsValid(key)) {
    return InvalidArgumentError("bad_public_key", "not an ECDSA P-256 public key");
  }
  return EcdsaP256PublicKey(std::move(owned));
}

std::string EcdsaP256PublicKey::Pem() const {
  Bio bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio.get(), key_.get()) != 1) return "";
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string EcdsaP256PublicKey::KeyId() const {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key_.get(), &der);
  if (len <= 0) return "";
  const Sha256Digest digest = Sha256({ByteView(der, static_cast<size_t>(len))});
  OPENSSL_free(der);
  return HexEncode(digest);
}

bool EcdsaP256PublicKey::Verify(ByteView message, ByteView signature) const {
  return VerifyDigest(Sha256({message}), signature);
}

bool EcdsaP256PublicKey::VerifyDigest(const Sha256Digest& digest, ByteView signature) const {
  if (signature.size() != 64) return false;
  EcdsaSig sig(ECDSA_SIG_new());
  if (sig == nullptr) return false;
  BIGNUM* r = BN_bin2bn(signature.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(signature.data() + 32, 32, nullptr);
  if (r == nullptr || s == nullptr || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return false;
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  if (der_len <= 0) return false;
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
  const bool ok = ctx != nullptr && EVP_PKEY_verify_init(ctx.get()) == 1 &&
                  EVP_PKEY_verify(ctx.get(), der, static_cast<size_t>(der_len), digest.data(),
                                  digest.size()) == 1;
  OPENSSL_free(der);
  return ok;
}

}  // namespace tokenvault
