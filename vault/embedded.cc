#include "vault/embedded.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "hsm/dev_token.h"
#include "storage/sqlite_store.h"

namespace tokenvault {

std::string EmbeddedDatabasePath(const std::string& data_dir) {
  return data_dir + "/tokenvault.db";
}

StatusOr<std::unique_ptr<Vault>> OpenEmbeddedVault(const EmbeddedConfig& config) {
  if (config.data_dir.empty()) return InvalidArgumentError("bad_config", "no data dir configured");
  hsm::Pkcs11Config hsm_config;
  hsm::PinSource pin_source = config.pin;
  if (config.hsm.has_value()) {
    hsm_config = *config.hsm;
  } else {
    // Creates <data_dir> and <data_dir>/hsm only once it knows the module loads.
    TV_ASSIGN_OR_RETURN(hsm::DevToken dev,
                        hsm::EnsureDevToken(config.data_dir + "/hsm", config.dev_module_path));
    hsm_config = dev.config;
    pin_source = dev.pin;
  }
  std::shared_ptr<hsm::Hsm> hsm;
  {
    TV_ASSIGN_OR_RETURN(SecretBytes pin, hsm::LoadPin(pin_source));
    // After losing the HSM, the login is done again with the PIN read again (from its file).
    TV_ASSIGN_OR_RETURN(std::unique_ptr<hsm::Pkcs11Hsm> opened,
                        hsm::Pkcs11Hsm::Open(hsm_config, pin,
                                             [pin_source] { return hsm::LoadPin(pin_source); }));
    hsm = std::move(opened);
    hsm::ForgetEnvPin(pin_source);
  }  // the PIN is wiped here
  if (mkdir(config.data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return FailedPreconditionError("data_dir_unwritable", "cannot create " + config.data_dir +
                                                              ": " + std::strerror(errno));
  }
  storage::SqliteStoreOptions store_options;
  store_options.path = EmbeddedDatabasePath(config.data_dir);
  store_options.read_connections = config.read_connections;
  store_options.token_cache_entries = config.token_cache_entries;
  TV_ASSIGN_OR_RETURN(std::unique_ptr<storage::SqliteStore> store,
                      storage::SqliteStore::Open(store_options));
  VaultOptions options = config.vault;
  if (options.audit_checkpoints.log_path.empty()) {
    options.audit_checkpoints.log_path = config.data_dir + "/audit-checkpoints.ndjson";
  }
  if (options.audit_checkpoints.public_key_path.empty()) {
    options.audit_checkpoints.public_key_path = config.data_dir + "/audit-checkpoint.pem";
  }
  return Vault::Create(std::move(hsm), std::shared_ptr<storage::Store>(std::move(store)), options);
}

}  // namespace tokenvault
