// The tamper-evident audit trail.
//
// Each record carries mac = HMAC-SHA256(audit key, prev_mac || canonical(record)), where
// prev_mac is the previous record's mac (32 zero bytes for the first) and canonical() is the
// frozen length-prefixed encoding below. The audit key is 32 random bytes stored only wrapped by
// an HSM-held KEK, so whoever can write the database still cannot recompute the chain: a plain
// hash chain could be. The head of the chain (last seq and mac) is kept with its own MAC, so that
// deleting the newest records is detected too. Signed checkpoints (audit_checkpointer.h) make the
// chain verifiable offline by anyone with a public key; docs/audit.md says what each attack is
// caught by.
#ifndef TOKENVAULT_VAULT_AUDIT_LOG_H_
#define TOKENVAULT_VAULT_AUDIT_LOG_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hsm/hsm.h"
#include "storage/store.h"
#include "vault/base/in_flight.h"
#include "vault/hmac_sha256.h"
#include "vault/base/clock.h"
#include "vault/base/secret_bytes.h"

struct evp_mac_st;

namespace tokenvault {

// FROZEN: changing a byte here breaks verification of every existing record.
//   "tokenvault/audit" | u8 version=1 | u64 seq | u64 time_ms | lp(request_id) | lp(principal)
//   | lp(auth) | lp(source_ip) | lp(action) | lp(merchant) | lp(resource)
//   | u32 count | lp(resource_i)... | lp(outcome) | u32 status | lp(reason)
// with lp(x) = u32 big-endian length | bytes.
Bytes CanonicalAuditEncoding(const storage::AuditRecord& record);

// The record of an event nobody asked for (an automatic rotation, a destroyed key version):
// principal and request id "system", outcome allowed, status 200. Callers name the resource.
storage::AuditRecord SystemAuditRecord(std::string_view action, std::string_view merchant,
                                       std::string_view reason);

struct AuditVerification {
  bool ok = true;
  int64_t records_checked = 0;
  std::optional<int64_t> first_bad_seq;
  std::string reason;
};

// Thread-safe.
class AuditLog final : public storage::AuditMac {
 public:
  // Unwraps the audit key with the HSM, or on first use creates it (and its KEK). The key is
  // kept in SecretBytes for the life of the log.
  static StatusOr<std::unique_ptr<AuditLog>> Open(hsm::Hsm& hsm, storage::Store& store,
                                                  const Clock& clock = Clock::Real());

  // Appends 'event' (seq and MACs are assigned; time is set if 0) and returns once it is
  // durable. Any error means the record is not in the log: callers fail closed.
  StatusOr<storage::AuditRecord> Append(storage::AuditRecord event);
  // Append without waiting: 'done' gets what Append would have returned, once the record is
  // durable or failed, possibly on the store's completion thread. The log waits for every
  // pending append before it is destroyed.
  // 'charges' (detokenize budget counters) commit with the record.
  void AppendAsync(storage::AuditRecord event,
                   std::function<void(const StatusOr<storage::AuditRecord>&)> done,
                   std::vector<storage::RevealCharge> charges = {});

  StatusOr<std::vector<storage::AuditRecord>> Query(const storage::AuditQuery& query);

  // Walks the whole chain: sequence without gaps, each prev_mac linking to the record before,
  // each mac recomputed with the key, and the head (with its MAC) matching the last record.
  // Names the first bad sequence number.
  StatusOr<AuditVerification> Verify();

  ~AuditLog() override;

  // A key for another purpose derived from the audit key (HMAC(audit key, "tokenvault/derive/"
  // || purpose)), so that it is as safe as the audit key - wrapped by the HSM - with no key of its
  // own to store. Distinct purposes give independent keys.
  StatusOr<std::unique_ptr<HmacSha256>> DeriveKey(std::string_view purpose) const;

  // storage::AuditMac
  StatusOr<Bytes> RecordMac(const storage::AuditRecord& record) const override;
  StatusOr<Bytes> HeadMac(int64_t seq, ByteView mac) const override;

 private:
  AuditLog(storage::Store& store, SecretBytes key, const Clock& clock, evp_mac_st* hmac);
  StatusOr<Bytes> Hmac(ByteView a, ByteView b) const;

  storage::Store& store_;
  const SecretBytes key_;
  InFlight pending_;  // appends whose completion has not run; waited for on destruction
  const Clock& clock_;
  evp_mac_st* const hmac_;  // OpenSSL's HMAC implementation, fetched once (thread-safe to share)
  // The same key, keyed once: every append computes two MACs on the writer thread, the store's
  // serial path, so no key schedule per MAC. Null only if keying failed (then hmac_ is used).
  std::unique_ptr<HmacSha256> keyed_;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_AUDIT_LOG_H_
