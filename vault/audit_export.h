// The audit trail's export format and its offline verifier (docs/audit.md).
//
// An export is NDJSON: one JSON object per line, in this order for a full export:
//   {"type":"export", ...}      format, complete, first_seq: for readers, not signed
//   {"type":"record", ...}      every record, ascending seq (API.md's audit record, plus time_ms and
//                               resources always present, so that its canonical encoding can be
//                               rebuilt exactly)
//   {"type":"checkpoint", ...}  after the record its range ends at: signed in the HSM
//   {"type":"end", ...}         last: the range the export speaks for, signed in the HSM
// Exports of consecutive ranges (pages) concatenate into one.
//
// What is signed (FROZEN: changing a byte breaks every stored checkpoint):
//   checkpoint: "tokenvault/audit-checkpoint" | u8 1 | u64 first_seq | u64 last_seq | u64 time_ms
//               | chain_mac(32) | prev_hash(32) | SHA-256(digests)(32) | lp(key_id)
//     digests = SHA-256(canonical(record) | prev_mac | mac) for each record first_seq..last_seq,
//     concatenated (canonical() over the record's text as exported: valid UTF-8);
//     prev_hash = SHA-256(previous checkpoint's message), 32 zero bytes for the first.
//   end:        "tokenvault/audit-export-end" | u8 1 | u64 first_seq | u64 last_seq | u8 complete
//               | u8 more (another page follows) | u64 time_ms | last_checkpoint_hash(32) | lp(key_id)
// The verifier needs only the export and the public key: no HSM, no database, no audit key.
#ifndef TOKENVAULT_VAULT_AUDIT_EXPORT_H_
#define TOKENVAULT_VAULT_AUDIT_EXPORT_H_

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/store.h"
#include "vault/base/bytes.h"
#include "vault/base/status.h"
#include "vault/ecdsa_p256.h"

namespace tokenvault {

inline constexpr size_t kAuditDigestSize = 32;

// The end of an export: the range [first_seq, last_seq] it speaks for. 'complete' when every
// record of the range is in it (no filter).
struct AuditExportEnd {
  int64_t first_seq = 1, last_seq = 0;
  bool complete = true;
  int64_t time_ms = 0;
  Bytes last_checkpoint_hash;  // of the last checkpoint ending at or before last_seq (or zeros)
  std::string key_id;
  Bytes signature;
  std::optional<int64_t> next_cursor;  // where the next page starts; whether there is one is signed
};

Bytes CheckpointMessage(const storage::AuditCheckpoint& checkpoint);
Sha256Digest CheckpointHash(const storage::AuditCheckpoint& checkpoint);
Bytes ExportEndMessage(const AuditExportEnd& end);
Sha256Digest RecordDigest(const storage::AuditRecord& record);

// The audit record of API.md as JSON (no "resources": callers add them as they need).
nlohmann::json AuditRecordJson(const storage::AuditRecord& record);

// One line each (no trailing newline).
std::string AuditRecordLine(const storage::AuditRecord& record);
std::string CheckpointLine(const storage::AuditCheckpoint& checkpoint);
std::string ExportEndLine(const AuditExportEnd& end);
std::string ExportHeaderLine(bool complete, int64_t first_seq);

// Parses a checkpoint line (as CheckpointLine writes it). kInvalidArgument if it is not one.
StatusOr<storage::AuditCheckpoint> ParseCheckpointLine(std::string_view line);

struct ExportVerification {
  bool ok = true;
  int64_t records_checked = 0;      // records whose digest a valid checkpoint confirmed
  int64_t checkpoints_checked = 0;  // valid signatures
  int64_t last_seq = 0;             // the last record read
  std::optional<int64_t> first_bad_seq;
  int64_t line = 0;  // the line where the problem was seen (1-based), 0 if none
  std::string reason;
};

// Verifies an export line by line, holding only the digests of records not yet confirmed by a
// checkpoint (at most one checkpoint's worth). Stops at the first problem.
class AuditExportVerifier {
 public:
  explicit AuditExportVerifier(EcdsaP256PublicKey key);

  // Checkpoints from the second sink (the checkpoint log file), one line each: every one must be
  // validly signed and match the export. They catch an export, or a database, cut back to an
  // earlier checkpoint with its end re-signed, and pin down records rewritten in a database whose
  // checkpoints were deleted. A torn last line (a crash while appending) is ignored.
  Status AddCheckpointLog(std::string_view contents);

  // Feeds the next line of the export. Returns false once a problem is found (see Result()).
  bool Feed(std::string_view line);
  // After the last line: checks the export ended where it should.
  ExportVerification Finish();

 private:
  bool Bad(std::optional<int64_t> seq, std::string reason);
  bool OnRecord(const storage::AuditRecord& record);
  // 'from_log': the checkpoint came from the checkpoint log, not from the export.
  bool OnCheckpoint(const storage::AuditCheckpoint& checkpoint, bool from_log);
  bool OnEnd(const AuditExportEnd& end);

  EcdsaP256PublicKey key_;
  std::string key_id_;
  ExportVerification result_;
  bool finished_ = false;
  int64_t next_seq_ = 1;
  Bytes last_record_hash_;  // the previous record's "hash" (its chain MAC), for the link check
  struct Pending {
    int64_t seq;
    Sha256Digest digest;
    Bytes mac;
  };
  std::vector<Pending> pending_;  // records read but not yet confirmed by a checkpoint
  int64_t confirmed_through_ = 0;
  Sha256Digest last_checkpoint_hash_{};
  int64_t page_first_ = 1;
  bool ended_ = false;  // the last line read was an end line
  bool more_pages_ = false;  // ... and it said more pages follow
  std::map<int64_t, storage::AuditCheckpoint> log_;  // the checkpoint log, by last_seq
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_AUDIT_EXPORT_H_
