#include "vault/vault.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include "vault/envelope.h"
#include "vault/token_format.h"
#include "vault/token_id.h"

namespace tokenvault {
namespace {

// A random token never collides in practice; a preserving one can, within its (length, last
// four[, BIN]) bucket, and is drawn again. After this many draws the bucket counts as full.
constexpr int kTokenInsertAttempts = 10;

// 1 second to 10 years (API.md leaves the bound to us; the service refuses the same range).
Status CheckAttributes(const TokenAttributes& attributes) {
  constexpr int64_t kMaxTtlSeconds = int64_t{10} * 366 * 24 * 3600;
  if (attributes.ttl_seconds && (*attributes.ttl_seconds < 1 || *attributes.ttl_seconds > kMaxTtlSeconds)) {
    return InvalidArgumentError("invalid_ttl", "ttl_seconds is from 1 to 316224000");
  }
  return Status::Ok();
}

Status TokenSpaceExhausted() {
  return FailedPreconditionError(
      "token_space_exhausted",
      "no free format-preserving token is left for this value's kept digits in this merchant");
}

Status TokenNotFound() {
  // One status for "no such token" and "another merchant's token", so that callers cannot tell.
  return NotFoundError(kReasonTokenNotFound, "no such token");
}

std::optional<std::string> Last4(ValueType type, const SecretBytes& v) {
  if ((type != ValueType::kCard && type != ValueType::kSsn) || v.size() < 4) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(v.data()) + v.size() - 4, 4);
}

}  // namespace

StatusOr<std::unique_ptr<Vault>> Vault::Create(std::shared_ptr<hsm::Hsm> hsm,
                                               std::shared_ptr<storage::Store> store,
                                               const VaultOptions& options, const Clock& clock) {
  if (!hsm || !store) return InvalidArgumentError("bad_config", "the vault needs an HSM and a store");
  // NIST SP 800-38D allows 2^32 random-nonce encryptions per key; stay at least 2x below.
  if (options.keys.max_encryptions_per_dek == 0 ||
      options.keys.max_encryptions_per_dek > kMaxEncryptionsPerDekLimit) {
    return InvalidArgumentError("bad_config", "max_encryptions_per_dek must be in [1, 2^31]");
  }
  TV_ASSIGN_OR_RETURN(std::unique_ptr<AuditLog> audit, AuditLog::Open(*hsm, *store, clock));
  return std::unique_ptr<Vault>(
      new Vault(std::move(hsm), std::move(store), options, clock, std::move(audit)));
}

Vault::Vault(std::shared_ptr<hsm::Hsm> hsm, std::shared_ptr<storage::Store> store,
             const VaultOptions& options, const Clock& clock, std::unique_ptr<AuditLog> audit)
    : hsm_(std::move(hsm)),
      store_(std::move(store)),
      clock_(clock),
      keyring_(std::make_unique<Keyring>(*hsm_, *store_, clock, options.keys)),
      audit_(std::move(audit)) {
  if (options.expiry_sweep_interval.count() > 0) {
    sweeper_ = std::thread([this, interval = options.expiry_sweep_interval] { SweepLoop(interval); });
  }
}

Vault::~Vault() {
  if (sweeper_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(sweep_mu_);
      stopping_ = true;
    }
    sweep_cv_.notify_all();
    sweeper_.join();
  }
  // Asynchronous tokenizes still refer to the keyring and the audit log.
  pending_.WaitIdle();
}

void Vault::SweepLoop(std::chrono::milliseconds interval) {
  pthread_setname_np(pthread_self(), "tv-sweeper");
  std::unique_lock<std::mutex> lock(sweep_mu_);
  while (!sweep_cv_.wait_for(lock, interval, [&] { return stopping_; })) {
    lock.unlock();
    // Batches of 256 until none is left: each batch is one operation in a group commit, so a
    // small one never holds the live requests committed with it for long. An error (storage
    // down) waits for the next round.
    constexpr size_t kSweepBatch = 256;
    for (;;) {
      StatusOr<size_t> swept = SweepExpired(kSweepBatch);
      if (!swept.ok()) {
        // Expired tokens still answer gone (by their expires_at); only their ciphertext stays
        // until a later round succeeds.
        spdlog::warn("expiry sweep failed, retried in {} ms: {}", interval.count(),
                     swept.status().ToString());
        break;
      }
      if (*swept > 0) spdlog::info("expiry sweep removed the sealed values of {} tokens", *swept);
      if (*swept < kSweepBatch) break;
      std::lock_guard<std::mutex> check(sweep_mu_);
      if (stopping_) break;
    }
    lock.lock();
  }
}

StatusOr<size_t> Vault::SweepExpired(size_t limit) {
  TV_ASSIGN_OR_RETURN(size_t swept, store_->SweepExpired(clock_.NowUnixMillis(), limit));
  return swept;
}

StatusOr<MerchantInfo> Vault::CreateMerchant(std::string_view merchant,
                                             const storage::AuditRecord* audit) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "merchant ids match ^[a-z0-9][a-z0-9_-]{0,63}$");
  }
  std::optional<storage::AuditAttachment> attached;
  if (audit != nullptr) attached = storage::AuditAttachment{*audit, audit_.get()};
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord record,
                      keyring_->CreateMerchant(merchant, attached ? &*attached : nullptr));
  return MerchantInfo{record.id, record.created_at_ms, record.kek_version,
                      record.current_dek_version};
}

// A value sealed under a new random token, ready to insert, and the lease that keeps its DEK
// version current until the insert has committed.
struct Vault::SealedToken {
  storage::TokenRecord record;
  Keyring::EncryptLease lease;
  TokenInfo info;
};

StatusOr<std::string> Vault::Fingerprint(std::string_view merchant, const SecretBytes& normalized) {
  TV_ASSIGN_OR_RETURN(std::shared_ptr<const HmacSha256> key, keyring_->FingerprintKey(merchant));
  TV_ASSIGN_OR_RETURN(HmacSha256Tag tag, key->Compute(normalized.view()));
  return FingerprintString(tag);
}

StatusOr<Vault::SealedToken> Vault::Seal(std::string_view merchant, const SecretBytes& normalized,
                                         ValueType type, const TokenFormatOptions& format,
                                         const std::string& fingerprint,
                                         const TokenAttributes& attributes) {
  TV_ASSIGN_OR_RETURN(std::string token, NewToken(type, normalized, format));
  TV_ASSIGN_OR_RETURN(Keyring::EncryptLease lease, keyring_->ForEncrypt(merchant));
  return SealWith(std::move(lease), std::move(token), merchant, normalized, type, format,
                  fingerprint, attributes);
}

StatusOr<Vault::SealedToken> Vault::SealWith(Keyring::EncryptLease lease, std::string token,
                                             std::string_view merchant,
                                             const SecretBytes& normalized, ValueType type,
                                             const TokenFormatOptions& format,
                                             const std::string& fingerprint,
                                             const TokenAttributes& attributes) {
  const std::string_view type_name = ValueTypeName(type);
  const Bytes aad = envelope::ValueAad(envelope::kValueFormatV1, merchant, token, type_name,
                                       lease.version);
  TV_ASSIGN_OR_RETURN(SealedBox box, lease.aead->Encrypt(normalized.view(), aad));

  SealedToken sealed;
  storage::TokenRecord& record = sealed.record;
  record.token = token;
  record.merchant = std::string(merchant);
  record.type = std::string(type_name);
  record.format = std::string(TokenFormatName(format.format));
  record.record_version = envelope::kValueFormatV1;
  record.dek_version = lease.version;
  record.nonce.assign(box.nonce.begin(), box.nonce.end());
  record.ciphertext = std::move(box.ciphertext);
  record.tag.assign(box.tag.begin(), box.tag.end());
  record.last4 = Last4(type, normalized);
  record.fingerprint = fingerprint;
  record.metadata = attributes.metadata_json;
  record.created_at_ms = clock_.NowUnixMillis();
  if (attributes.ttl_seconds) {
    record.expires_at_ms = record.created_at_ms + *attributes.ttl_seconds * 1000;
  }
  sealed.info = TokenInfo{token,         std::string(merchant), type,         record.format,
                          lease.version, record.created_at_ms,  record.expires_at_ms, record.last4,
                          record.fingerprint, record.metadata};
  sealed.lease = std::move(lease);
  return sealed;
}

std::optional<storage::AuditAttachment> Vault::AttachTo(const SealedToken& sealed,
                                                        const storage::AuditRecord* audit) {
  if (audit == nullptr) return std::nullopt;
  storage::AuditAttachment entry{*audit, audit_.get()};
  entry.record.resource = sealed.record.token;
  if (entry.record.time_ms == 0) entry.record.time_ms = sealed.record.created_at_ms;
  return entry;
}

StatusOr<TokenInfo> Vault::Tokenize(std::string_view merchant, ByteView value, ValueType type,
                                    const storage::AuditRecord* audit,
                                    const TokenFormatOptions& format,
                                    const TokenAttributes& attributes) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  TV_ASSIGN_OR_RETURN(SecretBytes normalized, NormalizeValue(type, value));
  TV_RETURN_IF_ERROR(CheckTokenFormat(type, format));
  TV_RETURN_IF_ERROR(CheckAttributes(attributes));
  TV_ASSIGN_OR_RETURN(std::string fingerprint, Fingerprint(merchant, normalized));
  for (int attempt = 0; attempt < kTokenInsertAttempts; ++attempt) {
    TV_ASSIGN_OR_RETURN(SealedToken sealed,
                        Seal(merchant, normalized, type, format, fingerprint, attributes));
    std::optional<storage::AuditAttachment> entry = AttachTo(sealed, audit);
    Status inserted = store_->InsertToken(sealed.record, entry ? &*entry : nullptr);
    if (inserted.ok()) return std::move(sealed.info);
    if (inserted.code() != StatusCode::kAlreadyExists) return inserted;
  }
  return TokenSpaceExhausted();
}

// What an asynchronous tokenize carries from one attempt to the next.
struct Vault::PendingTokenize {
  std::string merchant;
  SecretBytes normalized;
  ValueType type;
  TokenFormatOptions format;
  std::string fingerprint;
  TokenAttributes attributes;
  std::optional<storage::AuditRecord> audit;
  std::function<void(StatusOr<TokenInfo>)> done;
  int attempts_left = kTokenInsertAttempts;
  InFlight::Ticket ticket;  // the vault outlives this tokenize
};

void Vault::TokenizeAsync(std::string_view merchant, ByteView value, ValueType type,
                          const TokenFormatOptions& format,
                          TokenAttributes attributes,
                          std::optional<storage::AuditRecord> audit,
                          std::function<void(StatusOr<TokenInfo>)> done) {
  if (!IsValidMerchantId(merchant)) {
    done(InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id"));
    return;
  }
  StatusOr<SecretBytes> normalized = NormalizeValue(type, value);
  if (!normalized.ok()) {
    done(normalized.status());
    return;
  }
  if (Status applies = CheckTokenFormat(type, format); !applies.ok()) {
    done(applies);
    return;
  }
  if (Status valid = CheckAttributes(attributes); !valid.ok()) {
    done(valid);
    return;
  }
  StatusOr<std::string> fingerprint = Fingerprint(merchant, *normalized);
  if (!fingerprint.ok()) {
    done(fingerprint.status());
    return;
  }
  auto pending = std::make_shared<PendingTokenize>(PendingTokenize{
      std::string(merchant), std::move(normalized).value(), type, format,
      std::move(fingerprint).value(), std::move(attributes), std::move(audit), std::move(done),
      kTokenInsertAttempts,
      pending_.Enter()});
  TokenizeAttempt(std::move(pending));
}

void Vault::TokenizeAttempt(std::shared_ptr<PendingTokenize> pending) {
  --pending->attempts_left;
  StatusOr<SealedToken> sealed = Seal(pending->merchant, pending->normalized, pending->type,
                                      pending->format, pending->fingerprint,
                                      pending->attributes);
  if (!sealed.ok()) {
    pending->done(sealed.status());
    return;
  }
  InsertSealed(std::move(pending), std::move(sealed).value());
}

// Runs on the completion thread, still holding the lease of the attempt whose token was taken:
// a new token is sealed under that same lease rather than a new one, because asking for a new
// shared hold here could wait behind a rotation that waits for the holds only this thread
// releases.
void Vault::TokenizeRetry(std::shared_ptr<PendingTokenize> pending, Keyring::EncryptLease lease) {
  --pending->attempts_left;
  StatusOr<std::string> token = NewToken(pending->type, pending->normalized, pending->format);
  // Another encryption under the lease's DEK: counted like any other (this may wait for the
  // store's writer, never for a completion).
  Status charged = token.ok() ? keyring_->ChargeEncryption(pending->merchant, lease) : token.status();
  StatusOr<SealedToken> sealed =
      charged.ok() ? SealWith(std::move(lease), std::move(token).value(), pending->merchant,
                              pending->normalized, pending->type, pending->format,
                              pending->fingerprint, pending->attributes)
                   : StatusOr<SealedToken>(charged);
  if (!sealed.ok()) {
    pending->done(sealed.status());
    return;
  }
  InsertSealed(std::move(pending), std::move(sealed).value());
}

void Vault::InsertSealed(std::shared_ptr<PendingTokenize> pending, SealedToken sealed) {
  std::optional<storage::AuditAttachment> entry =
      AttachTo(sealed, pending->audit ? &*pending->audit : nullptr);
  storage::TokenRecord record = sealed.record;
  // The lease travels with the insert and ends when it has committed (on the completing thread).
  auto lease = std::make_shared<Keyring::EncryptLease>(std::move(sealed.lease));
  store_->InsertTokenAsync(
      std::move(record), std::move(entry),
      [this, pending, lease, info = std::move(sealed.info)](Status inserted) mutable {
        if (inserted.code() == StatusCode::kAlreadyExists && pending->attempts_left > 0) {
          // The token exists (a preserving token's bucket is filling; for a random token,
          // practically never): draw another under the same lease.
          TokenizeRetry(pending, std::move(*lease));
          return;
        }
        lease->no_rotation.Release();
        if (inserted.ok()) {
          pending->done(std::move(info));
        } else if (inserted.code() == StatusCode::kAlreadyExists) {
          pending->done(TokenSpaceExhausted());
        } else {
          pending->done(std::move(inserted));
        }
      });
}

StatusOr<storage::TokenRecord> Vault::FindOwnToken(std::string_view merchant,
                                                   std::string_view token) {
  if (!IsWellFormedToken(token)) {
    return InvalidArgumentError(kReasonInvalidToken, "malformed token");
  }
  if (!IsValidMerchantId(merchant)) return TokenNotFound();
  StatusOr<storage::TokenRecord> found = store_->FindToken(merchant, token);
  if (!found.ok()) {
    if (found.status().code() == StatusCode::kNotFound) return TokenNotFound();
    return found.status();
  }
  if (found->merchant != merchant) return TokenNotFound();
  if (found->expires_at_ms.has_value() && *found->expires_at_ms <= clock_.NowUnixMillis()) {
    return NotFoundError(kReasonTokenGone, "the token expired");
  }
  if (found->deleted_at_ms.has_value() || found->nonce.empty()) {
    return NotFoundError(kReasonTokenGone, "the token was deleted");
  }
  return found;
}

StatusOr<TokenInfo> Vault::GetToken(std::string_view merchant, std::string_view token) {
  TV_ASSIGN_OR_RETURN(storage::TokenRecord record, FindOwnToken(merchant, token));
  const std::optional<ValueType> type = ParseValueType(record.type);
  if (!type) return DataLossError(kReasonIntegrity, "the stored token has an unknown type");
  return TokenInfo{record.token,   record.merchant,    *type,
                   record.format,  record.dek_version, record.created_at_ms,
                   record.expires_at_ms, record.last4, record.fingerprint, record.metadata};
}

Status Vault::DeleteToken(std::string_view merchant, std::string_view token,
                          const storage::AuditRecord* audit) {
  TV_RETURN_IF_ERROR(FindOwnToken(merchant, token).status());
  const int64_t now = clock_.NowUnixMillis();
  std::optional<storage::AuditAttachment> attached;
  if (audit != nullptr) {
    attached = storage::AuditAttachment{*audit, audit_.get()};
    if (attached->record.time_ms == 0) attached->record.time_ms = now;
  }
  Status deleted = store_->DeleteToken(merchant, token, now, attached ? &*attached : nullptr);
  if (deleted.code() == StatusCode::kNotFound) {
    return NotFoundError(kReasonTokenGone, "the token was deleted");  // lost a race with a delete
  }
  return deleted;
}

StatusOr<RevealedValue> Vault::Detokenize(std::string_view merchant, std::string_view token) {
  TV_ASSIGN_OR_RETURN(storage::TokenRecord record, FindOwnToken(merchant, token));
  const std::optional<ValueType> type = ParseValueType(record.type);
  if (!type || record.record_version != envelope::kValueFormatV1) {
    return DataLossError(kReasonIntegrity, "the stored token has an unknown type or format");
  }
  StatusOr<std::shared_ptr<const AesGcm256>> aead =
      keyring_->ForDecrypt(merchant, record.dek_version);
  if (!aead.ok()) {
    // The row names a DEK version its merchant never had: the row was altered.
    if (aead.status().code() == StatusCode::kNotFound) {
      return DataLossError(kReasonIntegrity, "the stored token refers to an unknown data key");
    }
    return aead.status();
  }
  const Bytes aad = envelope::ValueAad(record.record_version, merchant, record.token, record.type,
                                       record.dek_version);
  TV_ASSIGN_OR_RETURN(SecretBytes value,
                      (*aead)->Decrypt(record.nonce, record.ciphertext, record.tag, aad));
  return RevealedValue{*type, std::move(value)};
}

StatusOr<uint32_t> Vault::RotateDataKey(std::string_view merchant) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  return keyring_->Rotate(merchant);
}

Status Vault::CheckHsm() { return hsm_->Ping(); }

}  // namespace tokenvault
