#include "storage/migrations.h"

#include <string>

namespace tokenvault::storage {
namespace {

// 001: merchants, their wrapped data keys, and tokens. The audit trail and idempotency keys
// arrive as later migrations of their own.
constexpr char kMigration001[] = R"sql(
CREATE TABLE merchants (
  id                  TEXT PRIMARY KEY NOT NULL,
  created_at          INTEGER NOT NULL,
  kek_version         INTEGER NOT NULL CHECK (kek_version > 0),
  current_dek_version INTEGER NOT NULL CHECK (current_dek_version > 0),
  state               TEXT NOT NULL CHECK (state IN ('creating', 'active')),
  creation_id         BLOB NOT NULL CHECK (length(creation_id) BETWEEN 1 AND 64)
) WITHOUT ROWID;

-- DEKs exist here only wrapped by the merchant's KEK (docs/formats.md).
CREATE TABLE data_keys (
  merchant_id          TEXT NOT NULL REFERENCES merchants(id),
  version              INTEGER NOT NULL CHECK (version > 0),
  kek_version          INTEGER NOT NULL CHECK (kek_version > 0),
  wrapped              BLOB NOT NULL,
  state                TEXT NOT NULL CHECK (state IN ('active', 'retired')),
  created_at           INTEGER NOT NULL,
  encryptions_reserved INTEGER NOT NULL DEFAULT 0 CHECK (encryptions_reserved >= 0),
  PRIMARY KEY (merchant_id, version)
) WITHOUT ROWID;

-- Rows append in rowid order (the table's b-tree grows at its end, which group commit rewards);
-- only the narrow token index takes random inserts. Never a plaintext value: the sealed value is
-- nonce + ciphertext + tag, all NULL once the token is deleted. last4 is the last four digits of
-- a card or SSN (PCI DSS allows them beside a token; API.md returns them in the token object).
CREATE TABLE tokens (
  id             INTEGER PRIMARY KEY,
  token          TEXT NOT NULL,
  merchant_id    TEXT NOT NULL REFERENCES merchants(id),
  type           TEXT NOT NULL,
  format         TEXT NOT NULL,
  record_version INTEGER NOT NULL,
  dek_version    INTEGER NOT NULL,
  nonce          BLOB CHECK (nonce IS NULL OR length(nonce) = 12),
  ciphertext     BLOB,
  tag            BLOB CHECK (tag IS NULL OR length(tag) = 16),
  last4          TEXT CHECK (last4 IS NULL OR length(last4) = 4),
  created_at     INTEGER NOT NULL,
  expires_at     INTEGER,
  deleted_at     INTEGER,
  CHECK ((nonce IS NULL) = (ciphertext IS NULL) AND (nonce IS NULL) = (tag IS NULL))
);
CREATE UNIQUE INDEX tokens_by_token ON tokens(token);
CREATE INDEX tokens_by_merchant_dek ON tokens(merchant_id, dek_version);
)sql";

// 002: principals, vault-wide wrapped keys, the audit trail.
constexpr char kMigration002[] = R"sql(
-- Never an API key: its id and a hash of its secret. Roles and merchants are comma-separated
-- names (names cannot contain commas); merchants is '*' for all.
CREATE TABLE principals (
  name       TEXT PRIMARY KEY NOT NULL,
  roles      TEXT NOT NULL,
  merchants  TEXT NOT NULL,
  key_id     TEXT NOT NULL UNIQUE,
  key_hash   BLOB NOT NULL CHECK (length(key_hash) = 32),
  created_at INTEGER NOT NULL,
  deleted_at INTEGER
) WITHOUT ROWID;

-- Vault-wide keys (the audit MAC key), wrapped like DEKs.
CREATE TABLE system_keys (
  name        TEXT PRIMARY KEY NOT NULL,
  version     INTEGER NOT NULL,
  kek_version INTEGER NOT NULL,
  wrapped     BLOB NOT NULL,
  created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- The audit chain: mac = HMAC(audit key, prev_mac || canonical(record)), docs/audit.md.
CREATE TABLE audit_log (
  seq        INTEGER PRIMARY KEY,
  time       INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  principal  TEXT NOT NULL,
  auth       TEXT NOT NULL,
  source_ip  TEXT NOT NULL,
  action     TEXT NOT NULL,
  merchant   TEXT NOT NULL,
  resource   TEXT NOT NULL,
  resources  TEXT NOT NULL,
  outcome    TEXT NOT NULL CHECK (outcome IN ('allowed', 'denied', 'error')),
  status     INTEGER NOT NULL,
  reason     TEXT NOT NULL,
  prev_mac   BLOB NOT NULL CHECK (length(prev_mac) = 32),
  mac        BLOB NOT NULL CHECK (length(mac) = 32)
);
CREATE INDEX audit_by_merchant ON audit_log(merchant, seq);
CREATE INDEX audit_by_principal ON audit_log(principal, seq);

CREATE TABLE audit_head (
  id       INTEGER PRIMARY KEY CHECK (id = 1),
  seq      INTEGER NOT NULL,
  mac      BLOB NOT NULL,
  head_mac BLOB NOT NULL
);
)sql";

// 003: keyed fingerprints, token metadata, expiry, per-merchant token uniqueness (API.md, Tokens). One fingerprint key per merchant, wrapped by the
// merchant's KEK like a DEK (created on first use, so merchants made before this migration get
// one too), and each token's fingerprint: fp_ + base62 of HMAC-SHA256 of the normalised value
// under that key - a keyed hash, useless without the HSM. Deliberately not indexed: an index on
// every token's fingerprint takes a random-page write per insert and cost a quarter of tokenize
// throughput (docs/benchmarks.md); deterministic tokens will index only their own rows.
constexpr char kMigration003[] = R"sql(
CREATE TABLE fingerprint_keys (
  merchant_id TEXT PRIMARY KEY REFERENCES merchants(id),
  kek_version INTEGER NOT NULL,
  wrapped     BLOB NOT NULL,
  created_at  INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE tokens ADD COLUMN fingerprint TEXT CHECK (fingerprint IS NULL OR length(fingerprint) = 46);
-- Token metadata: a JSON object of at most 16 string pairs (API.md), validated by the service.
-- For references (order ids and the like), never for values.
ALTER TABLE tokens ADD COLUMN metadata TEXT CHECK (metadata IS NULL OR length(metadata) <= 8192);
-- Live tokens with a time to live, for the expiry sweeper (a partial index: tokens without a
-- TTL, the common case, never touch it).
CREATE INDEX tokens_expiring ON tokens(expires_at) WHERE expires_at IS NOT NULL AND nonce IS NOT NULL;
-- Tokens are unique per merchant, not across the vault: a format-preserving token space (10,000
-- SSN tokens per last four) must not be shared between tenants, or one merchant could exhaust
-- another's. Lookups are by (merchant, token) anyway.
DROP INDEX tokens_by_token;
CREATE UNIQUE INDEX tokens_by_merchant_token ON tokens(merchant_id, token);
)sql";

// 004: deterministic tokens and idempotency keys (API.md, Tokens and Idempotency).
// A deterministic token carries dedup_key = "<type>/<format>/<fingerprint>": the same normalised
// value, type and format of a merchant find it again through the partial unique index, which
// only deterministic rows enter (so ordinary tokenizes pay nothing for it), and which also makes
// two identical requests racing each other end with one token. The key is cleared when the token
// is deleted or its value swept, so that a new token can take its place.
// Idempotency keys are stored as HMACs (of the principal and the key; of the request) under a
// key derived from the HSM-wrapped audit key: a request body holds a value, and a plain hash of
// a card number is a dictionary away from the number. The answer is kept for replay: it holds
// tokens, fingerprints and metadata, never a value.
constexpr char kMigration004[] = R"sql(
ALTER TABLE tokens ADD COLUMN dedup_key TEXT CHECK (dedup_key IS NULL OR length(dedup_key) <= 96);
CREATE UNIQUE INDEX tokens_deterministic ON tokens(merchant_id, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE TABLE idempotency_keys (
  key_hash     BLOB PRIMARY KEY NOT NULL CHECK (length(key_hash) = 32),
  request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),
  status       INTEGER NOT NULL,
  body         TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_expiring ON idempotency_keys(expires_at);
)sql";

// 005: crypto-shredding (DELETE /v1/merchants/{m}). shredded_at is set, durably, before the
// merchant's KEKs are destroyed in the HSM: from then on the merchant and its tokens are gone,
// whatever happens next, and an interrupted shredding can be resumed. Its wrapped keys are then
// deleted; its tokens' rows stay (the audit trail names them) and lose their sealed values in
// the background (the values are unreadable already: their keys are gone).
constexpr char kMigration005[] = R"sql(
ALTER TABLE merchants ADD COLUMN shredded_at INTEGER;
)sql";

// 006: KEK rotation (POST /v1/merchants/{m}/kek/rotate). The intent row is written before the
// new KEK is made in the HSM and carries the tag stored with it (CKA_ID), so that a rotation
// interrupted at any step is resumed with the very KEK it made, and a KEK under that label that
// this database did not make is never adopted. The row goes in the transaction that switches the
// merchant's wrapped keys to the new KEK.
constexpr char kMigration006[] = R"sql(
CREATE TABLE kek_rotations (
  merchant_id  TEXT PRIMARY KEY REFERENCES merchants(id),
  from_version INTEGER NOT NULL CHECK (from_version > 0),
  to_version   INTEGER NOT NULL CHECK (to_version = from_version + 1),
  creation_tag BLOB NOT NULL CHECK (length(creation_tag) BETWEEN 1 AND 64),
  started_at   INTEGER NOT NULL
) WITHOUT ROWID;
)sql";

// 007: destroyed DEK versions. Once the re-encryption job has moved every live token off a
// retired version, its wrapped key is erased (an empty blob) and destroyed_at set: the key is
// gone, its row stays as the record of the version (GET /v1/merchants/{m}/keys lists it).
constexpr char kMigration007[] = R"sql(
ALTER TABLE data_keys ADD COLUMN destroyed_at INTEGER;
)sql";

// 008: signed audit checkpoints (docs/audit.md). Each covers records first_seq..last_seq, holds
// the SHA-256 of each of those records' canonical encoding (digests: 32 bytes per record) and an
// ECDSA P-256 signature made in the HSM over a message binding them, the chain MAC at last_seq and
// the previous checkpoint. Appended only; the same lines go to a second sink, a file.
constexpr char kMigration008[] = R"sql(
CREATE TABLE audit_checkpoints (
  last_seq   INTEGER PRIMARY KEY,
  first_seq  INTEGER NOT NULL CHECK (first_seq >= 1 AND first_seq <= last_seq),
  time       INTEGER NOT NULL,
  chain_mac  BLOB NOT NULL CHECK (length(chain_mac) = 32),
  prev_hash  BLOB NOT NULL CHECK (length(prev_hash) = 32),
  digests    BLOB NOT NULL CHECK (length(digests) = 32 * (last_seq - first_seq + 1)),
  key_id     TEXT NOT NULL,
  signature  BLOB NOT NULL CHECK (length(signature) = 64)
);
)sql";

// 009: the persisted counters of detokenize budgets: values revealed per principal, merchant,
// reveal mode and 10-second bucket, written in the transaction of the reveal's audit record.
constexpr char kMigration009[] = R"sql(
CREATE TABLE reveal_usage (
  principal TEXT NOT NULL,
  merchant  TEXT NOT NULL,
  reveal    TEXT NOT NULL CHECK (reveal IN ('plain', 'masked')),
  bucket    INTEGER NOT NULL,
  count     INTEGER NOT NULL CHECK (count > 0),
  PRIMARY KEY (principal, merchant, reveal, bucket)
) WITHOUT ROWID;
CREATE INDEX reveal_usage_by_bucket ON reveal_usage(bucket);
)sql";

constexpr Migration kMigrations[] = {
    {1, "merchants, data keys, tokens", kMigration001},
    {2, "principals, system keys, audit trail", kMigration002},
    {3, "keyed fingerprints, token metadata, expiry index", kMigration003},
    {4, "deterministic tokens, idempotency keys", kMigration004},
    {5, "crypto-shredding", kMigration005},
    {6, "KEK rotation intents", kMigration006},
    {7, "destroyed DEK versions", kMigration007},
    {8, "signed audit checkpoints", kMigration008},
    {9, "detokenize budget counters", kMigration009},
};

StatusOr<int64_t> CurrentVersion(Database& db) {
  TV_RETURN_IF_ERROR(db.Exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations ("
      " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"));
  TV_ASSIGN_OR_RETURN(Statement stmt,
                      db.Prepare("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
  TV_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return InternalError("storage_error", "cannot read schema version");
  return stmt.ColumnInt(0);
}

}  // namespace

std::span<const Migration> AllMigrations() { return kMigrations; }

Status ApplyMigrations(Database& db) {
  TV_ASSIGN_OR_RETURN(int64_t current, CurrentVersion(db));
  const int latest = kMigrations[std::size(kMigrations) - 1].version;
  if (current > latest) {
    return FailedPreconditionError("schema_too_new",
                                   "database schema version " + std::to_string(current) +
                                       " is newer than this tokenvault (" + std::to_string(latest) + ")");
  }
  for (const Migration& m : kMigrations) {
    if (m.version <= current) continue;
    TV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db));
    TV_RETURN_IF_ERROR(db.Exec(m.sql));
    TV_ASSIGN_OR_RETURN(
        Statement record,
        db.Prepare("INSERT INTO schema_migrations (version, name, applied_at) "
                   "VALUES (?1, ?2, CAST(strftime('%s','now') AS INTEGER) * 1000)"));
    TV_RETURN_IF_ERROR(record.Bind(1, int64_t{m.version}).Bind(2, std::string_view(m.name)).Run());
    TV_RETURN_IF_ERROR(txn.Commit());
  }
  return Status::Ok();
}

}  // namespace tokenvault::storage
