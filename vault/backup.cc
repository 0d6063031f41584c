#include "vault/backup.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/sqlite_store.h"
#include "vault/audit_log.h"
#include "vault/base/bytes.h"
#include "vault/base/clock.h"
#include "vault/base/secret_bytes.h"
#include "vault/file_io.h"
#include "vault/vault.h"

namespace tokenvault {
namespace {

using json = nlohmann::json;

constexpr char kReasonBackup[] = "backup_failed";
const char* const kReasonBackupExists = kReasonBackupTargetExists;
constexpr char kReasonUnusable[] = "backup_unusable";

Status IoError(const std::string& what, const std::string& path) {
  return FileSystemError(kReasonBackup, what, path);
}

// An open file descriptor, closed with the object.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Status FsyncPath(const std::string& path, int flags) {
  Fd fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (fd.get() < 0) return IoError("cannot open", path);
  if (::fsync(fd.get()) != 0) return IoError("cannot fsync", path);
  return Status::Ok();
}

Status MakePrivateDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0) {
    if (errno == EEXIST) {
      return FailedPreconditionError(kReasonBackupExists, path + " exists: a backup or restore never writes into "
                                                          "an existing directory");
    }
    return IoError("cannot create", path);
  }
  return Status::Ok();
}

// SHA-256 of a file, streamed; its size too.
Status HashFile(const std::string& path, std::string* hex, uint64_t* size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return IoError("cannot open", path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return InternalError(kReasonBackup, "SHA-256 unavailable");
  }
  // The files include the dev token's PIN files: the buffer is wiped when freed.
  SecretBytes buf(1 << 16);
  *size = 0;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("cannot read", path);
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    *size += static_cast<uint64_t>(n);
  }
  uint8_t digest[32];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  *hex = HexEncode(ByteView(digest, length));
  return Status::Ok();
}

// Copies 'from' to a new file 'to' (mode 0600), at most 'limit' bytes, and fsyncs it.
Status CopyFileDurably(const std::string& from, const std::string& to, uint64_t limit = UINT64_MAX) {
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (in.get() < 0) return IoError("cannot open", from);
  Fd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (out.get() < 0) return IoError("cannot create", to);
  // The files include the dev token's PIN files: the buffer is wiped when freed.
  SecretBytes buf(1 << 16);
  uint64_t copied = 0;
  while (copied < limit) {
    const ssize_t n = ::read(in.get(), buf.data(), static_cast<size_t>(std::min<uint64_t>(buf.size(), limit - copied)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("cannot read", from);
    if (n == 0) break;
    TV_RETURN_IF_ERROR(WriteAll(out.get(), ByteView(buf.data(), static_cast<size_t>(n)), to, kReasonBackup));
    copied += static_cast<uint64_t>(n);
  }
  if (::fsync(out.get()) != 0) return IoError("cannot fsync", to);
  return Status::Ok();
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// The length of 'path' up to the end of its last complete line (a line being appended while we
// read is left out: the log's own reader drops a torn last line the same way).
StatusOr<uint64_t> CompleteLinesLength(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return IoError("cannot open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return IoError("cannot stat", path);
  uint64_t end = static_cast<uint64_t>(st.st_size);
  char c = 0;
  while (end > 0) {
    if (::pread(fd.get(), &c, 1, static_cast<off_t>(end - 1)) != 1) return IoError("cannot read", path);
    if (c == '\n') break;
    --end;
  }
  return end;
}

// Copies the directory tree 'from' into 'to' (made 0700), recording files under 'rel'.
Status CopyTree(const std::string& from, const std::string& to, const std::string& rel,
                const std::function<bool(const std::string&)>& skip, const std::string& backup_dir,
                BackupManifest& manifest);

Status Record(const std::string& backup_dir, const std::string& rel, BackupManifest& manifest) {
  BackupFile f;
  f.path = rel;
  TV_RETURN_IF_ERROR(HashFile(backup_dir + "/" + rel, &f.sha256, &f.size));
  manifest.files.push_back(std::move(f));
  return Status::Ok();
}

Status CopyTree(const std::string& from, const std::string& to, const std::string& rel,
                const std::function<bool(const std::string&)>& skip, const std::string& backup_dir,
                BackupManifest& manifest) {
  TV_RETURN_IF_ERROR(MakePrivateDir(to));
  struct CloseDir {
    void operator()(DIR* d) const { closedir(d); }
  };
  std::unique_ptr<DIR, CloseDir> dir(opendir(from.c_str()));
  if (!dir) return IoError("cannot list", from);
  std::vector<std::string> names;
  while (dirent* e = readdir(dir.get())) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string child_rel = rel + "/" + name;
    if (skip(child_rel)) continue;
    struct stat st {};
    if (::lstat((from + "/" + name).c_str(), &st) != 0) {
      if (errno == ENOENT) continue;  // removed while we listed (a lock file, say)
      return IoError("cannot stat", from + "/" + name);
    }
    if (S_ISDIR(st.st_mode)) {
      TV_RETURN_IF_ERROR(CopyTree(from + "/" + name, to + "/" + name, child_rel, skip, backup_dir, manifest));
    } else if (S_ISREG(st.st_mode)) {
      Status copied = CopyFileDurably(from + "/" + name, to + "/" + name);
      if (!copied.ok() && !Exists(from + "/" + name)) {
        // Removed while we copied it (an old KEK destroyed by a rotation, say): not part of the
        // state being saved; the verification decides whether the copy restores.
        ::unlink((to + "/" + name).c_str());
        continue;
      }
      TV_RETURN_IF_ERROR(copied);
      TV_RETURN_IF_ERROR(Record(backup_dir, child_rel.substr(1), manifest));
    }
  }
  return FsyncPath(to, O_RDONLY | O_DIRECTORY);
}

json ManifestJson(const BackupManifest& m) {
  json files = json::array();
  for (const BackupFile& f : m.files) files.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
  return {{"format", m.format},
          {"created_ms", m.created_ms},
          {"includes_hsm_token", m.includes_hsm_token},
          {"files", files}};
}

// Every file of the manifest is there with its size and digest; nothing outside the backup dir
// is named.
Status CheckAgainstManifest(const std::string& backup_dir, const BackupManifest& m) {
  for (const BackupFile& f : m.files) {
    if (f.path.empty() || f.path.front() == '/' || f.path.find("..") != std::string::npos) {
      return DataLossError(kReasonUnusable, "the manifest names a file outside the backup: " + f.path);
    }
    std::string sha256;
    uint64_t size = 0;
    Status hashed = HashFile(backup_dir + "/" + f.path, &sha256, &size);
    if (!hashed.ok()) return DataLossError(kReasonUnusable, hashed.message());
    if (size != f.size || sha256 != f.sha256) {
      return DataLossError(kReasonUnusable, f.path + " differs from the backup's manifest");
    }
  }
  return Status::Ok();
}

// Copies the files a manifest lists from 'from' into the new directory 'to'.
Status CopyListed(const std::string& from, const std::string& to, const BackupManifest& m) {
  TV_RETURN_IF_ERROR(MakePrivateDir(to));
  for (const BackupFile& f : m.files) {
    const std::string target = to + "/" + f.path;
    // Parent directories, 0700, as the path needs them.
    for (size_t slash = f.path.find('/'); slash != std::string::npos; slash = f.path.find('/', slash + 1)) {
      const std::string dir = to + "/" + f.path.substr(0, slash);
      if (!Exists(dir) && ::mkdir(dir.c_str(), 0700) != 0) return IoError("cannot create", dir);
    }
    TV_RETURN_IF_ERROR(CopyFileDurably(from + "/" + f.path, target));
    // The copy itself is what gets used: it must be what the manifest says, byte for byte.
    std::string sha256;
    uint64_t size = 0;
    TV_RETURN_IF_ERROR(HashFile(target, &sha256, &size));
    if (size != f.size || sha256 != f.sha256) {
      return DataLossError(kReasonUnusable, f.path + " differs from the backup's manifest once copied");
    }
  }
  // The directories' entries are durable too, deepest first.
  std::vector<std::string> dirs;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(to)) {
    if (entry.is_directory()) dirs.push_back(entry.path().string());
  }
  std::sort(dirs.rbegin(), dirs.rend());
  dirs.push_back(to);
  for (const std::string& d : dirs) TV_RETURN_IF_ERROR(FsyncPath(d, O_RDONLY | O_DIRECTORY));
  return Status::Ok();
}

}  // namespace

StatusOr<BackupManifest> BackupDataDir(const std::string& data_dir, const std::string& out_dir) {
  const std::string db = EmbeddedDatabasePath(data_dir);
  if (!Exists(db)) return NotFoundError(kReasonBackup, "no database in " + data_dir);
  TV_RETURN_IF_ERROR(MakePrivateDir(out_dir));
  BackupManifest manifest;
  manifest.created_ms = Clock::Real().NowUnixMillis();

  // 1. The dev HSM token, before the database (see backup.h). softhsm2.conf names the directory it
  //    sits in and is written afresh where the copy is used; lock files are SoftHSM's own.
  if (Exists(data_dir + "/hsm")) {
    manifest.includes_hsm_token = true;
    auto skip = [](const std::string& rel) {
      return rel == "/hsm/softhsm2.conf" || (rel.size() > 5 && rel.compare(rel.size() - 5, 5, ".lock") == 0);
    };
    TV_RETURN_IF_ERROR(CopyTree(data_dir + "/hsm", out_dir + "/hsm", "/hsm", skip, out_dir, manifest));
  }
  // 2. The checkpoint log (complete lines: its checkpoints reached the database first), the small
  //    files of the data dir.
  const std::string log = "audit-checkpoints.ndjson";
  if (Exists(data_dir + "/" + log)) {
    TV_ASSIGN_OR_RETURN(uint64_t length, CompleteLinesLength(data_dir + "/" + log));
    TV_RETURN_IF_ERROR(CopyFileDurably(data_dir + "/" + log, out_dir + "/" + log, length));
    TV_RETURN_IF_ERROR(Record(out_dir, log, manifest));
  }
  for (const char* name : {"audit-checkpoint.pem", "proxy-secret", "admin.key"}) {
    if (!Exists(data_dir + "/" + name)) continue;
    TV_RETURN_IF_ERROR(CopyFileDurably(data_dir + "/" + name, out_dir + "/" + name));
    TV_RETURN_IF_ERROR(Record(out_dir, name, manifest));
  }
  if (Exists(data_dir + "/tls")) {
    auto none = [](const std::string&) { return false; };
    TV_RETURN_IF_ERROR(CopyTree(data_dir + "/tls", out_dir + "/tls", "/tls", none, out_dir, manifest));
  }
  // 3. The database: one consistent snapshot while the vault goes on writing.
  TV_RETURN_IF_ERROR(storage::BackupDatabaseFile(db, EmbeddedDatabasePath(out_dir)));
  TV_RETURN_IF_ERROR(Record(out_dir, "tokenvault.db", manifest));

  // The manifest last: a backup without one is incomplete.
  const std::string text = ManifestJson(manifest).dump(2) + "\n";
  const std::string manifest_path = out_dir + "/" + kBackupManifest;
  {
    Fd fd(::open(manifest_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.get() < 0) return IoError("cannot create", manifest_path);
    TV_RETURN_IF_ERROR(WriteAll(fd.get(), AsBytes(text), manifest_path, kReasonBackup));
    if (::fsync(fd.get()) != 0) return IoError("cannot fsync", manifest_path);
  }
  TV_RETURN_IF_ERROR(FsyncPath(out_dir, O_RDONLY | O_DIRECTORY));
  return manifest;
}

StatusOr<BackupManifest> ReadBackupManifest(const std::string& backup_dir) {
  const std::string path = backup_dir + "/" + kBackupManifest;
  std::string text;
  {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return DataLossError(kReasonUnusable, "no manifest: " + path + " (an incomplete backup?)");
    char buf[4096];
    for (ssize_t n; (n = ::read(fd.get(), buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  }
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  BackupManifest m;
  if (!j.is_object() || !j.contains("format") || j["format"] != kBackupFormat || !j.contains("files") ||
      !j["files"].is_array() || !j.contains("created_ms") || !j["created_ms"].is_number_integer()) {
    return DataLossError(kReasonUnusable, "the manifest is not a " + std::string(kBackupFormat) + " manifest");
  }
  m.created_ms = j["created_ms"].get<int64_t>();
  if (j.contains("includes_hsm_token")) {
    if (!j["includes_hsm_token"].is_boolean()) {
      return DataLossError(kReasonUnusable, "the manifest's includes_hsm_token is not a boolean");
    }
    m.includes_hsm_token = j["includes_hsm_token"].get<bool>();
  }
  for (const json& f : j["files"]) {
    if (!f.is_object() || !f.contains("path") || !f["path"].is_string() || !f.contains("size") ||
        !f["size"].is_number_unsigned() || !f.contains("sha256") || !f["sha256"].is_string()) {
      return DataLossError(kReasonUnusable, "the manifest has a malformed file entry");
    }
    m.files.push_back({f["path"].get<std::string>(), f["size"].get<uint64_t>(), f["sha256"].get<std::string>()});
  }
  // What a vault needs to open as the backup's state rather than as a new, empty vault (which
  // is what opening would quietly make of a data dir without them).
  auto listed = [&](const std::string& wanted) {
    return std::any_of(m.files.begin(), m.files.end(), [&](const BackupFile& f) { return f.path == wanted; });
  };
  std::vector<std::string> required = {"tokenvault.db"};
  if (m.includes_hsm_token) required.insert(required.end(), {"hsm/user.pin", "hsm/so.pin"});
  for (const std::string& wanted : required) {
    if (!listed(wanted)) return DataLossError(kReasonUnusable, "the manifest does not list " + wanted);
  }
  return m;
}

StatusOr<BackupCheck> VerifyBackup(const std::string& backup_dir, const EmbeddedConfig& config) {
  TV_ASSIGN_OR_RETURN(BackupManifest manifest, ReadBackupManifest(backup_dir));
  TV_RETURN_IF_ERROR(CheckAgainstManifest(backup_dir, manifest));
  // A scratch copy: opening a vault writes (its WAL, the lock file, the checkpoint log caught up
  // with the database), and the backup itself must stay as it was made.
  const char* tmp = std::getenv("TMPDIR");
  std::string scratch_template = std::string(tmp && *tmp ? tmp : "/tmp") + "/tokenvault-verify-XXXXXX";
  if (::mkdtemp(scratch_template.data()) == nullptr) return IoError("cannot create", scratch_template);
  const std::string scratch = scratch_template;
  struct RemoveScratch {
    std::string path;
    ~RemoveScratch() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } remove_scratch{scratch};
  const std::string data_dir = scratch + "/data";
  TV_RETURN_IF_ERROR(CopyListed(backup_dir, data_dir, manifest));

  EmbeddedConfig c = config;
  c.data_dir = data_dir;
  c.vault.expiry_sweep_interval = std::chrono::milliseconds(0);
  c.vault.reencrypt_interval = std::chrono::milliseconds(0);
  c.vault.hsm_probe_interval = std::chrono::milliseconds(0);
  c.vault.audit_checkpoints.interval = std::chrono::milliseconds(0);
  auto unusable = [](const std::string& what, const Status& s) {
    return DataLossError(kReasonUnusable, what + ": " + s.ToString());
  };
  StatusOr<std::unique_ptr<Vault>> vault = OpenEmbeddedVault(c);
  if (!vault.ok()) return unusable("the backup does not open as a vault", vault.status());
  BackupCheck check;
  StatusOr<std::vector<std::string>> merchants = (*vault)->store().ActiveMerchants();
  if (!merchants.ok()) return unusable("cannot list merchants", merchants.status());
  for (const std::string& m : *merchants) {
    StatusOr<int64_t> keys = (*vault)->CheckMerchantKeys(m);
    if (!keys.ok()) return unusable("merchant " + m + "'s keys do not unwrap", keys.status());
    ++check.merchants;
    check.data_keys += *keys;
  }
  StatusOr<AuditVerification> audit = (*vault)->audit().Verify();
  if (!audit.ok()) return unusable("the audit trail cannot be read", audit.status());
  Status checkpoints = (*vault)->audit_checkpoints().Verify(*audit);
  if (!checkpoints.ok()) return unusable("the audit checkpoints cannot be read", checkpoints);
  if (!audit->ok) {
    return DataLossError(kReasonUnusable, "the audit trail does not verify at record " +
                                              std::to_string(audit->first_bad_seq.value_or(0)) + ": " +
                                              audit->reason);
  }
  check.audit_records = audit->records_checked;
  for (int64_t after = 0;;) {
    StatusOr<std::vector<storage::AuditCheckpoint>> cps = (*vault)->store().ScanAuditCheckpoints(after, 1000);
    if (!cps.ok()) return unusable("cannot read the audit checkpoints", cps.status());
    if (cps->empty()) break;
    check.audit_checkpoints += static_cast<int64_t>(cps->size());
    after = cps->back().last_seq;
  }
  return check;
}

Status RestoreDataDir(const std::string& backup_dir, const std::string& data_dir) {
  TV_ASSIGN_OR_RETURN(BackupManifest manifest, ReadBackupManifest(backup_dir));
  TV_RETURN_IF_ERROR(CheckAgainstManifest(backup_dir, manifest));
  if (Exists(data_dir)) {
    return FailedPreconditionError(kReasonBackupExists, data_dir + " exists: a restore never writes into an "
                                                        "existing directory");
  }
  const std::string partial = data_dir + ".restoring";
  Status copied = CopyListed(backup_dir, partial, manifest);
  if (copied.ok() && ::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, data_dir.c_str(), RENAME_NOREPLACE) != 0) {
    copied = IoError("cannot rename into place", data_dir);
  }
  if (!copied.ok()) {
    if (copied.reason() != kReasonBackupExists) {  // the partial dir is ours: it did not exist
      std::error_code ignored;
      std::filesystem::remove_all(partial, ignored);
    }
    return copied;
  }
  const std::string parent = std::filesystem::path(data_dir).parent_path().string();
  return FsyncPath(parent.empty() ? "." : parent, O_RDONLY | O_DIRECTORY);
}

}  // namespace tokenvault
