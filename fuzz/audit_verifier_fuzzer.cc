// The offline audit verifier (AuditExportVerifier, `tokenvault audit verify`) and the checkpoint
// parser. At start-up a genuine export is made by the real code (AuditLog + AuditCheckpointer on
// SQLite, FakeHsm's P-256 key), and it must verify. Then each input is one of:
//  - raw bytes, fed as an export and as a checkpoint log: never a crash;
//  - an edit of the genuine export the fuzzer describes (a byte replaced inside a signed line, a
//    signed line deleted, two different signed lines swapped, the tail cut before the end line,
//    arbitrary bytes inserted as a line): the verifier must refuse every one;
//  - the genuine export with an edited checkpoint log: never a crash, and a log the verifier
//    accepts must still verify the genuine export.
// An edit that only moves or deletes genuine checkpoint lines before the end line leaves every
// record as it was and is allowed either answer.
// The header line is unsigned ("for readers", docs/audit.md) and so is left alone by the edits.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "storage/sqlite_store.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/temp_dir.h"
#include "vault/audit_checkpointer.h"
#include "vault/audit_export.h"
#include "vault/audit_log.h"
#include "vault/base/clock.h"

using namespace tokenvault;

namespace {

using Lines = std::vector<std::string>;

struct Genuine {
  Lines lines;                 // the export, one line each
  std::string checkpoint_log;  // the second sink, as written
  std::unique_ptr<EcdsaP256PublicKey> key;
};

void Die(const char* what, const Status& s) {
  std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
  std::abort();
}

Genuine MakeGenuineExport() {
  Genuine g;
  testing::TempDir dir;
  testing::FakeHsm hsm;
  FakeClock clock;
  auto store = storage::SqliteStore::Open({dir.Sub("a.db")});
  if (!store.ok()) Die("store", store.status());
  auto log = AuditLog::Open(hsm, **store, clock);
  if (!log.ok()) Die("audit log", log.status());
  AuditCheckpointOptions options;
  options.records = 4;
  options.interval = std::chrono::milliseconds(0);
  options.log_path = dir.Sub("checkpoints.ndjson");
  auto checkpointer = AuditCheckpointer::Open(hsm, **store, **log, options, clock);
  if (!checkpointer.ok()) Die("checkpointer", checkpointer.status());
  for (int i = 1; i <= 11; ++i) {
    storage::AuditRecord r;
    r.request_id = "req-" + std::to_string(i);
    r.principal = i % 3 ? "app" : "";
    r.auth = i % 3 ? "api_key" : "none";
    r.source_ip = "127.0.0.1";
    r.action = i % 2 ? "tokens.detokenize" : "tokens.create";
    r.merchant = "m1";
    r.resource = "tok_" + std::to_string(i);
    if (i % 4 == 0) r.resources = {"tok_a", "tok_b"};
    r.outcome = i % 3 ? "allowed" : "denied";
    r.status = i % 3 ? 200 : 403;
    r.reason = "rule \"" + std::to_string(i) + "\"\n\t\u00e9";
    clock.Advance(std::chrono::milliseconds(7));
    if (auto a = (*log)->Append(r); !a.ok()) Die("append", a.status());
    if (i == 8) {
      if (auto c = (*checkpointer)->CheckpointNow(); !c.ok()) Die("checkpoint", c.status());
    }
  }
  storage::AuditQuery all;
  Status exported = (*checkpointer)->Export(all, SIZE_MAX, [&](std::string_view line) {
    g.lines.emplace_back(line);
    return Status::Ok();
  });
  if (!exported.ok()) Die("export", exported);
  std::ifstream in(options.log_path);
  std::stringstream ss;
  ss << in.rdbuf();
  g.checkpoint_log = ss.str();
  g.key = std::make_unique<EcdsaP256PublicKey>((*checkpointer)->public_key());
  return g;
}

const Genuine& TheGenuine() {
  static const Genuine* g = [] {
    auto* made = new Genuine(MakeGenuineExport());
    return made;
  }();
  return *g;
}

ExportVerification Verify(const Lines& lines, const std::string* checkpoint_log, bool* log_ok) {
  AuditExportVerifier verifier(*TheGenuine().key);
  if (checkpoint_log) {
    *log_ok = verifier.AddCheckpointLog(*checkpoint_log).ok();
  }
  for (const std::string& line : lines) {
    if (!verifier.Feed(line)) break;
  }
  return verifier.Finish();
}

Lines SplitLines(std::string_view text) {
  Lines lines;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    lines.emplace_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return lines;
}

bool IsHeader(const std::string& line) { return line.find("\"type\":\"export\"") != std::string::npos; }

// The indexes of signed lines (records, checkpoints, end).
std::vector<size_t> SignedLines(const Lines& lines) {
  std::vector<size_t> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!IsHeader(lines[i])) out.push_back(i);
  }
  return out;
}

// The lines that are not checkpoint lines of the genuine export.
Lines WithoutCheckpoints(const Lines& lines) {
  Lines out;
  for (const std::string& line : lines) {
    bool checkpoint = false;
    for (const std::string& g : TheGenuine().lines) {
      checkpoint = checkpoint || (line == g && line.find("\"type\":\"checkpoint\"") != std::string::npos);
    }
    if (!checkpoint) out.push_back(line);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bool unused = true;
  const Genuine& g = TheGenuine();
  const ExportVerification v = Verify(g.lines, &g.checkpoint_log, &unused);
  if (!unused || !v.ok || v.last_seq != 11 || v.records_checked != 11) {
    std::fprintf(stderr, "the genuine export does not verify: %s\n", v.reason.c_str());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Genuine& g = TheGenuine();
  FuzzedDataProvider in(data, size);
  const int mode = in.ConsumeIntegralInRange<int>(0, 6);
  bool log_ok = true;
  if (mode == 0) {  // raw bytes, as an export and as a checkpoint log
    const std::string text = in.ConsumeRemainingBytesAsString();
    (void)Verify(SplitLines(text), nullptr, &log_ok);
    (void)Verify(g.lines, &text, &log_ok);
    (void)ParseCheckpointLine(text);
    return 0;
  }
  if (mode == 6) {  // an edited checkpoint log
    std::string edited = g.checkpoint_log;
    const size_t at = in.ConsumeIntegralInRange<size_t>(0, edited.size());
    const std::string bytes = in.ConsumeRandomLengthString(64);
    edited.replace(at, in.ConsumeIntegralInRange<size_t>(0, edited.size() - at), bytes);
    const ExportVerification v = Verify(g.lines, &edited, &log_ok);
    // A log the verifier accepts is one chain of validly signed checkpoints of this trail: the
    // genuine export must still verify against it.
    if (log_ok && !v.ok) {
      std::fprintf(stderr, "an accepted checkpoint log fails the genuine export: %s\n", v.reason.c_str());
      std::abort();
    }
    return 0;
  }
  Lines lines = g.lines;
  static const bool verbose = std::getenv("TOKENVAULT_FUZZ_VERBOSE") != nullptr;
  const std::vector<size_t> signed_lines = SignedLines(lines);
  auto pick = [&] { return signed_lines[in.ConsumeIntegralInRange<size_t>(0, signed_lines.size() - 1)]; };
  switch (mode) {
    case 1: {  // one byte of a signed line replaced (never by a newline: that would split it)
      std::string& line = lines[pick()];
      const size_t at = in.ConsumeIntegralInRange<size_t>(0, line.size() - 1);
      char c = in.ConsumeIntegral<char>();
      if (c == '\n') c = ' ';
      if (c == line[at]) return 0;
      line[at] = c;
      break;
    }
    case 2: {  // a signed line deleted
      const size_t at = pick();
      lines.erase(lines.begin() + static_cast<std::ptrdiff_t>(at));
      break;
    }
    case 3: {  // two different signed lines swapped
      const size_t a = pick(), b = pick();
      if (lines[a] == lines[b]) return 0;
      if (verbose) std::fprintf(stderr, "swap lines %zu and %zu of %zu\n", a, b, lines.size());
      std::swap(lines[a], lines[b]);
      break;
    }
    case 4:  // the tail cut before the signed end line
      lines.resize(in.ConsumeIntegralInRange<size_t>(0, lines.size() - 1));
      break;
    case 5: {  // a non-empty line of arbitrary bytes inserted
      const size_t at = in.ConsumeIntegralInRange<size_t>(0, lines.size());
      std::string inserted = in.ConsumeRemainingBytesAsString();
      if (inserted.empty() || inserted.find('\n') != std::string::npos || IsHeader(inserted)) return 0;
      lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(at), inserted);
      break;
    }
  }
  // Checkpoints confirm records already read: one moved later among the records, or deleted
  // while the checkpoint log supplies it, leaves every record as it was. Such an export may
  // verify; any other may not - nor one with anything after its signed end line.
  if (WithoutCheckpoints(lines) == WithoutCheckpoints(g.lines) && lines.back() == g.lines.back()) {
    return 0;
  }
  const ExportVerification with_log = Verify(lines, &g.checkpoint_log, &log_ok);
  const ExportVerification without_log = Verify(lines, nullptr, &log_ok);
  if (with_log.ok || without_log.ok) {
    std::fprintf(stderr, "an edited export verified (mode %d, with log: %d)\n", mode, with_log.ok);
    for (const std::string& l : lines) std::fprintf(stderr, "  %s\n", l.c_str());
    std::abort();
  }
  return 0;
}
