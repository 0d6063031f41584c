// Test helpers for files: temporary directories and byte-wise file searches.
#ifndef TOKENVAULT_TESTS_SUPPORT_TEMP_DIR_H_
#define TOKENVAULT_TESTS_SUPPORT_TEMP_DIR_H_

#include <map>
#include <string>

#include "vault/base/bytes.h"

namespace tokenvault::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The whole file, or empty if it does not exist.
Bytes ReadFileBytes(const std::string& path);
bool FileExists(const std::string& path);
// True if 'needle' occurs anywhere in the file's bytes.
bool FileContains(const std::string& path, ByteView needle);
// path -> contents of every regular file under 'dir' (recursively).
std::map<std::string, Bytes> SnapshotTree(const std::string& dir);
// The same, without files whose name is 'ignored_name'.
std::map<std::string, Bytes> SnapshotTreeExcept(const std::string& dir, const std::string& ignored_name);

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_TEMP_DIR_H_
