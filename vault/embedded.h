// The embedded default deployment: everything in one data dir.
//   <data_dir>/hsm/         a SoftHSM2 token of its own (softhsm2.conf, tokens/, PIN files)
//   <data_dir>/tokenvault.db (+ -wal, -shm, .lock)
//   <data_dir>/audit-checkpoints.ndjson   the second sink of signed audit checkpoints
//   <data_dir>/audit-checkpoint.pem       their public key, for offline verification
// Used by `tokenvault serve` on first start and by end-to-end tests. A production deployment
// passes its own HSM module, token label and PIN source instead of the dev token.
//
// WARNING: with the dev token, the token files and its PIN sit next to the database: a copy of
// the whole data dir decrypts everything. It is a convenience for development, not an HSM.
#ifndef TOKENVAULT_VAULT_EMBEDDED_H_
#define TOKENVAULT_VAULT_EMBEDDED_H_

#include <memory>
#include <optional>
#include <string>

#include "hsm/pin.h"
#include "hsm/pkcs11_hsm.h"
#include "vault/vault.h"

namespace tokenvault {

struct EmbeddedConfig {
  std::string data_dir;
  // When unset, a SoftHSM2 dev token is created in <data_dir>/hsm on first use.
  std::optional<hsm::Pkcs11Config> hsm;
  hsm::PinSource pin;  // used with 'hsm'
  // The PKCS#11 module of the dev token (default: Debian's SoftHSM2). Tests point it at a
  // fault-injecting shim.
  std::string dev_module_path;
  VaultOptions vault;
  size_t read_connections = 16;
  size_t token_cache_entries = 65536;  // storage/token_row_cache.h; 0 = off
};

std::string EmbeddedDatabasePath(const std::string& data_dir);

// Order matters and is deliberate: the HSM is opened (and the PIN checked) before the database
// is touched, so a wrong PIN, a missing module or a missing token writes nothing.
StatusOr<std::unique_ptr<Vault>> OpenEmbeddedVault(const EmbeddedConfig& config);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_EMBEDDED_H_
