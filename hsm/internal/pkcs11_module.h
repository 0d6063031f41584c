// RAII over one loaded PKCS#11 module and its sessions. Internal to hsm/.
#ifndef TOKENVAULT_HSM_INTERNAL_PKCS11_MODULE_H_
#define TOKENVAULT_HSM_INTERNAL_PKCS11_MODULE_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hsm/internal/pkcs11.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault::hsm::internal {

// kUnavailable (hsm_module_unavailable) unless 'path' can be dlopen'ed and exports
// C_GetFunctionList. Initialises nothing: used to fail before writing anything.
Status CheckModuleLoadable(const std::string& path);

// dlopen + C_GetFunctionList + C_Initialize(CKF_OS_LOCKING_OK); the destructor calls C_Finalize
// and dlclose. One per process at a time: a module that some other code already initialised is
// refused rather than shared, because either owner's C_Finalize would pull it from under the other.
class Pkcs11Module {
 public:
  // kUnavailable (hsm_module_unavailable) when the file cannot be loaded or is not PKCS#11.
  static StatusOr<std::unique_ptr<Pkcs11Module>> Load(const std::string& path);
  ~Pkcs11Module();
  Pkcs11Module(const Pkcs11Module&) = delete;
  Pkcs11Module& operator=(const Pkcs11Module&) = delete;

  ck_function_list* fn() const { return fn_; }

  // The slot whose token carries 'label'. kUnavailable (hsm_token_not_found) when none does.
  // Never select by slot number: SoftHSM renumbers slots after C_InitToken.
  StatusOr<ck_slot_id_t> FindSlotByTokenLabel(const std::string& label) const;
  // Every slot with a token present.
  StatusOr<std::vector<ck_slot_id_t>> SlotsWithTokens() const;

 private:
  Pkcs11Module(void* handle, ck_function_list* fn) : handle_(handle), fn_(fn) {}
  void* handle_;
  ck_function_list* fn_;
};

// One open session; closes it on destruction.
class Pkcs11Session {
 public:
  static StatusOr<Pkcs11Session> Open(ck_function_list* fn, ck_slot_id_t slot);
  Pkcs11Session(Pkcs11Session&& other) noexcept
      : fn_(other.fn_), handle_(std::exchange(other.handle_, CK_INVALID_HANDLE)) {}
  Pkcs11Session& operator=(Pkcs11Session&& other) noexcept;
  ~Pkcs11Session();

  ck_session_handle_t handle() const { return handle_; }

 private:
  Pkcs11Session(ck_function_list* fn, ck_session_handle_t handle) : fn_(fn), handle_(handle) {}
  ck_function_list* fn_;
  ck_session_handle_t handle_;
};

// Calls C_FindObjectsFinal whatever happens after C_FindObjectsInit.
// Finds every object matching 'templ' (at most 'max').
StatusOr<std::vector<ck_object_handle_t>> FindObjects(ck_function_list* fn,
                                                     ck_session_handle_t session,
                                                     ck_attribute* templ, unsigned long count,
                                                     size_t max);

// A bounded pool of R/W sessions on one logged-in token. A PKCS#11 session runs one operation at a
// time, so each operation leases a session; the lease returns it when destroyed. The login is
// token-wide and lasts while any session is open, so the pool keeps one anchor session for its whole
// life and never logs out per operation.
class SessionPool {
 public:
  class Lease {
   public:
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)),
          session_(std::move(other.session_)),
          broken_(other.broken_) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    ck_session_handle_t handle() const { return session_.handle(); }
    // The session failed in a way that may leave it unusable (device error, operation left
    // active): it is closed instead of being reused.
    void MarkBroken() { broken_ = true; }

   private:
    friend class SessionPool;
    Lease(SessionPool* pool, Pkcs11Session session) : pool_(pool), session_(std::move(session)) {}
    SessionPool* pool_;
    Pkcs11Session session_;
    bool broken_ = false;
  };

  // Opens the anchor session and logs in as the user with 'pin'. A wrong PIN gives
  // kUnauthenticated (hsm_login_refused).
  static StatusOr<std::unique_ptr<SessionPool>> Create(ck_function_list* fn, ck_slot_id_t slot,
                                                       const SecretBytes& pin, size_t max_sessions);
  ~SessionPool();

  // Blocks while all 'max_sessions' are leased.
  StatusOr<Lease> Acquire();
  // A newly opened session, never one that was used before (one idle session is closed to make
  // room when the pool is full).
  StatusOr<Lease> AcquireNew();

 private:
  SessionPool(ck_function_list* fn, ck_slot_id_t slot, Pkcs11Session anchor, size_t max)
      : fn_(fn), slot_(slot), anchor_(std::move(anchor)), max_sessions_(max) {}
  // Opens a session for a slot already counted in open_ (REQUIRES: mu_ not held).
  StatusOr<Lease> OpenCounted();
  void Release(Pkcs11Session session, bool broken);

  ck_function_list* const fn_;
  const ck_slot_id_t slot_;
  Pkcs11Session anchor_;  // holds the login; never leased
  const size_t max_sessions_;
  std::mutex mu_;
  std::condition_variable available_;
  std::vector<Pkcs11Session> idle_;  // GUARDED_BY(mu_)
  size_t open_ = 0;                  // leased + idle; GUARDED_BY(mu_)
};

}  // namespace tokenvault::hsm::internal

#endif  // TOKENVAULT_HSM_INTERNAL_PKCS11_MODULE_H_
