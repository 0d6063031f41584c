// Vault: the facade the service calls. Creates merchants, turns values into tokens and back.
//
// Composition: a Keyring (KEKs in the HSM, wrapped DEKs in the store, a cache of unwrapped ones)
// and a Store for sealed values. Every value is normalised, then sealed with AES-256-GCM under the
// merchant's current DEK, with AAD binding format, merchant, token, type and DEK version
// (docs/formats.md). One error type for everything: Status, with the reasons below.
#ifndef TOKENVAULT_VAULT_VAULT_H_
#define TOKENVAULT_VAULT_VAULT_H_

#include <chrono>
#include <functional>
#include <vector>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "hsm/hsm.h"
#include "storage/store.h"
#include "vault/base/clock.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"
#include "vault/audit_checkpointer.h"
#include "vault/audit_log.h"
#include "vault/keyring.h"
#include "vault/token_format.h"
#include "vault/value_type.h"

namespace tokenvault {

struct VaultOptions {
  KeyringOptions keys;
  // How often expired tokens lose their sealed value (SweepExpired). 0: never in the background.
  std::chrono::milliseconds expiry_sweep_interval = std::chrono::seconds(30);
  // The re-encryption job (RunReencryption): how often it looks for retired DEK versions, how
  // many tokens it moves per transaction, and how long it pauses between two transactions so
  // that live traffic keeps the writer. interval 0: never in the background.
  std::chrono::milliseconds reencrypt_interval = std::chrono::seconds(10);
  size_t reencrypt_batch = 100;
  std::chrono::milliseconds reencrypt_pause = std::chrono::milliseconds(20);
  // How often the HSM is pinged in the background: a lost HSM is noticed (and reconnected) even
  // when every key in use is cached, so that the fail-closed policy applies at once. 0: never.
  std::chrono::milliseconds hsm_probe_interval = std::chrono::seconds(1);
  // Signed checkpoints of the audit trail (vault/audit_checkpointer.h).
  AuditCheckpointOptions audit_checkpoints;
};

// What a tokenize may carry besides the value (API.md, Tokens).
struct TokenAttributes {
  // A JSON object of string pairs, stored and returned as given: the service validates it; the
  // vault treats it as opaque and never as a value.
  std::optional<std::string> metadata_json;
  // After this many seconds the token answers gone, and the sweeper removes its sealed value.
  std::optional<int64_t> ttl_seconds;
};

// One value to tokenize: a tokenize request, or one item of a batch.
struct TokenizeItem {
  ByteView value;  // read (normalised into a wiped buffer) before the call taking it returns
  ValueType type = ValueType::kGeneric;
  TokenFormatOptions format;
  // The merchant's live token for the same normalised value, type and format answers, if there
  // is one; otherwise a new token is made and kept for the next such request (API.md, Tokens).
  bool deterministic = false;
  TokenAttributes attributes;
};

struct MerchantInfo {
  std::string id;
  int64_t created_at_ms = 0;
  uint32_t kek_version = 0;
  uint32_t dek_version = 0;
};

struct TokenInfo {
  std::string token;
  std::string merchant;
  ValueType type = ValueType::kGeneric;
  std::string format = "random";
  uint32_t dek_version = 0;
  int64_t created_at_ms = 0;
  std::optional<int64_t> expires_at_ms;
  std::optional<std::string> last4;  // card and ssn
  // fp_ + base62 HMAC-SHA256 of the normalised value under the merchant's fingerprint key; unset
  // for tokens made before fingerprints existed.
  std::optional<std::string> fingerprint;
  std::optional<std::string> metadata_json;  // as given at tokenize, validated by the service
};

struct TokenizeOutcome {
  StatusOr<TokenInfo> token;
  bool existing = false;  // a deterministic tokenize answered with a token made before
};

// Runs inside the transaction that commits a tokenize or a batch, once every item's outcome is
// known (in item order): completes the audit record (status, reason: the vault has already named
// the tokens in it) and may set an idempotency record to commit with it. It runs on the store's
// serial write path: quick, no waiting. An error fails the whole write.
using TokenizeCommitHook = std::function<Status(const std::vector<TokenizeOutcome>& outcomes,
                                                storage::AuditRecord* audit,
                                                std::optional<storage::IdempotencyRecord>* idempotency)>;

// What crypto-shredding destroyed, as answered and as recorded in the audit trail (API.md:
// DELETE /v1/merchants/{m}).
struct ShredReceipt {
  std::string merchant;
  std::vector<std::string> destroyed;  // "kek:<label>", "dek:<m>/v<n>", "fingerprint-key:<m>"
  int64_t time_ms = 0;
  std::string principal;
  int64_t audit_seq = 0;
};

struct RevealedValue {
  ValueType type = ValueType::kGeneric;
  SecretBytes value;  // normalised
};

// Status reasons the vault itself produces (others pass through from hsm/ and storage/).
inline constexpr char kReasonInvalidMerchant[] = "invalid_merchant";
inline constexpr char kReasonInvalidToken[] = "invalid_token";
inline constexpr char kReasonTokenNotFound[] = "token_not_found";
inline constexpr char kReasonTokenGone[] = "token_gone";
inline constexpr char kReasonIntegrity[] = "integrity_failure";

// Thread-safe: every method may be called from any thread.
class Vault {
 public:
  // 'hsm' and 'store' must outlive the vault when passed as shared_ptr owners are elsewhere; the
  // vault keeps them alive itself.
  static StatusOr<std::unique_ptr<Vault>> Create(std::shared_ptr<hsm::Hsm> hsm,
                                                 std::shared_ptr<storage::Store> store,
                                                 const VaultOptions& options,
                                                 const Clock& clock = Clock::Real());
  ~Vault();

  // kInvalidArgument (invalid_merchant) for a bad id, kAlreadyExists (merchant_exists).
  // With 'audit', that record is committed in the same transaction that makes the merchant active.
  StatusOr<MerchantInfo> CreateMerchant(std::string_view merchant,
                                        const storage::AuditRecord* audit = nullptr);

  // Normalises and validates 'value' for 'type' (kInvalidArgument on bad input), seals it and
  // stores it under a new random token. kNotFound (merchant_not_found) for an unknown merchant.
  // Returns only once the sealed value is durable.
  // With 'audit', that record (its resource set to the new token) is appended in the same
  // transaction as the token: the token exists if and only if its audit record does.
  // 'format' chooses the token's shape (token_format.h); kInvalidArgument (invalid_format) if it
  // does not apply to the type, kFailedPrecondition (token_space_exhausted) if no free
  // format-preserving token was found for the value's kept digits.
  StatusOr<TokenInfo> Tokenize(std::string_view merchant, ByteView value, ValueType type,
                               const storage::AuditRecord* audit = nullptr,
                               const TokenFormatOptions& format = {},
                               const TokenAttributes& attributes = {});

  // Tokenize for one item, deterministic ones included. 'existing' says a deterministic token
  // made before answered (nothing new was stored).
  StatusOr<TokenizeOutcome> Tokenize(std::string_view merchant, const TokenizeItem& item,
                                     const storage::AuditRecord* audit = nullptr);

  // One item, without waiting for the commit: as TokenizeAsync, plus the commit hook, which runs
  // only if the item is valid (an invalid one is reported to 'done' and nothing is written).
  void TokenizeOneAsync(std::string_view merchant, const TokenizeItem& item,
                        std::optional<storage::AuditRecord> audit, TokenizeCommitHook hook,
                        std::function<void(StatusOr<TokenizeOutcome>)> done);

  // Any number of items as one write (the service allows 1000): each item is validated on its
  // own, and an invalid one gets its error in its outcome without failing the others. The valid
  // items' tokens, the audit record (its 'resources' set to one entry per item: the token, or
  // "error:<reason>") and the hook's idempotency record commit in one transaction, even when no
  // item is valid. 'done' gets the outcomes in item order, or the status of a write that failed
  // as a whole (nothing was written): an unknown merchant, the HSM or storage down.
  void TokenizeBatchAsync(std::string_view merchant, const std::vector<TokenizeItem>& items,
                          std::optional<storage::AuditRecord> audit, TokenizeCommitHook hook,
                          std::function<void(StatusOr<std::vector<TokenizeOutcome>>)> done);

  // Tokenize without waiting for the commit: 'done' gets what Tokenize would have returned,
  // once the token (and its audit record) is durable or failed - on the calling thread for
  // errors found before the write, else on the store's completion thread. 'done' must be quick
  // and must not wait for another asynchronous write. The vault waits for pending tokenizes
  // before it is destroyed.
  void TokenizeAsync(std::string_view merchant, ByteView value, ValueType type,
                     const TokenFormatOptions& format, TokenAttributes attributes,
                     std::optional<storage::AuditRecord> audit,
                     std::function<void(StatusOr<TokenInfo>)> done);

  // The value behind 'token'. kInvalidArgument (invalid_token) when the token is malformed;
  // kNotFound (token_not_found) when the token does not exist *or belongs to another merchant* -
  // the two are indistinguishable; kNotFound (token_gone) for a deleted token; kDataLoss
  // (integrity_failure) when the stored row or its key was altered: never a wrong value.
  StatusOr<RevealedValue> Detokenize(std::string_view merchant, std::string_view token);

  // The token's metadata, never its value. kNotFound (token_not_found) as Detokenize, kNotFound
  // (token_gone) for a deleted token.
  StatusOr<TokenInfo> GetToken(std::string_view merchant, std::string_view token);

  // Deletes the token's sealed value at once; from then on it answers token_gone. With 'audit',
  // that record is committed in the same transaction as the deletion.
  Status DeleteToken(std::string_view merchant, std::string_view token,
                     const storage::AuditRecord* audit = nullptr);

  // Removes the sealed value of up to 'limit' tokens whose time to live has passed (their rows
  // stay, answering gone). Returns how many. Runs by itself every expiry_sweep_interval, with
  // SweepIdempotency.
  StatusOr<size_t> SweepExpired(size_t limit = 1000);
  // Deletes up to 'limit' idempotency records past their 24 hours. Returns how many.
  StatusOr<size_t> SweepIdempotency(size_t limit = 1000);

  // Keyed hashes for idempotency records (storage::IdempotencyRecord): HMAC-SHA256 under a key
  // derived from the HSM-wrapped audit key, so that neither an Idempotency-Key nor a request
  // body (which holds a value) is ever stored, even hashed in a way one could test guesses on.
  const HmacSha256& idempotency_mac() const { return *idempotency_mac_; }

  // New DEK version for new writes; older tokens still decrypt. Returns the new version. With
  // 'audit', that record (completed with the key names) commits with the new version.
  StatusOr<uint32_t> RotateDataKey(std::string_view merchant,
                                   const storage::AuditRecord* audit = nullptr);

  // Re-encryption: moves up to 'limit' live tokens of 'merchant' from retired DEK versions to
  // the current one, in one transaction (decrypted and sealed again in memory, wiped after).
  // Returns how many moved: 0 when none is left. Resumable by construction: it looks for what is
  // left each time.
  StatusOr<size_t> ReencryptBatch(std::string_view merchant, size_t limit);
  // Destroys every retired DEK version of 'merchant' that no live token uses any more (its
  // wrapped key erased, an audit record "version N destroyed", principal system). Returns how many.
  StatusOr<size_t> DestroyUnusedDataKeys(std::string_view merchant);
  // One pass of the job: every merchant with retired versions, re-encrypted batch by batch
  // (pausing reencrypt_pause between batches), then its unused versions destroyed. Runs by itself
  // every reencrypt_interval. Returns how many tokens moved.
  StatusOr<size_t> RunReencryption();

  // KEK rotation (Keyring::RotateKek): a new KEK in the HSM, every key rewrapped, the old KEK
  // destroyed; with 'audit' committed with the switch. Returns the new KEK version and how many
  // keys were rewrapped.
  StatusOr<Keyring::KekRotated> RotateKek(std::string_view merchant,
                                          const storage::AuditRecord* audit = nullptr);

  // Crypto-shredding (Keyring::Shred): the merchant's KEKs destroyed in the HSM, its wrapped
  // keys deleted, 'audit' committed with the deletion and returned as the receipt. From then on
  // its tokens answer token_gone and their ciphertext is swept. kNotFound (merchant_not_found),
  // kNotFound (merchant_gone) when shredded already; an interrupted shredding is resumed.
  StatusOr<ShredReceipt> ShredMerchant(std::string_view merchant, const storage::AuditRecord& audit);

  // The merchant's DEK versions with their state and how many live tokens each encrypts.
  // kNotFound (merchant_not_found) for an unknown merchant.
  StatusOr<std::vector<storage::DataKeyUsage>> DataKeys(std::string_view merchant);

  // OK when the HSM answers.
  Status CheckHsm();

  // Unwraps, through the HSM, every DEK version of 'merchant' that is not destroyed, and its
  // fingerprint key: proves that the wrapped keys in the store and the KEKs in the HSM belong
  // together (backup verification). Returns how many DEK versions were unwrapped.
  StatusOr<int64_t> CheckMerchantKeys(std::string_view merchant);

  const Keyring& keyring() const { return *keyring_; }
  // The audit trail (its key is unwrapped, or created, when the vault is created).
  AuditLog& audit() { return *audit_; }
  // Its signed checkpoints, exports, and their public key.
  AuditCheckpointer& audit_checkpoints() { return *checkpoints_; }
  // The store, for the service's own records (principals). Not for values.
  storage::Store& store() { return *store_; }

 private:
  struct SealedToken;
  struct PreparedItem;
  struct PendingWrite;
  // fp_...: the keyed fingerprint of a normalised value in 'merchant'.
  StatusOr<std::string> Fingerprint(std::string_view merchant, const SecretBytes& normalized);
  // Normalises and checks one item and computes its fingerprint.
  StatusOr<PreparedItem> Prepare(std::string_view merchant, const TokenizeItem& item);
  // Seals 'item' under a new token with the lease's DEK (an encryption the caller has charged).
  StatusOr<SealedToken> SealItem(const Keyring::EncryptLease& lease, std::string_view merchant,
                                 const PreparedItem& item);
  // Leases a DEK, seals every prepared item, and writes them.
  void StartWrite(std::shared_ptr<PendingWrite> pending);
  void Submit(std::shared_ptr<PendingWrite> pending);
  void Written(std::shared_ptr<PendingWrite> pending, storage::TokenWriteResult result);
  // Releases the write's DEK lease and calls its 'done', once.
  static void FinishWrite(PendingWrite& pending, StatusOr<std::vector<TokenizeOutcome>> result);
  static TokenInfo InfoOf(const storage::TokenRecord& record, ValueType type);

  // The live, well-formed token row of 'merchant' (errors as GetToken).
  StatusOr<storage::TokenRecord> FindOwnToken(std::string_view merchant, std::string_view token);

  Vault(std::shared_ptr<hsm::Hsm> hsm, std::shared_ptr<storage::Store> store,
        const VaultOptions& options, const Clock& clock, std::unique_ptr<AuditLog> audit,
        std::unique_ptr<AuditCheckpointer> checkpoints, std::unique_ptr<HmacSha256> idempotency_mac);

  std::shared_ptr<hsm::Hsm> hsm_;
  std::shared_ptr<storage::Store> store_;
  const Clock& clock_;
  std::unique_ptr<Keyring> keyring_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<AuditCheckpointer> checkpoints_;  // destroyed before the log it checkpoints
  std::unique_ptr<HmacSha256> idempotency_mac_;
  InFlight pending_;  // asynchronous tokenizes not yet completed

  void SweepLoop(std::chrono::milliseconds interval);
  void ReencryptLoop(std::chrono::milliseconds interval);
  void ProbeLoop(std::chrono::milliseconds interval);
  // Waits 'pause' or until the vault stops; true if it is stopping.
  bool PauseOrStop(std::chrono::milliseconds pause);
  const VaultOptions options_;
  // Runs 'sweep' (batches of 'batch') until a batch comes back short, an error (logged), or
  // the vault stops.
  void SweepInBatches(const char* what, const char* done_what,
                      std::chrono::milliseconds interval,
                      const std::function<StatusOr<size_t>()>& sweep, size_t batch);
  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool stopping_ = false;  // GUARDED_BY(sweep_mu_)
  std::thread sweeper_;    // started once everything above exists
  std::thread reencrypter_;
  std::thread prober_;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_VAULT_H_
