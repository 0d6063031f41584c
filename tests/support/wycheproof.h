// Loading Wycheproof vector files from ../shared/testdata/wycheproof.
#ifndef TOKENVAULT_TESTS_SUPPORT_WYCHEPROOF_H_
#define TOKENVAULT_TESTS_SUPPORT_WYCHEPROOF_H_

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "vault/base/bytes.h"

namespace tokenvault::testing {

inline Bytes HexBytes(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// The parsed file, or nullopt if it is missing (callers fail the test: missing vectors are an
// error, never a skip).
inline std::optional<nlohmann::json> LoadWycheproof(const std::string& name) {
  std::ifstream in(std::string(TOKENVAULT_TESTDATA_DIR) + "/wycheproof/" + name);
  if (!in) return std::nullopt;
  return nlohmann::json::parse(in);
}

// True for the AES-GCM groups tokenvault uses: 256-bit key, 96-bit IV, 128-bit tag.
inline bool IsOurGcmGroup(const nlohmann::json& group) {
  return group.at("keySize") == 256 && group.at("ivSize") == 96 && group.at("tagSize") == 128;
}

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_WYCHEPROOF_H_
