// Backup and restore of an embedded data dir (docs/operations.md, Backup and restore), taken while
// the vault serves:
//   1. the development HSM token (<data_dir>/hsm: token objects and PIN files; not softhsm2.conf,
//      which names its own directory and is written afresh where the copy is used),
//   2. the checkpoint log (its complete lines), the checkpoint public key, the proxy secret, the
//      TLS files and the admin key file,
//   3. the database, last: one consistent snapshot through SQLite's online backup API.
// This order is what makes a copy usable: the token is copied before the database, so a DEK in the
// snapshot can only lack its KEK if the KEK was made in between (a merchant created or a KEK
// rotated during the backup), which VerifyBackup catches; the log before the database, because a
// checkpoint reaches the database before the log, never after.
// MANIFEST.json lists every file with its size and SHA-256.
//
// With a production HSM the KEKs never leave it: back them up with the HSM's own tools (cluster
// backups, cloning); the data dir backup then holds ciphertext and wrapped keys only.
#ifndef TOKENVAULT_VAULT_BACKUP_H_
#define TOKENVAULT_VAULT_BACKUP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "vault/base/status.h"
#include "vault/embedded.h"

namespace tokenvault {

inline constexpr char kBackupFormat[] = "tokenvault-backup/1";
inline constexpr char kBackupManifest[] = "MANIFEST.json";
// The reason of the error when the directory to write exists already: nothing was written.
inline constexpr char kReasonBackupTargetExists[] = "backup_target_exists";

struct BackupFile {
  std::string path;    // relative to the backup dir
  uint64_t size = 0;
  std::string sha256;  // hex
};

struct BackupManifest {
  std::string format = kBackupFormat;
  int64_t created_ms = 0;
  bool includes_hsm_token = false;  // the dev token was copied (no external HSM)
  std::vector<BackupFile> files;
};

// Copies the live data dir 'data_dir' into 'out_dir', which must not exist (made 0700), and
// writes its manifest. Everything written is fsync'd. On failure, 'out_dir' may hold a partial
// copy without a manifest: delete it.
StatusOr<BackupManifest> BackupDataDir(const std::string& data_dir, const std::string& out_dir);

struct BackupCheck {
  int64_t merchants = 0;
  int64_t data_keys = 0;       // DEK versions unwrapped by the HSM (live ones: not destroyed)
  int64_t audit_records = 0;   // all verified, chain and checkpoints
  int64_t audit_checkpoints = 0;
};

// Proves that a backup restores: checks every file against the manifest, then opens a scratch
// copy of it (in a temp dir, deleted afterwards) as a vault - the HSM token opens with its PIN,
// the audit key unwraps - unwraps every live DEK and fingerprint key of every merchant, and
// verifies the audit chain and its signed checkpoints. 'config' is used for everything but the
// data dir (e.g. the PKCS#11 module). kDataLoss (backup_unusable) with the first problem found.
// REQUIRES: no PKCS#11 module is initialised in this process.
StatusOr<BackupCheck> VerifyBackup(const std::string& backup_dir, const EmbeddedConfig& config);

// Checks the backup against its manifest and copies it into 'data_dir', which must not exist: into
// a sibling directory first, each copy checked against the manifest, then renamed into place
// (never over an existing directory), so that 'data_dir' appears whole or not at all.
Status RestoreDataDir(const std::string& backup_dir, const std::string& data_dir);

// The manifest of a backup. kDataLoss (backup_unusable) if it is missing or malformed.
StatusOr<BackupManifest> ReadBackupManifest(const std::string& backup_dir);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BACKUP_H_
