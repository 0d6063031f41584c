// Random tokens: "tok_" + 22 base62 characters encoding 128 bits from the CSPRNG. Nothing in a
// token is derived from its value.
#ifndef TOKENVAULT_VAULT_TOKEN_ID_H_
#define TOKENVAULT_VAULT_TOKEN_ID_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "vault/base/status.h"

namespace tokenvault {

inline constexpr std::string_view kRandomTokenPrefix = "tok_";
inline constexpr size_t kRandomTokenDigits = 22;  // 62^22 > 2^128
inline constexpr size_t kRandomTokenLength = 4 + kRandomTokenDigits;

StatusOr<std::string> NewRandomToken();

// The 128-bit number as exactly 22 base62 digits (0-9A-Za-z), most significant first.
std::string Base62Encode128(const std::array<uint8_t, 16>& bytes);

// Shape check done before any lookup: prefix, length, alphabet, and a value below 2^128.
bool IsWellFormedRandomToken(std::string_view token);

// ^[a-z0-9][a-z0-9_-]{0,63}$ (API.md).
bool IsValidMerchantId(std::string_view id);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_TOKEN_ID_H_
