// Thin RAII layer over SQLite: a connection, cached prepared statements, transactions.
// Internal to storage/: no other module sees SQLite. SQL is always a literal; input only ever
// reaches SQLite through bind parameters.
#ifndef TOKENVAULT_STORAGE_SQLITE_H_
#define TOKENVAULT_STORAGE_SQLITE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "vault/base/bytes.h"
#include "vault/base/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace tokenvault::storage {

// Reasons (Status::reason()) of storage errors.
inline constexpr char kReasonStorageUnavailable[] = "storage_unavailable";  // kUnavailable
inline constexpr char kReasonStorageCorrupt[] = "storage_corrupt";          // kDataLoss
inline constexpr char kReasonConstraint[] = "constraint";                   // kAlreadyExists

// A prepared statement leased from a Database's cache. Reset and unbound when destroyed.
// Column and parameter indexes: parameters from 1, columns from 0 (SQLite's convention).
class Statement {
 public:
  Statement(Statement&& other) noexcept
      : stmt_(std::exchange(other.stmt_, nullptr)),
        in_use_(std::exchange(other.in_use_, nullptr)),
        owned_(other.owned_),
        bind_error_(std::move(other.bind_error_)) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement();

  Statement& Bind(int index, int64_t v);
  Statement& Bind(int index, std::string_view v);
  Statement& Bind(int index, ByteView v);
  Statement& BindNull(int index);
  Statement& Bind(int index, std::optional<int64_t> v) {
    return v ? Bind(index, *v) : BindNull(index);
  }
  Statement& Bind(int index, std::optional<std::string_view> v) {
    return v ? Bind(index, *v) : BindNull(index);
  }

  // true: a row is ready; false: done. Errors map to Status (constraint -> kAlreadyExists).
  StatusOr<bool> Step();
  // Step() expecting no row (INSERT/UPDATE/DELETE).
  Status Run();

  int64_t ColumnInt(int col) const;
  // A column that holds a version or counter in [0, 2^32): anything else means the row was
  // altered, reported as kDataLoss (integrity_failure).
  StatusOr<uint32_t> ColumnU32(int col) const;
  std::string ColumnText(int col) const;
  Bytes ColumnBlob(int col) const;
  bool ColumnIsNull(int col) const;

 private:
  friend class Database;
  // A cached statement ('in_use' is its cache slot's flag) or, when 'in_use' is null, one this
  // Statement owns and finalises.
  Statement(sqlite3_stmt* stmt, bool* in_use) : stmt_(stmt), in_use_(in_use), owned_(!in_use) {}
  sqlite3_stmt* stmt_;
  bool* in_use_;
  bool owned_;
  Status bind_error_;
};

class Database {
 public:
  struct Options {
    bool read_only = false;  // PRAGMA query_only: the connection can never write
    int busy_timeout_ms = 5000;
  };

  // Opens (creating if needed, with mode 0600) the database at 'path' with the pragmas of a
  // durable store: WAL, synchronous=FULL, foreign_keys=ON, secure_delete=ON, busy timeout.
  static StatusOr<std::unique_ptr<Database>> Open(const std::string& path, const Options& options);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // A statement for 'sql', prepared once per connection and cached. If the cached one is still
  // held by a caller (nested use of the same SQL), a private one is prepared instead.
  // REQUIRES: 'sql' is a literal, never built from input.
  StatusOr<Statement> Prepare(std::string_view sql);

  // Runs one or more statements without parameters (pragmas, DDL, BEGIN/COMMIT).
  Status Exec(std::string_view sql);

  // Rows changed by the last INSERT/UPDATE/DELETE.
  int64_t Changes() const;

  // False once SQLite has rolled the open transaction back by itself (SQLITE_FULL, IOERR, BUSY,
  // NOMEM may do that), or when none is open.
  bool InTransaction() const;

  // Maps the connection's last error to a Status.
  Status LastError(int rc, std::string_view what) const;

  // Copies the whole database, as one consistent snapshot, into a new file at 'path' (mode 0600;
  // it must not exist) with SQLite's online backup API: other connections, in this process or
  // another, keep reading and writing meanwhile (in WAL mode the copy is one read transaction).
  // The copy is fsync'd and its integrity checked before this returns.
  Status BackupTo(const std::string& path);

  // Frames in the WAL after this connection's last commit (SQLite's WAL hook). Installing the
  // hook replaces SQLite's automatic checkpoints on this connection, which the store runs itself.
  void TrackWalSize();
  int wal_frames() const { return wal_frames_; }

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  int wal_frames_ = 0;  // written by the WAL hook, on the thread using this connection
  struct Cached {
    sqlite3_stmt* stmt;
    bool in_use;
  };
  sqlite3* db_;
  std::unordered_map<std::string, std::unique_ptr<Cached>> cache_;
};

// BEGIN IMMEDIATE ... COMMIT. Rolls back on destruction unless committed.
class Transaction {
 public:
  static StatusOr<Transaction> Begin(Database& db);
  Transaction(Transaction&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();
  Status Commit();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_;
};

// SAVEPOINT ... RELEASE, nested inside a transaction; rolls back to the savepoint on destruction
// unless released. Lets one operation of a group commit fail without undoing the others.
class Savepoint {
 public:
  static StatusOr<Savepoint> Begin(Database& db);
  Savepoint(Savepoint&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Savepoint& operator=(Savepoint&&) = delete;
  ~Savepoint();
  Status Release();

 private:
  explicit Savepoint(Database* db) : db_(db) {}
  Database* db_;
};

}  // namespace tokenvault::storage

#endif  // TOKENVAULT_STORAGE_SQLITE_H_
