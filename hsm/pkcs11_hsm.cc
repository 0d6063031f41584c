#include "hsm/pkcs11_hsm.h"

#include <cstdlib>
#include <cstring>
#include <span>

#include "hsm/internal/gcm.h"
#include "hsm/internal/pkcs11.h"
#include "hsm/internal/pkcs11_module.h"
#include "vault/base/random.h"
#include "vault/base/scope_guard.h"

namespace tokenvault::hsm {

using internal::StatusFromCkr;

#ifndef TOKENVAULT_DEFAULT_PKCS11_MODULE
#define TOKENVAULT_DEFAULT_PKCS11_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

const char* DefaultModulePath() { return TOKENVAULT_DEFAULT_PKCS11_MODULE; }

std::string KekRef::Label() const {
  return "tokenvault/kek/" + merchant + "/v" + std::to_string(version);
}

std::string SigningKeyRef::Label() const { return "tokenvault/sign/" + name; }

namespace {

constexpr unsigned long kKekBytes = 32;
// DER of the named curve P-256 (OID 1.2.840.10045.3.1.7), the value of CKA_EC_PARAMS.
constexpr uint8_t kP256Params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

// A wrapped key is a DEK or similar secret: bound the size we accept before calling the HSM.
constexpr size_t kMaxWrappedSize = 1024;

struct BoolAttr {
  unsigned long type;
  bool expected;
  const char* name;
};

// What CreateKek sets and every use re-checks: a KEK found by label that is extractable or
// readable (planted, or made by a careless operator) is refused rather than used.
constexpr BoolAttr kKekPolicy[] = {
    {CKA_TOKEN, true, "CKA_TOKEN"},           {CKA_PRIVATE, true, "CKA_PRIVATE"},
    {CKA_SENSITIVE, true, "CKA_SENSITIVE"},   {CKA_EXTRACTABLE, false, "CKA_EXTRACTABLE"},
    {CKA_ENCRYPT, true, "CKA_ENCRYPT"},       {CKA_DECRYPT, true, "CKA_DECRYPT"},
    {CKA_WRAP, false, "CKA_WRAP"},            {CKA_UNWRAP, false, "CKA_UNWRAP"},
    {CKA_SIGN, false, "CKA_SIGN"},            {CKA_VERIFY, false, "CKA_VERIFY"},
    {CKA_DERIVE, false, "CKA_DERIVE"},        {CKA_MODIFIABLE, false, "CKA_MODIFIABLE"},
    {CKA_ALWAYS_SENSITIVE, true, "CKA_ALWAYS_SENSITIVE"},
    {CKA_NEVER_EXTRACTABLE, true, "CKA_NEVER_EXTRACTABLE"},
};

// What CreateSigningKey sets on the private key and every use re-checks, as for KEKs: a planted
// or extractable key under our label is refused rather than used to sign checkpoints.
constexpr BoolAttr kSigningKeyPolicy[] = {
    {CKA_TOKEN, true, "CKA_TOKEN"},         {CKA_PRIVATE, true, "CKA_PRIVATE"},
    {CKA_SENSITIVE, true, "CKA_SENSITIVE"}, {CKA_EXTRACTABLE, false, "CKA_EXTRACTABLE"},
    {CKA_SIGN, true, "CKA_SIGN"},           {CKA_DECRYPT, false, "CKA_DECRYPT"},
    {CKA_UNWRAP, false, "CKA_UNWRAP"},      {CKA_DERIVE, false, "CKA_DERIVE"},
    {CKA_ALWAYS_SENSITIVE, true, "CKA_ALWAYS_SENSITIVE"},
    {CKA_NEVER_EXTRACTABLE, true, "CKA_NEVER_EXTRACTABLE"},
};

Status CheckBoolAttributes(ck_function_list* fn, ck_session_handle_t session,
                           ck_object_handle_t handle, const std::string& label,
                           std::span<const BoolAttr> policy) {
  for (const BoolAttr& attr : policy) {
    unsigned char v = 0;
    ck_attribute a{attr.type, &v, sizeof(v)};
    const ck_rv_t rv = fn->C_GetAttributeValue(session, handle, &a, 1);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetAttributeValue");
    if ((v != 0) != attr.expected) {
      return FailedPreconditionError(kReasonKeyPolicy, "key " + label + " has " + attr.name +
                                                           (attr.expected ? "=false" : "=true"));
    }
  }
  return Status::Ok();
}

Status CheckKekAttributes(ck_function_list* fn, ck_session_handle_t session,
                          ck_object_handle_t handle, const std::string& label) {
  ck_key_type_t key_type = 0;
  unsigned long value_len = 0;
  ck_attribute sized[] = {{CKA_KEY_TYPE, &key_type, sizeof(key_type)},
                          {CKA_VALUE_LEN, &value_len, sizeof(value_len)}};
  ck_rv_t rv = fn->C_GetAttributeValue(session, handle, sized, 2);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetAttributeValue(KEK)");
  if (key_type != CKK_AES || value_len != kKekBytes) {
    return FailedPreconditionError(kReasonKeyPolicy, "KEK " + label + " is not an AES-256 key");
  }
  return CheckBoolAttributes(fn, session, handle, label, kKekPolicy);
}

Status CheckSigningKeyAttributes(ck_function_list* fn, ck_session_handle_t session,
                                 ck_object_handle_t handle, const std::string& label) {
  ck_key_type_t key_type = 0;
  uint8_t params[32];
  ck_attribute attrs[] = {{CKA_KEY_TYPE, &key_type, sizeof(key_type)},
                          {CKA_EC_PARAMS, params, sizeof(params)}};
  const ck_rv_t rv = fn->C_GetAttributeValue(session, handle, attrs, 2);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetAttributeValue(signing key)");
  if (key_type != CKK_EC || attrs[1].value_len != sizeof(kP256Params) ||
      std::memcmp(params, kP256Params, sizeof(kP256Params)) != 0) {
    return FailedPreconditionError(kReasonKeyPolicy, "key " + label + " is not a P-256 key");
  }
  return CheckBoolAttributes(fn, session, handle, label, kSigningKeyPolicy);
}

// The uncompressed point inside CKA_EC_POINT, which PKCS#11 defines as a DER OCTET STRING
// (some modules return the raw point: both are accepted).
StatusOr<Bytes> PointFromEcPoint(ByteView der) {
  if (der.size() == kP256PointSize && der[0] == 0x04) return Bytes(der.begin(), der.end());
  if (der.size() == kP256PointSize + 2 && der[0] == 0x04 && der[1] == kP256PointSize &&
      der[2] == 0x04) {
    return Bytes(der.begin() + 2, der.end());
  }
  return FailedPreconditionError(kReasonKeyPolicy, "the public key is not an uncompressed P-256 point");
}

}  // namespace

// At most one reconnection attempt per this interval: a dead HSM is not hammered, and one that
// comes back is in use again well within the 5 s the service promises.
constexpr std::chrono::milliseconds kReconnectInterval(250);

struct Pkcs11Hsm::Connection {
  std::unique_ptr<internal::Pkcs11Module> module;  // declared first: finalised last
  std::unique_ptr<internal::SessionPool> pool;     // closes its sessions before C_Finalize
  unsigned long slot = 0;
  std::mutex create_mu;  // serialises CreateKek so two callers cannot make the same label twice
  std::mutex handles_mu;
  std::unordered_map<std::string, unsigned long> kek_handles;  // GUARDED_BY(handles_mu)
  // Private signing keys by label, checked once like KEKs. GUARDED_BY(handles_mu)
  std::unordered_map<std::string, unsigned long> signing_handles;
  uint64_t destroy_epoch = 0;  // bumped whenever a handle is forgotten; GUARDED_BY(handles_mu)

  ck_function_list* fn() const { return module->fn(); }

  // Every token object labelled like 'kek' (at most 'max'), whatever its attributes.
  StatusOr<std::vector<unsigned long>> FindKekObjects(unsigned long session, const KekRef& kek,
                                                      size_t max) {
    const std::string label = kek.Label();
    ck_object_class_t cls = CKO_SECRET_KEY;
    unsigned char token = 1;
    ck_attribute templ[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_TOKEN, &token, sizeof(token)},
                            {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    return internal::FindObjects(fn(), session, templ, 3, max);
  }

  // The object handle of a KEK, after checking that its attributes are those CreateKek sets.
  // Handles are cached: token objects keep their handle for the life of the login.
  StatusOr<unsigned long> KekHandle(unsigned long session, const KekRef& kek) {
    const std::string label = kek.Label();
    uint64_t epoch;
    {
      std::lock_guard<std::mutex> lock(handles_mu);
      auto it = kek_handles.find(label);
      if (it != kek_handles.end()) return it->second;
      epoch = destroy_epoch;
    }
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> found, FindKekObjects(session, kek, 2));
    if (found.empty()) return NotFoundError(kReasonKeyNotFound, "no KEK labelled " + label);
    if (found.size() > 1) {
      return FailedPreconditionError(kReasonKeyPolicy, "more than one KEK labelled " + label);
    }
    TV_RETURN_IF_ERROR(CheckKekAttributes(fn(), session, found[0], label));
    std::lock_guard<std::mutex> lock(handles_mu);
    // A KEK destroyed while we looked it up must not come back into the cache.
    if (destroy_epoch == epoch) kek_handles[label] = found[0];
    return found[0];
  }

  // Every token object of class 'cls' labelled like 'key' (at most 'max').
  StatusOr<std::vector<unsigned long>> FindSigningObjects(unsigned long session,
                                                          const SigningKeyRef& key,
                                                          ck_object_class_t cls, size_t max) {
    const std::string label = key.Label();
    unsigned char token = 1;
    ck_attribute templ[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_TOKEN, &token, sizeof(token)},
                            {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    return internal::FindObjects(fn(), session, templ, 3, max);
  }

  // The private signing key's handle, after checking its attributes; cached.
  StatusOr<unsigned long> SigningHandle(unsigned long session, const SigningKeyRef& key) {
    const std::string label = key.Label();
    {
      std::lock_guard<std::mutex> lock(handles_mu);
      auto it = signing_handles.find(label);
      if (it != signing_handles.end()) return it->second;
    }
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> found,
                        FindSigningObjects(session, key, CKO_PRIVATE_KEY, 2));
    if (found.empty()) return NotFoundError(kReasonKeyNotFound, "no signing key labelled " + label);
    if (found.size() > 1) {
      return FailedPreconditionError(kReasonKeyPolicy, "more than one signing key labelled " + label);
    }
    TV_RETURN_IF_ERROR(CheckSigningKeyAttributes(fn(), session, found[0], label));
    std::lock_guard<std::mutex> lock(handles_mu);
    signing_handles[label] = found[0];
    return found[0];
  }

  void ForgetKekHandle(const KekRef& kek) {
    std::lock_guard<std::mutex> lock(handles_mu);
    kek_handles.erase(kek.Label());
    ++destroy_epoch;
  }

  // Runs op(session, kek_handle) on a leased session ('fresh_session': a newly opened one). A
  // stale cached handle (the object was destroyed and recreated by another process) is looked up
  // again once.
  template <typename Op>
  auto WithKek(const KekRef& kek, Op op, bool fresh_session) -> decltype(op(0ul, 0ul)) {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease,
                        fresh_session ? pool->AcquireNew() : pool->Acquire());
    for (int attempt = 0;; ++attempt) {
      auto handle = KekHandle(lease.handle(), kek);
      if (!handle.ok()) {
        if (handle.status().IsRetryable()) lease.MarkBroken();
        return handle.status();
      }
      auto result = op(lease.handle(), *handle);
      if (!result.ok() && result.status().code() == StatusCode::kNotFound && attempt == 0) {
        ForgetKekHandle(kek);
        continue;
      }
      if (!result.ok() && result.status().code() != StatusCode::kDataLoss) lease.MarkBroken();
      return result;
    }
  }
};

namespace {

const Status& StatusOf(const Status& s) { return s; }
template <typename T>
Status StatusOf(const StatusOr<T>& s) {
  return s.status();
}

Status ConnectionDown(std::string_view why) {
  return UnavailableError(kReasonDeviceError, "the HSM connection is down: " + std::string(why));
}

}  // namespace

StatusOr<std::unique_ptr<Pkcs11Hsm::Connection>> Pkcs11Hsm::Connect(const Pkcs11Config& config,
                                                                    const SecretBytes& pin) {
  const std::string path = config.module_path.empty() ? DefaultModulePath() : config.module_path;
  auto c = std::make_unique<Connection>();
  TV_ASSIGN_OR_RETURN(c->module, internal::Pkcs11Module::Load(path));
  TV_ASSIGN_OR_RETURN(c->slot, c->module->FindSlotByTokenLabel(config.token_label));
  TV_ASSIGN_OR_RETURN(c->pool,
                      internal::SessionPool::Create(c->module->fn(), c->slot, pin, config.max_sessions));
  return c;
}

StatusOr<std::unique_ptr<Pkcs11Hsm>> Pkcs11Hsm::Open(const Pkcs11Config& config,
                                                     const SecretBytes& pin,
                                                     PinReloader reload_pin) {
  if (!config.softhsm2_conf.empty()) {
    // Read by SoftHSM in C_Initialize. Set before any thread of ours uses the module.
    setenv("SOFTHSM2_CONF", config.softhsm2_conf.c_str(), 1);
  }
  TV_ASSIGN_OR_RETURN(std::unique_ptr<Connection> connection, Connect(config, pin));
  return std::unique_ptr<Pkcs11Hsm>(
      new Pkcs11Hsm(config, std::move(connection), std::move(reload_pin)));
}

Pkcs11Hsm::Pkcs11Hsm(Pkcs11Config config, std::unique_ptr<Connection> connection,
                     PinReloader reload_pin)
    : config_(std::move(config)), reload_pin_(std::move(reload_pin)),
      connection_(std::move(connection)) {}

Pkcs11Hsm::~Pkcs11Hsm() = default;

template <typename F>
auto Pkcs11Hsm::Run(F f) -> decltype(f(std::declval<Connection&>())) {
  if (down_.load()) TV_RETURN_IF_ERROR(Reconnect());
  std::shared_lock<std::shared_mutex> lock(connection_mu_);
  if (!connection_) return ConnectionDown("not reconnected yet");
  auto result = f(*connection_);
  const Status status = StatusOf(result);
  if (!status.ok() && status.reason() == kReasonDeviceError) down_.store(true);
  return result;
}

Status Pkcs11Hsm::Reconnect() {
  // Exclusive: waits for the operations still running on the old connection (they are failing
  // fast), so that finalising it pulls nothing from under them.
  std::unique_lock<std::shared_mutex> lock(connection_mu_);
  if (!down_.load()) return Status::Ok();  // another thread did it
  const auto now = std::chrono::steady_clock::now();
  if (now - last_attempt_ < kReconnectInterval) return ConnectionDown("reconnecting");
  last_attempt_ = now;
  connection_.reset();  // closes its sessions, C_Finalize, dlclose
  if (!reload_pin_) return ConnectionDown("no PIN file to log in again; restart the service");
  StatusOr<SecretBytes> pin = reload_pin_();
  if (!pin.ok()) return ConnectionDown("the PIN cannot be read again");
  StatusOr<std::unique_ptr<Connection>> connected = Connect(config_, *pin);
  // Whatever the reason (the module, the token, even the login), for a caller it is the HSM
  // being unavailable: 503, retried.
  if (!connected.ok()) return ConnectionDown(connected.status().message());
  connection_ = std::move(connected).value();
  down_.store(false);
  reconnections_.fetch_add(1);
  return Status::Ok();
}

Status Pkcs11Hsm::Health() {
  if (!down_.load()) return Status::Ok();
  return Reconnect();
}

Status Pkcs11Hsm::CreateKek(const KekRef& kek, ByteView creation_tag) {
  if (creation_tag.empty() || creation_tag.size() > 64) {
    return InvalidArgumentError("bad_creation_tag", "a KEK creation tag has 1 to 64 bytes");
  }
  return Run([&](Connection& c) -> Status {
    std::lock_guard<std::mutex> create_lock(c.create_mu);
    {
      TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
      StatusOr<unsigned long> exists = c.KekHandle(lease.handle(), kek);
      if (exists.ok()) return AlreadyExistsError(kReasonKeyExists, kek.Label() + " exists");
      if (exists.status().code() != StatusCode::kNotFound) {
        if (exists.status().IsRetryable()) lease.MarkBroken();
        return exists.status();
      }
    }
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    const std::string label = kek.Label();
    ck_object_class_t cls = CKO_SECRET_KEY;
    ck_key_type_t key_type = CKK_AES;
    unsigned long value_len = kKekBytes;
    unsigned char yes = 1, no = 0;
    ck_attribute templ[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
        {CKA_ID, const_cast<uint8_t*>(creation_tag.data()), creation_tag.size()},
        {CKA_TOKEN, &yes, 1},
        {CKA_PRIVATE, &yes, 1},
        {CKA_SENSITIVE, &yes, 1},
        {CKA_EXTRACTABLE, &no, 1},
        {CKA_ENCRYPT, &yes, 1},
        {CKA_DECRYPT, &yes, 1},
        {CKA_WRAP, &no, 1},
        {CKA_UNWRAP, &no, 1},
        {CKA_SIGN, &no, 1},
        {CKA_VERIFY, &no, 1},
        {CKA_DERIVE, &no, 1},
        {CKA_MODIFIABLE, &no, 1},
    };
    ck_mechanism mech{CKM_AES_KEY_GEN, nullptr, 0};
    ck_object_handle_t handle = CK_INVALID_HANDLE;
    ck_function_list* fn = c.fn();
    ck_rv_t rv = fn->C_GenerateKey(lease.handle(), &mech, templ, sizeof(templ) / sizeof(templ[0]),
                                   &handle);
    if (rv != CKR_OK) {
      if (internal::IsDeviceFailure(rv)) lease.MarkBroken();
      return StatusFromCkr(rv, "C_GenerateKey(KEK)");
    }
    // Until it is verified, the new key is destroyed on every way out (Botan's
    // ObjectCreationGuard).
    ScopeGuard destroy_unverified([&] { fn->C_DestroyObject(lease.handle(), handle); });
    // Verify what the HSM made, not what we asked for.
    TV_RETURN_IF_ERROR(CheckKekAttributes(fn, lease.handle(), handle, label));
    destroy_unverified.Dismiss();
    std::lock_guard<std::mutex> lock(c.handles_mu);
    c.kek_handles[label] = handle;
    return Status::Ok();
  });
}

Status Pkcs11Hsm::DestroyKek(const KekRef& kek) {
  return Run([&](Connection& c) -> Status {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    // Destroy every object with the label, checked or not: destruction must not be blocked by a
    // key whose attributes we would refuse to use.
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> found, c.FindKekObjects(lease.handle(), kek, 16));
    c.ForgetKekHandle(kek);
    if (found.empty()) return NotFoundError(kReasonKeyNotFound, "no KEK labelled " + kek.Label());
    for (ck_object_handle_t h : found) {
      const ck_rv_t rv = c.fn()->C_DestroyObject(lease.handle(), h);
      if (rv != CKR_OK) {
        if (internal::IsDeviceFailure(rv)) lease.MarkBroken();
        c.ForgetKekHandle(kek);
        return StatusFromCkr(rv, "C_DestroyObject(KEK)");
      }
    }
    c.ForgetKekHandle(kek);  // again: a lookup that raced with the destruction
    return Status::Ok();
  });
}

StatusOr<Bytes> Pkcs11Hsm::KekCreationTag(const KekRef& kek) {
  return Run([&](Connection& c) -> StatusOr<Bytes> {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> found, c.FindKekObjects(lease.handle(), kek, 2));
    if (found.empty()) return NotFoundError(kReasonKeyNotFound, "no KEK labelled " + kek.Label());
    if (found.size() > 1) {
      return FailedPreconditionError(kReasonKeyPolicy, "more than one KEK labelled " + kek.Label());
    }
    ck_attribute attr{CKA_ID, nullptr, 0};
    ck_rv_t rv = c.fn()->C_GetAttributeValue(lease.handle(), found[0], &attr, 1);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetAttributeValue(CKA_ID)");
    Bytes tag(attr.value_len);
    attr.value = tag.data();
    rv = c.fn()->C_GetAttributeValue(lease.handle(), found[0], &attr, 1);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetAttributeValue(CKA_ID)");
    tag.resize(attr.value_len);
    return tag;
  });
}

Status Pkcs11Hsm::FindKek(const KekRef& kek) {
  return Run([&](Connection& c) -> Status {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    StatusOr<unsigned long> handle = c.KekHandle(lease.handle(), kek);
    if (!handle.ok() && handle.status().IsRetryable()) lease.MarkBroken();
    return handle.status();
  });
}

StatusOr<Bytes> Pkcs11Hsm::Wrap(const KekRef& kek, const SecretBytes& key, ByteView aad) {
  if (key.empty() || key.size() > kMaxWrappedSize) {
    return InvalidArgumentError("bad_key_size", "key to wrap has an unsupported size");
  }
  TV_ASSIGN_OR_RETURN(GcmNonce iv, RandomNonce());
  return Run([&](Connection& c) -> StatusOr<Bytes> {
    return c.WithKek(
        kek,
        [&](unsigned long session, unsigned long handle) -> StatusOr<Bytes> {
          TV_ASSIGN_OR_RETURN(Bytes sealed, internal::HsmGcmEncrypt(c.fn(), session, handle, iv,
                                                                    aad, key.view()));
          Bytes out(iv.begin(), iv.end());
          AppendBytes(out, sealed);
          return out;
        },
        /*fresh_session=*/false);
  });
}

StatusOr<SecretBytes> Pkcs11Hsm::Unwrap(const KekRef& kek, ByteView wrapped, ByteView aad) {
  if (wrapped.size() <= kWrapIvSize + kWrapTagSize || wrapped.size() > kMaxWrappedSize) {
    return DataLossError(kReasonIntegrity, "wrapped key has an impossible length");
  }
  return Run([&](Connection& c) -> StatusOr<SecretBytes> {
    auto unwrap = [&](unsigned long session, unsigned long handle) -> StatusOr<SecretBytes> {
      return internal::HsmGcmDecrypt(c.fn(), session, handle, wrapped.subspan(0, kWrapIvSize), aad,
                                     wrapped.subspan(kWrapIvSize));
    };
    StatusOr<SecretBytes> key = c.WithKek(kek, unwrap, /*fresh_session=*/false);
    if (key.ok() || key.status().code() != StatusCode::kDataLoss) return key;
    // An authentication failure is final, but SoftHSM2 reports it as CKR_GENERAL_ERROR, which a
    // transient fault could also produce: confirm it once on a new session before calling it
    // tampering.
    return c.WithKek(kek, unwrap, /*fresh_session=*/true);
  });
}

Status Pkcs11Hsm::GenerateRandom(uint8_t* out, size_t size) {
  return Run([&](Connection& c) -> Status {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    const ck_rv_t rv = c.fn()->C_GenerateRandom(lease.handle(), out, size);
    if (rv != CKR_OK) {
      lease.MarkBroken();
      return StatusFromCkr(rv, "C_GenerateRandom");
    }
    return Status::Ok();
  });
}

Status Pkcs11Hsm::CreateSigningKey(const SigningKeyRef& key) {
  return Run([&](Connection& c) -> Status {
    std::lock_guard<std::mutex> create_lock(c.create_mu);
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    ck_function_list* fn = c.fn();
    StatusOr<std::vector<unsigned long>> existing =
        c.FindSigningObjects(lease.handle(), key, CKO_PRIVATE_KEY, 1);
    if (!existing.ok()) {
      if (existing.status().IsRetryable()) lease.MarkBroken();
      return existing.status();
    }
    if (!existing->empty()) return AlreadyExistsError(kReasonKeyExists, key.Label() + " exists");
    // A public half left by a creation that died half-way would be ambiguous later: remove it.
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> stale,
                        c.FindSigningObjects(lease.handle(), key, CKO_PUBLIC_KEY, 16));
    for (unsigned long h : stale) fn->C_DestroyObject(lease.handle(), h);

    const std::string label = key.Label();
    unsigned char yes = 1, no = 0;
    ck_attribute public_templ[] = {
        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
        {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256Params), sizeof(kP256Params)},
        {CKA_TOKEN, &yes, 1},
        // Not secret, but only a logged-in user may replace it: whoever could swap the public
        // half could have the vault serve a key of theirs.
        {CKA_PRIVATE, &yes, 1},
        {CKA_VERIFY, &yes, 1},
        {CKA_ENCRYPT, &no, 1},
        {CKA_WRAP, &no, 1},
        {CKA_MODIFIABLE, &no, 1},
    };
    ck_attribute private_templ[] = {
        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
        {CKA_TOKEN, &yes, 1},
        {CKA_PRIVATE, &yes, 1},
        {CKA_SENSITIVE, &yes, 1},
        {CKA_EXTRACTABLE, &no, 1},
        {CKA_SIGN, &yes, 1},
        {CKA_DECRYPT, &no, 1},
        {CKA_UNWRAP, &no, 1},
        {CKA_DERIVE, &no, 1},
        {CKA_MODIFIABLE, &no, 1},
    };
    ck_mechanism mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    ck_object_handle_t public_handle = CK_INVALID_HANDLE, private_handle = CK_INVALID_HANDLE;
    const ck_rv_t rv = fn->C_GenerateKeyPair(
        lease.handle(), &mech, public_templ, sizeof(public_templ) / sizeof(public_templ[0]),
        private_templ, sizeof(private_templ) / sizeof(private_templ[0]), &public_handle,
        &private_handle);
    if (rv != CKR_OK) {
      if (internal::IsDeviceFailure(rv)) lease.MarkBroken();
      return StatusFromCkr(rv, "C_GenerateKeyPair(signing key)");
    }
    ScopeGuard destroy_unverified([&] {
      fn->C_DestroyObject(lease.handle(), private_handle);
      fn->C_DestroyObject(lease.handle(), public_handle);
    });
    TV_RETURN_IF_ERROR(CheckSigningKeyAttributes(fn, lease.handle(), private_handle, label));
    destroy_unverified.Dismiss();
    std::lock_guard<std::mutex> lock(c.handles_mu);
    c.signing_handles[label] = private_handle;
    return Status::Ok();
  });
}

StatusOr<Bytes> Pkcs11Hsm::SigningPublicKey(const SigningKeyRef& key) {
  return Run([&](Connection& c) -> StatusOr<Bytes> {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    TV_ASSIGN_OR_RETURN(std::vector<unsigned long> found,
                        c.FindSigningObjects(lease.handle(), key, CKO_PUBLIC_KEY, 2));
    if (found.empty()) return NotFoundError(kReasonKeyNotFound, "no public key labelled " + key.Label());
    if (found.size() > 1) {
      return FailedPreconditionError(kReasonKeyPolicy, "more than one public key labelled " + key.Label());
    }
    uint8_t point[kP256PointSize + 8];
    ck_attribute attr{CKA_EC_POINT, point, sizeof(point)};
    const ck_rv_t rv = c.fn()->C_GetAttributeValue(lease.handle(), found[0], &attr, 1);
    if (rv != CKR_OK) {
      if (internal::IsDeviceFailure(rv)) lease.MarkBroken();
      return StatusFromCkr(rv, "C_GetAttributeValue(CKA_EC_POINT)");
    }
    return PointFromEcPoint(ByteView(point, attr.value_len));
  });
}

StatusOr<Bytes> Pkcs11Hsm::Sign(const SigningKeyRef& key, ByteView digest) {
  if (digest.size() != 32) return InvalidArgumentError("bad_digest", "sign a 32-byte SHA-256 digest");
  return Run([&](Connection& c) -> StatusOr<Bytes> {
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    StatusOr<unsigned long> handle = c.SigningHandle(lease.handle(), key);
    if (!handle.ok()) {
      if (handle.status().IsRetryable()) lease.MarkBroken();
      return handle.status();
    }
    ck_mechanism mech{CKM_ECDSA, nullptr, 0};
    ck_rv_t rv = c.fn()->C_SignInit(lease.handle(), &mech, *handle);
    if (rv != CKR_OK) {
      lease.MarkBroken();
      return StatusFromCkr(rv, "C_SignInit");
    }
    Bytes signature(kP256SignatureSize);
    unsigned long length = signature.size();
    rv = c.fn()->C_Sign(lease.handle(), const_cast<uint8_t*>(digest.data()), digest.size(),
                        signature.data(), &length);
    if (rv != CKR_OK || length != kP256SignatureSize) {
      lease.MarkBroken();  // an unfinished sign operation would poison the session
      return rv != CKR_OK ? StatusFromCkr(rv, "C_Sign")
                          : InternalError("hsm_error", "ECDSA signature of unexpected size");
    }
    return signature;
  });
}

Status Pkcs11Hsm::Ping() {
  return Run([&](Connection& c) -> Status {
    ck_token_info info{};
    ck_rv_t rv = c.fn()->C_GetTokenInfo(c.slot, &info);
    if (rv != CKR_OK) return StatusFromCkr(rv, "C_GetTokenInfo");
    TV_ASSIGN_OR_RETURN(internal::SessionPool::Lease lease, c.pool->Acquire());
    ck_session_info session_info{};
    rv = c.fn()->C_GetSessionInfo(lease.handle(), &session_info);
    if (rv != CKR_OK) {
      lease.MarkBroken();
      return StatusFromCkr(rv, "C_GetSessionInfo");
    }
    return Status::Ok();
  });
}

}  // namespace tokenvault::hsm
