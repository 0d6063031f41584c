#include "vault/keyring.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "vault/audit_log.h"
#include "vault/base/random.h"
#include "vault/envelope.h"

namespace tokenvault {

namespace {
constexpr uint32_t kFirstVersion = 1;
}  // namespace

namespace {

// How key events name a DEK version in the audit trail (never the key).
std::string DekName(std::string_view merchant, uint32_t version) {
  return "dek:" + std::string(merchant) + "/v" + std::to_string(version);
}

}  // namespace

Keyring::Keyring(hsm::Hsm& hsm, storage::Store& store, const Clock& clock,
                 const KeyringOptions& options, const storage::AuditMac* audit_mac)
    : hsm_(hsm),
      store_(store),
      clock_(clock),
      options_(options),
      audit_mac_(audit_mac),
      cache_(options.dek_cache_max_entries, options.dek_cache_ttl, clock) {}

std::shared_ptr<Keyring::MerchantKeys> Keyring::KeysFor(std::string_view merchant) {
  const std::string key(merchant);
  {
    std::shared_lock<std::shared_mutex> lock(map_mu_);
    auto it = merchants_.find(key);
    if (it != merchants_.end()) return it->second;
  }
  std::unique_lock<std::shared_mutex> lock(map_mu_);
  auto& slot = merchants_[key];
  if (!slot) slot = std::make_shared<MerchantKeys>();
  return slot;
}

StatusOr<std::pair<storage::DataKeyRecord, std::shared_ptr<const AesGcm256>>> Keyring::NewDek(
    std::string_view merchant, uint32_t version, uint32_t kek_version) {
  TV_ASSIGN_OR_RETURN(SecretBytes dek, RandomSecret(kAesGcmKeySize));
  const Bytes aad =
      envelope::DekAad(envelope::kWrappedKeyFormatV1, merchant, version, kek_version);
  TV_ASSIGN_OR_RETURN(Bytes wrapped,
                      hsm_.Wrap(hsm::KekRef{std::string(merchant), kek_version}, dek, aad));
  storage::DataKeyRecord record;
  record.merchant = std::string(merchant);
  record.version = version;
  record.kek_version = kek_version;
  record.wrapped = envelope::EncodeWrappedDek(wrapped);
  record.state = storage::DataKeyState::kActive;
  record.created_at_ms = clock_.NowUnixMillis();
  TV_ASSIGN_OR_RETURN(AesGcm256 aead, AesGcm256::Create(std::move(dek)));
  return std::make_pair(std::move(record), std::make_shared<const AesGcm256>(std::move(aead)));
}

StatusOr<storage::MerchantRecord> Keyring::CreateMerchant(std::string_view merchant,
                                                          storage::AuditAttachment* audit) {
  std::lock_guard<std::mutex> create_lock(create_mu_);
  // Creation is a small protocol (docs/architecture.md, "Failure behaviour"): the intent row,
  // carrying a random creation id, is written before the KEK is made, and the KEK carries the
  // same id. A KEK is only ever destroyed by the creation that made it.
  storage::MerchantRecord record;
  bool resuming = false;
  StatusOr<storage::MerchantRecord> existing = store_.GetMerchant(merchant);
  if (existing.ok()) {
    if (existing->state != storage::MerchantState::kCreating) {
      // Active, or shredded: a shredded merchant's id is never given out again (its tokens'
      // rows and its audit records still name it).
      return AlreadyExistsError("merchant_exists", "the merchant exists");
    }
    record = *existing;
    resuming = true;
  } else if (existing.status().code() != StatusCode::kNotFound) {
    return existing.status();
  } else {
    record = storage::MerchantRecord{std::string(merchant), clock_.NowUnixMillis(), kFirstVersion,
                                     kFirstVersion, storage::MerchantState::kCreating, Bytes(16),
                                     std::nullopt};
    TV_RETURN_IF_ERROR(RandomBytes(record.creation_id.data(), record.creation_id.size()));
    TV_RETURN_IF_ERROR(store_.BeginMerchant(record));
  }

  const hsm::KekRef kek{std::string(merchant), kFirstVersion};
  Status created = hsm_.CreateKek(kek, record.creation_id);
  if (created.code() == StatusCode::kAlreadyExists) {
    TV_ASSIGN_OR_RETURN(Bytes tag, hsm_.KekCreationTag(kek));
    if (tag != record.creation_id) {
      // A KEK this creation did not make: a token shared with another deployment, a database
      // restored from an older backup, an edited row. Never destroy it; an operator decides.
      if (!resuming) store_.AbandonMerchant(merchant).IgnoreError();  // safe even if it fails
      return FailedPreconditionError(
          "kek_exists_without_merchant",
          "the HSM already holds " + kek.Label() + ", not created by this database");
    }
    // Made by this very creation before it was interrupted. The merchant never became active,
    // so no DEK was stored and nothing was encrypted under it; check anyway before replacing it.
    StatusOr<storage::DataKeyRecord> dek = store_.GetDataKey(merchant, kFirstVersion);
    if (dek.status().code() != StatusCode::kNotFound) {
      return dek.ok() ? FailedPreconditionError("merchant_inconsistent",
                                                "a creating merchant already has a data key")
                      : dek.status();
    }
    TV_RETURN_IF_ERROR(hsm_.DestroyKek(kek));
    created = hsm_.CreateKek(kek, record.creation_id);
  }
  // On failure the merchant stays kCreating (it serves nothing); a retry resumes it, whether or
  // not the HSM made the key before failing.
  TV_RETURN_IF_ERROR(created);
  TV_ASSIGN_OR_RETURN(auto dek, NewDek(merchant, kFirstVersion, kFirstVersion));
  TV_RETURN_IF_ERROR(store_.CompleteMerchant(merchant, dek.first, audit));
  cache_.Put(merchant, kFirstVersion, std::move(dek.second));
  record.state = storage::MerchantState::kActive;
  return record;
}

Status Keyring::LoadLocked(std::string_view merchant, MerchantKeys& keys) {
  if (keys.loaded) return Status::Ok();
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord record, store_.GetMerchant(merchant));
  if (record.state != storage::MerchantState::kActive) {
    return NotFoundError("merchant_not_found", "no such merchant");
  }
  TV_ASSIGN_OR_RETURN(storage::DataKeyRecord dek,
                      store_.GetDataKey(merchant, record.current_dek_version));
  keys.kek_version = record.kek_version;
  keys.dek_version = record.current_dek_version;
  keys.dek_created_at_ms = dek.created_at_ms;
  std::lock_guard<std::mutex> counter(keys.counter);
  // Whatever was reserved before a restart may have been used: count it all as used.
  keys.used = dek.encryptions_reserved;
  keys.reserved = dek.encryptions_reserved;
  keys.loaded = true;
  return Status::Ok();
}

bool Keyring::SpentFor(const MerchantKeys& keys, uint64_t count) const {
  const uint64_t max = options_.max_encryptions_per_dek;
  if (count > max - std::min(keys.used, max)) return true;
  return options_.max_dek_age.count() > 0 &&
         keys.dek_created_at_ms + options_.max_dek_age.count() <= clock_.NowUnixMillis();
}

StatusOr<uint32_t> Keyring::RotateLocked(std::string_view merchant, MerchantKeys& keys,
                                         const storage::AuditRecord* audit,
                                         std::string_view why) {
  TV_RETURN_IF_ERROR(LoadLocked(merchant, keys));
  const uint32_t next = keys.dek_version + 1;
  TV_ASSIGN_OR_RETURN(auto dek, NewDek(merchant, next, keys.kek_version));
  std::optional<storage::AuditAttachment> attached;
  if (audit_mac_ != nullptr) {
    storage::AuditRecord record = audit != nullptr ? *audit : SystemAuditRecord("keys.rotate", merchant, why);
    if (record.time_ms == 0) record.time_ms = clock_.NowUnixMillis();
    record.resource = DekName(merchant, next);
    record.resources = {DekName(merchant, next), DekName(merchant, keys.dek_version)};
    // Rotating retires the previous version: both events, in one record.
    record.reason = (record.reason.empty() ? "" : record.reason + ": ") + "new DEK version " +
                    std::to_string(next) + ", version " + std::to_string(keys.dek_version) +
                    " retired";
    attached = storage::AuditAttachment{std::move(record), audit_mac_};
  }
  TV_RETURN_IF_ERROR(store_.AddDataKeyVersion(dek.first, attached ? &*attached : nullptr));
  keys.dek_version = next;
  keys.dek_created_at_ms = dek.first.created_at_ms;
  {
    std::lock_guard<std::mutex> counter(keys.counter);
    keys.used = 0;
    keys.reserved = 0;
  }
  cache_.Put(merchant, next, std::move(dek.second));
  return next;
}

StatusOr<uint32_t> Keyring::Rotate(std::string_view merchant, const storage::AuditRecord* audit) {
  for (;;) {
    std::shared_ptr<MerchantKeys> keys = KeysFor(merchant);  // outlives the lock below
    RotationGate::Exclusive exclusive(keys->rotation);
    if (keys->detached) continue;
    StatusOr<uint32_t> rotated = RotateLocked(merchant, *keys, audit, "");
    if (rotated.status().code() == StatusCode::kNotFound && !keys->loaded) {
      DetachLocked(merchant, keys);
    }
    return rotated;
  }
}

void Keyring::DetachLocked(std::string_view merchant, const std::shared_ptr<MerchantKeys>& keys) {
  // Don't let requests for merchants that do not exist grow the map. Erase only this entry (a
  // newer one may exist), and mark it so that its holders fetch a new one.
  std::unique_lock<std::shared_mutex> map_lock(map_mu_);
  auto it = merchants_.find(std::string(merchant));
  if (it != merchants_.end() && it->second == keys) merchants_.erase(it);
  keys->detached = true;
}

StatusOr<Keyring::EncryptLease> Keyring::ForEncrypt(std::string_view merchant, uint64_t count) {
  // A write larger than a whole DEK's budget could never be sealed under one version.
  if (count == 0 || count > options_.max_encryptions_per_dek) {
    return InvalidArgumentError("too_many_encryptions",
                                "more values in one write than a data key may encrypt");
  }
  std::shared_ptr<MerchantKeys> keys = KeysFor(merchant);
  for (;;) {
    bool refetch = false;
    {
      RotationGate::Shared shared = keys->rotation.EnterShared();
      if (keys->detached) {
        refetch = true;
      } else if (keys->loaded) {
        // The key first: if the HSM is down, nothing (not even a reservation) is written.
        const uint32_t version = keys->dek_version;
        TV_ASSIGN_OR_RETURN(std::shared_ptr<const AesGcm256> aead, LoadDek(merchant, version));
        bool spent = false;
        {
          std::lock_guard<std::mutex> counter(keys->counter);
          // Spent for this write when its 'count' encryptions do not all fit: it then goes to
          // the next version whole (the rest of this one stays unused) rather than failing.
          if (SpentFor(*keys, count)) {
            spent = true;
          } else {
            if (keys->used + count > keys->reserved) {
              const uint64_t block = std::max<uint64_t>(1, options_.reservation_block);
              const uint64_t target = std::min(keys->used + std::max(count, block),
                                               options_.max_encryptions_per_dek);
              TV_RETURN_IF_ERROR(store_.ReserveEncryptions(merchant, version, target));
              keys->reserved = target;
            }
            keys->used += count;
          }
        }
        if (!spent) return EncryptLease{version, std::move(aead), keys, std::move(shared)};
      }
    }
    if (!refetch) {
      // Not loaded yet, or the DEK is spent: fix that under the exclusive lock, then retry.
      RotationGate::Exclusive exclusive(keys->rotation);
      if (keys->detached) {
        refetch = true;
      } else {
        Status loaded = LoadLocked(merchant, *keys);
        if (!loaded.ok()) {
          if (loaded.code() == StatusCode::kNotFound) DetachLocked(merchant, keys);
          return loaded;
        }
        bool spent;
        {
          std::lock_guard<std::mutex> counter(keys->counter);
          spent = SpentFor(*keys, count);
        }
        if (spent) {
          const bool aged = options_.max_dek_age.count() > 0 &&
                            keys->dek_created_at_ms + options_.max_dek_age.count() <=
                                clock_.NowUnixMillis();
          TV_RETURN_IF_ERROR(RotateLocked(merchant, *keys, nullptr,
                                          aged ? "automatic: the DEK reached its maximum age"
                                               : "automatic: the DEK's encryption budget is used up")
                                 .status());
        }
      }
    }
    // Locks are released above before 'keys' may be replaced (and its mutex destroyed).
    if (refetch) keys = KeysFor(merchant);
  }
}

StatusOr<Keyring::Shredded> Keyring::Shred(std::string_view merchant, storage::AuditRecord audit) {
  for (;;) {
    std::shared_ptr<MerchantKeys> keys = KeysFor(merchant);  // outlives the lock below
    // Exclusive: every write still sealing under this merchant's DEK has committed, and no new
    // one starts until the merchant is marked shredded (after which none can).
    RotationGate::Exclusive exclusive(keys->rotation);
    if (keys->detached) continue;
    TV_ASSIGN_OR_RETURN(storage::MerchantRecord record, store_.GetMerchant(merchant));
    if (record.state == storage::MerchantState::kCreating) {
      return NotFoundError("merchant_not_found", "no such merchant");
    }
    // What is left to destroy: for a shredding resumed after a crash, what it did not reach.
    StatusOr<std::vector<storage::DataKeyUsage>> deks = store_.ListDataKeys(merchant);
    if (!deks.ok() && deks.status().code() != StatusCode::kNotFound) return deks.status();
    if (record.state == storage::MerchantState::kShredded && !deks.ok()) {
      DetachLocked(merchant, keys);
      return NotFoundError("merchant_gone", "the merchant was shredded");
    }
    const StatusOr<storage::DataKeyRecord> fingerprint_key = store_.GetFingerprintKey(merchant);

    // 1. Durably gone before any key is destroyed: a crash from here on never leaves a merchant
    //    that looks alive with keys missing.
    TV_RETURN_IF_ERROR(store_.MarkShredded(merchant, clock_.NowUnixMillis()));
    // 2. Out of memory on every thread: unwrapped DEKs and the fingerprint key.
    cache_.EraseMerchant(merchant);
    {
      std::lock_guard<std::mutex> lock(fingerprint_mu_);
      fingerprint_keys_.erase(std::string(merchant));
      shredded_.insert(std::string(merchant));
    }
    DetachLocked(merchant, keys);
    // 3. Every KEK version it ever had, destroyed in the HSM (one already gone is fine: an
    //    earlier attempt got that far). Each is then looked for: it must be gone.
    Shredded out;
    for (uint32_t v = 1; v <= record.kek_version; ++v) {
      const hsm::KekRef kek{std::string(merchant), v};
      Status destroyed = hsm_.DestroyKek(kek);
      if (!destroyed.ok() && destroyed.code() != StatusCode::kNotFound) return destroyed;
      Status found = hsm_.FindKek(kek);
      if (found.ok()) return InternalError("kek_not_destroyed", "a KEK survived its destruction");
      if (found.code() != StatusCode::kNotFound) return found;
      out.destroyed.push_back("kek:" + kek.Label());
    }
    if (deks.ok()) {
      for (const storage::DataKeyUsage& dek : *deks) out.destroyed.push_back(DekName(merchant, dek.version));
    }
    if (fingerprint_key.ok()) out.destroyed.push_back("fingerprint-key:" + std::string(merchant));
    // 4. The wrapped keys, deleted with the record that says all of the above.
    if (audit.time_ms == 0) audit.time_ms = clock_.NowUnixMillis();
    audit.resource = "merchant:" + std::string(merchant);
    audit.resources = out.destroyed;
    audit.reason = "crypto-shredded: KEKs destroyed in the HSM, wrapped keys deleted";
    std::optional<storage::AuditAttachment> attached;
    if (audit_mac_ != nullptr) attached = storage::AuditAttachment{audit, audit_mac_};
    TV_RETURN_IF_ERROR(store_.CompleteShred(merchant, attached ? &*attached : nullptr));
    out.audit = attached ? attached->record : audit;
    return out;
  }
}

void Keyring::ForgetDataKey(std::string_view merchant, uint32_t version) {
  cache_.Erase(merchant, version);
}

Status Keyring::Step(std::string_view step) const {
  return options_.fault_injection ? options_.fault_injection(step) : Status::Ok();
}

// Destroys KEK versions below 'current' that are still in the HSM (a rotation that committed but
// died before destroying its old KEK), each with an audit record.
Status Keyring::DestroyRetiredKeks(std::string_view merchant, uint32_t current,
                                   const storage::AuditRecord* audit) {
  for (uint32_t v = 1; v < current; ++v) {
    const hsm::KekRef kek{std::string(merchant), v};
    Status found = hsm_.FindKek(kek);
    if (found.code() == StatusCode::kNotFound) continue;
    TV_RETURN_IF_ERROR(found);
    Status destroyed = hsm_.DestroyKek(kek);
    if (!destroyed.ok() && destroyed.code() != StatusCode::kNotFound) return destroyed;
    if (audit_mac_ != nullptr) {
      storage::AuditRecord record =
          audit != nullptr ? *audit : SystemAuditRecord("keys.kek_destroy", merchant, "");
      record.time_ms = clock_.NowUnixMillis();
      record.resource = "kek:" + kek.Label();
      record.resources.clear();
      record.reason = "KEK version " + std::to_string(v) +
                      " destroyed in the HSM: no key is wrapped under it any more";
      TV_RETURN_IF_ERROR(store_.AppendAudit(std::move(record), *audit_mac_).status());
    }
  }
  return Status::Ok();
}

StatusOr<Keyring::KekRotated> Keyring::RotateKek(std::string_view merchant,
                                                 const storage::AuditRecord* audit) {
  for (;;) {
    std::shared_ptr<MerchantKeys> keys = KeysFor(merchant);  // outlives the lock below
    // Exclusive: no DEK rotation or shredding meanwhile (they wrap or delete keys too).
    RotationGate::Exclusive exclusive(keys->rotation);
    if (keys->detached) continue;
    Status loaded = LoadLocked(merchant, *keys);
    if (!loaded.ok()) {
      if (loaded.code() == StatusCode::kNotFound) DetachLocked(merchant, keys);
      return loaded;
    }
    const uint32_t from = keys->kek_version;
    const uint32_t to = from + 1;
    const hsm::KekRef new_kek{std::string(merchant), to};
    // 0. Leftovers of an earlier rotation that died after its commit.
    TV_RETURN_IF_ERROR(DestroyRetiredKeks(merchant, from, audit));

    // 1. The intent, with the tag the new KEK will carry: durable before the KEK exists.
    Bytes tag(16);
    TV_RETURN_IF_ERROR(RandomBytes(tag.data(), tag.size()));
    TV_ASSIGN_OR_RETURN(Bytes tag_in_effect,
                        store_.BeginKekRotation(merchant, from, tag, clock_.NowUnixMillis()));
    TV_RETURN_IF_ERROR(Step("kek_rotation.intent_recorded"));

    // 2. The new KEK. One under its label already is ours only if it carries our tag.
    Status created = hsm_.CreateKek(new_kek, tag_in_effect);
    if (created.code() == StatusCode::kAlreadyExists) {
      TV_ASSIGN_OR_RETURN(Bytes found_tag, hsm_.KekCreationTag(new_kek));
      if (found_tag != tag_in_effect) {
        return FailedPreconditionError("kek_exists_without_merchant",
                                       "the HSM holds a KEK under the new label that this database "
                                       "did not make; an operator must decide");
      }
    } else {
      TV_RETURN_IF_ERROR(created);
    }
    TV_RETURN_IF_ERROR(Step("kek_rotation.kek_created"));

    // 3. Every key rewrapped under it inside the HSM (unwrapped bytes only pass through here).
    TV_ASSIGN_OR_RETURN(std::vector<storage::DataKeyRecord> deks, store_.GetDataKeys(merchant));
    std::vector<std::string> names;
    for (storage::DataKeyRecord& dek : deks) {
      TV_ASSIGN_OR_RETURN(ByteView blob, envelope::DecodeWrappedDek(dek.wrapped));
      TV_ASSIGN_OR_RETURN(
          SecretBytes key,
          hsm_.Unwrap(hsm::KekRef{std::string(merchant), dek.kek_version}, blob,
                      envelope::DekAad(envelope::kWrappedKeyFormatV1, merchant, dek.version, dek.kek_version)));
      TV_ASSIGN_OR_RETURN(
          Bytes rewrapped,
          hsm_.Wrap(new_kek, key, envelope::DekAad(envelope::kWrappedKeyFormatV1, merchant, dek.version, to)));
      dek.wrapped = envelope::EncodeWrappedDek(rewrapped);
      dek.kek_version = to;
      names.push_back(DekName(merchant, dek.version));
    }
    std::optional<storage::DataKeyRecord> fingerprint_key;
    StatusOr<storage::DataKeyRecord> stored_fp = store_.GetFingerprintKey(merchant);
    if (stored_fp.ok()) {
      TV_ASSIGN_OR_RETURN(ByteView blob, envelope::DecodeWrappedDek(stored_fp->wrapped));
      TV_ASSIGN_OR_RETURN(
          SecretBytes key,
          hsm_.Unwrap(hsm::KekRef{std::string(merchant), stored_fp->kek_version}, blob,
                      envelope::FingerprintKeyAad(envelope::kWrappedKeyFormatV1, merchant, stored_fp->kek_version)));
      TV_ASSIGN_OR_RETURN(
          Bytes rewrapped,
          hsm_.Wrap(new_kek, key, envelope::FingerprintKeyAad(envelope::kWrappedKeyFormatV1, merchant, to)));
      stored_fp->wrapped = envelope::EncodeWrappedDek(rewrapped);
      stored_fp->kek_version = to;
      fingerprint_key = std::move(stored_fp).value();
      names.push_back("fingerprint-key:" + std::string(merchant));
    } else if (stored_fp.status().code() != StatusCode::kNotFound) {
      return stored_fp.status();
    }
    TV_RETURN_IF_ERROR(Step("kek_rotation.rewrapped"));

    // 4. Switch: the rewrapped keys, the new KEK version and the audit record, in one commit.
    std::optional<storage::AuditAttachment> attached;
    if (audit_mac_ != nullptr) {
      storage::AuditRecord record =
          audit != nullptr ? *audit : SystemAuditRecord("keys.kek_rotate", merchant, "");
      if (record.time_ms == 0) record.time_ms = clock_.NowUnixMillis();
      record.resource = "kek:" + new_kek.Label();
      record.resources = names;
      record.reason = (record.reason.empty() ? "" : record.reason + ": ") + "KEK version " +
                      std::to_string(to) + " made in the HSM; " + std::to_string(names.size()) +
                      " keys rewrapped from version " + std::to_string(from);
      attached = storage::AuditAttachment{std::move(record), audit_mac_};
    }
    TV_RETURN_IF_ERROR(store_.CompleteKekRotation(merchant, to, deks, fingerprint_key,
                                                  attached ? &*attached : nullptr));
    keys->kek_version = to;
    TV_RETURN_IF_ERROR(Step("kek_rotation.committed"));

    // 5. The old KEK wraps nothing now: destroyed, and recorded. The rotation is done whatever
    //    happens here (an HSM error leaves the old KEK for the next rotation to destroy): a
    //    caller told it failed would only rotate again.
    Status destroyed = DestroyRetiredKeks(merchant, to, audit);
    if (!destroyed.ok()) {
      spdlog::warn("merchant {}: KEK version {} not destroyed yet (the next KEK rotation will): {}",
                   merchant, from, destroyed.ToString());
    }
    return KekRotated{to, static_cast<uint32_t>(names.size())};
  }
}

StatusOr<std::shared_ptr<const HmacSha256>> Keyring::FingerprintKey(std::string_view merchant) {
  const std::string key(merchant);
  if (!options_.serve_cached_keys_when_hsm_down) TV_RETURN_IF_ERROR(hsm_.Health());
  {
    std::lock_guard<std::mutex> lock(fingerprint_mu_);
    auto it = fingerprint_keys_.find(key);
    if (it != fingerprint_keys_.end()) return it->second;
  }
  // Not cached: this is once per merchant and process, so check the merchant is alive (a
  // shredded one keeps no fingerprint key, and must not get a new one).
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord alive, store_.GetMerchant(merchant));
  if (alive.state != storage::MerchantState::kActive) {
    return NotFoundError("merchant_not_found", "no such merchant");
  }
  StatusOr<storage::DataKeyRecord> stored = store_.GetFingerprintKey(merchant);
  if (stored.status().code() == StatusCode::kNotFound) {
    // First use: make one under the merchant's current KEK. Two threads may race here; the
    // store keeps the first, and the loser reads it back.
    TV_ASSIGN_OR_RETURN(storage::MerchantRecord m, store_.GetMerchant(merchant));
    if (m.state != storage::MerchantState::kActive) {
      return NotFoundError("merchant_not_found", "no such merchant");
    }
    TV_ASSIGN_OR_RETURN(SecretBytes fresh, RandomSecret(kHmacSha256Size));
    const Bytes aad =
        envelope::FingerprintKeyAad(envelope::kWrappedKeyFormatV1, merchant, m.kek_version);
    TV_ASSIGN_OR_RETURN(Bytes wrapped,
                        hsm_.Wrap(hsm::KekRef{key, m.kek_version}, fresh, aad));
    storage::DataKeyRecord record;
    record.merchant = key;
    record.version = 1;
    record.kek_version = m.kek_version;
    record.wrapped = envelope::EncodeWrappedDek(wrapped);
    record.created_at_ms = clock_.NowUnixMillis();
    // A key event like any other: recorded with the key, as the system's (it is made on first
    // use, whoever's request that was).
    std::optional<storage::AuditAttachment> attached;
    if (audit_mac_ != nullptr) {
      storage::AuditRecord event = SystemAuditRecord(
          "keys.fingerprint_key_create", merchant,
          "fingerprint key made on first use, wrapped by KEK version " + std::to_string(m.kek_version));
      event.time_ms = record.created_at_ms;
      event.resource = "fingerprint-key:" + key;
      attached = storage::AuditAttachment{std::move(event), audit_mac_};
    }
    Status inserted = store_.InsertFingerprintKey(record, attached ? &*attached : nullptr);
    if (!inserted.ok() && inserted.code() != StatusCode::kAlreadyExists) return inserted;
    stored = store_.GetFingerprintKey(merchant);
  }
  if (!stored.ok()) {
    if (stored.status().code() == StatusCode::kNotFound) {
      return NotFoundError("merchant_not_found", "no such merchant");
    }
    return stored.status();
  }
  TV_ASSIGN_OR_RETURN(ByteView blob, envelope::DecodeWrappedDek(stored->wrapped));
  const Bytes aad =
      envelope::FingerprintKeyAad(envelope::kWrappedKeyFormatV1, merchant, stored->kek_version);
  StatusOr<SecretBytes> unwrapped = hsm_.Unwrap(hsm::KekRef{key, stored->kek_version}, blob, aad);
  if (!unwrapped.ok()) {
    if (unwrapped.status().code() == StatusCode::kNotFound) {
      return DataLossError("integrity_failure", "the fingerprint key refers to a missing KEK");
    }
    return unwrapped.status();
  }
  if (unwrapped->size() != kHmacSha256Size) {
    return DataLossError("integrity_failure", "unwrapped fingerprint key has the wrong size");
  }
  TV_ASSIGN_OR_RETURN(std::unique_ptr<HmacSha256> mac, HmacSha256::Create(*unwrapped));
  std::shared_ptr<const HmacSha256> shared = std::move(mac);
  std::lock_guard<std::mutex> lock(fingerprint_mu_);
  // A shredding that ran meanwhile must not find its key back in memory afterwards.
  if (shredded_.count(key)) return NotFoundError("merchant_not_found", "no such merchant");
  auto [it, added] = fingerprint_keys_.emplace(key, shared);
  return it->second;
}

Status Keyring::ChargeEncryption(std::string_view merchant, const EncryptLease& lease) {
  auto keys = std::static_pointer_cast<MerchantKeys>(lease.keys);
  // The lease's shared hold keeps keys->dek_version == lease.version.
  std::lock_guard<std::mutex> counter(keys->counter);
  if (keys->used >= options_.max_encryptions_per_dek) {
    return UnavailableError("dek_spent", "the data key's encryption budget is used up; retry");
  }
  if (keys->used >= keys->reserved) {
    const uint64_t block = std::max<uint64_t>(1, options_.reservation_block);
    const uint64_t target = std::min(keys->used + block, options_.max_encryptions_per_dek);
    TV_RETURN_IF_ERROR(store_.ReserveEncryptions(merchant, lease.version, target));
    keys->reserved = target;
  }
  ++keys->used;
  return Status::Ok();
}

StatusOr<std::shared_ptr<const AesGcm256>> Keyring::ForDecrypt(std::string_view merchant,
                                                               uint32_t dek_version) {
  return LoadDek(merchant, dek_version);
}

StatusOr<std::shared_ptr<const AesGcm256>> Keyring::LoadDek(std::string_view merchant,
                                                            uint32_t version) {
  if (!options_.serve_cached_keys_when_hsm_down) TV_RETURN_IF_ERROR(hsm_.Health());
  if (auto cached = cache_.Get(merchant, version)) return cached;
  StatusOr<SecretBytes> dek = InternalError("unset", "");
  uint32_t kek_version = 0;
  // Twice at most: a KEK rotation may commit (and destroy the KEK read here) between reading the
  // row and unwrapping it; the row read again names the new KEK.
  for (int attempt = 0; attempt < 2; ++attempt) {
    TV_ASSIGN_OR_RETURN(storage::DataKeyRecord record, store_.GetDataKey(merchant, version));
    TV_ASSIGN_OR_RETURN(ByteView hsm_blob, envelope::DecodeWrappedDek(record.wrapped));
    const Bytes aad = envelope::DekAad(envelope::kWrappedKeyFormatV1, merchant, version,
                                       record.kek_version);
    if (attempt == 1 && record.kek_version == kek_version) break;  // nothing moved: report it
    kek_version = record.kek_version;
    dek = hsm_.Unwrap(hsm::KekRef{std::string(merchant), record.kek_version}, hsm_blob, aad);
    if (dek.ok() || dek.status().code() != StatusCode::kNotFound) break;
  }
  if (!dek.ok()) {
    if (dek.status().code() == StatusCode::kNotFound) {
      // The row names a KEK the HSM does not have: the row was altered, or the KEK destroyed.
      return DataLossError("integrity_failure",
                           "the data key refers to a KEK that does not exist");
    }
    return dek.status();
  }
  if (dek->size() != kAesGcmKeySize) {
    return DataLossError("integrity_failure", "unwrapped data key has the wrong size");
  }
  TV_ASSIGN_OR_RETURN(AesGcm256 aead, AesGcm256::Create(std::move(dek).value()));
  auto shared = std::make_shared<const AesGcm256>(std::move(aead));
  cache_.Put(merchant, version, shared);
  return shared;
}

}  // namespace tokenvault
