#include "storage/sqlite.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tokenvault::storage {
namespace {

Status StatusFromRc(int rc, std::string_view what, const char* detail) {
  std::string message = std::string(what) + ": " + sqlite3_errstr(rc);
  if (detail != nullptr && std::strcmp(detail, sqlite3_errstr(rc)) != 0) {
    message += " (";
    message += detail;
    message += ")";
  }
  if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return AlreadyExistsError(kReasonConstraint, std::move(message));
  }
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      // CHECK, NOT NULL, FOREIGN KEY: our own code wrote something the schema forbids.
      return InternalError("constraint_violation", std::move(message));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return DataLossError(kReasonStorageCorrupt, std::move(message));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
      return UnavailableError(kReasonStorageUnavailable, std::move(message));
    default:
      return InternalError("storage_error", std::move(message));
  }
}

}  // namespace

Statement::~Statement() {
  if (stmt_ == nullptr) return;
  if (owned_) {
    sqlite3_finalize(stmt_);
    return;
  }
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  *in_use_ = false;
}

Statement& Statement::Bind(int index, int64_t v) {
  const int rc = sqlite3_bind_int64(stmt_, index, v);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = StatusFromRc(rc, "bind", nullptr);
  return *this;
}

Statement& Statement::Bind(int index, std::string_view v) {
  const int rc = sqlite3_bind_text(stmt_, index, v.data(), static_cast<int>(v.size()),
                                   SQLITE_TRANSIENT);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = StatusFromRc(rc, "bind", nullptr);
  return *this;
}

Statement& Statement::Bind(int index, ByteView v) {
  // A zero-length blob must still be a blob, not NULL: pass a non-null pointer.
  static const uint8_t kEmpty = 0;
  const int rc = sqlite3_bind_blob(stmt_, index, v.empty() ? &kEmpty : v.data(),
                                   static_cast<int>(v.size()), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = StatusFromRc(rc, "bind", nullptr);
  return *this;
}

Statement& Statement::BindNull(int index) {
  const int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = StatusFromRc(rc, "bind", nullptr);
  return *this;
}

StatusOr<bool> Statement::Step() {
  if (!bind_error_.ok()) return bind_error_;
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return StatusFromRc(rc, "sqlite3_step", sqlite3_errmsg(sqlite3_db_handle(stmt_)));
}

Status Statement::Run() {
  TV_ASSIGN_OR_RETURN(bool row, Step());
  if (row) return InternalError("storage_error", "statement returned a row where none was expected");
  return Status::Ok();
}

int64_t Statement::ColumnInt(int col) const { return sqlite3_column_int64(stmt_, col); }

StatusOr<uint32_t> Statement::ColumnU32(int col) const {
  const int64_t v = sqlite3_column_int64(stmt_, col);
  if (sqlite3_column_type(stmt_, col) != SQLITE_INTEGER || v < 0 || v > 0xFFFFFFFFll) {
    return DataLossError("integrity_failure", "a stored version is out of range");
  }
  return static_cast<uint32_t>(v);
}

std::string Statement::ColumnText(int col) const {
  const unsigned char* text = sqlite3_column_text(stmt_, col);
  const int n = sqlite3_column_bytes(stmt_, col);
  return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), n);
}

Bytes Statement::ColumnBlob(int col) const {
  const auto* blob = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
  const int n = sqlite3_column_bytes(stmt_, col);
  return blob == nullptr ? Bytes() : Bytes(blob, blob + n);
}

bool Statement::ColumnIsNull(int col) const {
  return sqlite3_column_type(stmt_, col) == SQLITE_NULL;
}

StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& path,
                                                   const Options& options) {
  if (!options.read_only) {
    // Create the file ourselves so that it, and the -wal and -shm files SQLite derives from it,
    // are private to the vault's user. Only a file that does not exist yet is opened here:
    // closing a descriptor of a file this process has open in SQLite drops every POSIX lock the
    // process holds on it (fcntl locks belong to the process), and another process - a backup,
    // an operator's sqlite3 - would then take itself for the last connection and delete the WAL
    // under the running vault ("How To Corrupt An SQLite Database File", 2.2).
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
      close(fd);  // a new file: no connection of this process has it open yet
    } else if (errno != EEXIST) {
      return UnavailableError(kReasonStorageUnavailable,
                              "cannot open database " + path + ": " + std::strerror(errno));
    }
  }
  sqlite3* raw = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  if (rc != SQLITE_OK) {
    Status s = StatusFromRc(rc, "sqlite3_open_v2", raw ? sqlite3_errmsg(raw) : nullptr);
    sqlite3_close_v2(raw);
    return s;
  }
  std::unique_ptr<Database> db(new Database(raw));
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, options.busy_timeout_ms);
  // An acknowledged write survives power loss: WAL with a sync on every commit.
  TV_RETURN_IF_ERROR(db->Exec(
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=FULL;"
      "PRAGMA foreign_keys=ON;"
      "PRAGMA secure_delete=ON;"
      "PRAGMA trusted_schema=OFF;"
      "PRAGMA cell_size_check=ON;"));
  {
    TV_ASSIGN_OR_RETURN(Statement mode, db->Prepare("PRAGMA journal_mode"));
    TV_ASSIGN_OR_RETURN(bool row, mode.Step());
    if (!row || mode.ColumnText(0) != "wal") {
      return UnavailableError(kReasonStorageUnavailable, "database " + path + " refused WAL mode");
    }
  }
  if (options.read_only) TV_RETURN_IF_ERROR(db->Exec("PRAGMA query_only=ON;"));
  return db;
}

Database::~Database() {
  for (auto& [sql, cached] : cache_) sqlite3_finalize(cached->stmt);
  sqlite3_close_v2(db_);
}

StatusOr<Statement> Database::Prepare(std::string_view sql) {
  auto it = cache_.find(std::string(sql));
  if (it != cache_.end() && !it->second->in_use) {
    it->second->in_use = true;
    return Statement(it->second->stmt, &it->second->in_use);
  }
  sqlite3_stmt* stmt = nullptr;
  const bool cache = it == cache_.end();
  const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                    cache ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, nullptr);
  if (rc != SQLITE_OK) return LastError(rc, "sqlite3_prepare_v3");
  if (!cache) return Statement(stmt, nullptr);  // the cached one is busy: a private copy
  auto slot = std::make_unique<Cached>(Cached{stmt, true});
  bool* in_use = &slot->in_use;
  cache_.emplace(std::string(sql), std::move(slot));
  return Statement(stmt, in_use);
}

Status Database::Exec(std::string_view sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, std::string(sql).c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    Status s = StatusFromRc(rc, "sqlite3_exec", err);
    sqlite3_free(err);
    return s;
  }
  return Status::Ok();
}

void Database::TrackWalSize() {
  sqlite3_wal_hook(
      db_,
      [](void* self, sqlite3*, const char*, int frames) {
        static_cast<Database*>(self)->wal_frames_ = frames;
        return SQLITE_OK;
      },
      this);
}

int64_t Database::Changes() const { return sqlite3_changes64(db_); }

bool Database::InTransaction() const { return sqlite3_get_autocommit(db_) == 0; }

Status Database::BackupTo(const std::string& path) {
  // O_EXCL first: never overwrite a file, and the copy is 0600 from its first byte.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return UnavailableError(kReasonStorageUnavailable, "cannot create " + path + ": " + std::strerror(errno));
  }
  ::close(fd);
  sqlite3* copy = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &copy, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    Status s = StatusFromRc(rc, "open " + path, copy ? sqlite3_errmsg(copy) : nullptr);
    sqlite3_close(copy);
    return s;
  }
  auto close_copy = [&copy] {
    sqlite3_close(copy);
    copy = nullptr;
  };
  sqlite3_backup* backup = sqlite3_backup_init(copy, "main", db_, "main");
  if (backup == nullptr) {
    Status s = StatusFromRc(sqlite3_errcode(copy), "backup of the database", sqlite3_errmsg(copy));
    close_copy();
    return s;
  }
  // All pages in one step: one read transaction, so one consistent snapshot. A writer holding
  // the lock for a moment (rollback-journal mode only) is waited for, bounded.
  for (int attempt = 0;; ++attempt) {
    rc = sqlite3_backup_step(backup, -1);
    if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && attempt < 200) {
      sqlite3_sleep(25);
      continue;
    }
    break;
  }
  const int finished = sqlite3_backup_finish(backup);
  if (rc != SQLITE_DONE) {
    Status s = StatusFromRc(rc, "backup of the database", sqlite3_errmsg(copy));
    close_copy();
    return s;
  }
  if (finished != SQLITE_OK) {
    Status s = StatusFromRc(finished, "backup of the database", sqlite3_errmsg(copy));
    close_copy();
    return s;
  }
  close_copy();
  // The copy on its own: durable (the WAL folded in and fsync'd), then checked whole.
  TV_ASSIGN_OR_RETURN(std::unique_ptr<Database> check, Database::Open(path, {}));
  TV_RETURN_IF_ERROR(check->Exec("PRAGMA wal_checkpoint(TRUNCATE)"));
  TV_ASSIGN_OR_RETURN(Statement integrity, check->Prepare("PRAGMA integrity_check"));
  TV_ASSIGN_OR_RETURN(bool row, integrity.Step());
  if (!row || integrity.ColumnText(0) != "ok") {
    return DataLossError(kReasonStorageCorrupt, "the backup copy fails PRAGMA integrity_check");
  }
  return Status::Ok();
}

Status Database::LastError(int rc, std::string_view what) const {
  return StatusFromRc(rc, what, sqlite3_errmsg(db_));
}

StatusOr<Transaction> Transaction::Begin(Database& db) {
  TV_RETURN_IF_ERROR(db.Exec("BEGIN IMMEDIATE"));
  return Transaction(&db);
}

Transaction::~Transaction() {
  if (db_ != nullptr) db_->Exec("ROLLBACK").IgnoreError();  // nothing more to do if it fails
}

Status Transaction::Commit() {
  Database* db = std::exchange(db_, nullptr);
  if (db == nullptr) return InternalError("storage_error", "transaction already finished");
  if (!db->InTransaction()) {
    return UnavailableError(kReasonStorageUnavailable,
                            "the transaction was rolled back by SQLite before COMMIT");
  }
  Status s = db->Exec("COMMIT");
  if (!s.ok()) db->Exec("ROLLBACK").IgnoreError();
  return s;
}

namespace {

// Savepoints run once per write operation: through cached statements, not sqlite3_exec, which
// would parse the SQL every time.
Status RunCached(Database& db, std::string_view sql) {
  TV_ASSIGN_OR_RETURN(Statement stmt, db.Prepare(sql));
  return stmt.Run();
}

}  // namespace

StatusOr<Savepoint> Savepoint::Begin(Database& db) {
  TV_RETURN_IF_ERROR(RunCached(db, "SAVEPOINT op"));
  return Savepoint(&db);
}

Savepoint::~Savepoint() {
  if (db_ != nullptr) {
    RunCached(*db_, "ROLLBACK TO op").IgnoreError();
    RunCached(*db_, "RELEASE op").IgnoreError();
  }
}

Status Savepoint::Release() {
  Database* db = std::exchange(db_, nullptr);
  if (db == nullptr) return InternalError("storage_error", "savepoint already finished");
  Status s = RunCached(*db, "RELEASE op");
  if (!s.ok() && db->InTransaction()) {
    RunCached(*db, "ROLLBACK TO op").IgnoreError();
    RunCached(*db, "RELEASE op").IgnoreError();
  }
  return s;
}

}  // namespace tokenvault::storage
