// Keyring: each merchant's KEK version and DEK versions, and which DEK encrypts next.
//
// DEKs are 256-bit keys from the CSPRNG, stored only wrapped by the merchant's KEK inside the HSM,
// with AAD that names merchant, DEK version and KEK version. Unwrapped DEKs are cached (DekCache).
// Every encryption is counted against its DEK; the count is reserved durably in blocks ahead of
// use, so that after a crash the vault resumes above any count it may have reached. When a DEK
// reaches 'max_encryptions_per_dek' a new version is created and the old one retired: never used
// to encrypt again, still used to decrypt.
#ifndef TOKENVAULT_VAULT_KEYRING_H_
#define TOKENVAULT_VAULT_KEYRING_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "hsm/hsm.h"
#include "storage/store.h"
#include "vault/aes_gcm.h"
#include "vault/base/clock.h"
#include "vault/dek_cache.h"
#include "vault/hmac_sha256.h"
#include "vault/rotation_gate.h"

namespace tokenvault {

// The largest per-DEK encryption limit accepted: half of GCM's 2^32 random-nonce bound.
inline constexpr uint64_t kMaxEncryptionsPerDekLimit = uint64_t{1} << 31;

struct KeyringOptions {
  size_t dek_cache_max_entries = 1024;
  std::chrono::milliseconds dek_cache_ttl = std::chrono::minutes(10);
  // NIST SP 800-38D caps random-nonce GCM at 2^32 encryptions per key; stay far below.
  uint64_t max_encryptions_per_dek = uint64_t{1} << 30;
  // Encryptions reserved per durable counter update.
  uint64_t reservation_block = 4096;
  // A DEK older than this is rotated at its next use (PCI DSS 3.6.1.3: a defined cryptoperiod).
  // 0: no age limit.
  std::chrono::milliseconds max_dek_age = std::chrono::hours(24 * 90);
  // While the HSM is down (Hsm::Health), keys already unwrapped in memory may still serve
  // requests (availability), or not (fail closed: the default, so that an HSM outage - maybe a
  // tampering response - stops every use of its keys at once). docs/keys.md, "HSM outage".
  bool serve_cached_keys_when_hsm_down = false;
  // Tests only: called at each named step of a key operation ("kek_rotation.kek_created", ...);
  // an error stops the operation there, as a crash would.
  std::function<Status(std::string_view step)> fault_injection;
};

// Thread-safe.
class Keyring {
 public:
  // A DEK to encrypt with. While the lease lives, the merchant's DEK cannot rotate, so a value is
  // never sealed under a version that was retired in the meantime. Hold it until the sealed value
  // is stored; it may be released on another thread (the one that completes the write).
  struct EncryptLease {
    uint32_t version = 0;
    std::shared_ptr<const AesGcm256> aead;
    std::shared_ptr<void> keys;  // keeps the gate below alive; declared first, destroyed last
    RotationGate::Shared no_rotation;
  };

  // 'audit_mac', if given, makes every key event an audit record committed with the change (an
  // automatic rotation is recorded as principal "system").
  Keyring(hsm::Hsm& hsm, storage::Store& store, const Clock& clock, const KeyringOptions& options,
          const storage::AuditMac* audit_mac = nullptr);

  // Creates the merchant's KEK (v1) in the HSM and its first DEK, stored wrapped.
  // kAlreadyExists if the merchant exists. An interrupted creation is resumed; a KEK it finds
  // that this creation did not make (its creation id differs) is never destroyed:
  // kFailedPrecondition (kek_exists_without_merchant).
  // 'audit', if given, is committed together with the step that makes the merchant active.
  StatusOr<storage::MerchantRecord> CreateMerchant(std::string_view merchant,
                                                   storage::AuditAttachment* audit = nullptr);

  // kNotFound (merchant_not_found) if there is no such merchant. 'count' encryptions are charged
  // at once (a batch): if they do not all fit in the current DEK's budget, the DEK rotates first.
  // kInvalidArgument (too_many_encryptions) if 'count' exceeds a whole DEK's budget.
  StatusOr<EncryptLease> ForEncrypt(std::string_view merchant, uint64_t count = 1);
  // One more encryption under a lease already held (a retry with a new token): counted and
  // reserved like any other, without a new shared hold. kUnavailable (dek_spent) if the DEK's
  // budget is used up - the caller retries later, under the next version.
  Status ChargeEncryption(std::string_view merchant, const EncryptLease& lease);
  StatusOr<std::shared_ptr<const AesGcm256>> ForDecrypt(std::string_view merchant,
                                                        uint32_t dek_version);

  // The merchant's fingerprint key, ready to MAC: from memory, else unwrapped by the HSM, else
  // (first use, also for merchants older than fingerprints) made, wrapped by the merchant's
  // current KEK and stored. kNotFound (merchant_not_found) for an unknown merchant.
  StatusOr<std::shared_ptr<const HmacSha256>> FingerprintKey(std::string_view merchant);

  // Makes a new DEK version current and retires the previous one; returns the new version.
  // 'audit' (who asked) is completed with the key names and committed with the new version.
  StatusOr<uint32_t> Rotate(std::string_view merchant, const storage::AuditRecord* audit = nullptr);

  // KEK rotation: a new KEK version made in the HSM, every DEK version and the fingerprint key
  // rewrapped under it (inside the HSM; no token is re-encrypted), switched to in one commit with
  // 'audit', then the old KEK destroyed (recorded too). Crash-safe at every step: the intent and
  // the new KEK's tag are recorded before it is made, the switch is one transaction, and a KEK
  // left behind by a rotation that died after its commit is destroyed by the next one. A rotation
  // that died earlier is resumed by the next call. Returns the new version and how many keys were
  // rewrapped.
  struct KekRotated {
    uint32_t kek_version = 0;
    uint32_t rewrapped = 0;
  };
  StatusOr<KekRotated> RotateKek(std::string_view merchant, const storage::AuditRecord* audit = nullptr);

  // Crypto-shredding: marks the merchant shredded (durably), drops its keys from memory, destroys
  // every KEK version it had in the HSM, then deletes its wrapped DEKs and fingerprint key with
  // 'audit' (completed with what was destroyed) in one transaction. Waits for writes sealing
  // under its DEK to commit. An interrupted shredding is resumed by calling this again.
  // Returns the names of what was destroyed ("kek:<label>", "dek:<m>/v<n>",
  // "fingerprint-key:<m>") and the audit record as written. kNotFound (merchant_not_found) for
  // an unknown merchant, kNotFound (merchant_gone) for one shredded already.
  struct Shredded {
    std::vector<std::string> destroyed;
    storage::AuditRecord audit;
  };
  StatusOr<Shredded> Shred(std::string_view merchant, storage::AuditRecord audit);

  // Drops an unwrapped DEK version from memory (it was destroyed).
  void ForgetDataKey(std::string_view merchant, uint32_t version);
  // Tests' fault injection (KeyringOptions::fault_injection) for a named step.
  Status Step(std::string_view step) const;

  const DekCache& cache() const { return cache_; }

 private:
  struct MerchantKeys {
    RotationGate rotation;       // shared: encrypting; exclusive: rotating or loading
    std::mutex counter;          // guards used and reserved
    bool loaded = false;         // GUARDED_BY(rotation)
    bool detached = false;       // removed from the map; holders fetch a new entry. GUARDED_BY(rotation)
    uint32_t kek_version = 0;    // GUARDED_BY(rotation)
    uint32_t dek_version = 0;    // GUARDED_BY(rotation)
    int64_t dek_created_at_ms = 0;  // GUARDED_BY(rotation)
    uint64_t used = 0;           // GUARDED_BY(counter)
    uint64_t reserved = 0;       // GUARDED_BY(counter)
  };

  std::shared_ptr<MerchantKeys> KeysFor(std::string_view merchant);
  // Removes an entry that failed to load. REQUIRES: 'keys->rotation' held exclusively.
  void DetachLocked(std::string_view merchant, const std::shared_ptr<MerchantKeys>& keys);
  // REQUIRES: 'keys.rotation' held exclusively.
  Status LoadLocked(std::string_view merchant, MerchantKeys& keys);
  // REQUIRES: 'keys.rotation' held exclusively. 'audit' null: an automatic rotation, 'why'.
  StatusOr<uint32_t> RotateLocked(std::string_view merchant, MerchantKeys& keys,
                                  const storage::AuditRecord* audit, std::string_view why);
  // True when 'count' more encryptions do not fit the current DEK (budget or age).
  // REQUIRES: 'keys.counter' held and the rotation gate held (shared or exclusive).
  bool SpentFor(const MerchantKeys& keys, uint64_t count) const;
  Status DestroyRetiredKeks(std::string_view merchant, uint32_t current,
                            const storage::AuditRecord* audit);
  StatusOr<std::shared_ptr<const AesGcm256>> LoadDek(std::string_view merchant, uint32_t version);
  // A new random DEK wrapped for (merchant, version, kek_version), plus its AEAD.
  StatusOr<std::pair<storage::DataKeyRecord, std::shared_ptr<const AesGcm256>>> NewDek(
      std::string_view merchant, uint32_t version, uint32_t kek_version);

  hsm::Hsm& hsm_;
  storage::Store& store_;
  const Clock& clock_;
  const KeyringOptions options_;
  const storage::AuditMac* const audit_mac_;  // null: key events are not audited (unit tests)
  DekCache cache_;
  std::mutex create_mu_;  // one merchant creation at a time
  std::mutex fingerprint_mu_;
  // Unwrapped fingerprint keys. Never evicted: one per merchant, kept like the audit key (a
  // merchant's shredding, issue 5, will have to drop its entry).
  std::unordered_map<std::string, std::shared_ptr<const HmacSha256>> fingerprint_keys_;  // GUARDED_BY(fingerprint_mu_)
  std::unordered_set<std::string> shredded_;  // merchants shredded by this process. GUARDED_BY(fingerprint_mu_)
  std::shared_mutex map_mu_;
  std::unordered_map<std::string, std::shared_ptr<MerchantKeys>> merchants_;  // GUARDED_BY(map_mu_)
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_KEYRING_H_
