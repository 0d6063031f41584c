#include "vault/audit_log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>

#include "vault/base/random.h"
#include "vault/envelope.h"

namespace tokenvault {
namespace {

constexpr char kAuditKeyName[] = "audit";
// The audit key's KEK: a name no merchant can have (merchant ids start with [a-z0-9]).
constexpr char kAuditKekOwner[] = "_audit";
constexpr uint32_t kAuditKeyVersion = 1;
constexpr size_t kMacSize = 32;
constexpr size_t kVerifyChunk = 1000;

}  // namespace

Bytes CanonicalAuditEncoding(const storage::AuditRecord& r) {
  Bytes out;
  AppendBytes(out, AsBytes("tokenvault/audit"));
  AppendU8(out, 1);
  AppendU64BE(out, static_cast<uint64_t>(r.seq));
  AppendU64BE(out, static_cast<uint64_t>(r.time_ms));
  for (const std::string* field : {&r.request_id, &r.principal, &r.auth, &r.source_ip, &r.action,
                                   &r.merchant, &r.resource}) {
    AppendLp32(out, *field);
  }
  AppendU32BE(out, static_cast<uint32_t>(r.resources.size()));
  for (const std::string& res : r.resources) AppendLp32(out, res);
  AppendLp32(out, r.outcome);
  AppendU32BE(out, static_cast<uint32_t>(r.status));
  AppendLp32(out, r.reason);
  return out;
}

storage::AuditRecord SystemAuditRecord(std::string_view action, std::string_view merchant,
                                       std::string_view reason) {
  storage::AuditRecord r;
  r.request_id = "system";
  r.principal = "system";
  r.auth = "none";
  r.source_ip = "local";
  r.action = std::string(action);
  r.merchant = std::string(merchant);
  r.outcome = "allowed";
  r.status = 200;
  r.reason = std::string(reason);
  return r;
}

AuditLog::AuditLog(storage::Store& store, SecretBytes key, const Clock& clock, evp_mac_st* hmac)
    : store_(store), key_(std::move(key)), clock_(clock), hmac_(hmac) {
  StatusOr<std::unique_ptr<HmacSha256>> keyed = HmacSha256::Create(key_);
  if (keyed.ok()) keyed_ = std::move(keyed).value();
}

AuditLog::~AuditLog() {
  pending_.WaitIdle();  // their operations still compute MACs with this log
  EVP_MAC_free(hmac_);
}

StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(hsm::Hsm& hsm, storage::Store& store,
                                                   const Clock& clock) {
  EVP_MAC* hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (hmac == nullptr) return InternalError("crypto_error", "HMAC unavailable");
  // Owned by the log once it exists; freed here on every earlier way out.
  std::unique_ptr<EVP_MAC, decltype(&EVP_MAC_free)> hmac_guard(hmac, &EVP_MAC_free);
  const hsm::KekRef kek{kAuditKekOwner, kAuditKeyVersion};
  const Bytes aad = envelope::SystemKeyAad(kAuditKeyName, kAuditKeyVersion, kek.version);
  StatusOr<storage::DataKeyRecord> stored = store.GetSystemKey(kAuditKeyName);
  if (stored.ok()) {
    TV_ASSIGN_OR_RETURN(ByteView blob, envelope::DecodeWrappedDek(stored->wrapped));
    StatusOr<SecretBytes> key = hsm.Unwrap(hsm::KekRef{kAuditKekOwner, stored->kek_version}, blob,
                                           envelope::SystemKeyAad(kAuditKeyName, stored->version,
                                                                  stored->kek_version));
    if (!key.ok() && key.status().code() == StatusCode::kNotFound) {
      return DataLossError("integrity_failure", "the audit key's KEK is missing from the HSM");
    }
    TV_RETURN_IF_ERROR(key.status());
    return std::unique_ptr<AuditLog>(
        new AuditLog(store, std::move(key).value(), clock, hmac_guard.release()));
  }
  if (stored.status().code() != StatusCode::kNotFound) return stored.status();

  // First start. A KEK left by an earlier start that died before storing the key is reused, not
  // destroyed: wrapping a new key under it harms nothing.
  Status created = hsm.CreateKek(kek, AsBytes("tokenvault/audit"));
  if (!created.ok() && created.code() != StatusCode::kAlreadyExists) return created;
  TV_ASSIGN_OR_RETURN(SecretBytes key, RandomSecret(kMacSize));
  TV_ASSIGN_OR_RETURN(Bytes wrapped, hsm.Wrap(kek, key, aad));
  storage::DataKeyRecord record;
  record.merchant = kAuditKeyName;
  record.version = kAuditKeyVersion;
  record.kek_version = kek.version;
  record.wrapped = envelope::EncodeWrappedDek(wrapped);
  record.created_at_ms = clock.NowUnixMillis();
  TV_RETURN_IF_ERROR(store.InsertSystemKey(kAuditKeyName, record));
  return std::unique_ptr<AuditLog>(new AuditLog(store, std::move(key), clock, hmac_guard.release()));
}

StatusOr<Bytes> AuditLog::Hmac(ByteView a, ByteView b) const {
  if (keyed_) {
    TV_ASSIGN_OR_RETURN(HmacSha256Tag tag, keyed_->Compute(a, b));
    return Bytes(tag.begin(), tag.end());
  }
  Bytes mac(kMacSize);
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(hmac_);
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", const_cast<char*>("SHA256"), 0),
                         OSSL_PARAM_construct_end()};
  size_t out_len = 0;
  const bool ok = ctx != nullptr && EVP_MAC_init(ctx, key_.data(), key_.size(), params) == 1 &&
                  EVP_MAC_update(ctx, a.data(), a.size()) == 1 &&
                  EVP_MAC_update(ctx, b.data(), b.size()) == 1 &&
                  EVP_MAC_final(ctx, mac.data(), &out_len, mac.size()) == 1;
  EVP_MAC_CTX_free(ctx);
  if (!ok || out_len != kMacSize) return InternalError("crypto_error", "HMAC failed");
  return mac;
}

StatusOr<std::unique_ptr<HmacSha256>> AuditLog::DeriveKey(std::string_view purpose) const {
  TV_ASSIGN_OR_RETURN(Bytes derived, Hmac(AsBytes("tokenvault/derive/"), AsBytes(purpose)));
  SecretBytes key = SecretBytes::CopyFrom(derived);
  OPENSSL_cleanse(derived.data(), derived.size());
  return HmacSha256::Create(key);
}

StatusOr<Bytes> AuditLog::RecordMac(const storage::AuditRecord& record) const {
  return Hmac(record.prev_mac, CanonicalAuditEncoding(record));
}

StatusOr<Bytes> AuditLog::HeadMac(int64_t seq, ByteView mac) const {
  Bytes msg;
  AppendBytes(msg, AsBytes("tokenvault/audit-head"));
  AppendU64BE(msg, static_cast<uint64_t>(seq));
  return Hmac(msg, mac);
}

StatusOr<storage::AuditRecord> AuditLog::Append(storage::AuditRecord event) {
  if (event.time_ms == 0) event.time_ms = clock_.NowUnixMillis();
  return store_.AppendAudit(std::move(event), *this);
}

void AuditLog::AppendAsync(storage::AuditRecord event,
                           std::function<void(const StatusOr<storage::AuditRecord>&)> done,
                           std::vector<storage::RevealCharge> charges) {
  if (event.time_ms == 0) event.time_ms = clock_.NowUnixMillis();
  store_.AppendAuditAsync(std::move(event), *this, std::move(charges),
                          [ticket = pending_.Enter(), done = std::move(done)](
                              const StatusOr<storage::AuditRecord>& written) mutable {
                            done(written);
                            ticket.reset();  // after 'done': it may still use the log
                          });
}

StatusOr<std::vector<storage::AuditRecord>> AuditLog::Query(const storage::AuditQuery& query) {
  return store_.ScanAudit(query);
}

StatusOr<AuditVerification> AuditLog::Verify() {
  AuditVerification v;
  auto bad = [&](int64_t seq, std::string reason) {
    v.ok = false;
    v.first_bad_seq = seq;
    v.reason = std::move(reason);
    return v;
  };
  Bytes prev(kMacSize, 0);
  int64_t expected = 1;
  storage::AuditQuery query;
  query.limit = kVerifyChunk;
  for (;;) {
    TV_ASSIGN_OR_RETURN(std::vector<storage::AuditRecord> chunk, store_.ScanAudit(query));
    for (const storage::AuditRecord& r : chunk) {
      if (r.seq != expected) {
        return bad(expected, r.seq > expected ? "record missing" : "sequence out of order");
      }
      if (!ConstantTimeEquals(r.prev_mac, prev)) return bad(r.seq, "chain broken");
      TV_ASSIGN_OR_RETURN(Bytes mac, RecordMac(r));
      if (!ConstantTimeEquals(mac, r.mac)) return bad(r.seq, "record altered");
      prev = r.mac;
      ++expected;
      ++v.records_checked;
    }
    if (chunk.size() < kVerifyChunk) break;
    query.after_seq = chunk.back().seq;
  }
  StatusOr<storage::AuditHead> head = store_.GetAuditHead();
  if (!head.ok()) {
    if (head.status().code() != StatusCode::kNotFound) return head.status();
    if (v.records_checked > 0) return bad(1, "the head of the log is missing");
    return v;
  }
  TV_ASSIGN_OR_RETURN(Bytes head_mac, HeadMac(head->seq, head->mac));
  if (!ConstantTimeEquals(head_mac, head->head_mac)) {
    return bad(std::min(head->seq, v.records_checked + 1), "the head of the log was altered");
  }
  if (head->seq != v.records_checked || !ConstantTimeEquals(head->mac, prev)) {
    return bad(v.records_checked + 1, "log truncated: it ends at " +
                                          std::to_string(v.records_checked) +
                                          " but the head says " + std::to_string(head->seq));
  }
  return v;
}

}  // namespace tokenvault
