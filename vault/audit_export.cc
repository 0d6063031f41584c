#include "vault/audit_export.h"

#include <nlohmann/json.hpp>

#include "hsm/hsm.h"
#include "vault/audit_log.h"
#include "vault/base/clock.h"
#include "vault/base/utf8.h"

namespace tokenvault {
namespace {

using json = nlohmann::json;

// Fields are read strictly: a line missing one, or holding the wrong type, is not an export line.
struct Reader {
  const json& j;
  bool ok = true;

  std::string Str(const char* name) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) {
      ok = false;
      return "";
    }
    return it->get<std::string>();
  }
  int64_t Int(const char* name) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_integer()) {
      ok = false;
      return 0;
    }
    return it->get<int64_t>();
  }
  bool Bool(const char* name) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_boolean()) {
      ok = false;
      return false;
    }
    return it->get<bool>();
  }
  Bytes Hex(const char* name, std::optional<size_t> size) {
    std::optional<Bytes> b = HexDecode(Str(name));
    if (!b || (size && b->size() != *size)) {
      ok = false;
      return {};
    }
    return *b;
  }
};

std::optional<json> ParseObject(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

// The line's "type", or "" when it has none that is a string.
std::string TypeOf(const std::optional<json>& j) {
  if (!j) return "";
  auto it = j->find("type");
  return it != j->end() && it->is_string() ? it->get<std::string>() : "";
}

std::optional<storage::AuditRecord> RecordFromJson(const json& j) {
  Reader r{j};
  storage::AuditRecord rec;
  rec.seq = r.Int("seq");
  rec.time_ms = r.Int("time_ms");
  rec.request_id = r.Str("request_id");
  rec.principal = r.Str("principal");
  rec.auth = r.Str("auth");
  rec.source_ip = r.Str("source_ip");
  rec.action = r.Str("action");
  rec.merchant = r.Str("merchant");
  rec.resource = r.Str("resource");
  rec.outcome = r.Str("outcome");
  rec.status = static_cast<int>(r.Int("status"));
  rec.reason = r.Str("reason");
  rec.prev_mac = r.Hex("prev_hash", 32);
  rec.mac = r.Hex("hash", 32);
  auto resources = j.find("resources");
  if (resources == j.end() || !resources->is_array()) return std::nullopt;
  for (const json& item : *resources) {
    if (!item.is_string()) return std::nullopt;
    rec.resources.push_back(item.get<std::string>());
  }
  if (!r.ok) return std::nullopt;
  return rec;
}

std::optional<storage::AuditCheckpoint> CheckpointFromJson(const json& j) {
  Reader r{j};
  storage::AuditCheckpoint c;
  c.first_seq = r.Int("first_seq");
  c.last_seq = r.Int("last_seq");
  c.time_ms = r.Int("time_ms");
  c.chain_mac = r.Hex("chain_mac", 32);
  c.prev_hash = r.Hex("prev_hash", 32);
  c.key_id = r.Str("key_id");
  c.signature = r.Hex("signature", hsm::kP256SignatureSize);
  if (!r.ok || c.first_seq < 1 || c.last_seq < c.first_seq) return std::nullopt;
  const uint64_t count = static_cast<uint64_t>(c.last_seq - c.first_seq) + 1;
  if (count > (1u << 20)) return std::nullopt;  // bounded: a forged line cannot exhaust memory
  c.digests = r.Hex("digests", count * kAuditDigestSize);
  if (!r.ok) return std::nullopt;
  return c;
}

std::optional<AuditExportEnd> EndFromJson(const json& j) {
  Reader r{j};
  AuditExportEnd e;
  e.first_seq = r.Int("first_seq");
  e.last_seq = r.Int("last_seq");
  e.complete = r.Bool("complete");
  e.time_ms = r.Int("time_ms");
  e.last_checkpoint_hash = r.Hex("last_checkpoint_hash", 32);
  e.key_id = r.Str("key_id");
  e.signature = r.Hex("signature", hsm::kP256SignatureSize);
  auto cursor = j.find("next_cursor");
  if (cursor == j.end()) return std::nullopt;
  if (cursor->is_string()) {
    const std::string text = cursor->get<std::string>();
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    e.next_cursor = std::stoll(text);
  } else if (!cursor->is_null()) {
    return std::nullopt;
  }
  if (!r.ok) return std::nullopt;
  return e;
}

// Dumps as the API does: invalid UTF-8 cannot occur (the store makes every field valid), and a
// replacement character could not match the signed digest anyway.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

int64_t DigestCount(const storage::AuditCheckpoint& c) {
  return static_cast<int64_t>(c.digests.size() / kAuditDigestSize);
}

}  // namespace

Bytes CheckpointMessage(const storage::AuditCheckpoint& c) {
  Bytes out;
  AppendBytes(out, AsBytes("tokenvault/audit-checkpoint"));
  AppendU8(out, 1);
  AppendU64BE(out, static_cast<uint64_t>(c.first_seq));
  AppendU64BE(out, static_cast<uint64_t>(c.last_seq));
  AppendU64BE(out, static_cast<uint64_t>(c.time_ms));
  AppendBytes(out, c.chain_mac);
  AppendBytes(out, c.prev_hash);
  const Sha256Digest digests = Sha256({c.digests});
  AppendBytes(out, digests);
  AppendLp32(out, c.key_id);
  return out;
}

Sha256Digest CheckpointHash(const storage::AuditCheckpoint& c) {
  return Sha256({CheckpointMessage(c)});
}

Bytes ExportEndMessage(const AuditExportEnd& e) {
  Bytes out;
  AppendBytes(out, AsBytes("tokenvault/audit-export-end"));
  AppendU8(out, 1);
  AppendU64BE(out, static_cast<uint64_t>(e.first_seq));
  AppendU64BE(out, static_cast<uint64_t>(e.last_seq));
  AppendU8(out, e.complete ? 1 : 0);
  AppendU8(out, e.next_cursor ? 1 : 0);  // more pages follow
  AppendU64BE(out, static_cast<uint64_t>(e.time_ms));
  AppendBytes(out, e.last_checkpoint_hash);
  AppendLp32(out, e.key_id);
  return out;
}

Sha256Digest RecordDigest(const storage::AuditRecord& record) {
  // Over the text as exported: records written before text was made UTF-8 on append were MAC'd
  // over their raw bytes, but render (and so verify) with U+FFFD in place of the bad bytes. Only
  // such a record is copied (the signer digests every record: no copy in the common case).
  auto digest = [](const storage::AuditRecord& r) {
    // The MAC fields are bound too: a record's hash and the next one's prev_hash cannot be
    // rewritten together unnoticed.
    return Sha256({CanonicalAuditEncoding(r), r.prev_mac, r.mac});
  };
  bool valid = true;
  for (const std::string* field : {&record.request_id, &record.principal, &record.auth,
                                   &record.source_ip, &record.action, &record.merchant,
                                   &record.resource, &record.outcome, &record.reason}) {
    valid = valid && IsValidUtf8(*field);
  }
  for (const std::string& r : record.resources) valid = valid && IsValidUtf8(r);
  if (valid) return digest(record);
  storage::AuditRecord text = record;
  for (std::string* field : {&text.request_id, &text.principal, &text.auth, &text.source_ip,
                             &text.action, &text.merchant, &text.resource, &text.outcome,
                             &text.reason}) {
    MakeValidUtf8(*field);
  }
  for (std::string& r : text.resources) MakeValidUtf8(r);
  return digest(text);
}

nlohmann::json AuditRecordJson(const storage::AuditRecord& r) {
  return json{{"seq", r.seq},
              {"time", Rfc3339(r.time_ms)},
              {"request_id", r.request_id},
              {"principal", r.principal},
              {"auth", r.auth},
              {"source_ip", r.source_ip},
              {"action", r.action},
              {"merchant", r.merchant},
              {"resource", r.resource},
              {"outcome", r.outcome},
              {"status", r.status},
              {"reason", r.reason},
              {"prev_hash", HexEncode(r.prev_mac)},
              {"hash", HexEncode(r.mac)}};
}

std::string AuditRecordLine(const storage::AuditRecord& r) {
  json o = AuditRecordJson(r);
  o["type"] = "record";
  o["time_ms"] = r.time_ms;       // the exact time that was MAC'd and signed
  o["resources"] = r.resources;   // always present, so the canonical encoding can be rebuilt
  return Dump(o);
}

std::string CheckpointLine(const storage::AuditCheckpoint& c) {
  json o = {{"type", "checkpoint"},
            {"first_seq", c.first_seq},
            {"last_seq", c.last_seq},
            {"time", Rfc3339(c.time_ms)},
            {"time_ms", c.time_ms},
            {"chain_mac", HexEncode(c.chain_mac)},
            {"prev_hash", HexEncode(c.prev_hash)},
            {"digests", HexEncode(c.digests)},
            {"key_id", c.key_id},
            {"signature", HexEncode(c.signature)}};
  return Dump(o);
}

std::string ExportEndLine(const AuditExportEnd& e) {
  json o = {{"type", "end"},
            {"first_seq", e.first_seq},
            {"last_seq", e.last_seq},
            {"complete", e.complete},
            {"time", Rfc3339(e.time_ms)},
            {"time_ms", e.time_ms},
            {"last_checkpoint_hash", HexEncode(e.last_checkpoint_hash)},
            {"key_id", e.key_id},
            {"signature", HexEncode(e.signature)},
            {"next_cursor", e.next_cursor ? json(std::to_string(*e.next_cursor)) : json(nullptr)}};
  return Dump(o);
}

std::string ExportHeaderLine(bool complete, int64_t first_seq) {
  return Dump(json{{"type", "export"},
                   {"format", "tokenvault-audit-export/1"},
                   {"complete", complete},
                   {"first_seq", first_seq}});
}

StatusOr<storage::AuditCheckpoint> ParseCheckpointLine(std::string_view line) {
  std::optional<json> j = ParseObject(line);
  if (TypeOf(j) != "checkpoint") {
    return InvalidArgumentError("not_a_checkpoint", "not a checkpoint line");
  }
  std::optional<storage::AuditCheckpoint> c = CheckpointFromJson(*j);
  // Exactly as written: no field added, none (the unsigned time text included) changed.
  if (!c || CheckpointLine(*c) != line) {
    return InvalidArgumentError("not_a_checkpoint", "malformed checkpoint line");
  }
  return *c;
}

AuditExportVerifier::AuditExportVerifier(EcdsaP256PublicKey key)
    : key_(std::move(key)), key_id_(key_.KeyId()) {}

Status AuditExportVerifier::AddCheckpointLog(std::string_view contents) {
  size_t line_no = 0;
  while (!contents.empty()) {
    const size_t nl = contents.find('\n');
    const bool last = nl == std::string_view::npos;
    const std::string_view line = contents.substr(0, last ? contents.size() : nl);
    contents.remove_prefix(last ? contents.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    StatusOr<storage::AuditCheckpoint> c = ParseCheckpointLine(line);
    if (!c.ok()) {
      if (last) break;  // torn by a crash while it was appended: never fsync'd, never relied on
      return DataLossError("bad_checkpoint_log", "checkpoint log line " + std::to_string(line_no) +
                                                     " is not a checkpoint");
    }
    if (c->key_id != key_id_ || !key_.Verify(CheckpointMessage(*c), c->signature)) {
      return DataLossError("bad_checkpoint_log", "checkpoint log line " + std::to_string(line_no) +
                                                     " has an invalid signature");
    }
    // The log is one chain: two validly signed histories in it (the vault made to re-sign a
    // rewritten trail) are themselves the finding.
    const int64_t expected_first = log_.empty() ? 1 : log_.rbegin()->first + 1;
    const Sha256Digest expected_prev = log_.empty() ? Sha256Digest{} : CheckpointHash(log_.rbegin()->second);
    if (c->first_seq != expected_first || !ConstantTimeEquals(c->prev_hash, expected_prev)) {
      return DataLossError("bad_checkpoint_log",
                           "checkpoint log line " + std::to_string(line_no) +
                               " does not follow the line before it: the vault signed two histories");
    }
    log_[c->last_seq] = *std::move(c);
  }
  return Status::Ok();
}

bool AuditExportVerifier::Bad(std::optional<int64_t> seq, std::string reason) {
  if (!result_.ok) return false;
  result_.ok = false;
  result_.first_bad_seq = seq;
  result_.reason = std::move(reason);
  return false;
}

bool AuditExportVerifier::Feed(std::string_view line) {
  if (!result_.ok) return false;
  ++result_.line;
  if (line.empty()) return true;
  std::optional<json> j = ParseObject(line);
  const std::string type = TypeOf(j);
  // After a signed end, only the next page may follow, header first: nothing is appended to a
  // page after its end (even a copy of a checkpoint the export already holds).
  if (ended_) {
    if (!more_pages_) {
      return Bad(next_seq_, "line " + std::to_string(result_.line) +
                                " follows the export's last signed end");
    }
    if (type != "export") {
      return Bad(next_seq_, "line " + std::to_string(result_.line) +
                                " follows a page's signed end but is not the next page's header");
    }
    ended_ = false;
  }
  // Each signed kind of line must be exactly what the vault writes for its content: an added
  // field, or an edit of a field nothing signs (the time as text), is tampering too.
  if (type == "record") {
    std::optional<storage::AuditRecord> r = RecordFromJson(*j);
    if (!r || AuditRecordLine(*r) != line) {
      return Bad(r ? r->seq : next_seq_,
                 "line " + std::to_string(result_.line) + " is not a record as the vault writes it");
    }
    return OnRecord(*r);
  }
  if (type == "checkpoint") {
    std::optional<storage::AuditCheckpoint> c = CheckpointFromJson(*j);
    if (!c || CheckpointLine(*c) != line) {
      return Bad(next_seq_, "line " + std::to_string(result_.line) + " is not a well-formed checkpoint");
    }
    return OnCheckpoint(*c, /*from_log=*/false);
  }
  if (type == "export") {
    const auto complete = j->find("complete");
    if (complete != j->end() && complete->is_boolean() && !complete->get<bool>()) {
      return Bad(std::nullopt, "a filtered export: its records can be read but not verified whole");
    }
    return true;
  }
  if (type == "end") {
    std::optional<AuditExportEnd> e = EndFromJson(*j);
    if (!e || ExportEndLine(*e) != line) {
      return Bad(next_seq_, "line " + std::to_string(result_.line) + " is not a well-formed end");
    }
    return OnEnd(*e);
  }
  return Bad(next_seq_, "line " + std::to_string(result_.line) + " is not an export line");
}

bool AuditExportVerifier::OnRecord(const storage::AuditRecord& r) {
  if (r.seq != next_seq_) {
    if (r.seq > next_seq_) {
      return Bad(next_seq_, "record " + std::to_string(next_seq_) + " is missing (found record " +
                                std::to_string(r.seq) + " in its place)");
    }
    return Bad(r.seq, "record " + std::to_string(r.seq) +
                          " is out of order or repeated (expected record " +
                          std::to_string(next_seq_) + ")");
  }
  // The chain links in the export itself: cheap, and catches a careless edit at once. Whoever can
  // rewrite both fields is caught by the signed digests below.
  if (r.seq > 1 && !last_record_hash_.empty() && !ConstantTimeEquals(r.prev_mac, last_record_hash_)) {
    return Bad(r.seq, "record " + std::to_string(r.seq) + " does not link to the record before it");
  }
  ended_ = false;
  last_record_hash_ = r.mac;
  pending_.push_back(Pending{r.seq, RecordDigest(r), r.mac});
  result_.last_seq = r.seq;
  ++next_seq_;
  // A checkpoint from the log that ends here is checked at once: it need not be in the export.
  auto logged = log_.find(r.seq);
  if (logged != log_.end() && confirmed_through_ < r.seq) {
    return OnCheckpoint(logged->second, /*from_log=*/true);
  }
  return true;
}

bool AuditExportVerifier::OnCheckpoint(const storage::AuditCheckpoint& c, bool from_log) {
  const std::string range = "[" + std::to_string(c.first_seq) + ", " + std::to_string(c.last_seq) + "]";
  if (c.key_id != key_id_ || !key_.Verify(CheckpointMessage(c), c.signature)) {
    return Bad(c.first_seq, "the checkpoint covering " + range +
                                " is not signed by this key: forged or altered");
  }
  if (!from_log) {
    auto logged = log_.find(c.last_seq);
    if (logged != log_.end() && CheckpointHash(logged->second) != CheckpointHash(c)) {
      return Bad(c.first_seq, "the checkpoint covering " + range +
                                  " differs from the one in the checkpoint log");
    }
    if (c.last_seq <= confirmed_through_) return true;  // confirmed already, from the log
  }
  if (c.first_seq != confirmed_through_ + 1) {
    return Bad(confirmed_through_ + 1, "no checkpoint covers records from " +
                                           std::to_string(confirmed_through_ + 1) +
                                           " (the next one starts at " +
                                           std::to_string(c.first_seq) + ")");
  }
  if (!ConstantTimeEquals(c.prev_hash, last_checkpoint_hash_)) {
    return Bad(c.first_seq, "the checkpoint covering " + range +
                                " does not follow the previous checkpoint (one was removed or replaced)");
  }
  if (c.last_seq >= next_seq_) {
    return Bad(next_seq_, "record " + std::to_string(next_seq_) + " is missing: checkpoint " +
                              range + " covers it");
  }
  // pending_ holds records confirmed_through_+1 .. next_seq_-1 in order.
  for (int64_t i = 0; i < DigestCount(c); ++i) {
    const Pending& p = pending_[static_cast<size_t>(i)];
    const ByteView signed_digest(c.digests.data() + i * kAuditDigestSize, kAuditDigestSize);
    if (!ConstantTimeEquals(signed_digest, p.digest)) {
      return Bad(p.seq, "record " + std::to_string(p.seq) +
                            " differs from what the checkpoint covering " + range + " signed");
    }
  }
  const Pending& last = pending_[static_cast<size_t>(DigestCount(c) - 1)];
  if (!ConstantTimeEquals(c.chain_mac, last.mac)) {
    return Bad(last.seq, "record " + std::to_string(last.seq) + "'s hash is not the one checkpoint " +
                             range + " signed");
  }
  pending_.erase(pending_.begin(), pending_.begin() + DigestCount(c));
  confirmed_through_ = c.last_seq;
  last_checkpoint_hash_ = CheckpointHash(c);
  result_.records_checked = confirmed_through_;
  ++result_.checkpoints_checked;
  return true;
}

bool AuditExportVerifier::OnEnd(const AuditExportEnd& e) {
  if (e.key_id != key_id_ || !key_.Verify(ExportEndMessage(e), e.signature)) {
    return Bad(e.first_seq, "the export's end line is not signed by this key");
  }
  if (!e.complete) {
    return Bad(std::nullopt, "a filtered export: its records can be read but not verified whole");
  }
  if (e.first_seq != page_first_ || e.last_seq != next_seq_ - 1) {
    if (e.last_seq >= next_seq_) {
      return Bad(next_seq_, "record " + std::to_string(next_seq_) +
                                " is missing: the export's signed end says it holds up to record " +
                                std::to_string(e.last_seq));
    }
    return Bad(e.first_seq, "the export's signed end covers records " + std::to_string(e.first_seq) +
                                " to " + std::to_string(e.last_seq) + ", not the records it holds");
  }
  if (!pending_.empty()) {
    return Bad(pending_.front().seq, "record " + std::to_string(pending_.front().seq) +
                                         " is not covered by any signed checkpoint");
  }
  if (!ConstantTimeEquals(e.last_checkpoint_hash, last_checkpoint_hash_)) {
    return Bad(confirmed_through_ + 1, "the export's end does not follow its last checkpoint");
  }
  page_first_ = e.last_seq + 1;
  ended_ = true;
  more_pages_ = e.next_cursor.has_value();
  return true;
}

ExportVerification AuditExportVerifier::Finish() {
  if (finished_) return result_;
  finished_ = true;
  if (!result_.ok) return result_;
  if (!ended_) {
    Bad(next_seq_, "the export is truncated after record " + std::to_string(next_seq_ - 1) +
                       ": it does not end with its signed end line");
    return result_;
  }
  if (more_pages_) {
    Bad(next_seq_, "the export is truncated after record " + std::to_string(next_seq_ - 1) +
                       ": its last page's signed end says more pages follow");
    return result_;
  }
  if (!log_.empty() && log_.rbegin()->first >= next_seq_) {
    const storage::AuditCheckpoint& c = log_.rbegin()->second;
    Bad(next_seq_, "records " + std::to_string(next_seq_) + " to " + std::to_string(c.last_seq) +
                       " are missing: the checkpoint log covers them (the trail was cut back)");
  }
  result_.line = 0;
  return result_;
}

}  // namespace tokenvault
