// The HSM as tokenvault sees it: key-encryption keys (KEKs) that never leave it, used to wrap and
// unwrap data keys. Implemented over PKCS#11 (Pkcs11Hsm) for every real deployment; tests of the
// vault core may use an in-memory fake, the product path never does.
#ifndef TOKENVAULT_HSM_HSM_H_
#define TOKENVAULT_HSM_HSM_H_

#include <cstdint>
#include <string>

#include "vault/base/bytes.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::hsm {

// Names one KEK: a merchant's key at one version. Its label in the HSM is
// "tokenvault/kek/<merchant>/v<version>".
struct KekRef {
  std::string merchant;
  uint32_t version = 0;
  std::string Label() const;
};

// Names one signing key pair (ECDSA P-256): its private half never leaves the HSM. Its labels in
// the HSM are "tokenvault/sign/<name>" (private and public key objects).
struct SigningKeyRef {
  std::string name;
  std::string Label() const;
};

inline constexpr size_t kP256PointSize = 65;      // 0x04 || X || Y
inline constexpr size_t kP256SignatureSize = 64;  // r || s, each 32 bytes big-endian (IEEE P1363)

// Error reasons (Status::reason()) every implementation uses.
inline constexpr char kReasonModuleUnavailable[] = "hsm_module_unavailable";  // kUnavailable
inline constexpr char kReasonTokenNotFound[] = "hsm_token_not_found";        // kUnavailable
inline constexpr char kReasonDeviceError[] = "hsm_unavailable";              // kUnavailable
inline constexpr char kReasonLoginRefused[] = "hsm_login_refused";           // kUnauthenticated
inline constexpr char kReasonKeyNotFound[] = "kek_not_found";                // kNotFound
inline constexpr char kReasonKeyExists[] = "kek_exists";                     // kAlreadyExists
inline constexpr char kReasonIntegrity[] = "integrity_failure";              // kDataLoss
inline constexpr char kReasonKeyPolicy[] = "kek_attributes_unsafe";         // kFailedPrecondition

// Thread-safe: every method may be called concurrently.
class Hsm {
 public:
  virtual ~Hsm() = default;

  // Creates the KEK 'kek' inside the HSM: AES-256, a token object, sensitive, never extractable,
  // usable only to encrypt and decrypt. 'creation_tag' (1 to 64 bytes, not secret) is stored with
  // it (CKA_ID) so that whoever created it can recognise it later. kAlreadyExists if a key with
  // its label exists.
  virtual Status CreateKek(const KekRef& kek, ByteView creation_tag) = 0;

  // The creation tag stored with the KEK. kNotFound if there is no such KEK.
  virtual StatusOr<Bytes> KekCreationTag(const KekRef& kek) = 0;

  // Destroys the KEK. kNotFound if there is none.
  virtual Status DestroyKek(const KekRef& kek) = 0;

  // OK if the KEK exists, kNotFound if it does not, another error if the HSM cannot tell.
  virtual Status FindKek(const KekRef& kek) = 0;

  // Encrypts 'key' under the KEK with AES-256-GCM inside the HSM, authenticating 'aad'.
  // Returns iv(12) || ciphertext || tag(16). The IV is drawn inside; callers never pass one.
  virtual StatusOr<Bytes> Wrap(const KekRef& kek, const SecretBytes& key, ByteView aad) = 0;

  // Reverses Wrap. kDataLoss (reason integrity_failure) when 'wrapped' or 'aad' is not what Wrap
  // produced: a tampered blob, or a blob of another merchant or version.
  virtual StatusOr<SecretBytes> Unwrap(const KekRef& kek, ByteView wrapped, ByteView aad) = 0;

  // Random bytes from the HSM's generator.
  virtual Status GenerateRandom(uint8_t* out, size_t size) = 0;

  // Creates an ECDSA P-256 key pair: the private key a token object, sensitive, never extractable,
  // usable only to sign; the public key a token object whose point anyone may read.
  // kAlreadyExists if a private key with its label exists.
  virtual Status CreateSigningKey(const SigningKeyRef& key) = 0;

  // The public key's uncompressed point (kP256PointSize bytes). kNotFound if there is none.
  virtual StatusOr<Bytes> SigningPublicKey(const SigningKeyRef& key) = 0;

  // ECDSA P-256 over 'digest' (a 32-byte SHA-256 computed by the caller: CKM_ECDSA signs the
  // hash it is given). Returns r || s (kP256SignatureSize bytes).
  virtual StatusOr<Bytes> Sign(const SigningKeyRef& key, ByteView digest) = 0;

  // OK while the HSM answers (readiness).
  virtual Status Ping() = 0;

  // Cheap: OK unless the connection to the HSM is known to be down (an operation failed with a
  // device error and reconnecting has not succeeded yet). Tries to reconnect, at a bounded rate.
  // Lets callers refuse to serve keys they hold in memory while the HSM is down, if their policy
  // says so (docs/keys.md, "HSM outage").
  virtual Status Health() { return Status::Ok(); }
};

// Sizes of Wrap's output around the wrapped key.
inline constexpr size_t kWrapIvSize = 12;
inline constexpr size_t kWrapTagSize = 16;

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_HSM_H_
