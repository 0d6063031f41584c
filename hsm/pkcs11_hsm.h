// Pkcs11Hsm: the Hsm interface over any PKCS#11 module (SoftHSM2 here; CloudHSM, Luna, YubiHSM in
// production, with no code change: only the module path, token label and PIN differ).
#ifndef TOKENVAULT_HSM_PKCS11_HSM_H_
#define TOKENVAULT_HSM_PKCS11_HSM_H_

#include <memory>
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
  // Loads the module, finds the token, logs in once as the user. Errors, each its own reason:
  //   kUnavailable hsm_module_unavailable - the module cannot be loaded or initialised;
  //   kUnavailable hsm_token_not_found    - no token with that label;
  //   kUnauthenticated hsm_login_refused  - the PIN was refused.
  // The PIN is used for C_Login only and is never logged or kept.
  static StatusOr<std::unique_ptr<Pkcs11Hsm>> Open(const Pkcs11Config& config,
                                                   const SecretBytes& pin);
  ~Pkcs11Hsm() override;

  Status CreateKek(const KekRef& kek, ByteView creation_tag) override;
  StatusOr<Bytes> KekCreationTag(const KekRef& kek) override;
  Status DestroyKek(const KekRef& kek) override;
  Status FindKek(const KekRef& kek) override;
  StatusOr<Bytes> Wrap(const KekRef& kek, const SecretBytes& key, ByteView aad) override;
  StatusOr<SecretBytes> Unwrap(const KekRef& kek, ByteView wrapped, ByteView aad) override;
  Status GenerateRandom(uint8_t* out, size_t size) override;
  Status Ping() override;

 private:
  Pkcs11Hsm(std::unique_ptr<internal::Pkcs11Module> module,
            std::unique_ptr<internal::SessionPool> pool, unsigned long slot);

  // The object handle of a KEK, after checking that its attributes are those CreateKek sets.
  // Handles are cached: token objects keep their handle for the life of the login.
  StatusOr<unsigned long> KekHandle(unsigned long session, const KekRef& kek);
  void ForgetKekHandle(const KekRef& kek);
  // Every token object labelled like 'kek' (at most 'max'), whatever its attributes.
  StatusOr<std::vector<unsigned long>> FindKekObjects(unsigned long session, const KekRef& kek,
                                                      size_t max);

  // Runs op(session, kek_handle) on a leased session ('fresh_session': a newly opened one).
  template <typename Op>
  auto WithKek(const KekRef& kek, Op op, bool fresh_session) -> decltype(op(0ul, 0ul));

  std::unique_ptr<internal::Pkcs11Module> module_;  // destroyed last
  std::unique_ptr<internal::SessionPool> pool_;
  const unsigned long slot_;
  std::mutex create_mu_;  // serialises CreateKek so two callers cannot make the same label twice
  std::mutex handles_mu_;
  std::unordered_map<std::string, unsigned long> kek_handles_;  // GUARDED_BY(handles_mu_)
  uint64_t destroy_epoch_ = 0;  // bumped whenever a handle is forgotten; GUARDED_BY(handles_mu_)
};

}  // namespace tokenvault::hsm

#endif  // TOKENVAULT_HSM_PKCS11_HSM_H_
