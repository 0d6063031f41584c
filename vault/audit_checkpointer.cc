#include "vault/audit_checkpointer.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "vault/base/metrics.h"
#include "vault/file_io.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>

namespace tokenvault {
namespace {

constexpr size_t kMacSize = 32;
// The checkpoint log's tail read on open: a checkpoint line holds 64 hex digits per record, so
// this holds the last line of any checkpoint of up to ~60,000 records.
constexpr off_t kLogTailBytes = 4 << 20;
constexpr std::chrono::milliseconds kPollInterval(200);
constexpr size_t kExportChunk = 1000;

constexpr char kReasonLogUnavailable[] = "audit_log_unavailable";

Status FileError(const std::string& what, const std::string& path) {
  return FileSystemError(kReasonLogUnavailable, what, path);
}

// Writes 'contents' to 'path' through a temporary file and a rename, so readers never see half.
Status WriteFileAtomically(const std::string& path, const std::string& contents, mode_t mode) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return FileError("cannot create", tmp);
  Status written = WriteAll(fd, AsBytes(contents), tmp, kReasonLogUnavailable);
  if (written.ok() && ::fsync(fd) != 0) written = FileError("cannot fsync", tmp);
  ::close(fd);
  if (written.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) written = FileError("cannot rename", tmp);
  return written;
}

Bytes Zeros() { return Bytes(kMacSize, 0); }

// The last complete checkpoint line of the log, and the length of the log up to the end of its
// last complete line (a torn line after it, from a crash while appending, is cut off).
struct LogTail {
  std::optional<storage::AuditCheckpoint> last;
  off_t complete_length = 0;
  off_t file_length = 0;
};

StatusOr<LogTail> ReadLogTail(const std::string& path) {
  LogTail tail;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return tail;
    return FileError("cannot open", path);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return FileError("cannot stat", path);
  }
  tail.file_length = st.st_size;
  const off_t start = std::max<off_t>(0, st.st_size - kLogTailBytes);
  std::string data(static_cast<size_t>(st.st_size - start), '\0');
  const ssize_t n = ::pread(fd, data.data(), data.size(), start);
  ::close(fd);
  if (n != static_cast<ssize_t>(data.size())) return FileError("cannot read", path);
  const size_t end = data.rfind('\n');
  if (end == std::string::npos) {
    tail.complete_length = start;
    return tail;
  }
  tail.complete_length = start + static_cast<off_t>(end) + 1;
  const size_t begin = data.rfind('\n', end == 0 ? 0 : end - 1);
  const size_t from = (begin == std::string::npos || end == 0) ? 0 : begin + 1;
  if (from == 0 && start > 0) {
    return DataLossError("integrity_failure", "the checkpoint log's last line is too long: " + path);
  }
  StatusOr<storage::AuditCheckpoint> last =
      ParseCheckpointLine(std::string_view(data).substr(from, end - from));
  if (!last.ok()) {
    return DataLossError("integrity_failure", "the checkpoint log's last line is not a checkpoint: " + path);
  }
  tail.last = *std::move(last);
  return tail;
}

bool SameCheckpoint(const storage::AuditCheckpoint& a, const storage::AuditCheckpoint& b) {
  return CheckpointHash(a) == CheckpointHash(b) && a.signature == b.signature;
}

}  // namespace

AuditCheckpointer::AuditCheckpointer(hsm::Hsm& hsm, storage::Store& store, AuditLog& audit,
                                     AuditCheckpointOptions options, const Clock& clock,
                                     EcdsaP256PublicKey key)
    : hsm_(hsm),
      store_(store),
      audit_(audit),
      options_(std::move(options)),
      clock_(clock),
      public_key_(std::move(key)),
      key_id_(public_key_.KeyId()) {}

StatusOr<std::unique_ptr<AuditCheckpointer>> AuditCheckpointer::Open(
    hsm::Hsm& hsm, storage::Store& store, AuditLog& audit, const AuditCheckpointOptions& options,
    const Clock& clock) {
  StatusOr<Bytes> point = hsm.SigningPublicKey(kCheckpointSigningKey);
  if (!point.ok() && point.status().code() == StatusCode::kNotFound) {
    Status created = hsm.CreateSigningKey(kCheckpointSigningKey);
    if (!created.ok() && created.code() != StatusCode::kAlreadyExists) return created;
    point = hsm.SigningPublicKey(kCheckpointSigningKey);
  }
  TV_RETURN_IF_ERROR(point.status());
  TV_ASSIGN_OR_RETURN(EcdsaP256PublicKey key, EcdsaP256PublicKey::FromPoint(*point));
  // The public half is a separate object: prove it belongs to the private half before it is
  // served, written out, or used to verify anything.
  Sha256Digest probe{};
  TV_RETURN_IF_ERROR(hsm.GenerateRandom(probe.data(), probe.size()));
  TV_ASSIGN_OR_RETURN(Bytes probe_signature, hsm.Sign(kCheckpointSigningKey, probe));
  if (!key.VerifyDigest(probe, probe_signature)) {
    return FailedPreconditionError("kek_attributes_unsafe",
                                   "the HSM's checkpoint public key does not match its signing key");
  }
  if (!options.public_key_path.empty()) {
    TV_RETURN_IF_ERROR(WriteFileAtomically(options.public_key_path, key.Pem(), 0644));
  }
  std::unique_ptr<AuditCheckpointer> checkpointer(
      new AuditCheckpointer(hsm, store, audit, options, clock, std::move(key)));
  TV_RETURN_IF_ERROR(checkpointer->ReconcileLog());
  return checkpointer;
}

AuditCheckpointer::~AuditCheckpointer() {
  {
    std::lock_guard<std::mutex> lock(loop_mu_);
    stopping_ = true;
  }
  loop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The records of the last moments (the service's stop record among them) are covered now rather
  // than at the next start.
  if (options_.interval.count() > 0) {
    StatusOr<int64_t> last = CheckpointNow();
    if (!last.ok()) spdlog::warn("final audit checkpoint not written: {}", last.status().ToString());
  }
}

void AuditCheckpointer::Start() {
  if (options_.interval.count() <= 0 || thread_.joinable()) return;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "tv-audit-cp");
    Loop();
  });
}

Status AuditCheckpointer::ReconcileLog() {
  std::lock_guard<std::mutex> lock(sign_mu_);
  StatusOr<storage::AuditCheckpoint> db_last = store_.LastAuditCheckpoint();
  if (!db_last.ok() && db_last.status().code() != StatusCode::kNotFound) return db_last.status();
  if (db_last.ok() &&
      (db_last->key_id != key_id_ || !public_key_.Verify(CheckpointMessage(*db_last), db_last->signature))) {
    HaltLocked("the database's last checkpoint (records " + std::to_string(db_last->first_seq) +
                   " to " + std::to_string(db_last->last_seq) + ") is not signed by the checkpoint key");
    return Status::Ok();
  }
  if (options_.log_path.empty()) {
    if (db_last.ok()) last_logged_ = *db_last;
    return Status::Ok();
  }
  TV_ASSIGN_OR_RETURN(LogTail tail, ReadLogTail(options_.log_path));
  if (tail.complete_length < tail.file_length) {
    // Only a torn last line is cut (a crash while appending). An append-only file (chattr +a)
    // with no torn line is never touched.
    spdlog::warn("audit: cutting a torn last line of {}", options_.log_path);
    if (::truncate(options_.log_path.c_str(), tail.complete_length) != 0) {
      return FileError("cannot cut the torn line of", options_.log_path);
    }
  }
  if (tail.last) {
    StatusOr<storage::AuditCheckpoint> in_db = store_.LastAuditCheckpoint(tail.last->last_seq);
    if (!in_db.ok() && in_db.status().code() != StatusCode::kNotFound) return in_db.status();
    if (!in_db.ok() || in_db->last_seq != tail.last->last_seq || !SameCheckpoint(*in_db, *tail.last)) {
      HaltLocked("the checkpoint log holds a checkpoint of records " +
                     std::to_string(tail.last->first_seq) + " to " +
                     std::to_string(tail.last->last_seq) +
                     " that the database does not: the trail in the database was cut back or rewritten");
      return Status::Ok();
    }
    last_logged_ = *tail.last;
  } else if (db_last.ok()) {
    spdlog::warn("audit: the checkpoint log {} is missing or empty while the database has "
                 "checkpoints: it is rebuilt from the database (was it deleted?)",
                 options_.log_path);
  }
  return CatchUpLogLocked();
}

void AuditCheckpointer::HaltLocked(std::string problem) {
  log_problem_ = std::move(problem);
  spdlog::error("audit: {}; no checkpoint is signed until this is resolved", log_problem_);
  // Audit logging goes on; its signing stops: that is itself an event of the trail (PCI DSS
  // 10.2.1: stopping or pausing of audit logs).
  storage::AuditRecord halted = SystemAuditRecord("audit.checkpoints_halted", "", log_problem_);
  halted.outcome = "error";
  halted.status = 500;
  StatusOr<storage::AuditRecord> written = audit_.Append(std::move(halted));
  if (!written.ok()) spdlog::error("audit: the halt cannot be recorded: {}", written.status().ToString());
}

Status AuditCheckpointer::CatchUpLogLocked() {
  if (options_.log_path.empty()) return Status::Ok();
  // Checkpoints committed to the database but not yet to the log (a crash, or a failed append).
  for (;;) {
    TV_ASSIGN_OR_RETURN(std::vector<storage::AuditCheckpoint> missing,
                        store_.ScanAuditCheckpoints(last_logged_ ? last_logged_->last_seq : 0, 100));
    if (missing.empty()) return Status::Ok();
    for (const storage::AuditCheckpoint& c : missing) {
      TV_RETURN_IF_ERROR(AppendToLog(c));
      last_logged_ = c;
    }
  }
}

Status AuditCheckpointer::AppendToLog(const storage::AuditCheckpoint& checkpoint) {
  if (options_.log_path.empty()) return Status::Ok();
  const int fd = ::open(options_.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return FileError("cannot open", options_.log_path);
  struct stat before {};
  const bool sized = ::fstat(fd, &before) == 0;
  Status written = WriteAll(fd, AsBytes(CheckpointLine(checkpoint) + "\n"), options_.log_path, kReasonLogUnavailable);
  if (written.ok() && ::fsync(fd) != 0) written = FileError("cannot fsync", options_.log_path);
  // A partial line would break every later line: take it back, and the checkpoint is appended
  // again (CatchUpLogLocked) before anything new is signed.
  if (!written.ok() && sized && ::ftruncate(fd, before.st_size) != 0) {
    spdlog::error("audit: cannot take back a partial line of {}", options_.log_path);
  }
  ::close(fd);
  return written;
}

StatusOr<storage::AuditCheckpoint> AuditCheckpointer::SignNext(
    const std::optional<storage::AuditCheckpoint>& last, int64_t head) {
  storage::AuditCheckpoint c;
  c.first_seq = last ? last->last_seq + 1 : 1;
  const Sha256Digest prev_hash = last ? CheckpointHash(*last) : Sha256Digest{};
  c.prev_hash.assign(prev_hash.begin(), prev_hash.end());
  Bytes prev_mac = last ? last->chain_mac : Zeros();
  storage::AuditQuery query;
  query.after_seq = c.first_seq - 1;
  query.limit = std::min<size_t>(options_.records == 0 ? 1 : options_.records,
                                 static_cast<size_t>(head - c.first_seq + 1));
  TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> records, store_.ScanAudit(query));
  if (records.empty()) {
    return DataLossError("integrity_failure", "audit record " + std::to_string(c.first_seq) +
                                                  " is missing although the head is at " +
                                                  std::to_string(head));
  }
  int64_t expected = c.first_seq;
  for (const storage::AuditRecord& r : records) {
    // Never sign what the audit key does not vouch for: a record edited, inserted or removed in
    // the database would otherwise be laundered into a validly signed history.
    TV_ASSIGN_OR_RETURN(Bytes mac, audit_.RecordMac(r));
    if (r.seq != expected || !ConstantTimeEquals(r.prev_mac, prev_mac) ||
        !ConstantTimeEquals(mac, r.mac)) {
      return DataLossError("integrity_failure", "audit record " + std::to_string(expected) +
                                                    " does not verify: it is not signed");
    }
    const Sha256Digest digest = RecordDigest(r);
    AppendBytes(c.digests, digest);
    prev_mac = r.mac;
    ++expected;
  }
  c.last_seq = records.back().seq;
  c.chain_mac = records.back().mac;
  c.time_ms = clock_.NowUnixMillis();
  c.key_id = key_id_;
  const Sha256Digest to_sign = Sha256({CheckpointMessage(c)});
  TV_ASSIGN_OR_RETURN(c.signature, hsm_.Sign(kCheckpointSigningKey, to_sign));
  TV_RETURN_IF_ERROR(store_.InsertAuditCheckpoint(c));
  Status logged = AppendToLog(c);
  if (!logged.ok()) {
    spdlog::error("audit: checkpoint of records {} to {} is in the database but not yet in the "
                  "checkpoint log: {}",
                  c.first_seq, c.last_seq, logged.ToString());
    return logged;
  }
  last_logged_ = c;
  static metrics::Family& signed_count = metrics::Registry::Global().Counter(
      "tokenvault_audit_checkpoints_total", "Audit checkpoints signed.");
  signed_count.Add({});
  return c;
}

StatusOr<int64_t> AuditCheckpointer::CheckpointNow() {
  std::lock_guard<std::mutex> lock(sign_mu_);
  if (!log_problem_.empty()) return DataLossError("integrity_failure", log_problem_);
  TV_RETURN_IF_ERROR(CatchUpLogLocked());
  StatusOr<storage::AuditHead> head = store_.GetAuditHead();
  if (!head.ok() && head.status().code() != StatusCode::kNotFound) return head.status();
  const int64_t head_seq = head.ok() ? head->seq : 0;
  std::optional<storage::AuditCheckpoint> last;
  StatusOr<storage::AuditCheckpoint> stored = store_.LastAuditCheckpoint();
  if (stored.ok()) {
    last = *std::move(stored);
  } else if (stored.status().code() != StatusCode::kNotFound) {
    return stored.status();
  }
  // Continue only from the checkpoint this process signed or logged last: a database whose
  // checkpoints were deleted or replaced since must not make the vault sign a second history.
  const bool same = last.has_value() == last_logged_.has_value() &&
                    (!last || SameCheckpoint(*last, *last_logged_));
  if (!same) {
    HaltLocked("the database's checkpoints no longer end with the last one signed (records " +
                   (last_logged_ ? std::to_string(last_logged_->first_seq) + " to " +
                                       std::to_string(last_logged_->last_seq)
                                 : std::string("none")) +
                   "): they were deleted or replaced");
    return DataLossError("integrity_failure", log_problem_);
  }
  while ((last ? last->last_seq : 0) < head_seq) {
    TV_ASSIGN_OR_RETURN(storage::AuditCheckpoint next, SignNext(last, head_seq));
    last = std::move(next);
  }
  return last ? last->last_seq : 0;
}

void AuditCheckpointer::Loop() {
  std::string last_error;
  auto last_checkpoint = clock_.SteadyNow();
  std::unique_lock<std::mutex> lock(loop_mu_);
  while (!stopping_) {
    loop_cv_.wait_for(lock, std::min(kPollInterval, options_.interval));
    if (stopping_) break;
    lock.unlock();
    // Due: 'records' records waiting, or any record waiting for 'interval'.
    StatusOr<storage::AuditHead> head = store_.GetAuditHead();
    StatusOr<storage::AuditCheckpoint> last = store_.LastAuditCheckpoint();
    const int64_t head_seq = head.ok() ? head->seq : 0;
    const int64_t covered = last.ok() ? last->last_seq : 0;
    static metrics::Family& records = metrics::Registry::Global().Counter(
        "tokenvault_audit_records_total", "Audit records written (the sequence number of the newest).");
    static metrics::Family& lag = metrics::Registry::Global().Gauge(
        "tokenvault_audit_checkpoint_lag_records", "Audit records not yet covered by a signed checkpoint.");
    if (head.ok()) records.Set({}, static_cast<double>(head_seq));
    const bool covered_known = last.ok() || last.status().code() == StatusCode::kNotFound;
    if (head.ok() && covered_known) lag.Set({}, static_cast<double>(head_seq - covered));
    const bool due = head_seq > covered &&
                     (static_cast<size_t>(head_seq - covered) >= options_.records ||
                      clock_.SteadyNow() - last_checkpoint >= options_.interval);
    if (due) {
      StatusOr<int64_t> done = CheckpointNow();
      if (done.ok()) {
        last_checkpoint = clock_.SteadyNow();
        last_error.clear();
      } else if (done.status().ToString() != last_error) {  // said once, not every poll
        last_error = done.status().ToString();
        spdlog::error("audit checkpoint failed: {}", last_error);
      }
    }
    lock.lock();
  }
}

Status AuditCheckpointer::Verify(AuditVerification& v) {
  // Two kinds of finding: a record that is missing or differs from what was signed (named by its
  // seq, the lowest wins, with the chain walk's own findings), and a broken structure (a
  // checkpoint missing, forged, or out of order), reported only when no record is named.
  std::optional<std::pair<int64_t, std::string>> record_bad, structure_bad;
  auto bad_record = [&](int64_t seq, std::string reason) {
    if (!record_bad || seq < record_bad->first) record_bad.emplace(seq, std::move(reason));
  };
  auto bad_structure = [&](int64_t seq, std::string reason) {
    if (!structure_bad) structure_bad.emplace(seq, std::move(reason));
  };
  // Checks the records a checkpoint covers against its digests; false if one is missing or differs.
  auto check_records = [&](const storage::AuditCheckpoint& c, const std::string& what) -> StatusOr<bool> {
    storage::AuditQuery query;
    query.after_seq = c.first_seq - 1;
    query.limit = static_cast<size_t>(c.last_seq - c.first_seq + 1);
    TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> records, store_.ScanAudit(query));
    for (size_t i = 0; i * kAuditDigestSize < c.digests.size(); ++i) {
      const int64_t seq = c.first_seq + static_cast<int64_t>(i);
      if (i >= records.size() || records[i].seq != seq) {
        bad_record(seq, "record " + std::to_string(seq) + " is missing: " + what + " covers it");
        return false;
      }
      const Sha256Digest digest = RecordDigest(records[i]);
      if (!ConstantTimeEquals(digest, ByteView(c.digests.data() + i * kAuditDigestSize, kAuditDigestSize))) {
        bad_record(seq, "record " + std::to_string(seq) + " differs from what " + what + " signed");
        return false;
      }
    }
    return true;
  };
  auto range_of = [](const storage::AuditCheckpoint& c) {
    return "[" + std::to_string(c.first_seq) + ", " + std::to_string(c.last_seq) + "]";
  };

  // The checkpoint log is read only up to where it ended before the database is read: a line
  // there was appended after its checkpoint committed, so the database read below sees it. A
  // checkpoint signed while this runs would otherwise look like one missing from the database.
  off_t log_bytes = 0;
  std::ifstream log;  // opened now, so the length and the contents are of the same file
  if (!options_.log_path.empty()) {
    log.open(options_.log_path, std::ios::binary);
    struct stat st {};
    if (log && ::stat(options_.log_path.c_str(), &st) == 0) log_bytes = st.st_size;
  }

  // The database's checkpoints: signed, chained, and matching the records.
  std::map<int64_t, Sha256Digest> in_db;  // last_seq -> checkpoint hash
  int64_t covered = 0;
  Sha256Digest prev_hash{};
  for (bool more = true; more;) {
    TV_ASSIGN_OR_RETURN(std::vector<storage::AuditCheckpoint> batch,
                        store_.ScanAuditCheckpoints(covered, 50));
    more = !batch.empty();
    for (const storage::AuditCheckpoint& c : batch) {
      const std::string what = "checkpoint " + range_of(c);
      if (c.key_id != key_id_ || !public_key_.Verify(CheckpointMessage(c), c.signature)) {
        bad_structure(c.first_seq, what + " has an invalid signature");
      } else if (c.first_seq != covered + 1 || !ConstantTimeEquals(c.prev_hash, prev_hash)) {
        bad_structure(covered + 1, "the checkpoints do not chain at record " + std::to_string(covered + 1));
      } else {
        TV_RETURN_IF_ERROR(check_records(c, what).status());
      }
      in_db[c.last_seq] = CheckpointHash(c);
      covered = c.last_seq;
      prev_hash = CheckpointHash(c);
    }
  }

  // The checkpoint log, kept apart: each of its checkpoints must be in the database, unchanged.
  // One the database lacks still vouches for the records it covers, which are checked against it:
  // that names a record rewritten by someone who also deleted the checkpoints.
  if (log.is_open()) {
    std::string line;
    int64_t line_no = 0;
    off_t read_bytes = 0;
    while (read_bytes < log_bytes && std::getline(log, line)) {
      ++line_no;
      read_bytes += static_cast<off_t>(line.size()) + 1;
      // A last line without its newline was torn by a crash while appended (never fsync'd, never
      // relied on): cut at the next open. Any other bad line is a finding.
      const bool torn = log.eof() || read_bytes > log_bytes;
      if (line.empty()) continue;
      StatusOr<storage::AuditCheckpoint> c = ParseCheckpointLine(line);
      if (!c.ok() || c->key_id != key_id_ || !public_key_.Verify(CheckpointMessage(*c), c->signature)) {
        if (torn) break;
        bad_structure(covered + 1, "line " + std::to_string(line_no) + " of the checkpoint log is not a valid checkpoint");
        continue;
      }
      auto it = in_db.find(c->last_seq);
      if (it != in_db.end()) {
        if (it->second != CheckpointHash(*c)) {
          bad_structure(c->first_seq, "checkpoint " + range_of(*c) + " differs from the checkpoint log's");
        }
        continue;
      }
      TV_ASSIGN_OR_RETURN(bool records_match, check_records(*c, "checkpoint " + range_of(*c) + " of the checkpoint log"));
      if (records_match) {
        bad_structure(c->first_seq, "checkpoint " + range_of(*c) +
                                        " is in the checkpoint log but not in the database: the trail was cut back or its checkpoints deleted");
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(sign_mu_);
    if (!log_problem_.empty()) bad_structure(covered + 1, log_problem_);
  }

  if (record_bad) {
    const bool lower = v.ok || !v.first_bad_seq || record_bad->first < *v.first_bad_seq;
    if (lower) {
      v.ok = false;
      v.first_bad_seq = record_bad->first;
      v.reason = record_bad->second;
    }
  } else if (structure_bad && v.ok) {
    v.ok = false;
    v.first_bad_seq = structure_bad->first;
    v.reason = structure_bad->second;
  }
  return Status::Ok();
}

Status AuditCheckpointer::Export(const storage::AuditQuery& filter, size_t max_records,
                                 const std::function<Status(std::string_view line)>& emit) {
  const bool full = !filter.since_ms && !filter.until_ms && filter.principal.empty() &&
                    filter.merchant.empty() && filter.action.empty() && filter.outcome.empty() &&
                    filter.all_merchants;
  max_records = std::max<size_t>(max_records, 1);
  AuditExportEnd end;
  end.first_seq = filter.after_seq + 1;
  end.last_seq = filter.after_seq;
  end.complete = full;
  end.last_checkpoint_hash = Zeros();
  end.key_id = key_id_;
  // Unsigned, for readers (and the verifier's early word on a filtered export): everything that
  // matters is repeated in the signed end.
  TV_RETURN_IF_ERROR(emit(ExportHeaderLine(full, end.first_seq)));
  auto emit_record = [&](const storage::AuditRecord& r) -> Status {
    end.last_seq = r.seq;
    return emit(AuditRecordLine(r));
  };

  if (full) {
    // Every record up to now gets covered first. A chain that no longer verifies is still
    // exported - its readers need it most - with what was signed before: the verifier then names
    // the first record no checkpoint vouches for.
    StatusOr<int64_t> covered = CheckpointNow();
    if (!covered.ok() && covered.status().code() != StatusCode::kDataLoss) return covered.status();
    // The page ends where the trail stood when it was checkpointed: records appended while it is
    // built belong to the next export (they are not covered yet). Only when the chain failed to
    // verify does it go on to the head as it was then, uncovered, for the verifier to name.
    int64_t through = 0;
    if (covered.ok()) {
      through = *covered;
    } else {
      StatusOr<storage::AuditHead> head = store_.GetAuditHead();
      if (!head.ok() && head.status().code() != StatusCode::kNotFound) return head.status();
      through = head.ok() ? head->seq : 0;
    }
    StatusOr<storage::AuditCheckpoint> before = store_.LastAuditCheckpoint(filter.after_seq);
    if (before.ok()) {
      const Sha256Digest h = CheckpointHash(*before);
      end.last_checkpoint_hash.assign(h.begin(), h.end());
    } else if (before.status().code() != StatusCode::kNotFound) {
      return before.status();
    }
    // Whole checkpoints, so that each page ends where a checkpoint does.
    size_t emitted = 0;
    int64_t after = filter.after_seq;
    bool page_full = false;
    while (!page_full) {
      TV_ASSIGN_OR_RETURN(std::vector<storage::AuditCheckpoint> cps,
                          store_.ScanAuditCheckpoints(after, 50));
      if (cps.empty() || cps.front().last_seq > through) break;
      for (const storage::AuditCheckpoint& c : cps) {
        if (c.last_seq > through) break;  // signed by the background thread since: next time
        const int64_t count = c.last_seq - std::max(after, c.first_seq - 1);
        if (emitted > 0 && emitted + static_cast<size_t>(count) > max_records) {
          page_full = true;
          break;
        }
        storage::AuditQuery q;
        q.after_seq = after;
        q.limit = static_cast<size_t>(count);
        TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> records, store_.ScanAudit(q));
        for (const storage::AuditRecord& r : records) TV_RETURN_IF_ERROR(emit_record(r));
        TV_RETURN_IF_ERROR(emit(CheckpointLine(c)));
        const Sha256Digest h = CheckpointHash(c);
        end.last_checkpoint_hash.assign(h.begin(), h.end());
        emitted += records.size();
        after = c.last_seq;
      }
    }
    // Records no checkpoint covers (only when the chain failed to verify), after the last page.
    if (!page_full && after < through) {
      storage::AuditQuery q;
      q.after_seq = after;
      while (q.after_seq < through) {
        if (emitted >= max_records) {
          page_full = true;
          break;
        }
        q.limit = static_cast<size_t>(std::min<int64_t>(
            static_cast<int64_t>(std::min(kExportChunk, max_records - emitted)), through - q.after_seq));
        TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> records, store_.ScanAudit(q));
        for (const storage::AuditRecord& r : records) TV_RETURN_IF_ERROR(emit_record(r));
        emitted += records.size();
        if (records.size() < q.limit) break;
        q.after_seq = records.back().seq;
      }
    }
    if (page_full) end.next_cursor = end.last_seq;
  } else {
    storage::AuditQuery q = filter;
    size_t emitted = 0;
    while (emitted < max_records) {
      q.limit = std::min(kExportChunk, max_records - emitted);
      TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> records, store_.ScanAudit(q));
      for (const storage::AuditRecord& r : records) TV_RETURN_IF_ERROR(emit_record(r));
      emitted += records.size();
      if (records.size() < q.limit) break;
      q.after_seq = records.back().seq;
      if (emitted >= max_records) end.next_cursor = end.last_seq;
    }
  }
  end.time_ms = clock_.NowUnixMillis();
  const Sha256Digest to_sign = Sha256({ExportEndMessage(end)});
  TV_ASSIGN_OR_RETURN(end.signature, hsm_.Sign(kCheckpointSigningKey, to_sign));
  return emit(ExportEndLine(end));
}

}  // namespace tokenvault
