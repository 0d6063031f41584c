// What the vault stores, and the interface to the store. Records hold ciphertext, wrapped keys and
// metadata only: there is no field a plaintext value or an unwrapped key could go in.
#ifndef TOKENVAULT_STORAGE_STORE_H_
#define TOKENVAULT_STORAGE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vault/base/bytes.h"
#include "vault/base/status.h"

namespace tokenvault::storage {

enum class MerchantState {
  // Creation started: the row is written before the KEK is made in the HSM, so that an
  // interrupted creation is recognisable as this database's own (Keyring::CreateMerchant).
  kCreating,
  kActive,
  // Crypto-shredded (migration 005): its KEKs are destroyed or being destroyed; it and its
  // tokens are gone for good.
  kShredded,
};

struct MerchantRecord {
  std::string id;
  int64_t created_at_ms = 0;
  uint32_t kek_version = 0;
  uint32_t current_dek_version = 0;
  MerchantState state = MerchantState::kActive;
  // Random, set when creation starts; also stored with the merchant's first KEK in the HSM, so
  // that a KEK found later can be recognised as the one this creation made.
  Bytes creation_id;
  std::optional<int64_t> shredded_at_ms;  // set once shredding starts (state kShredded)
};

enum class DataKeyState {
  kActive,     // the version new values are encrypted under (one per merchant)
  kRetired,    // decrypt only: never used to encrypt again
  kDestroyed,  // no live token left under it; its wrapped key erased (migration 007)
};

// One DEK version of a merchant, wrapped by the merchant's KEK (docs/formats.md).
struct DataKeyRecord {
  std::string merchant;
  uint32_t version = 0;
  uint32_t kek_version = 0;
  Bytes wrapped;
  DataKeyState state = DataKeyState::kActive;
  int64_t created_at_ms = 0;
  // Encryptions durably reserved under this key: an upper bound on those performed.
  uint64_t encryptions_reserved = 0;
};

// A DEK version as an operator sees it: never the key, wrapped or not.
struct DataKeyUsage {
  uint32_t version = 0;
  uint32_t kek_version = 0;
  DataKeyState state = DataKeyState::kActive;
  int64_t created_at_ms = 0;
  uint64_t encryptions_reserved = 0;
  uint64_t live_tokens = 0;  // tokens whose sealed value this version encrypts
};

// One token and its sealed value. The AAD is not stored: it is rebuilt from these fields, which is
// what binds the ciphertext to its row.
struct TokenRecord {
  std::string token;
  std::string merchant;
  std::string type;    // "card", "ssn", "generic"
  std::string format;  // "random"
  uint32_t record_version = 0;  // the ciphertext format (docs/formats.md)
  uint32_t dek_version = 0;
  Bytes nonce;       // 12 bytes
  Bytes ciphertext;  // same length as the value
  Bytes tag;         // 16 bytes
  std::optional<std::string> last4;  // card and ssn only
  std::optional<std::string> fingerprint;  // fp_...: keyed HMAC of the value (migration 003)
  std::optional<std::string> metadata;     // a JSON object of string pairs, never a value
  // Deterministic tokens only: "<type>/<format>/<fingerprint>", under which the same value finds
  // this token again while it is live (migration 004). Cleared when the value is removed.
  std::optional<std::string> dedup_key;
  int64_t created_at_ms = 0;
  std::optional<int64_t> expires_at_ms;
  std::optional<int64_t> deleted_at_ms;
  // Read with the row, not stored in it: the token's merchant was crypto-shredded.
  bool merchant_shredded = false;
};

// The first answer to a request that carried an Idempotency-Key (API.md, Idempotency). Neither
// the key nor the request is stored: only keyed hashes of them.
struct IdempotencyRecord {
  Bytes key_hash;      // HMAC of (principal, Idempotency-Key), 32 bytes
  Bytes request_hash;  // HMAC of (route, merchant, body), 32 bytes
  int status = 0;
  std::string body;    // replayed byte for byte: tokens and fingerprints, never a value
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;
};

// A principal as stored: never its API key, only the key id and a hash of the secret.
struct PrincipalRecord {
  std::string name;
  std::vector<std::string> roles;
  bool all_merchants = false;
  std::vector<std::string> merchants;
  std::string key_id;
  Bytes key_hash;
  int64_t created_at_ms = 0;
  std::optional<int64_t> deleted_at_ms;
};

// One audit record (API.md, "Audit record"). Never a value: tokens and key ids only.
struct AuditRecord {
  int64_t seq = 0;  // assigned by the store: 1, 2, 3, ... without gaps
  int64_t time_ms = 0;
  std::string request_id;
  std::string principal;  // empty when the caller was not authenticated
  std::string auth;       // "api_key", "mtls" or "none"
  std::string source_ip;
  std::string action;
  std::string merchant;  // empty when the action concerns no merchant
  std::string resource;
  std::vector<std::string> resources;  // multi-token requests
  std::string outcome;                 // "allowed", "denied", "error"
  int status = 0;
  std::string reason;
  Bytes prev_mac;  // the previous record's mac (32 zero bytes for the first)
  Bytes mac;
};

// Where the chain ends, with a MAC over (seq, mac) so that truncating the log and rewinding the
// head to an earlier record needs the audit key.
struct AuditHead {
  int64_t seq = 0;
  Bytes mac;
  Bytes head_mac;
};

// A signed checkpoint of the audit chain (vault/audit_checkpoint.h defines what is signed).
struct AuditCheckpoint {
  int64_t first_seq = 0, last_seq = 0;
  int64_t time_ms = 0;
  Bytes chain_mac;  // the mac of record last_seq
  Bytes prev_hash;  // hash of the previous checkpoint's signed message (zeros for the first)
  Bytes digests;    // SHA-256 of each covered record's canonical encoding, in seq order
  std::string key_id;
  Bytes signature;
};

// Values revealed by one principal on one merchant in one 10-second bucket: the persisted
// counters of detokenize budgets (policy::RevealBudget).
struct RevealCharge {
  std::string principal;
  std::string merchant;
  bool plain = true;
  int64_t bucket_ms = 0;  // start of the bucket, a multiple of kRevealBucketMs
  int64_t count = 0;
};
inline constexpr int64_t kRevealBucketMs = 10'000;

// Computes the MACs of the audit chain; implemented by the vault, which holds the audit key.
class AuditMac {
 public:
  virtual ~AuditMac() = default;
  // MAC over record.prev_mac and the record's canonical encoding (seq included).
  virtual StatusOr<Bytes> RecordMac(const AuditRecord& record) const = 0;
  virtual StatusOr<Bytes> HeadMac(int64_t seq, ByteView mac) const = 0;
};

// An audit record to append in the same transaction as a change: the change is durable if and
// only if its record is. On success 'record' holds the record as written (seq, MACs).
struct AuditAttachment {
  AuditRecord record;
  const AuditMac* mac = nullptr;
};

// Tokens written as one operation (a tokenize, or a batch): the tokens, the audit record and the
// idempotency record commit together or not at all.
struct TokenWrite {
  // In order. A token with a dedup_key is deterministic: if the merchant has a live token under
  // that key, that token answers for it and nothing is inserted (an expired one loses its value
  // and its key, and the new token takes its place).
  std::vector<TokenRecord> tokens;
  std::optional<AuditAttachment> audit;
  // Run inside the transaction once every token is placed, with existing[i] set to the row that
  // answered for tokens[i] when one did: completes the audit record (the request's outcome is
  // only known now) and may set an idempotency record to commit too. It runs on the store's
  // serial write path: it must be quick and must not wait for anything. An error fails the write.
  std::function<Status(const std::vector<std::optional<TokenRecord>>& existing,
                       AuditRecord* audit, std::optional<IdempotencyRecord>* idempotency)>
      complete;
};

struct TokenWriteResult {
  // OK once durable. kAlreadyExists (token_taken): the merchant already has the tokens listed
  // in 'taken' (indexes into TokenWrite::tokens); nothing at all was written.
  Status status;
  std::vector<size_t> taken;
  std::vector<std::optional<TokenRecord>> existing;  // as passed to TokenWrite::complete
};

inline constexpr char kReasonTokenTaken[] = "token_taken";

struct AuditQuery {
  std::optional<int64_t> since_ms, until_ms;  // inclusive, exclusive
  std::string principal, merchant, action, outcome;  // empty: any
  int64_t after_seq = 0;                              // cursor
  size_t limit = 100;
  // Scope of the reader: all records, or only those of these merchants (records without a
  // merchant are visible to "all" only).
  bool all_merchants = true;
  std::vector<std::string> merchants;
};

// Thread-safe. Every write is durable (fsync'd) when it returns OK; concurrent writes share
// transactions (group commit), so a write may wait for others' to commit with it.
// Errors: kUnavailable (storage_unavailable) when the disk or database cannot be used - nothing
// was written; kDataLoss (storage_corrupt) when the database is damaged.
class Store {
 public:
  virtual ~Store() = default;

  // Records the intent to create 'merchant' (state kCreating). kAlreadyExists if a row exists.
  virtual Status BeginMerchant(const MerchantRecord& merchant) = 0;
  // Stores the first wrapped DEK and makes the merchant kActive, in one transaction.
  // kFailedPrecondition (merchant_not_creating) unless the merchant is kCreating.
  virtual Status CompleteMerchant(std::string_view id, const DataKeyRecord& first_dek,
                                  AuditAttachment* audit = nullptr) = 0;
  // Deletes a merchant that is still kCreating (and nothing else). kFailedPrecondition otherwise.
  virtual Status AbandonMerchant(std::string_view id) = 0;
  // The merchant, in any state. kNotFound if there is no such merchant.
  virtual StatusOr<MerchantRecord> GetMerchant(std::string_view id) = 0;

  // KEK rotation, step 1: records the intent to move the merchant from KEK 'from_version' to
  // from_version + 1, with the tag the new KEK carries in the HSM. If an intent for the same
  // step exists (a rotation resumed), it stays and its tag is returned; 'tag' otherwise.
  // kFailedPrecondition (kek_version_conflict) if the merchant's KEK is not 'from_version'.
  virtual StatusOr<Bytes> BeginKekRotation(std::string_view merchant, uint32_t from_version,
                                           ByteView tag, int64_t at_ms) = 0;
  // Step 3 (the new KEK made, every key rewrapped under it): stores the rewrapped DEKs and
  // fingerprint key, makes the new KEK the merchant's, drops the intent and appends 'audit', in
  // one transaction. kFailedPrecondition (kek_version_conflict) unless the intent is there and
  // the merchant is still at to_version - 1.
  virtual Status CompleteKekRotation(std::string_view merchant, uint32_t to_version,
                                     const std::vector<DataKeyRecord>& deks,
                                     const std::optional<DataKeyRecord>& fingerprint_key,
                                     AuditAttachment* audit = nullptr) = 0;
  // Re-encryption: up to 'limit' live tokens (a sealed value stored) of 'merchant' sealed under
  // a DEK version below 'current_version', oldest version first.
  virtual StatusOr<std::vector<TokenRecord>> FindTokensToReencrypt(std::string_view merchant,
                                                                  uint32_t current_version,
                                                                  size_t limit) = 0;
  // Replaces the sealed values of 'tokens' (each: merchant, token, dek_version, nonce,
  // ciphertext, tag as newly sealed) in one transaction. A token whose row changed meanwhile
  // (deleted, swept, or no longer under 'from_versions[i]') is skipped. Returns how many moved.
  virtual StatusOr<size_t> ReplaceSealedValues(const std::vector<TokenRecord>& tokens,
                                               const std::vector<uint32_t>& from_versions) = 0;
  // Active merchants with a retired DEK version not destroyed yet: tokens to move off it, or
  // the version itself to destroy.
  virtual StatusOr<std::vector<std::string>> MerchantsToReencrypt() = 0;
  // Every active merchant that is not shredded, by id (backup verification).
  virtual StatusOr<std::vector<std::string>> ActiveMerchants() = 0;
  // Destroys a retired DEK version that no live token uses: erases its wrapped key and sets
  // destroyed_at, with 'audit', in one transaction. kFailedPrecondition (dek_in_use) if a live
  // token still uses it, or it is not retired.
  virtual Status DestroyDataKey(std::string_view merchant, uint32_t version, int64_t at_ms,
                                AuditAttachment* audit = nullptr) = 0;
  // Every wrapped DEK version of the merchant (for rewrapping).
  virtual StatusOr<std::vector<DataKeyRecord>> GetDataKeys(std::string_view merchant) = 0;

  // Crypto-shredding, step 1: marks the merchant shredded (durably, before any key is
  // destroyed). OK if it is already marked (a shredding resumed); kNotFound if there is no such
  // active or shredded merchant.
  virtual Status MarkShredded(std::string_view merchant, int64_t at_ms) = 0;
  // Step 3 (after its KEKs are destroyed in the HSM): deletes the merchant's wrapped DEKs and
  // fingerprint key, and appends 'audit', in one transaction. kFailedPrecondition unless marked.
  virtual Status CompleteShred(std::string_view merchant, AuditAttachment* audit = nullptr) = 0;
  // Removes the sealed values of up to 'limit' tokens of shredded merchants; how many.
  virtual StatusOr<size_t> SweepShredded(size_t limit) = 0;
  // kNotFound if the merchant has no such version.
  virtual StatusOr<DataKeyRecord> GetDataKey(std::string_view merchant, uint32_t version) = 0;
  // Adds 'dek' (version = current + 1) as the merchant's current DEK and retires the previous
  // current version, in one transaction. kFailedPrecondition (dek_version_conflict) if the
  // merchant's current version is not dek.version - 1.
  virtual Status AddDataKeyVersion(const DataKeyRecord& dek, AuditAttachment* audit = nullptr) = 0;
  // Every DEK version of the merchant, oldest first, with how many live tokens (a sealed value
  // still stored) each one encrypts. kNotFound if the merchant has no keys.
  virtual StatusOr<std::vector<DataKeyUsage>> ListDataKeys(std::string_view merchant) = 0;
  // Raises the reserved-encryptions counter of a DEK version to 'reserved' (never lowers it).
  virtual Status ReserveEncryptions(std::string_view merchant, uint32_t version,
                                    uint64_t reserved) = 0;

  // kAlreadyExists if the merchant has a token with that string (tokens are unique per merchant).
  // Every change below takes an optional AuditAttachment, appended in the same transaction.
  virtual Status InsertToken(const TokenRecord& token, AuditAttachment* audit = nullptr) = 0;
  // InsertToken without waiting: 'done' is called exactly once with what InsertToken would have
  // returned, once the transaction is durable or failed. It may run on another thread (the
  // SQLite store's completion thread) or, for stores without a write pipeline, before this
  // returns. 'done' must be quick and must not wait for another asynchronous write.
  virtual void InsertTokenAsync(TokenRecord token, std::optional<AuditAttachment> audit,
                                std::function<void(Status)> done) {
    done(InsertToken(token, audit ? &*audit : nullptr));
  }
  // Writes 'write' as one operation; 'done' as for InsertTokenAsync.
  virtual void WriteTokensAsync(TokenWrite write, std::function<void(TokenWriteResult)> done) = 0;
  // The unexpired idempotency record under 'key_hash' (as of 'now_ms'), or kNotFound.
  virtual StatusOr<IdempotencyRecord> FindIdempotency(ByteView key_hash, int64_t now_ms) = 0;
  // Deletes up to 'limit' idempotency records that expired at or before 'now_ms'; how many.
  virtual StatusOr<size_t> SweepIdempotency(int64_t now_ms, size_t limit) = 0;
  // kNotFound if the merchant has no such token (another merchant's token is not found).
  virtual StatusOr<TokenRecord> FindToken(std::string_view merchant, std::string_view token) = 0;
  // Removes the sealed value of a live token of 'merchant' and marks it deleted. kNotFound if no
  // live token of that merchant has that name.
  virtual Status DeleteToken(std::string_view merchant, std::string_view token,
                             int64_t deleted_at_ms, AuditAttachment* audit = nullptr) = 0;

  // Removes the sealed value (nonce, ciphertext, tag) of up to 'limit' live tokens whose
  // expires_at is at or before 'now_ms', in one transaction; their rows stay (token, merchant,
  // type, times: what the audit trail refers to). Returns how many.
  virtual StatusOr<size_t> SweepExpired(int64_t now_ms, size_t limit) = 0;

  // kAlreadyExists if the name or key id exists (deleted principals keep their name).
  virtual Status InsertPrincipal(const PrincipalRecord& principal,
                                 AuditAttachment* audit = nullptr) = 0;
  // kNotFound unless a live principal has that name.
  virtual Status DeletePrincipal(std::string_view name, int64_t deleted_at_ms,
                                 AuditAttachment* audit = nullptr) = 0;
  // The live principal holding 'key_id'. kNotFound otherwise.
  virtual StatusOr<PrincipalRecord> FindPrincipalByKeyId(std::string_view key_id) = 0;
  virtual StatusOr<PrincipalRecord> FindPrincipal(std::string_view name) = 0;
  // Every principal that is not deleted.
  virtual StatusOr<std::vector<PrincipalRecord>> LivePrincipals() = 0;

  // The merchant's wrapped fingerprint key (version 1), or kNotFound.
  virtual StatusOr<DataKeyRecord> GetFingerprintKey(std::string_view merchant) = 0;
  // kAlreadyExists if the merchant has one.
  virtual Status InsertFingerprintKey(const DataKeyRecord& key, AuditAttachment* audit = nullptr) = 0;

  // The wrapped form of a vault-wide key ("audit"), or kNotFound.
  virtual StatusOr<DataKeyRecord> GetSystemKey(std::string_view name) = 0;
  // kAlreadyExists if it exists.
  virtual Status InsertSystemKey(std::string_view name, const DataKeyRecord& key) = 0;

  // Appends 'record' to the audit chain: assigns seq and prev_mac, has 'mac' compute the MACs,
  // writes the record and the new head, in one durable transaction. Returns the record as
  // written.
  virtual StatusOr<AuditRecord> AppendAudit(AuditRecord record, const AuditMac& mac) = 0;
  // AppendAudit without waiting; 'done' as for InsertTokenAsync. 'charges' are added to the
  // reveal counters in the same transaction: a reveal is counted if and only if it is audited.
  virtual void AppendAuditAsync(AuditRecord record, const AuditMac& mac,
                                std::vector<RevealCharge> charges,
                                std::function<void(const StatusOr<AuditRecord>&)> done) = 0;
  void AppendAuditAsync(AuditRecord record, const AuditMac& mac,
                        std::function<void(const StatusOr<AuditRecord>&)> done) {
    AppendAuditAsync(std::move(record), mac, {}, std::move(done));
  }
  // The reveal counters of buckets starting at or after 'since_ms'.
  virtual StatusOr<std::vector<RevealCharge>> LoadRevealUsage(int64_t since_ms) = 0;
  // Deletes the counters of buckets starting before 'before_ms'. Returns how many.
  virtual StatusOr<size_t> PruneRevealUsage(int64_t before_ms) = 0;
  // Records matching 'query', in ascending seq, at most query.limit.
  virtual StatusOr<std::vector<AuditRecord>> ScanAudit(const AuditQuery& query) = 0;
  // kNotFound while the log is empty.
  virtual StatusOr<AuditHead> GetAuditHead() = 0;

  // Appends a signed checkpoint (durable on return). kAlreadyExists if one ends at its last_seq.
  virtual Status InsertAuditCheckpoint(const AuditCheckpoint& checkpoint) = 0;
  // Checkpoints with last_seq > 'after_last_seq', ascending, at most 'limit'.
  virtual StatusOr<std::vector<AuditCheckpoint>> ScanAuditCheckpoints(int64_t after_last_seq,
                                                                      size_t limit) = 0;
  // The checkpoint with the highest last_seq not above 'at_or_before', or kNotFound.
  virtual StatusOr<AuditCheckpoint> LastAuditCheckpoint(int64_t at_or_before = INT64_MAX) = 0;
};

}  // namespace tokenvault::storage

#endif  // TOKENVAULT_STORAGE_STORE_H_
