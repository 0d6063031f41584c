#include "storage/sqlite_store.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "storage/migrations.h"
#include "storage/sqlite.h"
#include "storage/token_row_cache.h"
#include "vault/base/scope_guard.h"
#include "vault/base/metrics.h"
#include "vault/base/utf8.h"

namespace tokenvault::storage {
namespace {

constexpr std::string_view StateName(DataKeyState s) {
  return s == DataKeyState::kActive ? "active" : "retired";
}

// An exclusive advisory lock held for the life of the store: two vault processes writing one
// database would break the encryption counters' invariant (each assumes it alone reserves).
class FileLock {
 public:
  static StatusOr<FileLock> Acquire(const std::string& path) {
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      return UnavailableError(kReasonStorageUnavailable,
                              "cannot open " + path + ": " + std::strerror(errno));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      close(fd);
      return FailedPreconditionError("store_locked",
                                     "the database is in use by another tokenvault (" + path + ")");
    }
    return FileLock(fd);
  }
  FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  FileLock& operator=(FileLock&&) = delete;
  ~FileLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
  }

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

// A fixed set of read-only connections, leased one per read.
class ReadPool {
 public:
  ReadPool(std::string path, size_t size) : path_(std::move(path)), max_(size == 0 ? 1 : size) {}

  class Lease {
   public:
    Lease(ReadPool* pool, std::unique_ptr<Database> db) : pool_(pool), db_(std::move(db)) {}
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), db_(std::move(other.db_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->Release(std::move(db_));
    }
    Database& db() { return *db_; }

   private:
    ReadPool* pool_;
    std::unique_ptr<Database> db_;
  };

  StatusOr<Lease> Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || open_ < max_; });
    if (!idle_.empty()) {
      std::unique_ptr<Database> db = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(db));
    }
    ++open_;
    lock.unlock();
    Database::Options options;
    options.read_only = true;
    StatusOr<std::unique_ptr<Database>> db = Database::Open(path_, options);
    if (!db.ok()) {
      lock.lock();
      --open_;
      cv_.notify_one();
      return db.status();
    }
    return Lease(this, std::move(db).value());
  }

  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.clear();
  }

 private:
  void Release(std::unique_ptr<Database> db) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(db));
    cv_.notify_one();
  }

  const std::string path_;
  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Database>> idle_;  // GUARDED_BY(mu_)
  size_t open_ = 0;                              // GUARDED_BY(mu_)
};

DataKeyState DataKeyStateOf(const std::string& state, bool not_destroyed) {
  if (!not_destroyed) return DataKeyState::kDestroyed;
  return state == "active" ? DataKeyState::kActive : DataKeyState::kRetired;
}

// The columns ReadToken reads, in its order.
constexpr char kTokenColumns[] =
    "SELECT token, merchant_id, type, format, record_version, dek_version, nonce, ciphertext, "
    "tag, created_at, expires_at, deleted_at, last4, fingerprint, metadata, dedup_key, "
    "(SELECT shredded_at IS NOT NULL FROM merchants WHERE id = tokens.merchant_id) FROM tokens ";

StatusOr<TokenRecord> ReadToken(Statement& stmt) {
  TokenRecord r;
  r.token = stmt.ColumnText(0);
  r.merchant = stmt.ColumnText(1);
  r.type = stmt.ColumnText(2);
  r.format = stmt.ColumnText(3);
  TV_ASSIGN_OR_RETURN(r.record_version, stmt.ColumnU32(4));
  TV_ASSIGN_OR_RETURN(r.dek_version, stmt.ColumnU32(5));
  r.nonce = stmt.ColumnBlob(6);
  r.ciphertext = stmt.ColumnBlob(7);
  r.tag = stmt.ColumnBlob(8);
  r.created_at_ms = stmt.ColumnInt(9);
  if (!stmt.ColumnIsNull(10)) r.expires_at_ms = stmt.ColumnInt(10);
  if (!stmt.ColumnIsNull(11)) r.deleted_at_ms = stmt.ColumnInt(11);
  if (!stmt.ColumnIsNull(12)) r.last4 = stmt.ColumnText(12);
  if (!stmt.ColumnIsNull(13)) r.fingerprint = stmt.ColumnText(13);
  if (!stmt.ColumnIsNull(14)) r.metadata = stmt.ColumnText(14);
  if (!stmt.ColumnIsNull(15)) r.dedup_key = stmt.ColumnText(15);
  r.merchant_shredded = stmt.ColumnInt(16) != 0;
  return r;
}

Status InsertDataKey(Database& db, const DataKeyRecord& dek) {
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      db.Prepare("INSERT INTO data_keys (merchant_id, version, kek_version, wrapped, state, "
                 "created_at, encryptions_reserved) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
  return stmt.Bind(1, std::string_view(dek.merchant))
      .Bind(2, int64_t{dek.version})
      .Bind(3, int64_t{dek.kek_version})
      .Bind(4, ByteView(dek.wrapped))
      .Bind(5, StateName(dek.state))
      .Bind(6, dek.created_at_ms)
      .Bind(7, static_cast<int64_t>(dek.encryptions_reserved))
      .Run();
}

}  // namespace

namespace {
Status AppendAuditInTxn(Database& db, AuditRecord& record, const AuditMac& mac);

// Appends the attached audit record, if any, inside the caller's transaction.
Status AppendAttached(Database& db, AuditAttachment* audit) {
  if (audit == nullptr) return Status::Ok();
  if (audit->mac == nullptr) return InternalError("storage_error", "audit attachment without a MAC");
  return AppendAuditInTxn(db, audit->record, *audit->mac);
}
}  // namespace

class SqliteStore::Impl {
 public:
  Impl(FileLock lock, std::unique_ptr<Database> writer, std::unique_ptr<Database> checkpointer,
       const SqliteStoreOptions& options)
      : lock_(std::move(lock)),
        writer_(std::move(writer)),
        checkpointer_(std::move(checkpointer)),
        readers_(options.path, options.read_connections),
        token_rows_(options.token_cache_entries),
        max_batch_(options.max_batch == 0 ? 1 : options.max_batch),
        wal_restart_frames_(options.wal_restart_frames),
        thread_([this] { WriterLoop(); }),
        completion_thread_([this] { CompletionLoop(); }),
        checkpoint_thread_([this] { CheckpointLoop(); }) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    checkpoint_cv_.notify_all();
    thread_.join();  // the writer drains its queue first
    {
      std::lock_guard<std::mutex> lock(completion_mu_);
      completion_stopping_ = true;
    }
    completion_cv_.notify_all();
    completion_thread_.join();  // then every completion has run
    checkpoint_thread_.join();
    checkpointer_.reset();
    readers_.Clear();
  }

  Status Write(std::function<Status(Database&)> op) {
    try {
      auto done = std::make_shared<std::promise<Status>>();
      std::future<Status> result = done->get_future();
      // A waiting caller is woken right from the writer thread: a hop through the completion
      // thread would only add a wake-up.
      Enqueue(std::move(op), [done](Status s) { done->set_value(std::move(s)); },
              /*complete_on_writer=*/true);
      return result.get();
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError("out_of_memory", "no memory to queue the write");
    } catch (...) {
      return InternalError("storage_error", "the write could not be queued");
    }
  }

  void WriteAsync(std::function<Status(Database&)> op, std::function<void(Status)> done) {
    try {
      Enqueue(std::move(op), std::move(done), /*complete_on_writer=*/false);
    } catch (...) {
      // Nothing was queued ('done' was not consumed unless the queue took it, and then it
      // runs): report on the caller's thread.
      if (done) done(InternalError("storage_error", "the write could not be queued"));
    }
  }

  StatusOr<ReadPool::Lease> Reader() { return readers_.Acquire(); }
  TokenRowCache& token_rows() { return token_rows_; }

  Stats GetStats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  size_t PendingWrites() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }

 private:
  struct Pending {
    std::function<Status(Database&)> op;
    std::function<void(Status)> done;
    bool complete_on_writer = false;
  };

  struct Completion {
    std::function<void(Status)> done;
    Status status;
  };

  // Queues 'op'; 'done' is always called exactly once. Throws only before queuing, leaving
  // 'done' with the caller.
  void Enqueue(std::function<Status(Database&)>&& op, std::function<void(Status)>&& done,
               bool complete_on_writer) {
    Pending pending{std::move(op), {}, complete_on_writer};
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) {
        std::function<void(Status)> refused = std::move(done);
        done = nullptr;  // consumed, even if it throws
        lock.unlock();
        refused(UnavailableError(kReasonStorageUnavailable, "the store is closing"));
        return;
      }
      queue_.push_back(std::move(pending));  // may throw: 'done' is still the caller's
      queue_.back().done = std::move(done);
    }
    cv_.notify_one();
  }

  // Runs the completions of asynchronous writes off the writer thread, a batch at a time (one
  // wake-up per batch), so that the next batch never waits for callbacks.
  void CompletionLoop() {
    pthread_setname_np(pthread_self(), "tv-complete");  // names show in top -H, perf, gdb
    std::deque<Completion> ready;
    std::unique_lock<std::mutex> lock(completion_mu_);
    for (;;) {
      completion_cv_.wait(lock, [&] { return completion_stopping_ || !completions_.empty(); });
      if (completions_.empty()) return;  // stopping and drained
      ready.swap(completions_);
      lock.unlock();
      for (Completion& c : ready) {
        try {
          c.done(std::move(c.status));
        } catch (...) {
          // A callback must not take the thread (and every later completion) down with it.
        }
      }
      ready.clear();
      lock.lock();
    }
  }

  // Copies the WAL back into the database file from a connection of its own, so that the writer
  // never stalls a batch on a checkpoint's fsyncs (the writer has wal_autocheckpoint=0).
  // PASSIVE never blocks the writer. While there is work it runs again after 25 ms rather than
  // 200, so that little is left to copy when the writer restarts the WAL (RestartWalIfLong).
  void CheckpointLoop() {
    pthread_setname_np(pthread_self(), "tv-checkpoint");
    std::unique_lock<std::mutex> lock(mu_);
    bool had_work = false;
    while (!stopping_) {
      // Its own condition variable: sharing the writer's would let a Write's notify_one wake
      // this thread instead of the writer, and the write would wait forever.
      checkpoint_cv_.wait_for(lock, std::chrono::milliseconds(had_work ? 25 : 200));
      if (stopping_) break;
      lock.unlock();
      had_work = CheckpointPassive();
      lock.lock();
    }
  }

  // True if the checkpoint copied frames (so more are probably coming). Errors are retried on
  // the next round.
  bool CheckpointPassive() {
    StatusOr<Statement> ckpt = checkpointer_->Prepare("PRAGMA wal_checkpoint(PASSIVE)");
    if (!ckpt.ok()) return false;
    StatusOr<bool> row = ckpt->Step();
    if (!row.ok() || !*row) return false;
    // (busy, frames in the WAL, frames copied); -1s when not in WAL mode.
    const int64_t copied = ckpt->ColumnInt(2);
    checkpoint_backlog_.store(std::max<int64_t>(0, ckpt->ColumnInt(1) - copied),
                              std::memory_order_relaxed);
    const bool had_work = copied > last_copied_ || copied < last_copied_;
    last_copied_ = copied;
    return had_work;
  }

  void WriterLoop() {
    pthread_setname_np(pthread_self(), "tv-writer");
    std::vector<Pending> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        // Whatever queued while the previous batch was committing goes into this one: under load
        // batches grow by themselves, with no timer adding latency when the vault is idle.
        while (!queue_.empty() && batch.size() < max_batch_) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      CommitBatch(batch);
      batch.clear();
      RestartWalIfLong();
    }
  }

  // Under sustained writes the checkpoint thread's PASSIVE checkpoints never see the WAL fully
  // copied (new frames keep arriving), and SQLite only starts the WAL over when a write begins
  // with nothing left to copy: the WAL would grow without bound (1.3 GB in 10 s of tokenizing
  // was measured). So once it is long, the writer itself copies the rest between two batches,
  // when no frame can arrive, and the next transaction starts the WAL from its beginning. The
  // checkpoint thread has copied almost everything by then, so this is short; PASSIVE never
  // waits for readers or locks: if it cannot finish, the next batch tries again.
  void RestartWalIfLong() {
    const int frames = writer_->wal_frames();
    if (frames < wal_restart_frames_) return;
    // Normally only once the checkpoint thread has nearly caught up, so that this copies little.
    // Past four times the limit the checkpointer is not keeping up with the writes at all, and
    // the writer copies whatever is left anyway: a pause now (back-pressure) rather than a disk
    // filling up.
    const int64_t backlog = checkpoint_backlog_.load(std::memory_order_relaxed);
    if (backlog > wal_restart_frames_ / 8 && frames < 4 * wal_restart_frames_) return;
    StatusOr<Statement> ckpt = writer_->Prepare("PRAGMA wal_checkpoint(PASSIVE)");
    if (!ckpt.ok()) return;
    StatusOr<bool> row = ckpt->Step();
    // (busy, frames in the WAL, frames copied): counted only when everything was copied, so that
    // the next transaction can start the WAL over.
    if (row.ok() && *row && ckpt->ColumnInt(0) == 0 && ckpt->ColumnInt(1) == ckpt->ColumnInt(2)) {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.wal_checkpoints_by_writer;
    }
  }

  // Runs one operation in its own savepoint. Exceptions (bad_alloc from a string) must not
  // escape the writer thread: they become an Internal status and the savepoint rolls back.
  Status RunOne(Pending& p) {
    try {
      TV_ASSIGN_OR_RETURN(Savepoint sp, Savepoint::Begin(*writer_));
      Status s = p.op(*writer_);
      if (!s.ok()) return s;  // ~Savepoint rolls this operation back, leaving the others
      return sp.Release();
    } catch (...) {
      return InternalError("storage_error", "a write operation threw");
    }
  }

  void CommitBatch(std::vector<Pending>& batch) {
    std::vector<Status> results(batch.size());
    Status commit;
    try {
      StatusOr<Transaction> txn = Transaction::Begin(*writer_);
      if (!txn.ok()) {
        commit = txn.status();
      } else {
        for (size_t i = 0; i < batch.size() && commit.ok(); ++i) {
          results[i] = RunOne(batch[i]);
          // SQLite may roll the whole transaction back on its own (SQLITE_FULL, IOERR, BUSY,
          // NOMEM). Running on would open a new implicit transaction per savepoint and commit
          // operations one by one behind the batch's back, so the batch ends here, failed.
          if (!writer_->InTransaction()) {
            // Whatever this operation returned, the others failed because the transaction is
            // gone: retryable, like any storage outage.
            commit = UnavailableError(kReasonStorageUnavailable,
                                      "the transaction was rolled back by SQLite");
          }
        }
        if (commit.ok()) {
          const auto commit_started = std::chrono::steady_clock::now();
          commit = txn->Commit();  // the fsync of the group commit
          static metrics::Family& fsync = metrics::Registry::Global().Histogram(
              "tokenvault_store_commit_seconds", "Time to commit (and fsync) one group commit.",
              metrics::LatencyBuckets());
          fsync.Observe({}, std::chrono::duration<double>(std::chrono::steady_clock::now() - commit_started).count());
        }
      }  // an uncommitted transaction rolls back here
    } catch (...) {
      commit = InternalError("storage_error", "the batch could not be committed");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.transactions;
      stats_.operations += batch.size();
    }
    static metrics::Family& batch_sizes = metrics::Registry::Global().Histogram(
        "tokenvault_store_group_commit_operations", "Write operations per group commit.",
        {1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
    batch_sizes.Observe({}, static_cast<double>(batch.size()));
    bool queued_completions = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      // An operation is only OK if its transaction was durably committed; when the transaction
      // failed, every operation of the batch failed with it, whatever it returned.
      Status status = commit.ok() ? results[i] : commit;
      if (batch[i].complete_on_writer) {
        try {
          batch[i].done(std::move(status));
        } catch (...) {
        }
        continue;
      }
      try {
        std::lock_guard<std::mutex> lock(completion_mu_);
        completions_.push_back(Completion{std::move(batch[i].done), std::move(status)});
        queued_completions = true;
      } catch (...) {
        // No memory to queue it: complete it here rather than never.
        try {
          batch[i].done(InternalError("storage_error", "the completion could not be queued"));
        } catch (...) {
        }
      }
    }
    if (queued_completions) completion_cv_.notify_one();
  }

  FileLock lock_;
  std::unique_ptr<Database> writer_;        // used by the writer thread only
  std::unique_ptr<Database> checkpointer_;  // used by the checkpoint thread only
  ReadPool readers_;
  TokenRowCache token_rows_;
  const size_t max_batch_;
  const int wal_restart_frames_;
  int64_t last_copied_ = 0;  // used by the checkpoint thread only
  // Frames the checkpoint thread's last pass left uncopied (read by the writer).
  std::atomic<int64_t> checkpoint_backlog_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;             // the writer's: work queued or stopping
  std::condition_variable checkpoint_cv_;  // the checkpointer's: stopping
  std::deque<Pending> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;      // GUARDED_BY(mu_)
  Stats stats_;                // GUARDED_BY(mu_)
  std::mutex completion_mu_;
  std::condition_variable completion_cv_;
  std::deque<Completion> completions_;  // GUARDED_BY(completion_mu_)
  bool completion_stopping_ = false;    // GUARDED_BY(completion_mu_)
  std::thread thread_;             // last: start once everything above is built
  std::thread completion_thread_;
  std::thread checkpoint_thread_;
};

StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const SqliteStoreOptions& options) {
  if (options.path.empty()) {
    return InvalidArgumentError("bad_config", "no database path configured");
  }
  TV_ASSIGN_OR_RETURN(FileLock lock, FileLock::Acquire(options.path + ".lock"));
  TV_ASSIGN_OR_RETURN(std::unique_ptr<Database> writer, Database::Open(options.path, {}));
  TV_RETURN_IF_ERROR(ApplyMigrations(*writer));
  // Checkpoints are the store's (below); the WAL file is cut back to 64 MiB when it restarts.
  TV_RETURN_IF_ERROR(writer->Exec("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864"));
  writer->TrackWalSize();
  TV_ASSIGN_OR_RETURN(std::unique_ptr<Database> checkpointer, Database::Open(options.path, {}));
  return std::unique_ptr<SqliteStore>(new SqliteStore(std::make_unique<Impl>(
      std::move(lock), std::move(writer), std::move(checkpointer), options)));
}

SqliteStore::SqliteStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteStore::~SqliteStore() = default;

Status SqliteStore::Write(std::function<Status(Database&)> op) { return impl_->Write(std::move(op)); }

SqliteStore::Stats SqliteStore::GetStats() const { return impl_->GetStats(); }

size_t SqliteStore::PendingWrites() const { return impl_->PendingWrites(); }

Status SqliteStore::BeginMerchant(const MerchantRecord& merchant) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("INSERT INTO merchants (id, created_at, kek_version, "
                                   "current_dek_version, state, creation_id) "
                                   "VALUES (?1, ?2, ?3, ?4, 'creating', ?5)"));
    return stmt.Bind(1, std::string_view(merchant.id))
        .Bind(2, merchant.created_at_ms)
        .Bind(3, int64_t{merchant.kek_version})
        .Bind(4, int64_t{merchant.current_dek_version})
        .Bind(5, ByteView(merchant.creation_id))
        .Run();
  });
}

Status SqliteStore::CompleteMerchant(std::string_view id, const DataKeyRecord& first_dek,
                                     AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("UPDATE merchants SET state = 'active', kek_version = ?2, "
                                   "current_dek_version = ?3 WHERE id = ?1 AND state = 'creating'"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, id)
                           .Bind(2, int64_t{first_dek.kek_version})
                           .Bind(3, int64_t{first_dek.version})
                           .Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("merchant_not_creating", "the merchant is not being created");
    }
    TV_RETURN_IF_ERROR(InsertDataKey(db, first_dek));
    return AppendAttached(db, audit);
  });
}

Status SqliteStore::AbandonMerchant(std::string_view id) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("DELETE FROM merchants WHERE id = ?1 AND state = 'creating'"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, id).Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("merchant_not_creating", "the merchant is not being created");
    }
    return Status::Ok();
  });
}

StatusOr<MerchantRecord> SqliteStore::GetMerchant(std::string_view id) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT id, created_at, kek_version, current_dek_version, "
                                         "state, creation_id, shredded_at FROM merchants WHERE id = ?1"));
  stmt.Bind(1, id);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("merchant_not_found", "no such merchant");
  MerchantRecord r;
  r.id = stmt.ColumnText(0);
  r.created_at_ms = stmt.ColumnInt(1);
  TV_ASSIGN_OR_RETURN(r.kek_version, stmt.ColumnU32(2));
  TV_ASSIGN_OR_RETURN(r.current_dek_version, stmt.ColumnU32(3));
  r.state = stmt.ColumnText(4) == "active" ? MerchantState::kActive : MerchantState::kCreating;
  r.creation_id = stmt.ColumnBlob(5);
  if (!stmt.ColumnIsNull(6)) {
    r.shredded_at_ms = stmt.ColumnInt(6);
    r.state = MerchantState::kShredded;
  }
  return r;
}

StatusOr<Bytes> SqliteStore::BeginKekRotation(std::string_view merchant, uint32_t from_version,
                                              ByteView tag, int64_t at_ms) {
  Bytes in_effect;
  Status written = Write([&](Database& db) -> Status {
    {
      TV_ASSIGN_OR_RETURN(Statement current,
                          db.Prepare("SELECT kek_version FROM merchants WHERE id = ?1 AND "
                                     "state = 'active' AND shredded_at IS NULL"));
      current.Bind(1, merchant);
      TV_ASSIGN_OR_RETURN(bool row, current.Step());
      if (!row) return NotFoundError("merchant_not_found", "no such merchant");
      if (current.ColumnInt(0) != int64_t{from_version}) {
        return FailedPreconditionError("kek_version_conflict", "the merchant's KEK version changed");
      }
    }
    {
      TV_ASSIGN_OR_RETURN(Statement pending,
                          db.Prepare("SELECT from_version, creation_tag FROM kek_rotations "
                                     "WHERE merchant_id = ?1"));
      pending.Bind(1, merchant);
      TV_ASSIGN_OR_RETURN(bool row, pending.Step());
      if (row && pending.ColumnInt(0) == int64_t{from_version}) {
        in_effect = pending.ColumnBlob(1);  // resumed: the KEK it made carries this tag
        return Status::Ok();
      }
    }
    // (An intent for an older step cannot outlive its own commit; replace anything else.)
    TV_ASSIGN_OR_RETURN(Statement drop, db.Prepare("DELETE FROM kek_rotations WHERE merchant_id = ?1"));
    TV_RETURN_IF_ERROR(drop.Bind(1, merchant).Run());
    TV_ASSIGN_OR_RETURN(Statement insert,
                        db.Prepare("INSERT INTO kek_rotations (merchant_id, from_version, to_version, "
                                   "creation_tag, started_at) VALUES (?1, ?2, ?3, ?4, ?5)"));
    TV_RETURN_IF_ERROR(insert.Bind(1, merchant)
                           .Bind(2, int64_t{from_version})
                           .Bind(3, int64_t{from_version} + 1)
                           .Bind(4, tag)
                           .Bind(5, at_ms)
                           .Run());
    in_effect.assign(tag.begin(), tag.end());
    return Status::Ok();
  });
  TV_RETURN_IF_ERROR(written);
  return in_effect;
}

Status SqliteStore::CompleteKekRotation(std::string_view merchant, uint32_t to_version,
                                        const std::vector<DataKeyRecord>& deks,
                                        const std::optional<DataKeyRecord>& fingerprint_key,
                                        AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement intent,
                        db.Prepare("DELETE FROM kek_rotations WHERE merchant_id = ?1 AND to_version = ?2"));
    TV_RETURN_IF_ERROR(intent.Bind(1, merchant).Bind(2, int64_t{to_version}).Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("kek_version_conflict", "no such KEK rotation in progress");
    }
    TV_ASSIGN_OR_RETURN(Statement bump,
                        db.Prepare("UPDATE merchants SET kek_version = ?2 WHERE id = ?1 AND "
                                   "kek_version = ?3 AND shredded_at IS NULL"));
    TV_RETURN_IF_ERROR(bump.Bind(1, merchant)
                           .Bind(2, int64_t{to_version})
                           .Bind(3, int64_t{to_version} - 1)
                           .Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("kek_version_conflict", "the merchant's KEK version changed");
    }
    for (const DataKeyRecord& dek : deks) {
      TV_ASSIGN_OR_RETURN(Statement update,
                          db.Prepare("UPDATE data_keys SET wrapped = ?3, kek_version = ?4 "
                                     "WHERE merchant_id = ?1 AND version = ?2"));
      TV_RETURN_IF_ERROR(update.Bind(1, merchant)
                             .Bind(2, int64_t{dek.version})
                             .Bind(3, ByteView(dek.wrapped))
                             .Bind(4, int64_t{dek.kek_version})
                             .Run());
      if (db.Changes() != 1) return FailedPreconditionError("dek_not_found", "a DEK version vanished");
    }
    // Every DEK version must have moved: one left under the old KEK would be lost with it.
    {
      TV_ASSIGN_OR_RETURN(Statement left,
                          db.Prepare("SELECT COUNT(*) FROM data_keys WHERE merchant_id = ?1 AND "
                                     "kek_version != ?2 AND destroyed_at IS NULL"));
      left.Bind(1, merchant).Bind(2, int64_t{to_version});
      TV_ASSIGN_OR_RETURN(bool row, left.Step());
      if (!row || left.ColumnInt(0) != 0) {
        return FailedPreconditionError("kek_version_conflict", "a DEK version was not rewrapped");
      }
    }
    if (fingerprint_key) {
      TV_ASSIGN_OR_RETURN(Statement update,
                          db.Prepare("UPDATE fingerprint_keys SET wrapped = ?2, kek_version = ?3 "
                                     "WHERE merchant_id = ?1"));
      TV_RETURN_IF_ERROR(update.Bind(1, merchant)
                             .Bind(2, ByteView(fingerprint_key->wrapped))
                             .Bind(3, int64_t{fingerprint_key->kek_version})
                             .Run());
    }
    {
      TV_ASSIGN_OR_RETURN(Statement left,
                          db.Prepare("SELECT COUNT(*) FROM fingerprint_keys WHERE merchant_id = ?1 AND "
                                     "kek_version != ?2"));
      left.Bind(1, merchant).Bind(2, int64_t{to_version});
      TV_ASSIGN_OR_RETURN(bool row, left.Step());
      if (!row || left.ColumnInt(0) != 0) {
        return FailedPreconditionError("kek_version_conflict", "the fingerprint key was not rewrapped");
      }
    }
    return AppendAttached(db, audit);
  });
}

StatusOr<std::vector<DataKeyRecord>> SqliteStore::GetDataKeys(std::string_view merchant) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare("SELECT merchant_id, version, kek_version, wrapped, state, created_at, "
                         "encryptions_reserved, destroyed_at FROM data_keys WHERE merchant_id = ?1 "
                         "AND destroyed_at IS NULL ORDER BY version"));
  stmt.Bind(1, merchant);
  std::vector<DataKeyRecord> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    DataKeyRecord r;
    r.merchant = stmt.ColumnText(0);
    TV_ASSIGN_OR_RETURN(r.version, stmt.ColumnU32(1));
    TV_ASSIGN_OR_RETURN(r.kek_version, stmt.ColumnU32(2));
    r.wrapped = stmt.ColumnBlob(3);
    r.state = DataKeyStateOf(stmt.ColumnText(4), stmt.ColumnIsNull(7));
    r.created_at_ms = stmt.ColumnInt(5);
    r.encryptions_reserved = static_cast<uint64_t>(stmt.ColumnInt(6));
    out.push_back(std::move(r));
  }
  return out;
}

StatusOr<std::vector<TokenRecord>> SqliteStore::FindTokensToReencrypt(std::string_view merchant,
                                                                     uint32_t current_version,
                                                                     size_t limit) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  // By the (merchant_id, dek_version) index: the oldest versions first.
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare(std::string(kTokenColumns) +
                                         "WHERE merchant_id = ?1 AND dek_version < ?2 AND "
                                         "nonce IS NOT NULL ORDER BY dek_version LIMIT ?3"));
  stmt.Bind(1, merchant).Bind(2, int64_t{current_version}).Bind(3, static_cast<int64_t>(limit));
  std::vector<TokenRecord> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    TV_ASSIGN_OR_RETURN(TokenRecord t, ReadToken(stmt));
    out.push_back(std::move(t));
  }
  return out;
}

StatusOr<size_t> SqliteStore::ReplaceSealedValues(const std::vector<TokenRecord>& tokens,
                                                  const std::vector<uint32_t>& from_versions) {
  if (tokens.size() != from_versions.size()) {
    return InvalidArgumentError("bad_request", "one source version per token");
  }
  // From now until after the commit (or the failure) these rows are never served from the cache.
  std::vector<std::string> keys;
  for (const TokenRecord& t : tokens) keys.push_back(TokenRowCache::Key(t.merchant, t.token));
  for (const std::string& key : keys) impl_->token_rows().BeginChange(key);
  ScopeGuard changed([&] {
    for (const std::string& key : keys) impl_->token_rows().EndChange(key);
  });
  size_t moved = 0;
  Status written = Write([&](Database& db) -> Status {
    moved = 0;  // (a retried operation starts over)
    for (size_t i = 0; i < tokens.size(); ++i) {
      const TokenRecord& t = tokens[i];
      TV_ASSIGN_OR_RETURN(
          Statement stmt,
          db.Prepare("UPDATE tokens SET dek_version = ?3, nonce = ?4, ciphertext = ?5, tag = ?6 "
                     "WHERE merchant_id = ?1 AND token = ?2 AND dek_version = ?7 AND "
                     "nonce IS NOT NULL AND deleted_at IS NULL"));
      TV_RETURN_IF_ERROR(stmt.Bind(1, std::string_view(t.merchant))
                             .Bind(2, std::string_view(t.token))
                             .Bind(3, int64_t{t.dek_version})
                             .Bind(4, ByteView(t.nonce))
                             .Bind(5, ByteView(t.ciphertext))
                             .Bind(6, ByteView(t.tag))
                             .Bind(7, int64_t{from_versions[i]})
                             .Run());
      moved += static_cast<size_t>(db.Changes());
    }
    return Status::Ok();
  });
  TV_RETURN_IF_ERROR(written);
  return moved;
}

namespace {

// Column 0 of every row 'stmt' yields, as text.
StatusOr<std::vector<std::string>> FirstColumnText(Statement& stmt) {
  std::vector<std::string> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(stmt.ColumnText(0));
  }
  return out;
}

}  // namespace

StatusOr<std::vector<std::string>> SqliteStore::ActiveMerchants() {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT id FROM merchants WHERE state = 'active' AND "
                                         "shredded_at IS NULL ORDER BY id"));
  return FirstColumnText(stmt);
}

Status BackupDatabaseFile(const std::string& source, const std::string& dest) {
  Database::Options options;
  options.read_only = true;
  TV_ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(source, options));
  return db->BackupTo(dest);
}

StatusOr<std::vector<std::string>> SqliteStore::MerchantsToReencrypt() {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare("SELECT m.id FROM merchants m WHERE m.state = 'active' AND "
                         "m.shredded_at IS NULL AND EXISTS (SELECT 1 FROM data_keys k WHERE "
                         "k.merchant_id = m.id AND k.state = 'retired' AND k.destroyed_at IS NULL) "
                         "ORDER BY m.id"));
  return FirstColumnText(stmt);
}

Status SqliteStore::DestroyDataKey(std::string_view merchant, uint32_t version, int64_t at_ms,
                                   AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    {
      TV_ASSIGN_OR_RETURN(Statement used,
                          db.Prepare("SELECT COUNT(*) FROM tokens WHERE merchant_id = ?1 AND "
                                     "dek_version = ?2 AND nonce IS NOT NULL"));
      used.Bind(1, merchant).Bind(2, int64_t{version});
      TV_ASSIGN_OR_RETURN(bool row, used.Step());
      if (!row || used.ColumnInt(0) != 0) {
        return FailedPreconditionError("dek_in_use", "live tokens still use this DEK version");
      }
    }
    TV_ASSIGN_OR_RETURN(Statement erase,
                        db.Prepare("UPDATE data_keys SET wrapped = X'', destroyed_at = ?3 "
                                   "WHERE merchant_id = ?1 AND version = ?2 AND state = 'retired' "
                                   "AND destroyed_at IS NULL"));
    TV_RETURN_IF_ERROR(erase.Bind(1, merchant).Bind(2, int64_t{version}).Bind(3, at_ms).Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("dek_in_use", "the DEK version is not retired (or is destroyed)");
    }
    return AppendAttached(db, audit);
  });
}

Status SqliteStore::MarkShredded(std::string_view merchant, int64_t at_ms) {
  Status marked = Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("UPDATE merchants SET shredded_at = COALESCE(shredded_at, ?2) "
                                   "WHERE id = ?1 AND state = 'active'"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, merchant).Bind(2, at_ms).Run());
    if (db.Changes() != 1) return NotFoundError("merchant_not_found", "no such merchant");
    return Status::Ok();
  });
  // Every cached row of the merchant answers gone from now on: the flag is read with the row.
  if (marked.ok()) impl_->token_rows().Clear();
  return marked;
}

Status SqliteStore::CompleteShred(std::string_view merchant, AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    {
      TV_ASSIGN_OR_RETURN(Statement check,
                          db.Prepare("SELECT shredded_at FROM merchants WHERE id = ?1"));
      check.Bind(1, merchant);
      TV_ASSIGN_OR_RETURN(bool row, check.Step());
      if (!row || check.ColumnIsNull(0)) {
        return FailedPreconditionError("merchant_not_shredding", "the merchant is not being shredded");
      }
    }
    for (const char* sql : {"DELETE FROM data_keys WHERE merchant_id = ?1",
                            "DELETE FROM fingerprint_keys WHERE merchant_id = ?1"}) {
      TV_ASSIGN_OR_RETURN(Statement del, db.Prepare(sql));
      TV_RETURN_IF_ERROR(del.Bind(1, merchant).Run());
    }
    return AppendAttached(db, audit);
  });
}

StatusOr<size_t> SqliteStore::SweepShredded(size_t limit) {
  size_t swept = 0;
  Status written = Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(
        Statement clear,
        db.Prepare("UPDATE tokens SET nonce = NULL, ciphertext = NULL, tag = NULL, dedup_key = NULL "
                   "WHERE id IN (SELECT t.id FROM merchants m JOIN tokens t ON t.merchant_id = m.id "
                   "WHERE m.shredded_at IS NOT NULL AND t.nonce IS NOT NULL LIMIT ?1)"));
    TV_RETURN_IF_ERROR(clear.Bind(1, static_cast<int64_t>(limit)).Run());
    swept = static_cast<size_t>(db.Changes());
    return Status::Ok();
  });
  TV_RETURN_IF_ERROR(written);
  // The rows answer gone by their merchant's flag whatever the cache holds, and their keys are
  // destroyed; the cache is dropped anyway, so that none of their ciphertext lingers in memory.
  if (swept > 0) impl_->token_rows().Clear();
  return swept;
}

StatusOr<DataKeyRecord> SqliteStore::GetDataKey(std::string_view merchant, uint32_t version) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare("SELECT merchant_id, version, kek_version, wrapped, state, created_at, "
                         "encryptions_reserved, destroyed_at FROM data_keys "
                         "WHERE merchant_id = ?1 AND version = ?2"));
  stmt.Bind(1, merchant).Bind(2, int64_t{version});
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("dek_not_found", "no such data key version");
  DataKeyRecord r;
  r.merchant = stmt.ColumnText(0);
  TV_ASSIGN_OR_RETURN(r.version, stmt.ColumnU32(1));
  TV_ASSIGN_OR_RETURN(r.kek_version, stmt.ColumnU32(2));
  r.wrapped = stmt.ColumnBlob(3);
  r.state = DataKeyStateOf(stmt.ColumnText(4), stmt.ColumnIsNull(7));
  r.created_at_ms = stmt.ColumnInt(5);
  r.encryptions_reserved = static_cast<uint64_t>(stmt.ColumnInt(6));
  return r;
}

Status SqliteStore::AddDataKeyVersion(const DataKeyRecord& dek, AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement bump,
                        db.Prepare("UPDATE merchants SET current_dek_version = ?2 "
                                   "WHERE id = ?1 AND current_dek_version = ?3"));
    TV_RETURN_IF_ERROR(bump.Bind(1, std::string_view(dek.merchant))
                           .Bind(2, int64_t{dek.version})
                           .Bind(3, int64_t{dek.version} - 1)
                           .Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("dek_version_conflict",
                                     "the merchant's current DEK version changed concurrently");
    }
    TV_ASSIGN_OR_RETURN(Statement retire,
                        db.Prepare("UPDATE data_keys SET state = 'retired' "
                                   "WHERE merchant_id = ?1 AND version = ?2"));
    TV_RETURN_IF_ERROR(
        retire.Bind(1, std::string_view(dek.merchant)).Bind(2, int64_t{dek.version} - 1).Run());
    TV_RETURN_IF_ERROR(InsertDataKey(db, dek));
    return AppendAttached(db, audit);
  });
}

StatusOr<std::vector<DataKeyUsage>> SqliteStore::ListDataKeys(std::string_view merchant) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  // One read transaction, so that the counts and the versions agree. Counting uses the
  // (merchant_id, dek_version) index; only live tokens (a sealed value stored) count.
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare(
          "SELECT k.version, k.kek_version, k.state, k.created_at, k.encryptions_reserved, "
          "(SELECT COUNT(*) FROM tokens t WHERE t.merchant_id = k.merchant_id "
          "AND t.dek_version = k.version AND t.nonce IS NOT NULL), k.destroyed_at "
          "FROM data_keys k WHERE k.merchant_id = ?1 ORDER BY k.version"));
  stmt.Bind(1, merchant);
  std::vector<DataKeyUsage> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    DataKeyUsage u;
    TV_ASSIGN_OR_RETURN(u.version, stmt.ColumnU32(0));
    TV_ASSIGN_OR_RETURN(u.kek_version, stmt.ColumnU32(1));
    u.state = DataKeyStateOf(stmt.ColumnText(2), stmt.ColumnIsNull(6));
    u.created_at_ms = stmt.ColumnInt(3);
    u.encryptions_reserved = static_cast<uint64_t>(stmt.ColumnInt(4));
    u.live_tokens = static_cast<uint64_t>(stmt.ColumnInt(5));
    out.push_back(u);
  }
  if (out.empty()) return NotFoundError("merchant_not_found", "no such merchant");
  return out;
}

Status SqliteStore::ReserveEncryptions(std::string_view merchant, uint32_t version,
                                       uint64_t reserved) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("UPDATE data_keys SET encryptions_reserved = "
                                   "MAX(encryptions_reserved, ?3) "
                                   "WHERE merchant_id = ?1 AND version = ?2 AND state = 'active'"));
    TV_RETURN_IF_ERROR(
        stmt.Bind(1, merchant).Bind(2, int64_t{version}).Bind(3, static_cast<int64_t>(reserved)).Run());
    if (db.Changes() != 1) {
      return FailedPreconditionError("dek_not_active", "the data key version is not active");
    }
    return Status::Ok();
  });
}

namespace {

Status InsertTokenInTxn(Database& db, const TokenRecord& t) {
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      db.Prepare("INSERT INTO tokens (token, merchant_id, type, format, record_version, "
                 "dek_version, nonce, ciphertext, tag, created_at, expires_at, deleted_at, last4, "
                 "fingerprint, metadata, dedup_key) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"));
  return stmt.Bind(1, std::string_view(t.token))
      .Bind(2, std::string_view(t.merchant))
      .Bind(3, std::string_view(t.type))
      .Bind(4, std::string_view(t.format))
      .Bind(5, int64_t{t.record_version})
      .Bind(6, int64_t{t.dek_version})
      .Bind(7, ByteView(t.nonce))
      .Bind(8, ByteView(t.ciphertext))
      .Bind(9, ByteView(t.tag))
      .Bind(10, t.created_at_ms)
      .Bind(11, t.expires_at_ms)
      .Bind(12, t.deleted_at_ms)
      .Bind(13, t.last4 ? std::optional<std::string_view>(*t.last4) : std::nullopt)
      .Bind(14, t.fingerprint ? std::optional<std::string_view>(*t.fingerprint) : std::nullopt)
      .Bind(15, t.metadata ? std::optional<std::string_view>(*t.metadata) : std::nullopt)
      .Bind(16, t.dedup_key ? std::optional<std::string_view>(*t.dedup_key) : std::nullopt)
      .Run();
}

// The live deterministic token of 'merchant' under 'dedup_key' as of 'now_ms', if any. One that
// expired loses its sealed value and its key here (its row answers gone by expires_at anyway),
// so that the caller's new token can take the key; its cache key goes to 'evict'.
StatusOr<std::optional<TokenRecord>> TakeDeterministic(Database& db, std::string_view merchant,
                                                      std::string_view dedup_key, int64_t now_ms,
                                                      std::vector<std::string>& evict) {
  TokenRecord found;
  {
    TV_ASSIGN_OR_RETURN(Statement find,
                        db.Prepare(std::string(kTokenColumns) +
                                   "WHERE merchant_id = ?1 AND dedup_key = ?2"));
    find.Bind(1, merchant).Bind(2, dedup_key);
    TV_ASSIGN_OR_RETURN(bool row, find.Step());
    if (!row) return std::optional<TokenRecord>();
    TV_ASSIGN_OR_RETURN(found, ReadToken(find));
  }  // the statement is reset before the update below
  const bool expired = found.expires_at_ms && *found.expires_at_ms <= now_ms;
  if (!expired && !found.nonce.empty() && !found.deleted_at_ms) return std::optional(found);
  TV_ASSIGN_OR_RETURN(Statement release,
                      db.Prepare("UPDATE tokens SET nonce = NULL, ciphertext = NULL, tag = NULL, "
                                 "dedup_key = NULL WHERE merchant_id = ?1 AND token = ?2"));
  TV_RETURN_IF_ERROR(release.Bind(1, merchant).Bind(2, std::string_view(found.token)).Run());
  evict.push_back(TokenRowCache::Key(merchant, found.token));
  return std::optional<TokenRecord>();
}

Status InsertIdempotencyInTxn(Database& db, const IdempotencyRecord& r) {
  // An expired record under the same key may still be there (the sweeper is periodic).
  TV_ASSIGN_OR_RETURN(Statement drop, db.Prepare("DELETE FROM idempotency_keys "
                                                 "WHERE key_hash = ?1 AND expires_at <= ?2"));
  TV_RETURN_IF_ERROR(drop.Bind(1, ByteView(r.key_hash)).Bind(2, r.created_at_ms).Run());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      db.Prepare("INSERT INTO idempotency_keys (key_hash, request_hash, status, body, created_at, "
                 "expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
  return stmt.Bind(1, ByteView(r.key_hash))
      .Bind(2, ByteView(r.request_hash))
      .Bind(3, int64_t{r.status})
      .Bind(4, std::string_view(r.body))
      .Bind(5, r.created_at_ms)
      .Bind(6, r.expires_at_ms)
      .Run();
}

}  // namespace

Status SqliteStore::InsertToken(const TokenRecord& t, AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_RETURN_IF_ERROR(InsertTokenInTxn(db, t));
    return AppendAttached(db, audit);
  });
}

void SqliteStore::InsertTokenAsync(TokenRecord token, std::optional<AuditAttachment> audit,
                                   std::function<void(Status)> done) {
  // The record and attachment live in the operation until it has run.
  auto owned = std::make_shared<std::pair<TokenRecord, std::optional<AuditAttachment>>>(
      std::move(token), std::move(audit));
  impl_->WriteAsync(
      [owned](Database& db) -> Status {
        TV_RETURN_IF_ERROR(InsertTokenInTxn(db, owned->first));
        return AppendAttached(db, owned->second ? &*owned->second : nullptr);
      },
      std::move(done));
}

void SqliteStore::WriteTokensAsync(TokenWrite write, std::function<void(TokenWriteResult)> done) {
  struct Shared {
    TokenWrite write;
    TokenWriteResult result;
    std::vector<std::string> evict;  // expired deterministic tokens released by this write
  };
  auto shared = std::make_shared<Shared>();
  shared->write = std::move(write);
  impl_->WriteAsync(
      [shared](Database& db) -> Status {
        TokenWrite& w = shared->write;
        TokenWriteResult& r = shared->result;
        r.taken.clear();  // (a retried operation starts over)
        r.existing.assign(w.tokens.size(), std::nullopt);
        shared->evict.clear();
        for (size_t i = 0; i < w.tokens.size(); ++i) {
          const TokenRecord& t = w.tokens[i];
          if (t.dedup_key) {
            TV_ASSIGN_OR_RETURN(r.existing[i], TakeDeterministic(db, t.merchant, *t.dedup_key,
                                                                 t.created_at_ms, shared->evict));
            if (r.existing[i]) continue;
          }
          Status inserted = InsertTokenInTxn(db, t);
          if (inserted.code() == StatusCode::kAlreadyExists) {
            // The token string is taken (the only unique key left once the deterministic key
            // was checked above, on this single writer). Look for every such token first, so
            // that the caller redraws them all at once; the savepoint undoes the rest.
            r.taken.push_back(i);
            continue;
          }
          TV_RETURN_IF_ERROR(inserted);
        }
        if (!r.taken.empty()) {
          return AlreadyExistsError(kReasonTokenTaken, "the merchant already has that token");
        }
        std::optional<IdempotencyRecord> idempotency;
        AuditAttachment* audit = w.audit ? &*w.audit : nullptr;
        if (w.complete) {
          TV_RETURN_IF_ERROR(w.complete(r.existing, audit ? &audit->record : nullptr, &idempotency));
        }
        if (idempotency) TV_RETURN_IF_ERROR(InsertIdempotencyInTxn(db, *idempotency));
        return AppendAttached(db, audit);
      },
      [this, shared, done = std::move(done)](Status status) {
        for (const std::string& key : shared->evict) impl_->token_rows().Evict(key);
        shared->result.status = std::move(status);
        if (!shared->result.status.ok() &&
            shared->result.status.reason() != kReasonTokenTaken) {
          shared->result.taken.clear();
        }
        done(std::move(shared->result));
      });
}

StatusOr<IdempotencyRecord> SqliteStore::FindIdempotency(ByteView key_hash, int64_t now_ms) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare("SELECT key_hash, request_hash, status, body, created_at, expires_at "
                         "FROM idempotency_keys WHERE key_hash = ?1 AND expires_at > ?2"));
  stmt.Bind(1, key_hash).Bind(2, now_ms);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("idempotency_key_not_found", "no such idempotency key");
  IdempotencyRecord r;
  r.key_hash = stmt.ColumnBlob(0);
  r.request_hash = stmt.ColumnBlob(1);
  r.status = static_cast<int>(stmt.ColumnInt(2));
  r.body = stmt.ColumnText(3);
  r.created_at_ms = stmt.ColumnInt(4);
  r.expires_at_ms = stmt.ColumnInt(5);
  return r;
}

StatusOr<size_t> SqliteStore::SweepIdempotency(int64_t now_ms, size_t limit) {
  size_t swept = 0;
  Status written = Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("DELETE FROM idempotency_keys WHERE key_hash IN (SELECT "
                                   "key_hash FROM idempotency_keys WHERE expires_at <= ?1 "
                                   "LIMIT ?2)"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, now_ms).Bind(2, static_cast<int64_t>(limit)).Run());
    swept = static_cast<size_t>(db.Changes());
    return Status::Ok();
  });
  TV_RETURN_IF_ERROR(written);
  return swept;
}

Status SqliteStore::DeleteToken(std::string_view merchant, std::string_view token,
                                int64_t deleted_at_ms, AuditAttachment* audit) {
  // From now until after the commit (or the failure) the row is never served from the cache.
  const std::string key = TokenRowCache::Key(merchant, token);
  impl_->token_rows().BeginChange(key);
  ScopeGuard changed([&] { impl_->token_rows().EndChange(key); });
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("UPDATE tokens SET deleted_at = ?3, nonce = NULL, "
                                   "ciphertext = NULL, tag = NULL, dedup_key = NULL "
                                   "WHERE token = ?1 AND merchant_id = ?2 AND deleted_at IS NULL"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, token).Bind(2, merchant).Bind(3, deleted_at_ms).Run());
    if (db.Changes() != 1) return NotFoundError("token_not_found", "no such token");
    return AppendAttached(db, audit);
  });
}

StatusOr<size_t> SqliteStore::SweepExpired(int64_t now_ms, size_t limit) {
  std::vector<std::string> swept;
  Status written = Write([&](Database& db) -> Status {
    swept.clear();  // (a retried operation starts over)
    // One statement: the due rows (by the partial index tokens_expiring) lose their sealed value.
    TV_ASSIGN_OR_RETURN(
        Statement clear,
        db.Prepare("UPDATE tokens SET nonce = NULL, ciphertext = NULL, tag = NULL, dedup_key = NULL "
                   "WHERE id IN (SELECT id FROM tokens WHERE expires_at <= ?1 "
                   "AND nonce IS NOT NULL LIMIT ?2) RETURNING merchant_id, token"));
    clear.Bind(1, now_ms).Bind(2, static_cast<int64_t>(limit));
    for (;;) {
      TV_ASSIGN_OR_RETURN(bool row, clear.Step());
      if (!row) break;
      swept.push_back(TokenRowCache::Key(clear.ColumnText(0), clear.ColumnText(1)));
    }
    return Status::Ok();
  });
  TV_RETURN_IF_ERROR(written);
  // An expired row answers gone by its expires_at whatever the cache holds; evicting only drops
  // the ciphertext copy from memory.
  for (const std::string& key : swept) impl_->token_rows().Evict(key);
  return swept.size();
}

StatusOr<TokenRecord> SqliteStore::FindToken(std::string_view merchant, std::string_view token) {
  TokenRowCache& cache = impl_->token_rows();
  const std::string key = TokenRowCache::Key(merchant, token);
  if (std::optional<TokenRecord> cached = cache.Get(key)) return std::move(*cached);
  const uint64_t epoch = cache.epoch();  // before the read: see TokenRowCache
  TV_ASSIGN_OR_RETURN(TokenRecord row, ReadTokenRow(merchant, token));
  cache.PutIfUnchanged(key, row, epoch);
  return row;
}

StatusOr<TokenRecord> SqliteStore::ReadTokenRow(std::string_view merchant, std::string_view token) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare(std::string(kTokenColumns) + "WHERE merchant_id = ?1 AND token = ?2"));
  stmt.Bind(1, merchant).Bind(2, token);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("token_not_found", "no such token");
  return ReadToken(stmt);
}

namespace {

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    if (!out.empty()) out += ',';
    out += n;
  }
  return out;
}

std::vector<std::string> SplitNames(const std::string& joined) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < joined.size()) {
    size_t comma = joined.find(',', start);
    if (comma == std::string::npos) comma = joined.size();
    out.push_back(joined.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

constexpr char kPrincipalColumns[] =
    "SELECT name, roles, merchants, key_id, key_hash, created_at, deleted_at FROM principals ";

PrincipalRecord ReadPrincipal(const Statement& stmt) {
  PrincipalRecord p;
  p.name = stmt.ColumnText(0);
  p.roles = SplitNames(stmt.ColumnText(1));
  const std::string merchants = stmt.ColumnText(2);
  p.all_merchants = merchants == "*";
  if (!p.all_merchants) p.merchants = SplitNames(merchants);
  p.key_id = stmt.ColumnText(3);
  p.key_hash = stmt.ColumnBlob(4);
  p.created_at_ms = stmt.ColumnInt(5);
  if (!stmt.ColumnIsNull(6)) p.deleted_at_ms = stmt.ColumnInt(6);
  return p;
}

constexpr char kAuditColumns[] =
    "SELECT seq, time, request_id, principal, auth, source_ip, action, merchant, resource, "
    "resources, outcome, status, reason, prev_mac, mac FROM audit_log ";

AuditRecord ReadAudit(const Statement& stmt) {
  AuditRecord r;
  r.seq = stmt.ColumnInt(0);
  r.time_ms = stmt.ColumnInt(1);
  r.request_id = stmt.ColumnText(2);
  r.principal = stmt.ColumnText(3);
  r.auth = stmt.ColumnText(4);
  r.source_ip = stmt.ColumnText(5);
  r.action = stmt.ColumnText(6);
  r.merchant = stmt.ColumnText(7);
  r.resource = stmt.ColumnText(8);
  r.resources = SplitNames(stmt.ColumnText(9));
  r.outcome = stmt.ColumnText(10);
  r.status = static_cast<int>(stmt.ColumnInt(11));
  r.reason = stmt.ColumnText(12);
  r.prev_mac = stmt.ColumnBlob(13);
  r.mac = stmt.ColumnBlob(14);
  return r;
}

}  // namespace

Status SqliteStore::InsertPrincipal(const PrincipalRecord& p, AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("INSERT INTO principals (name, roles, merchants, key_id, key_hash, "
                                   "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, std::string_view(p.name))
                           .Bind(2, std::string_view(JoinNames(p.roles)))
                           .Bind(3, std::string_view(p.all_merchants ? std::string("*")
                                                                     : JoinNames(p.merchants)))
                           .Bind(4, std::string_view(p.key_id))
                           .Bind(5, ByteView(p.key_hash))
                           .Bind(6, p.created_at_ms)
                           .Run());
    return AppendAttached(db, audit);
  });
}

Status SqliteStore::DeletePrincipal(std::string_view name, int64_t deleted_at_ms,
                                    AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("UPDATE principals SET deleted_at = ?2 "
                                   "WHERE name = ?1 AND deleted_at IS NULL"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, name).Bind(2, deleted_at_ms).Run());
    if (db.Changes() != 1) return NotFoundError("principal_not_found", "no such principal");
    return AppendAttached(db, audit);
  });
}

StatusOr<PrincipalRecord> SqliteStore::FindPrincipalByKeyId(std::string_view key_id) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare(std::string(kPrincipalColumns) +
                                         "WHERE key_id = ?1 AND deleted_at IS NULL"));
  stmt.Bind(1, key_id);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("principal_not_found", "no such principal");
  return ReadPrincipal(stmt);
}

StatusOr<std::vector<PrincipalRecord>> SqliteStore::LivePrincipals() {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt, lease.db().Prepare(std::string(kPrincipalColumns) +
                                                         "WHERE deleted_at IS NULL ORDER BY name"));
  std::vector<PrincipalRecord> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(ReadPrincipal(stmt));
  }
  return out;
}

StatusOr<PrincipalRecord> SqliteStore::FindPrincipal(std::string_view name) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare(std::string(kPrincipalColumns) + "WHERE name = ?1"));
  stmt.Bind(1, name);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("principal_not_found", "no such principal");
  return ReadPrincipal(stmt);
}

StatusOr<DataKeyRecord> SqliteStore::GetFingerprintKey(std::string_view merchant) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT kek_version, wrapped, created_at "
                                         "FROM fingerprint_keys WHERE merchant_id = ?1"));
  stmt.Bind(1, merchant);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("fingerprint_key_not_found", "the merchant has no fingerprint key");
  DataKeyRecord r;
  r.merchant = std::string(merchant);
  r.version = 1;
  TV_ASSIGN_OR_RETURN(r.kek_version, stmt.ColumnU32(0));
  r.wrapped = stmt.ColumnBlob(1);
  r.created_at_ms = stmt.ColumnInt(2);
  return r;
}

Status SqliteStore::InsertFingerprintKey(const DataKeyRecord& key, AuditAttachment* audit) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("INSERT INTO fingerprint_keys (merchant_id, kek_version, "
                                   "wrapped, created_at) VALUES (?1, ?2, ?3, ?4)"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, std::string_view(key.merchant))
                           .Bind(2, int64_t{key.kek_version})
                           .Bind(3, ByteView(key.wrapped))
                           .Bind(4, key.created_at_ms)
                           .Run());
    return AppendAttached(db, audit);
  });
}

StatusOr<DataKeyRecord> SqliteStore::GetSystemKey(std::string_view name) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT version, kek_version, wrapped, created_at "
                                         "FROM system_keys WHERE name = ?1"));
  stmt.Bind(1, name);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("system_key_not_found", "no such system key");
  DataKeyRecord r;
  r.merchant = std::string(name);
  TV_ASSIGN_OR_RETURN(r.version, stmt.ColumnU32(0));
  TV_ASSIGN_OR_RETURN(r.kek_version, stmt.ColumnU32(1));
  r.wrapped = stmt.ColumnBlob(2);
  r.created_at_ms = stmt.ColumnInt(3);
  return r;
}

Status SqliteStore::InsertSystemKey(std::string_view name, const DataKeyRecord& key) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare("INSERT INTO system_keys (name, version, kek_version, wrapped, "
                                   "created_at) VALUES (?1, ?2, ?3, ?4, ?5)"));
    return stmt.Bind(1, name)
        .Bind(2, int64_t{key.version})
        .Bind(3, int64_t{key.kek_version})
        .Bind(4, ByteView(key.wrapped))
        .Bind(5, key.created_at_ms)
        .Run();
  });
}

namespace {

// Appends 'record' inside the caller's transaction (on the writer thread).
Status AppendAuditInTxn(Database& db, AuditRecord& record, const AuditMac& mac) {
  // Records are rendered as JSON (API.md, exports) and verified from that rendering: text that is
  // not UTF-8 (a token taken from a URL, say) is made so before it is MAC'd and signed.
  for (std::string* field : {&record.request_id, &record.principal, &record.auth, &record.source_ip,
                             &record.action, &record.merchant, &record.resource, &record.outcome,
                             &record.reason}) {
    MakeValidUtf8(*field);
  }
  for (std::string& r : record.resources) MakeValidUtf8(r);
  // Runs on the writer thread, so appends are serialised and the chain is read and extended
  // inside one transaction: a rolled-back batch rolls its records back with it.
  // Extend the chain from its recorded head, not from whatever row is last: if the newest
  // records were deleted, the gap stays visible instead of being papered over.
  TV_ASSIGN_OR_RETURN(Statement head_row,
                      db.Prepare("SELECT seq, mac FROM audit_head WHERE id = 1"));
  TV_ASSIGN_OR_RETURN(bool has_head, head_row.Step());
  if (has_head) {
    record.seq = head_row.ColumnInt(0) + 1;
    record.prev_mac = head_row.ColumnBlob(1);
  } else {
    TV_ASSIGN_OR_RETURN(Statement last,
                        db.Prepare("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1"));
    TV_ASSIGN_OR_RETURN(bool row, last.Step());
    record.seq = row ? last.ColumnInt(0) + 1 : 1;
    record.prev_mac = row ? last.ColumnBlob(1) : Bytes(32, 0);
  }
  TV_ASSIGN_OR_RETURN(record.mac, mac.RecordMac(record));
  TV_ASSIGN_OR_RETURN(Bytes head_mac, mac.HeadMac(record.seq, record.mac));
  TV_ASSIGN_OR_RETURN(
      Statement insert,
      db.Prepare("INSERT INTO audit_log (seq, time, request_id, principal, auth, source_ip, "
                 "action, merchant, resource, resources, outcome, status, reason, prev_mac, mac) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"));
  TV_RETURN_IF_ERROR(insert.Bind(1, record.seq)
                         .Bind(2, record.time_ms)
                         .Bind(3, std::string_view(record.request_id))
                         .Bind(4, std::string_view(record.principal))
                         .Bind(5, std::string_view(record.auth))
                         .Bind(6, std::string_view(record.source_ip))
                         .Bind(7, std::string_view(record.action))
                         .Bind(8, std::string_view(record.merchant))
                         .Bind(9, std::string_view(record.resource))
                         .Bind(10, std::string_view(JoinNames(record.resources)))
                         .Bind(11, std::string_view(record.outcome))
                         .Bind(12, int64_t{record.status})
                         .Bind(13, std::string_view(record.reason))
                         .Bind(14, ByteView(record.prev_mac))
                         .Bind(15, ByteView(record.mac))
                         .Run());
  TV_ASSIGN_OR_RETURN(Statement head,
                      db.Prepare("INSERT INTO audit_head (id, seq, mac, head_mac) "
                                 "VALUES (1, ?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET "
                                 "seq = excluded.seq, mac = excluded.mac, head_mac = excluded.head_mac"));
  return head.Bind(1, record.seq).Bind(2, ByteView(record.mac)).Bind(3, ByteView(head_mac)).Run();
}

}  // namespace

StatusOr<AuditRecord> SqliteStore::AppendAudit(AuditRecord record, const AuditMac& mac) {
  Status s = Write([&](Database& db) -> Status { return AppendAuditInTxn(db, record, mac); });
  if (!s.ok()) return s;
  return record;
}

void SqliteStore::AppendAuditAsync(AuditRecord record, const AuditMac& mac,
                                   std::vector<RevealCharge> charges,
                                   std::function<void(const StatusOr<AuditRecord>&)> done) {
  auto owned = std::make_shared<AuditRecord>(std::move(record));
  impl_->WriteAsync(
      [owned, &mac, charges = std::move(charges)](Database& db) -> Status {
        TV_RETURN_IF_ERROR(AppendAuditInTxn(db, *owned, mac));
        for (const RevealCharge& c : charges) {
          TV_ASSIGN_OR_RETURN(Statement stmt,
                              db.Prepare("INSERT INTO reveal_usage (principal, merchant, reveal, bucket, count) "
                                         "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (principal, merchant, reveal, bucket) "
                                         "DO UPDATE SET count = count + excluded.count"));
          TV_RETURN_IF_ERROR(stmt.Bind(1, std::string_view(c.principal))
                                 .Bind(2, std::string_view(c.merchant))
                                 .Bind(3, std::string_view(c.plain ? "plain" : "masked"))
                                 .Bind(4, c.bucket_ms)
                                 .Bind(5, c.count)
                                 .Run());
        }
        return Status::Ok();
      },
                    [owned, done = std::move(done)](Status s) {
                      if (!s.ok()) {
                        done(std::move(s));
                      } else {
                        done(std::move(*owned));
                      }
                    });
}

StatusOr<std::vector<AuditRecord>> SqliteStore::ScanAudit(const AuditQuery& q) {
  // One fixed statement; an unused filter binds NULL and matches everything.
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(
      Statement stmt,
      lease.db().Prepare(std::string(kAuditColumns) +
                         "WHERE seq > ?1 "
                         "AND (?2 IS NULL OR time >= ?2) AND (?3 IS NULL OR time < ?3) "
                         "AND (?4 IS NULL OR principal = ?4) AND (?5 IS NULL OR merchant = ?5) "
                         "AND (?6 IS NULL OR action = ?6) AND (?7 IS NULL OR outcome = ?7) "
                         "AND (?8 = 1 OR (merchant != '' AND instr(?9, ',' || merchant || ',') > 0)) "
                         "ORDER BY seq LIMIT ?10"));
  auto opt = [&](int i, const std::string& v) {
    if (v.empty()) {
      stmt.BindNull(i);
    } else {
      stmt.Bind(i, std::string_view(v));
    }
  };
  stmt.Bind(1, q.after_seq).Bind(2, q.since_ms).Bind(3, q.until_ms);
  opt(4, q.principal);
  opt(5, q.merchant);
  opt(6, q.action);
  opt(7, q.outcome);
  const std::string scope = "," + JoinNames(q.merchants) + ",";
  stmt.Bind(8, int64_t{q.all_merchants ? 1 : 0}).Bind(9, std::string_view(scope));
  stmt.Bind(10, static_cast<int64_t>(q.limit));
  std::vector<AuditRecord> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(ReadAudit(stmt));
  }
  return out;
}

StatusOr<AuditHead> SqliteStore::GetAuditHead() {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT seq, mac, head_mac FROM audit_head WHERE id = 1"));
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("audit_empty", "the audit log is empty");
  return AuditHead{stmt.ColumnInt(0), stmt.ColumnBlob(1), stmt.ColumnBlob(2)};
}

namespace {

constexpr char kCheckpointColumns[] =
    "first_seq, last_seq, time, chain_mac, prev_hash, digests, key_id, signature";

AuditCheckpoint CheckpointFromRow(Statement& stmt) {
  AuditCheckpoint c;
  c.first_seq = stmt.ColumnInt(0);
  c.last_seq = stmt.ColumnInt(1);
  c.time_ms = stmt.ColumnInt(2);
  c.chain_mac = stmt.ColumnBlob(3);
  c.prev_hash = stmt.ColumnBlob(4);
  c.digests = stmt.ColumnBlob(5);
  c.key_id = stmt.ColumnText(6);
  c.signature = stmt.ColumnBlob(7);
  return c;
}

}  // namespace

StatusOr<std::vector<RevealCharge>> SqliteStore::LoadRevealUsage(int64_t since_ms) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare("SELECT principal, merchant, reveal, bucket, count FROM reveal_usage "
                                         "WHERE bucket >= ?1"));
  stmt.Bind(1, since_ms);
  std::vector<RevealCharge> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(RevealCharge{stmt.ColumnText(0), stmt.ColumnText(1), stmt.ColumnText(2) == "plain",
                               stmt.ColumnInt(3), stmt.ColumnInt(4)});
  }
  return out;
}

StatusOr<size_t> SqliteStore::PruneRevealUsage(int64_t before_ms) {
  size_t pruned = 0;
  Status deleted = Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt, db.Prepare("DELETE FROM reveal_usage WHERE bucket < ?1"));
    TV_RETURN_IF_ERROR(stmt.Bind(1, before_ms).Run());
    pruned = static_cast<size_t>(db.Changes());
    return Status::Ok();
  });
  if (!deleted.ok()) return deleted;
  return pruned;
}

Status SqliteStore::InsertAuditCheckpoint(const AuditCheckpoint& c) {
  return Write([&](Database& db) -> Status {
    TV_ASSIGN_OR_RETURN(Statement stmt,
                        db.Prepare(std::string("INSERT INTO audit_checkpoints (") +
                                   kCheckpointColumns + ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"));
    Status s = stmt.Bind(1, c.first_seq)
                   .Bind(2, c.last_seq)
                   .Bind(3, c.time_ms)
                   .Bind(4, ByteView(c.chain_mac))
                   .Bind(5, ByteView(c.prev_hash))
                   .Bind(6, ByteView(c.digests))
                   .Bind(7, std::string_view(c.key_id))
                   .Bind(8, ByteView(c.signature))
                   .Run();
    if (s.code() == StatusCode::kAlreadyExists) {
      return AlreadyExistsError("checkpoint_exists", "a checkpoint ends at this record already");
    }
    return s;
  });
}

StatusOr<std::vector<AuditCheckpoint>> SqliteStore::ScanAuditCheckpoints(int64_t after_last_seq,
                                                                         size_t limit) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare(std::string("SELECT ") + kCheckpointColumns +
                                         " FROM audit_checkpoints WHERE last_seq > ?1"
                                         " ORDER BY last_seq LIMIT ?2"));
  stmt.Bind(1, after_last_seq).Bind(2, static_cast<int64_t>(limit));
  std::vector<AuditCheckpoint> out;
  for (;;) {
    TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(CheckpointFromRow(stmt));
  }
  return out;
}

StatusOr<AuditCheckpoint> SqliteStore::LastAuditCheckpoint(int64_t at_or_before) {
  TV_ASSIGN_OR_RETURN(ReadPool::Lease lease, impl_->Reader());
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      lease.db().Prepare(std::string("SELECT ") + kCheckpointColumns +
                                         " FROM audit_checkpoints WHERE last_seq <= ?1"
                                         " ORDER BY last_seq DESC LIMIT 1"));
  stmt.Bind(1, at_or_before);
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return NotFoundError("no_checkpoint", "the audit trail has no checkpoint yet");
  return CheckpointFromRow(stmt);
}

}  // namespace tokenvault::storage
