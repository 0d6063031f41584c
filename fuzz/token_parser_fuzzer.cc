// The token-string shape checks done before any lookup or audit naming (IsWellFormedToken,
// IsWellFormedRandomToken, IsValidMerchantId) on arbitrary bytes. Properties: they never crash,
// a card number (Luhn-valid digits) is never taken for a token, and any 128-bit value encodes to
// a random token that is accepted and decodes to the same digits.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "vault/base/bytes.h"
#include "vault/token_format.h"
#include "vault/token_id.h"
#include "vault/value_type.h"

using namespace tokenvault;

namespace {

bool AllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool token = IsWellFormedToken(text);
  const bool random = IsWellFormedRandomToken(text);
  (void)IsValidMerchantId(text);
  if (random && !token) std::abort();  // every random token is a token
  if (random && (text.size() != kRandomTokenLength || text.substr(0, 4) != kRandomTokenPrefix)) {
    std::abort();
  }
  // A digit string that passes Luhn is a card number, never a token (token_format.h).
  if (token && AllDigits(text) &&
      LuhnValid(AsBytes(text))) {
    std::abort();
  }
  // Any 128-bit number is a well-formed random token, and a different one is a different token.
  if (size >= 16) {
    std::array<uint8_t, 16> bytes;
    std::memcpy(bytes.data(), data, 16);
    const std::string digits = Base62Encode128(bytes);
    const std::string encoded = std::string(kRandomTokenPrefix) + digits;
    if (digits.size() != kRandomTokenDigits || !IsWellFormedRandomToken(encoded) ||
        !IsWellFormedToken(encoded)) {
      std::abort();
    }
    bytes[15] ^= 1;
    if (Base62Encode128(bytes) == digits) std::abort();
  }
  return 0;
}
