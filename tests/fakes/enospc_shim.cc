// An LD_PRELOAD library for the disk-full test (tests/e2e/disk_full_test.cc): while the file named
// by TOKENVAULT_ENOSPC_FLAG exists, every write that would add bytes to a file under
// TOKENVAULT_ENOSPC_DIR fails with ENOSPC, as on a full filesystem: write, pwrite, their vector
// and 64-bit forms, fallocate, and ftruncate that grows a file. Sockets, pipes and files elsewhere
// (the server's log) are untouched. Test-only: never built into tokenvault.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

bool UnderFullDir(int fd) {
  static const char* const flag = getenv("TOKENVAULT_ENOSPC_FLAG");
  static const char* const dir = getenv("TOKENVAULT_ENOSPC_DIR");
  if (flag == nullptr || dir == nullptr || access(flag, F_OK) != 0) return false;
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char path[4096];
  const ssize_t n = readlink(link, path, sizeof(path) - 1);
  if (n <= 0) return false;
  path[n] = '\0';
  return strncmp(path, dir, strlen(dir)) == 0;
}

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

#define TV_FULL_OR(fd)       \
  if (UnderFullDir(fd)) {    \
    errno = ENOSPC;          \
    return -1;               \
  }

extern "C" {

ssize_t write(int fd, const void* buf, size_t count) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t)>("write");
  TV_FULL_OR(fd);
  return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  TV_FULL_OR(fd);
  return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void* buf, size_t count, off64_t offset) {
  static auto real = Next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  TV_FULL_OR(fd);
  return real(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  static auto real = Next<ssize_t (*)(int, const struct iovec*, int)>("writev");
  TV_FULL_OR(fd);
  return real(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec* iov, int iovcnt, off_t offset) {
  static auto real = Next<ssize_t (*)(int, const struct iovec*, int, off_t)>("pwritev");
  TV_FULL_OR(fd);
  return real(fd, iov, iovcnt, offset);
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
  static auto real = Next<int (*)(int, int, off_t, off_t)>("fallocate");
  TV_FULL_OR(fd);
  return real(fd, mode, offset, len);
}

int posix_fallocate(int fd, off_t offset, off_t len) {
  static auto real = Next<int (*)(int, off_t, off_t)>("posix_fallocate");
  if (UnderFullDir(fd)) return ENOSPC;  // returns the error, errno untouched
  return real(fd, offset, len);
}

int ftruncate(int fd, off_t length) {
  static auto real = Next<int (*)(int, off_t)>("ftruncate");
  struct stat st;
  if (fstat(fd, &st) == 0 && length > st.st_size) TV_FULL_OR(fd);
  return real(fd, length);
}

}  // extern "C"
