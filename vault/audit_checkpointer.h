// Signed checkpoints of the audit trail (docs/audit.md).
//
// Every 'records' records or 'interval' (whichever comes first) the checkpointer reads the
// records not yet covered, checks their MAC chain with the audit key (it never signs a chain it
// cannot vouch for), and signs a checkpoint over their digests with an ECDSA P-256 key held in
// the HSM. The checkpoint goes to the database and is appended, fsync'd, to a second sink (the
// checkpoint log, a file), so that cutting the database back is caught by comparing the two.
//
// Exports (ExportAudit) end with a line signed in the HSM that names the range they cover, so a
// truncated export is caught too. Verification needs only the public key (audit_export.h).
#ifndef TOKENVAULT_VAULT_AUDIT_CHECKPOINTER_H_
#define TOKENVAULT_VAULT_AUDIT_CHECKPOINTER_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "hsm/hsm.h"
#include "storage/store.h"
#include "vault/audit_export.h"
#include "vault/audit_log.h"
#include "vault/base/clock.h"
#include "vault/ecdsa_p256.h"

namespace tokenvault {

struct AuditCheckpointOptions {
  size_t records = 1000;  // a checkpoint at least every this many records
  std::chrono::milliseconds interval = std::chrono::seconds(10);  // and at least this often; 0: only on demand
  // The second sink: checkpoints are appended here (one NDJSON line each, fsync'd). Empty: none.
  std::string log_path;
  // Where the public key is written in PEM on open (readable by anyone). Empty: not written.
  std::string public_key_path;
};

// The HSM label of the checkpoint signing key: "tokenvault/sign/audit-checkpoint/v1".
inline const hsm::SigningKeyRef kCheckpointSigningKey{"audit-checkpoint/v1"};

// Thread-safe.
class AuditCheckpointer {
 public:
  // Finds the signing key in the HSM, or creates it on first use; reconciles the checkpoint log
  // with the database (checkpoints the log lacks are appended to it). A log holding checkpoints
  // the database lacks means the database was cut back: that is logged and reported by
  // Verify, and nothing more is signed until someone looks (signing a rewritten trail would
  // launder it).
  static StatusOr<std::unique_ptr<AuditCheckpointer>> Open(hsm::Hsm& hsm, storage::Store& store,
                                                           AuditLog& audit,
                                                           const AuditCheckpointOptions& options,
                                                           const Clock& clock = Clock::Real());
  ~AuditCheckpointer();  // stops the background thread, after a last checkpoint (best effort)

  // Starts the background thread (named tv-audit-cp) if the options ask for one.
  void Start();

  // Covers every record up to the current head with checkpoints. Returns the last covered seq.
  // kDataLoss (integrity_failure) if the chain does not verify: nothing is signed from there on.
  StatusOr<int64_t> CheckpointNow();

  // Checks every checkpoint in the database (signature, order, digests against the records) and
  // against the checkpoint log; sets v's first bad record if one is wrong.
  Status Verify(AuditVerification& v);

  // Writes an export of the records matching 'filter' (a full one when the filter is empty) to
  // 'emit', one line at a time: records after filter.after_seq, the checkpoints, and a signed
  // end line. At most 'max_records' records; the end then names where the next page starts.
  // For a full export the trail is checkpointed first, so that every record is covered.
  Status Export(const storage::AuditQuery& filter, size_t max_records,
                const std::function<Status(std::string_view line)>& emit);

  const EcdsaP256PublicKey& public_key() const { return public_key_; }

 private:
  AuditCheckpointer(hsm::Hsm& hsm, storage::Store& store, AuditLog& audit,
                    AuditCheckpointOptions options, const Clock& clock, EcdsaP256PublicKey key);
  Status ReconcileLog();
  // Stops all signing for 'problem', logged and recorded in the trail. Needs sign_mu_.
  void HaltLocked(std::string problem);
  // Appends to the log every database checkpoint after last_logged_. Needs sign_mu_.
  Status CatchUpLogLocked();
  Status AppendToLog(const storage::AuditCheckpoint& checkpoint);
  // Signs one checkpoint over the records after 'last' (at most options_.records of them).
  StatusOr<storage::AuditCheckpoint> SignNext(const std::optional<storage::AuditCheckpoint>& last,
                                              int64_t head);
  void Loop();

  hsm::Hsm& hsm_;
  storage::Store& store_;
  AuditLog& audit_;
  const AuditCheckpointOptions options_;
  const Clock& clock_;
  const EcdsaP256PublicKey public_key_;
  const std::string key_id_;

  std::mutex sign_mu_;  // one signer at a time: checkpoints form a chain
  // Set when the checkpoint log is ahead of the database, or the database's checkpoints stop
  // ending with the last one signed: nothing more is signed. GUARDED_BY(sign_mu_)
  std::string log_problem_;
  // The last checkpoint known to be in the log (or, without a log, signed or found at open).
  std::optional<storage::AuditCheckpoint> last_logged_;  // GUARDED_BY(sign_mu_)
  std::mutex loop_mu_;
  std::condition_variable loop_cv_;
  bool stopping_ = false;  // GUARDED_BY(loop_mu_)
  std::thread thread_;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_AUDIT_CHECKPOINTER_H_
