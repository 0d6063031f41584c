#include "vault/file_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tokenvault {

Status FileSystemError(const char* reason, const std::string& what, const std::string& path) {
  return UnavailableError(reason, what + " " + path + ": " + std::strerror(errno));
}

Status WriteAll(int fd, ByteView data, const std::string& path, const char* reason) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return FileSystemError(reason, "cannot write", path);
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return Status::Ok();
}

}  // namespace tokenvault
