// Small POSIX file helpers shared by the vault's own files (the checkpoint log, backups).
#ifndef TOKENVAULT_VAULT_FILE_IO_H_
#define TOKENVAULT_VAULT_FILE_IO_H_

#include <string>

#include "vault/base/bytes.h"
#include "vault/base/status.h"

namespace tokenvault {

// kUnavailable with 'reason': "<what> <path>: <strerror(errno)>". Call right after the failing
// system call, before anything else can change errno.
Status FileSystemError(const char* reason, const std::string& what, const std::string& path);

// Writes all of 'data' to 'fd' (short writes and EINTR retried); on failure, FileSystemError
// with 'reason' naming 'path'.
Status WriteAll(int fd, ByteView data, const std::string& path, const char* reason);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_FILE_IO_H_
