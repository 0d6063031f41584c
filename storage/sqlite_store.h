// The embedded default store: one SQLite file in WAL mode.
//
// Writes go through a single writer thread that commits concurrent callers' operations together
// (group commit: one BEGIN IMMEDIATE ... COMMIT, so one fsync, per batch). Each operation runs in
// its own savepoint, so one failing operation (a duplicate token, say) does not undo the others.
// Asynchronous writes (InsertTokenAsync, AppendAuditAsync) are completed on a completion thread,
// a batch at a time, so that no thread waits for a commit. Reads use a small pool of read-only connections, which WAL lets run beside the writer.
// One process owns a database at a time (an exclusive lock on "<path>.lock").
#ifndef TOKENVAULT_STORAGE_SQLITE_STORE_H_
#define TOKENVAULT_STORAGE_SQLITE_STORE_H_

#include <functional>
#include <memory>
#include <string>

#include "storage/store.h"

namespace tokenvault::storage {

class Database;

struct SqliteStoreOptions {
  std::string path;
  size_t read_connections = 4;
  // Operations committed together at most. Larger batches amortise the fsync further but make
  // the first caller of a batch wait for the last.
  size_t max_batch = 256;
  // WAL length (frames of one page) past which the writer finishes a checkpoint between two
  // batches so that the WAL starts over (16384 frames = 64 MiB at 4 KiB pages).
  int wal_restart_frames = 16384;
  // Token rows kept in memory after a read (ciphertext only; storage/token_row_cache.h). 0: off.
  size_t token_cache_entries = 65536;
};

class SqliteStore final : public Store {
 public:
  // Opens or creates the database, applies migrations, starts the writer thread.
  // kFailedPrecondition (store_locked) if another SqliteStore holds the file.
  static StatusOr<std::unique_ptr<SqliteStore>> Open(const SqliteStoreOptions& options);
  // Finishes queued writes, stops the writer, closes every connection.
  ~SqliteStore() override;

  Status BeginMerchant(const MerchantRecord& merchant) override;
  Status CompleteMerchant(std::string_view id, const DataKeyRecord& first_dek,
                          AuditAttachment* audit = nullptr) override;
  Status AbandonMerchant(std::string_view id) override;
  StatusOr<MerchantRecord> GetMerchant(std::string_view id) override;
  StatusOr<Bytes> BeginKekRotation(std::string_view merchant, uint32_t from_version, ByteView tag,
                                   int64_t at_ms) override;
  Status CompleteKekRotation(std::string_view merchant, uint32_t to_version,
                             const std::vector<DataKeyRecord>& deks,
                             const std::optional<DataKeyRecord>& fingerprint_key,
                             AuditAttachment* audit = nullptr) override;
  StatusOr<std::vector<DataKeyRecord>> GetDataKeys(std::string_view merchant) override;
  StatusOr<std::vector<TokenRecord>> FindTokensToReencrypt(std::string_view merchant,
                                                          uint32_t current_version,
                                                          size_t limit) override;
  StatusOr<size_t> ReplaceSealedValues(const std::vector<TokenRecord>& tokens,
                                       const std::vector<uint32_t>& from_versions) override;
  StatusOr<std::vector<std::string>> MerchantsToReencrypt() override;
  StatusOr<std::vector<std::string>> ActiveMerchants() override;
  Status DestroyDataKey(std::string_view merchant, uint32_t version, int64_t at_ms,
                        AuditAttachment* audit = nullptr) override;
  Status MarkShredded(std::string_view merchant, int64_t at_ms) override;
  Status CompleteShred(std::string_view merchant, AuditAttachment* audit = nullptr) override;
  StatusOr<size_t> SweepShredded(size_t limit) override;
  StatusOr<DataKeyRecord> GetDataKey(std::string_view merchant, uint32_t version) override;
  Status AddDataKeyVersion(const DataKeyRecord& dek, AuditAttachment* audit = nullptr) override;
  StatusOr<std::vector<DataKeyUsage>> ListDataKeys(std::string_view merchant) override;
  Status ReserveEncryptions(std::string_view merchant, uint32_t version,
                            uint64_t reserved) override;
  Status InsertToken(const TokenRecord& token, AuditAttachment* audit = nullptr) override;
  void InsertTokenAsync(TokenRecord token, std::optional<AuditAttachment> audit,
                        std::function<void(Status)> done) override;
  void WriteTokensAsync(TokenWrite write, std::function<void(TokenWriteResult)> done) override;
  StatusOr<IdempotencyRecord> FindIdempotency(ByteView key_hash, int64_t now_ms) override;
  StatusOr<size_t> SweepIdempotency(int64_t now_ms, size_t limit) override;
  StatusOr<TokenRecord> FindToken(std::string_view merchant, std::string_view token) override;
  Status DeleteToken(std::string_view merchant, std::string_view token, int64_t deleted_at_ms,
                     AuditAttachment* audit = nullptr) override;
  StatusOr<size_t> SweepExpired(int64_t now_ms, size_t limit) override;
  Status InsertPrincipal(const PrincipalRecord& principal,
                         AuditAttachment* audit = nullptr) override;
  Status DeletePrincipal(std::string_view name, int64_t deleted_at_ms,
                         AuditAttachment* audit = nullptr) override;
  StatusOr<PrincipalRecord> FindPrincipalByKeyId(std::string_view key_id) override;
  StatusOr<PrincipalRecord> FindPrincipal(std::string_view name) override;
  StatusOr<std::vector<PrincipalRecord>> LivePrincipals() override;
  StatusOr<DataKeyRecord> GetFingerprintKey(std::string_view merchant) override;
  Status InsertFingerprintKey(const DataKeyRecord& key, AuditAttachment* audit = nullptr) override;
  StatusOr<DataKeyRecord> GetSystemKey(std::string_view name) override;
  Status InsertSystemKey(std::string_view name, const DataKeyRecord& key) override;
  StatusOr<AuditRecord> AppendAudit(AuditRecord record, const AuditMac& mac) override;
  using Store::AppendAuditAsync;
  void AppendAuditAsync(AuditRecord record, const AuditMac& mac, std::vector<RevealCharge> charges,
                        std::function<void(const StatusOr<AuditRecord>&)> done) override;
  StatusOr<std::vector<RevealCharge>> LoadRevealUsage(int64_t since_ms) override;
  StatusOr<size_t> PruneRevealUsage(int64_t before_ms) override;
  StatusOr<std::vector<AuditRecord>> ScanAudit(const AuditQuery& query) override;
  StatusOr<AuditHead> GetAuditHead() override;
  Status InsertAuditCheckpoint(const AuditCheckpoint& checkpoint) override;
  StatusOr<std::vector<AuditCheckpoint>> ScanAuditCheckpoints(int64_t after_last_seq,
                                                              size_t limit) override;
  StatusOr<AuditCheckpoint> LastAuditCheckpoint(int64_t at_or_before = INT64_MAX) override;

  // Runs 'op' inside a write transaction shared with other callers, in its own savepoint, and
  // returns once the transaction is durably committed (or failed). The building block of every
  // write above; later features (audit records, batches) write through it too.
  Status Write(std::function<Status(Database&)> op);

  // Commit statistics, for tests and metrics.
  struct Stats {
    uint64_t transactions = 0;
    uint64_t operations = 0;
    uint64_t wal_checkpoints_by_writer = 0;  // RestartWalIfLong (sqlite_store.cc)
  };
  Stats GetStats() const;
  // Writes queued and not yet picked up by the writer thread.
  size_t PendingWrites() const;

 private:
  class Impl;
  StatusOr<TokenRecord> ReadTokenRow(std::string_view merchant, std::string_view token);
  explicit SqliteStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Copies the database at 'source' - live, in use by a running vault in another process - into a
// new file 'dest' (mode 0600): one consistent snapshot taken with SQLite's online backup API while
// the vault goes on writing, fsync'd and integrity-checked (docs/operations.md, Backup).
Status BackupDatabaseFile(const std::string& source, const std::string& dest);

}  // namespace tokenvault::storage

#endif  // TOKENVAULT_STORAGE_SQLITE_STORE_H_
