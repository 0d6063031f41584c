// Searches files byte-wise for any of a set of secrets, in one pass per file.
#ifndef TOKENVAULT_TESTS_SUPPORT_LEAK_SCAN_H_
#define TOKENVAULT_TESTS_SUPPORT_LEAK_SCAN_H_

#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "tests/support/temp_dir.h"

namespace tokenvault::testing {

// Every needle found in 'path'. All needles must have the same length (the window slid over the
// file); group them by length and call once per length.
inline std::vector<std::string> FindNeedles(const std::string& path,
                                            const std::unordered_set<std::string>& needles) {
  std::vector<std::string> hits;
  if (needles.empty()) return hits;
  const size_t len = needles.begin()->size();
  const Bytes data = ReadFileBytes(path);
  if (data.size() < len) return hits;
  for (size_t i = 0; i + len <= data.size(); ++i) {
    std::string_view window(reinterpret_cast<const char*>(data.data()) + i, len);
    auto it = needles.find(std::string(window));
    if (it != needles.end()) hits.push_back(*it);
  }
  return hits;
}

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_LEAK_SCAN_H_
