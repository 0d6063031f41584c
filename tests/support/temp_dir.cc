#include "tests/support/temp_dir.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace tokenvault::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/tokenvault-test-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Bytes ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool FileExists(const std::string& path) { return std::filesystem::exists(path); }

bool FileContains(const std::string& path, ByteView needle) {
  const Bytes data = ReadFileBytes(path);
  return std::search(data.begin(), data.end(), needle.begin(), needle.end()) != data.end();
}

std::map<std::string, Bytes> SnapshotTree(const std::string& dir) {
  std::map<std::string, Bytes> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file()) out[it->path().string()] = ReadFileBytes(it->path().string());
  }
  return out;
}

std::map<std::string, Bytes> SnapshotTreeExcept(const std::string& dir,
                                               const std::string& ignored_name) {
  std::map<std::string, Bytes> out = SnapshotTree(dir);
  for (auto it = out.begin(); it != out.end();) {
    it = std::filesystem::path(it->first).filename() == ignored_name ? out.erase(it) : std::next(it);
  }
  return out;
}

}  // namespace tokenvault::testing
