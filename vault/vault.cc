#include "vault/vault.h"

#include "vault/counting_hsm.h"

#include <pthread.h>
#include <future>
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
  hsm = std::make_shared<CountingHsm>(std::move(hsm));  // every call counted (GET /metrics)
  // NIST SP 800-38D allows 2^32 random-nonce encryptions per key; stay at least 2x below.
  if (options.keys.max_encryptions_per_dek == 0 ||
      options.keys.max_encryptions_per_dek > kMaxEncryptionsPerDekLimit) {
    return InvalidArgumentError("bad_config", "max_encryptions_per_dek must be in [1, 2^31]");
  }
  TV_ASSIGN_OR_RETURN(std::unique_ptr<AuditLog> audit, AuditLog::Open(*hsm, *store, clock));
  TV_ASSIGN_OR_RETURN(std::unique_ptr<AuditCheckpointer> checkpoints,
                      AuditCheckpointer::Open(*hsm, *store, *audit, options.audit_checkpoints, clock));
  TV_ASSIGN_OR_RETURN(std::unique_ptr<HmacSha256> idempotency_mac,
                      audit->DeriveKey("idempotency-keys"));
  return std::unique_ptr<Vault>(new Vault(std::move(hsm), std::move(store), options, clock,
                                          std::move(audit), std::move(checkpoints),
                                          std::move(idempotency_mac)));
}

Vault::Vault(std::shared_ptr<hsm::Hsm> hsm, std::shared_ptr<storage::Store> store,
             const VaultOptions& options, const Clock& clock, std::unique_ptr<AuditLog> audit,
             std::unique_ptr<AuditCheckpointer> checkpoints,
             std::unique_ptr<HmacSha256> idempotency_mac)
    : hsm_(std::move(hsm)),
      store_(std::move(store)),
      clock_(clock),
      keyring_(std::make_unique<Keyring>(*hsm_, *store_, clock, options.keys, audit.get())),
      audit_(std::move(audit)),
      checkpoints_(std::move(checkpoints)),
      idempotency_mac_(std::move(idempotency_mac)),
      options_(options) {
  if (options.expiry_sweep_interval.count() > 0) {
    sweeper_ = std::thread([this, interval = options.expiry_sweep_interval] { SweepLoop(interval); });
  }
  if (options.reencrypt_interval.count() > 0) {
    reencrypter_ = std::thread([this, interval = options.reencrypt_interval] { ReencryptLoop(interval); });
  }
  if (options.hsm_probe_interval.count() > 0) {
    prober_ = std::thread([this, interval = options.hsm_probe_interval] { ProbeLoop(interval); });
  }
  checkpoints_->Start();
}

Vault::~Vault() {
  {
    std::lock_guard<std::mutex> lock(sweep_mu_);
    stopping_ = true;
  }
  sweep_cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  if (reencrypter_.joinable()) reencrypter_.join();
  if (prober_.joinable()) prober_.join();
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
    SweepInBatches("expiry sweep", "tokens lost their sealed value", interval,
                   [this] { return SweepExpired(kSweepBatch); }, kSweepBatch);
    // Idempotency records past their 24 hours: only keyed hashes and answers holding tokens,
    // but nothing is kept longer than its purpose needs.
    SweepInBatches("idempotency sweep", "expired idempotency records deleted", interval,
                   [this] { return SweepIdempotency(kSweepBatch); }, kSweepBatch);
    // Tokens of crypto-shredded merchants: their values are unreadable already (their keys are
    // destroyed); the ciphertext goes too.
    SweepInBatches("shredded sweep", "tokens of shredded merchants lost their sealed value",
                   interval, [this] { return store_->SweepShredded(kSweepBatch); }, kSweepBatch);
    lock.lock();
  }
}

void Vault::SweepInBatches(const char* what, const char* done_what,
                           std::chrono::milliseconds interval,
                           const std::function<StatusOr<size_t>()>& sweep, size_t batch) {
  for (;;) {
    StatusOr<size_t> swept = sweep();
    if (!swept.ok()) {
      // Expired tokens still answer gone (by their expires_at), and an expired idempotency
      // record is never replayed: only the deletion waits for a later round.
      spdlog::warn("{} failed, retried in {} ms: {}", what, interval.count(),
                   swept.status().ToString());
      return;
    }
    if (*swept > 0) spdlog::info("{}: {} {}", what, *swept, done_what);
    if (*swept < batch) return;
    std::lock_guard<std::mutex> check(sweep_mu_);
    if (stopping_) return;
  }
}

bool Vault::PauseOrStop(std::chrono::milliseconds pause) {
  std::unique_lock<std::mutex> lock(sweep_mu_);
  return sweep_cv_.wait_for(lock, pause, [&] { return stopping_; });
}

void Vault::ReencryptLoop(std::chrono::milliseconds interval) {
  pthread_setname_np(pthread_self(), "tv-reencrypt");
  while (!PauseOrStop(interval)) {
    StatusOr<size_t> moved = RunReencryption();
    if (!moved.ok()) {
      // Nothing is lost: what is left is found again next round.
      spdlog::warn("re-encryption stopped, resumed in {} ms: {}", interval.count(),
                   moved.status().ToString());
    } else if (*moved > 0) {
      spdlog::info("re-encryption: {} tokens moved to their merchant's current data key", *moved);
    }
  }
}

void Vault::ProbeLoop(std::chrono::milliseconds interval) {
  pthread_setname_np(pthread_self(), "tv-hsm-probe");
  bool was_up = true;
  while (!PauseOrStop(interval)) {
    // Ping marks a lost connection down (and, once down, tries to reconnect).
    const Status up = hsm_->Ping();
    if (was_up && !up.ok()) spdlog::error("the HSM does not answer: {}", up.ToString());
    if (!was_up && up.ok()) spdlog::info("the HSM answers again");
    was_up = up.ok();
  }
}

StatusOr<size_t> Vault::RunReencryption() {
  TV_ASSIGN_OR_RETURN(std::vector<std::string> merchants, store_->MerchantsToReencrypt());
  size_t total = 0;
  for (const std::string& merchant : merchants) {
    for (;;) {
      TV_ASSIGN_OR_RETURN(size_t moved, ReencryptBatch(merchant, options_.reencrypt_batch));
      total += moved;
      if (moved == 0) break;
      // Throttle: the writer is shared with live traffic.
      if (PauseOrStop(options_.reencrypt_pause)) return total;
    }
    TV_RETURN_IF_ERROR(DestroyUnusedDataKeys(merchant).status());
  }
  return total;
}

StatusOr<size_t> Vault::ReencryptBatch(std::string_view merchant, size_t limit) {
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord m, store_->GetMerchant(merchant));
  if (m.state != storage::MerchantState::kActive) return NotFoundError("merchant_not_found", "no such merchant");
  TV_ASSIGN_OR_RETURN(std::vector<storage::TokenRecord> rows,
                      store_->FindTokensToReencrypt(merchant, m.current_dek_version, limit));
  if (rows.empty()) return size_t{0};
  // One lease for the batch: no rotation until it has committed (a newer version appearing
  // meanwhile only means these move again later).
  TV_ASSIGN_OR_RETURN(Keyring::EncryptLease lease, keyring_->ForEncrypt(merchant, rows.size()));
  std::vector<uint32_t> from_versions;
  std::vector<storage::TokenRecord> resealed;
  for (storage::TokenRecord& row : rows) {
    if (row.dek_version >= lease.version) continue;
    TV_ASSIGN_OR_RETURN(std::shared_ptr<const AesGcm256> old_key,
                        keyring_->ForDecrypt(merchant, row.dek_version));
    const Bytes old_aad = envelope::ValueAad(row.record_version, merchant, row.token, row.type,
                                             row.dek_version);
    TV_ASSIGN_OR_RETURN(SecretBytes value, old_key->Decrypt(row.nonce, row.ciphertext, row.tag, old_aad));
    const Bytes new_aad = envelope::ValueAad(envelope::kValueFormatV1, merchant, row.token, row.type,
                                             lease.version);
    TV_ASSIGN_OR_RETURN(SealedBox box, lease.aead->Encrypt(value.view(), new_aad));
    from_versions.push_back(row.dek_version);
    row.dek_version = lease.version;
    row.record_version = envelope::kValueFormatV1;
    row.nonce.assign(box.nonce.begin(), box.nonce.end());
    row.ciphertext = std::move(box.ciphertext);
    row.tag.assign(box.tag.begin(), box.tag.end());
    resealed.push_back(std::move(row));
  }
  TV_ASSIGN_OR_RETURN(size_t moved, store_->ReplaceSealedValues(resealed, from_versions));
  TV_RETURN_IF_ERROR(keyring_->Step("reencrypt.batch_committed"));
  return moved;
}

StatusOr<size_t> Vault::DestroyUnusedDataKeys(std::string_view merchant) {
  TV_ASSIGN_OR_RETURN(std::vector<storage::DataKeyUsage> keys, store_->ListDataKeys(merchant));
  size_t destroyed = 0;
  for (const storage::DataKeyUsage& k : keys) {
    if (k.state != storage::DataKeyState::kRetired || k.live_tokens != 0) continue;
    storage::AuditRecord record = SystemAuditRecord(
        "keys.dek_destroy", merchant,
        "version " + std::to_string(k.version) +
            " retired and destroyed: no live token uses it any more");
    record.time_ms = clock_.NowUnixMillis();
    record.resource = "dek:" + std::string(merchant) + "/v" + std::to_string(k.version);
    storage::AuditAttachment attached{std::move(record), audit_.get()};
    Status done = store_->DestroyDataKey(merchant, k.version, clock_.NowUnixMillis(), &attached);
    if (done.code() == StatusCode::kFailedPrecondition) continue;  // used again meanwhile: later
    TV_RETURN_IF_ERROR(done);
    keyring_->ForgetDataKey(merchant, k.version);
    ++destroyed;
  }
  return destroyed;
}

StatusOr<size_t> Vault::SweepIdempotency(size_t limit) {
  return store_->SweepIdempotency(clock_.NowUnixMillis(), limit);
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
  if (audit != nullptr) {
    // Key events name their keys: the merchant's first KEK (in the HSM) and first DEK.
    attached = storage::AuditAttachment{*audit, audit_.get()};
    storage::AuditRecord& record = attached->record;
    if (record.time_ms == 0) record.time_ms = clock_.NowUnixMillis();
    const std::string kek = "kek:" + hsm::KekRef{std::string(merchant), 1}.Label();
    if (record.resource.empty()) record.resource = kek;
    record.resources = {kek, "dek:" + std::string(merchant) + "/v1"};
  }
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord record,
                      keyring_->CreateMerchant(merchant, attached ? &*attached : nullptr));
  return MerchantInfo{record.id, record.created_at_ms, record.kek_version,
                      record.current_dek_version};
}

// One item, normalised and checked, with what is needed to seal it again under a new token.
struct Vault::PreparedItem {
  SecretBytes normalized;
  ValueType type = ValueType::kGeneric;
  TokenFormatOptions format;
  TokenAttributes attributes;
  std::string fingerprint;
  std::optional<std::string> dedup_key;  // deterministic items only
};

// A value sealed under a new token, ready to insert.
struct Vault::SealedToken {
  storage::TokenRecord record;
  TokenInfo info;
};

// A tokenize or a batch on its way to the store: its items, the DEK lease that keeps their DEK
// version current until the write has committed, and what is known of each item so far.
struct Vault::PendingWrite {
  std::string merchant;
  std::vector<std::optional<PreparedItem>> items;  // nullopt: invalid (outcome says why)
  std::vector<TokenizeOutcome> outcomes;           // one per item
  std::vector<int> attempts_left;                  // token draws left, per item
  // The write's tokens: sealed[k] is item written[k].
  std::vector<size_t> written;
  std::vector<SealedToken> sealed;
  Keyring::EncryptLease lease;
  std::optional<storage::AuditRecord> audit;
  TokenizeCommitHook hook;
  std::function<void(StatusOr<std::vector<TokenizeOutcome>>)> done;
  bool single = false;      // one tokenize, not a batch: fails as a whole
  bool finished = false;    // 'done' was called (it is called exactly once)
  InFlight::Ticket ticket;  // the vault outlives this write
};

namespace {

// "card/preserving-bin/fp_...": what a deterministic token is found again by (API.md: the same
// normalised value, type, format and merchant; keeping the BIN is part of the format).
std::string DedupKey(ValueType type, const TokenFormatOptions& format,
                     const std::string& fingerprint) {
  std::string key(ValueTypeName(type));
  key += '/';
  key += TokenFormatName(format.format);
  if (format.keep_bin) key += "-bin";
  key += '/';
  key += fingerprint;
  return key;
}

}  // namespace

StatusOr<std::string> Vault::Fingerprint(std::string_view merchant, const SecretBytes& normalized) {
  TV_ASSIGN_OR_RETURN(std::shared_ptr<const HmacSha256> key, keyring_->FingerprintKey(merchant));
  TV_ASSIGN_OR_RETURN(HmacSha256Tag tag, key->Compute(normalized.view()));
  return FingerprintString(tag);
}

StatusOr<Vault::PreparedItem> Vault::Prepare(std::string_view merchant, const TokenizeItem& item) {
  PreparedItem prepared;
  TV_ASSIGN_OR_RETURN(prepared.normalized, NormalizeValue(item.type, item.value));
  TV_RETURN_IF_ERROR(CheckTokenFormatFor(item.type, prepared.normalized, item.format));
  TV_RETURN_IF_ERROR(CheckAttributes(item.attributes));
  TV_ASSIGN_OR_RETURN(prepared.fingerprint, Fingerprint(merchant, prepared.normalized));
  prepared.type = item.type;
  prepared.format = item.format;
  prepared.attributes = item.attributes;
  if (item.deterministic) prepared.dedup_key = DedupKey(item.type, item.format, prepared.fingerprint);
  return prepared;
}

StatusOr<Vault::SealedToken> Vault::SealItem(const Keyring::EncryptLease& lease,
                                             std::string_view merchant, const PreparedItem& item) {
  TV_ASSIGN_OR_RETURN(std::string token, NewToken(item.type, item.normalized, item.format));
  const std::string_view type_name = ValueTypeName(item.type);
  const Bytes aad = envelope::ValueAad(envelope::kValueFormatV1, merchant, token, type_name,
                                       lease.version);
  TV_ASSIGN_OR_RETURN(SealedBox box, lease.aead->Encrypt(item.normalized.view(), aad));

  SealedToken sealed;
  storage::TokenRecord& record = sealed.record;
  record.token = std::move(token);
  record.merchant = std::string(merchant);
  record.type = std::string(type_name);
  record.format = std::string(TokenFormatName(item.format.format));
  record.record_version = envelope::kValueFormatV1;
  record.dek_version = lease.version;
  record.nonce.assign(box.nonce.begin(), box.nonce.end());
  record.ciphertext = std::move(box.ciphertext);
  record.tag.assign(box.tag.begin(), box.tag.end());
  record.last4 = Last4(item.type, item.normalized);
  record.fingerprint = item.fingerprint;
  record.metadata = item.attributes.metadata_json;
  record.dedup_key = item.dedup_key;
  record.created_at_ms = clock_.NowUnixMillis();
  if (item.attributes.ttl_seconds) {
    record.expires_at_ms = record.created_at_ms + *item.attributes.ttl_seconds * 1000;
  }
  sealed.info = InfoOf(record, item.type);
  return sealed;
}

TokenInfo Vault::InfoOf(const storage::TokenRecord& record, ValueType type) {
  return TokenInfo{record.token,         record.merchant,    type,
                   record.format,        record.dek_version, record.created_at_ms,
                   record.expires_at_ms, record.last4,       record.fingerprint,
                   record.metadata};
}

StatusOr<TokenInfo> Vault::Tokenize(std::string_view merchant, ByteView value, ValueType type,
                                    const storage::AuditRecord* audit,
                                    const TokenFormatOptions& format,
                                    const TokenAttributes& attributes) {
  TV_ASSIGN_OR_RETURN(TokenizeOutcome outcome,
                      Tokenize(merchant, TokenizeItem{value, type, format, false, attributes}, audit));
  return std::move(outcome.token);
}

StatusOr<TokenizeOutcome> Vault::Tokenize(std::string_view merchant, const TokenizeItem& item,
                                          const storage::AuditRecord* audit) {
  std::promise<StatusOr<TokenizeOutcome>> promise;
  std::future<StatusOr<TokenizeOutcome>> result = promise.get_future();
  TokenizeOneAsync(merchant, item, audit ? std::optional(*audit) : std::nullopt, nullptr,
                   [&promise](StatusOr<TokenizeOutcome> outcome) {
                     promise.set_value(std::move(outcome));
                   });
  return result.get();
}

void Vault::TokenizeAsync(std::string_view merchant, ByteView value, ValueType type,
                          const TokenFormatOptions& format, TokenAttributes attributes,
                          std::optional<storage::AuditRecord> audit,
                          std::function<void(StatusOr<TokenInfo>)> done) {
  TokenizeOneAsync(merchant, TokenizeItem{value, type, format, false, std::move(attributes)},
                   std::move(audit), nullptr,
                   [done = std::move(done)](StatusOr<TokenizeOutcome> outcome) {
                     done(outcome.ok() ? std::move(outcome->token)
                                       : StatusOr<TokenInfo>(outcome.status()));
                   });
}

void Vault::TokenizeOneAsync(std::string_view merchant, const TokenizeItem& item,
                             std::optional<storage::AuditRecord> audit, TokenizeCommitHook hook,
                             std::function<void(StatusOr<TokenizeOutcome>)> done) {
  if (!IsValidMerchantId(merchant)) {
    done(InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id"));
    return;
  }
  StatusOr<PreparedItem> prepared = Prepare(merchant, item);
  if (!prepared.ok()) {
    done(prepared.status());  // nothing to write: the caller reports (and audits) the error
    return;
  }
  auto pending = std::make_shared<PendingWrite>();
  pending->merchant = std::string(merchant);
  pending->single = true;
  pending->items.push_back(std::move(prepared).value());
  pending->outcomes.push_back(TokenizeOutcome{StatusOr<TokenInfo>(InternalError("pending", "")), false});
  pending->attempts_left.push_back(kTokenInsertAttempts);
  pending->audit = std::move(audit);
  pending->hook = std::move(hook);
  pending->done = [done = std::move(done)](StatusOr<std::vector<TokenizeOutcome>> outcomes) {
    if (!outcomes.ok()) {
      done(outcomes.status());
      return;
    }
    TokenizeOutcome& only = outcomes->front();
    // A single tokenize that could not be placed fails as a whole (token_space_exhausted).
    if (!only.token.ok()) {
      done(only.token.status());
      return;
    }
    done(std::move(only));
  };
  pending->ticket = pending_.Enter();
  StartWrite(std::move(pending));
}

void Vault::TokenizeBatchAsync(std::string_view merchant, const std::vector<TokenizeItem>& items,
                               std::optional<storage::AuditRecord> audit, TokenizeCommitHook hook,
                               std::function<void(StatusOr<std::vector<TokenizeOutcome>>)> done) {
  if (!IsValidMerchantId(merchant)) {
    done(InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id"));
    return;
  }
  // The merchant must exist even when no item is valid (a batch of bad items answers 200 with
  // their errors only for a real merchant). Its fingerprint key is needed anyway, and cached.
  if (Status known = keyring_->FingerprintKey(merchant).status(); !known.ok()) {
    done(known);
    return;
  }
  auto pending = std::make_shared<PendingWrite>();
  pending->merchant = std::string(merchant);
  for (const TokenizeItem& item : items) {
    StatusOr<PreparedItem> prepared = Prepare(merchant, item);
    if (!prepared.ok() && prepared.status().code() != StatusCode::kInvalidArgument) {
      // Not the item's fault (the merchant is unknown, the HSM is down): the batch fails.
      done(prepared.status());
      return;
    }
    pending->outcomes.push_back(
        TokenizeOutcome{prepared.ok() ? StatusOr<TokenInfo>(InternalError("pending", ""))
                                      : StatusOr<TokenInfo>(prepared.status()),
                        false});
    pending->items.push_back(prepared.ok() ? std::optional(std::move(prepared).value())
                                           : std::nullopt);
    pending->attempts_left.push_back(kTokenInsertAttempts);
  }
  pending->audit = std::move(audit);
  pending->hook = std::move(hook);
  pending->done = std::move(done);
  pending->ticket = pending_.Enter();
  StartWrite(std::move(pending));
}

void Vault::StartWrite(std::shared_ptr<PendingWrite> pending) {
  for (size_t i = 0; i < pending->items.size(); ++i) {
    if (pending->items[i]) pending->written.push_back(i);
  }
  if (!pending->written.empty()) {
    // One lease and one charge for the whole write: its tokens are sealed under one DEK version.
    StatusOr<Keyring::EncryptLease> lease =
        keyring_->ForEncrypt(pending->merchant, pending->written.size());
    if (!lease.ok()) {
      FinishWrite(*pending, lease.status());
      return;
    }
    pending->lease = std::move(lease).value();
    for (size_t i : pending->written) {
      StatusOr<SealedToken> sealed = SealItem(pending->lease, pending->merchant, *pending->items[i]);
      if (!sealed.ok()) {
        FinishWrite(*pending, sealed.status());
        return;
      }
      pending->sealed.push_back(std::move(sealed).value());
    }
  }
  Submit(std::move(pending));
}

void Vault::FinishWrite(PendingWrite& pending, StatusOr<std::vector<TokenizeOutcome>> result) {
  pending.lease.no_rotation.Release();
  pending.finished = true;
  pending.done(std::move(result));
}

void Vault::Submit(std::shared_ptr<PendingWrite> pending) {
  storage::TokenWrite write;
  write.tokens.reserve(pending->sealed.size());
  for (const SealedToken& s : pending->sealed) write.tokens.push_back(s.record);
  if (pending->audit) {
    storage::AuditAttachment entry{*pending->audit, audit_.get()};
    if (entry.record.time_ms == 0) entry.record.time_ms = clock_.NowUnixMillis();
    write.audit = std::move(entry);
  }
  // Runs on the writer, inside the transaction: every item's outcome is known now.
  write.complete = [pending](const std::vector<std::optional<storage::TokenRecord>>& existing,
                                   storage::AuditRecord* audit,
                                   std::optional<storage::IdempotencyRecord>* idempotency) -> Status {
    for (size_t k = 0; k < pending->written.size(); ++k) {
      TokenizeOutcome& outcome = pending->outcomes[pending->written[k]];
      const PreparedItem& item = *pending->items[pending->written[k]];
      if (existing[k]) {
        outcome = TokenizeOutcome{InfoOf(*existing[k], item.type), true};
      } else {
        outcome = TokenizeOutcome{pending->sealed[k].info, false};
      }
    }
    if (audit != nullptr) {
      if (pending->single) {  // (a single tokenize is only written once its token is placed)
        audit->resource = pending->outcomes[0].token->token;
      } else {
        audit->resources.clear();
        for (const TokenizeOutcome& o : pending->outcomes) {
          audit->resources.push_back(o.token.ok() ? o.token->token
                                                  : "error:" + o.token.status().reason());
        }
      }
    }
    if (pending->hook) return pending->hook(pending->outcomes, audit, idempotency);
    return Status::Ok();
  };
  store_->WriteTokensAsync(std::move(write),
                           [this, pending](storage::TokenWriteResult result) mutable {
                             try {
                               Written(pending, std::move(result));
                             } catch (...) {
                               // Out of memory while redrawing: the request must still be
                               // answered (the completion thread swallows exceptions).
                               if (!pending->finished) {
                                 FinishWrite(*pending, InternalError("vault_error",
                                                                     "the tokenize failed"));
                               }
                             }
                           });
}

// Runs on the store's completion thread. Tokens that were taken are drawn again under the lease
// still held, rather than a new one: asking for a new shared hold here could wait behind a
// rotation that waits for the holds only this thread releases.
void Vault::Written(std::shared_ptr<PendingWrite> pending, storage::TokenWriteResult result) {
  if (result.status.reason() == storage::kReasonTokenTaken && !result.taken.empty()) {
    std::vector<size_t> keep;  // indexes into written/sealed that stay in the write
    std::vector<bool> taken(pending->written.size(), false);
    for (size_t k : result.taken) taken[k] = true;
    for (size_t k = 0; k < pending->written.size(); ++k) {
      const size_t i = pending->written[k];
      if (!taken[k]) {
        keep.push_back(k);
        continue;
      }
      if (--pending->attempts_left[i] <= 0) {
        // The value's bucket of format-preserving tokens is (nearly) full.
        if (pending->single) {
          // A single tokenize fails as a whole, with nothing written (its caller audits it).
          FinishWrite(*pending, TokenSpaceExhausted());
          return;
        }
        pending->outcomes[i].token = TokenSpaceExhausted();
        continue;
      }
      // Another encryption under the lease's DEK, counted like any other (this may wait for
      // the store's writer, never for a completion).
      Status charged = keyring_->ChargeEncryption(pending->merchant, pending->lease);
      StatusOr<SealedToken> resealed =
          charged.ok() ? SealItem(pending->lease, pending->merchant, *pending->items[i])
                       : StatusOr<SealedToken>(charged);
      if (!resealed.ok()) {
        FinishWrite(*pending, resealed.status());
        return;
      }
      pending->sealed[k] = std::move(resealed).value();
      keep.push_back(k);
    }
    std::vector<size_t> written;
    std::vector<SealedToken> sealed;
    for (size_t k : keep) {
      written.push_back(pending->written[k]);
      sealed.push_back(std::move(pending->sealed[k]));
    }
    pending->written = std::move(written);
    pending->sealed = std::move(sealed);
    Submit(std::move(pending));
    return;
  }
  if (!result.status.ok()) {
    FinishWrite(*pending, std::move(result.status));
    return;
  }
  FinishWrite(*pending, std::move(pending->outcomes));
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
  if (found->merchant_shredded) {
    return NotFoundError(kReasonTokenGone, "the token's merchant was crypto-shredded");
  }
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
  return InfoOf(record, *type);
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
  StatusOr<std::shared_ptr<const AesGcm256>> aead =
      keyring_->ForDecrypt(merchant, record.dek_version);
  if (!aead.ok()) {
    // The re-encryption job may have moved this row to the current DEK, and destroyed the
    // version it was read under, between the read and now: the row read again says so.
    StatusOr<storage::TokenRecord> again = FindOwnToken(merchant, token);
    if (again.ok() && again->dek_version != record.dek_version) {
      record = std::move(again).value();
      aead = keyring_->ForDecrypt(merchant, record.dek_version);
    }
  }
  const std::optional<ValueType> type = ParseValueType(record.type);
  if (!type || record.record_version != envelope::kValueFormatV1) {
    return DataLossError(kReasonIntegrity, "the stored token has an unknown type or format");
  }
  if (!aead.ok()) {
    // The row was read just before its merchant was shredded: its keys are gone, and so is it.
    StatusOr<storage::MerchantRecord> m = store_->GetMerchant(merchant);
    if (m.ok() && m->state == storage::MerchantState::kShredded) {
      return NotFoundError(kReasonTokenGone, "the token's merchant was crypto-shredded");
    }
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

StatusOr<uint32_t> Vault::RotateDataKey(std::string_view merchant,
                                        const storage::AuditRecord* audit) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  return keyring_->Rotate(merchant, audit);
}

StatusOr<Keyring::KekRotated> Vault::RotateKek(std::string_view merchant,
                                               const storage::AuditRecord* audit) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  return keyring_->RotateKek(merchant, audit);
}

StatusOr<ShredReceipt> Vault::ShredMerchant(std::string_view merchant,
                                            const storage::AuditRecord& audit) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  TV_ASSIGN_OR_RETURN(Keyring::Shredded shredded, keyring_->Shred(merchant, audit));
  return ShredReceipt{std::string(merchant), std::move(shredded.destroyed), shredded.audit.time_ms,
                      shredded.audit.principal, shredded.audit.seq};
}

StatusOr<std::vector<storage::DataKeyUsage>> Vault::DataKeys(std::string_view merchant) {
  if (!IsValidMerchantId(merchant)) {
    return InvalidArgumentError(kReasonInvalidMerchant, "invalid merchant id");
  }
  TV_ASSIGN_OR_RETURN(storage::MerchantRecord m, store_->GetMerchant(merchant));
  if (m.state != storage::MerchantState::kActive) {
    return NotFoundError("merchant_not_found", "no such merchant");
  }
  return store_->ListDataKeys(merchant);
}

Status Vault::CheckHsm() { return hsm_->Ping(); }

StatusOr<int64_t> Vault::CheckMerchantKeys(std::string_view merchant) {
  TV_ASSIGN_OR_RETURN(std::vector<storage::DataKeyRecord> keys, store_->GetDataKeys(merchant));
  int64_t unwrapped = 0;
  for (const storage::DataKeyRecord& k : keys) {
    if (k.state == storage::DataKeyState::kDestroyed) continue;
    TV_RETURN_IF_ERROR(keyring_->ForDecrypt(merchant, k.version).status());
    ++unwrapped;
  }
  TV_RETURN_IF_ERROR(keyring_->FingerprintKey(merchant).status());
  return unwrapped;
}

}  // namespace tokenvault
