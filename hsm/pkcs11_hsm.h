// Pkcs11Hsm: the Hsm interface over any PKCS#11 module (SoftHSM2 here; CloudHSM, Luna, YubiHSM in
// production, with no code change: only the module path, token label and PIN differ).
#ifndef TOKENVAULT_HSM_PKCS11_HSM_H_
#define TOKENVAULT_HSM_PKCS11_HSM_H_

#include <memory>
#include <atomic>
#include <chrono>
#include <functional>
#include <shared_mutex>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "hsm/hsm.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::hsm {

namespace internal {
class Pkcs11Module;
class SessionPool;
}  // namespace internal

struct Pkcs11Config {
  // Path of the PKCS#11 module to dlopen.
  std::string module_path;
  // The token is found by its label, never by slot number.
  std::string token_label;
  // If set, exported as SOFTHSM2_CONF before the module initialises, so that a SoftHSM2 token kept
  // in the data dir is used without touching /etc/softhsm. Ignored by other modules.
  std::string softhsm2_conf;
  // Sessions open at most at once (each runs one operation at a time).
  size_t max_sessions = 8;
};

// The module path used when none is configured (SoftHSM2 from Debian).
const char* DefaultModulePath();

class Pkcs11Hsm final : public Hsm {
 public:
  // Reads the PIN again, to log in again after the HSM was lost (from the PIN file; a PIN that
  // came from an environment variable is forgotten after the first login and cannot be).
  using PinReloader = std::function<StatusOr<SecretBytes>()>;

  // Loads the module, finds the token, logs in once as the user. Errors, each its own reason:
  //   kUnavailable hsm_module_unavailable - the module cannot be loaded or initialised;
  //   kUnavailable hsm_token_not_found    - no token with that label;
  //   kUnauthenticated hsm_login_refused  - the PIN was refused.
  // The PIN is used for C_Login only and is never logged or kept. Without 'reload_pin', a lost
  // connection stays lost until the process restarts.
  static StatusOr<std::unique_ptr<Pkcs11Hsm>> Open(const Pkcs11Config& config,
                                                   const SecretBytes& pin,
                                                   PinReloader reload_pin = nullptr);
  ~Pkcs11Hsm() override;

  Status CreateKek(const KekRef& kek, ByteView creation_tag) override;
  StatusOr<Bytes> KekCreationTag(const KekRef& kek) override;
  Status DestroyKek(const KekRef& kek) override;
  Status FindKek(const KekRef& kek) override;
  StatusOr<Bytes> Wrap(const KekRef& kek, const SecretBytes& key, ByteView aad) override;
  StatusOr<SecretBytes> Unwrap(const KekRef& kek, ByteView wrapped, ByteView aad) override;
  Status GenerateRandom(uint8_t* out, size_t size) override;
  Status CreateSigningKey(const SigningKeyRef& key) override;
  StatusOr<Bytes> SigningPublicKey(const SigningKeyRef& key) override;
  StatusOr<Bytes> Sign(const SigningKeyRef& key, ByteView digest) override;
  Status Ping() override;
  Status Health() override;

  // Successful reconnections so far (tests, metrics).
  uint64_t reconnections() const { return reconnections_.load(); }

 private:
  // One loaded module, its logged-in sessions and the KEK handles valid for that login. Replaced
  // whole when the HSM is lost and found again.
  struct Connection;
  static StatusOr<std::unique_ptr<Connection>> Connect(const Pkcs11Config& config,
                                                       const SecretBytes& pin);
  Pkcs11Hsm(Pkcs11Config config, std::unique_ptr<Connection> connection, PinReloader reload_pin);

  // Runs f(connection): after reconnecting if the connection is known to be down, and marking it
  // down when f fails with a device error (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
  // CKR_TOKEN_NOT_PRESENT, CKR_SESSION_HANDLE_INVALID, ...: internal::IsDeviceFailure).
  template <typename F>
  auto Run(F f) -> decltype(f(std::declval<Connection&>()));
  // Replaces a connection known to be down: the old one finalised (every session closed), the
  // module loaded and initialised again, the token found, the user logged in again. At most one
  // attempt per kReconnectInterval; kUnavailable (hsm_unavailable) until one succeeds.
  Status Reconnect();

  const Pkcs11Config config_;
  const PinReloader reload_pin_;
  std::shared_mutex connection_mu_;  // shared: an operation runs; exclusive: reconnecting
  std::unique_ptr<Connection> connection_;  // null after a failed reconnection. GUARDED_BY(connection_mu_)
  std::atomic<bool> down_{false};
  std::chrono::steady_clock::time_point last_attempt_;  // GUARDED_BY(connection_mu_)
  std::atomic<uint64_t> reconnections_{0};
};

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_PKCS11_HSM_H_
