// Numbered schema migrations, applied in order at open. A migration, once released, never changes:
// fixes are new migrations.
#ifndef TOKENVAULT_STORAGE_MIGRATIONS_H_
#define TOKENVAULT_STORAGE_MIGRATIONS_H_

#include <span>

#include "storage/sqlite.h"

namespace tokenvault::storage {

struct Migration {
  int version;
  const char* name;
  const char* sql;
};

std::span<const Migration> AllMigrations();

// Applies every migration newer than the database's version, each in its own transaction.
// kFailedPrecondition (schema_too_new) when the database was written by a newer tokenvault.
Status ApplyMigrations(Database& db);

}  // namespace tokenvault::storage

#endif  // TOKENVAULT_STORAGE_MIGRATIONS_H_
