// ECDSA P-256 public keys and verification (OpenSSL), for audit checkpoints: the private key lives
// in the HSM and signs there (hsm::Hsm::Sign); anyone holding the public key verifies, offline,
// with no HSM and no database.
#ifndef TOKENVAULT_VAULT_ECDSA_P256_H_
#define TOKENVAULT_VAULT_ECDSA_P256_H_

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "vault/base/bytes.h"
#include "vault/base/status.h"

struct evp_pkey_st;

namespace tokenvault {

using Sha256Digest = std::array<uint8_t, 32>;

// SHA-256 of the concatenation of 'parts'.
Sha256Digest Sha256(std::initializer_list<ByteView> parts);

class EcdsaP256PublicKey {
 public:
  // From the uncompressed point an HSM reports (0x04 || X || Y). kInvalidArgument if it is not a
  // point on P-256.
  static StatusOr<EcdsaP256PublicKey> FromPoint(ByteView point);
  // From a PEM "PUBLIC KEY" (SubjectPublicKeyInfo). kInvalidArgument unless it is a P-256 key.
  static StatusOr<EcdsaP256PublicKey> FromPem(std::string_view pem);

  // SubjectPublicKeyInfo in PEM.
  std::string Pem() const;
  // Hex SHA-256 of the DER SubjectPublicKeyInfo: names the key in checkpoints and exports.
  std::string KeyId() const;

  // True iff 'signature' (r || s, 64 bytes: what the HSM's CKM_ECDSA returns) is a valid
  // signature of SHA-256('message'). Any malformed input is simply false.
  bool Verify(ByteView message, ByteView signature) const;
  // The same over a digest the caller computed.
  bool VerifyDigest(const Sha256Digest& digest, ByteView signature) const;

 private:
  explicit EcdsaP256PublicKey(std::shared_ptr<evp_pkey_st> key) : key_(std::move(key)) {}
  std::shared_ptr<evp_pkey_st> key_;  // immutable once made: safe to share between threads
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_ECDSA_P256_H_
