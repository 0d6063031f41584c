#include "vault/token_id.h"

#include "vault/base/random.h"

namespace tokenvault {
namespace {

constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

int DigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
  if (c >= 'a' && c <= 'z') return c - 'a' + 36;
  return -1;
}

}  // namespace

std::string Base62Encode128(const std::array<uint8_t, 16>& bytes) {
  unsigned __int128 n = 0;
  for (uint8_t b : bytes) n = (n << 8) | b;
  std::string out(kRandomTokenDigits, '0');
  for (size_t i = kRandomTokenDigits; i-- > 0;) {
    out[i] = kAlphabet[static_cast<int>(n % 62)];
    n /= 62;
  }
  return out;
}

StatusOr<std::string> NewRandomToken() {
  std::array<uint8_t, 16> bytes;
  TV_RETURN_IF_ERROR(RandomBytesFast(bytes.data(), bytes.size()));
  return std::string(kRandomTokenPrefix) + Base62Encode128(bytes);
}

bool IsWellFormedRandomToken(std::string_view token) {
  if (token.size() != kRandomTokenLength || token.substr(0, 4) != kRandomTokenPrefix) return false;
  // Accumulate in 128 bits, refusing any value of 2^128 or more.
  unsigned __int128 n = 0;
  const unsigned __int128 max = ~static_cast<unsigned __int128>(0);
  for (char c : token.substr(4)) {
    const int d = DigitValue(c);
    if (d < 0) return false;
    if (n > (max - static_cast<unsigned>(d)) / 62) return false;
    n = n * 62 + static_cast<unsigned>(d);
  }
  return true;
}

bool IsValidMerchantId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (i == 0 ? !alnum : !(alnum || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace tokenvault
