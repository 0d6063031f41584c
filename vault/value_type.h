// The kinds of value tokenvault stores, how each is validated and normalised, and how each is
// masked. Normalisation happens before anything else touches a value (API.md, Tokens).
#ifndef TOKENVAULT_VAULT_VALUE_TYPE_H_
#define TOKENVAULT_VAULT_VALUE_TYPE_H_

#include <optional>
#include <string>
#include <string_view>

#include "vault/base/bytes.h"
#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"

namespace tokenvault {

enum class ValueType {
  kGeneric,  // any UTF-8 string of 1 to 4096 bytes, kept exactly
  kCard,     // 12-19 digits, Luhn-valid; spaces and dashes stripped
  kSsn,      // AAA-GG-SSSS or 9 digits; normalised to AAA-GG-SSSS
};

inline constexpr size_t kMaxGenericValueSize = 4096;

// "generic", "card", "ssn": the names stored and bound into the AAD. Frozen.
std::string_view ValueTypeName(ValueType type);
std::optional<ValueType> ParseValueType(std::string_view name);

// The normalised value. kInvalidArgument (invalid_card, invalid_ssn, invalid_value) when the input
// is not a value of that type; the message never contains the input.
StatusOr<SecretBytes> NormalizeValue(ValueType type, ByteView raw);

// The masked form of a normalised value: card "************1111" (length kept), ssn "***-**-6789",
// generic "********". Reveals no more than the last four of a card or SSN.
std::string MaskValue(ValueType type, const SecretBytes& normalized);

// True if 'digits' (ASCII digits only) passes the Luhn check.
bool LuhnValid(ByteView digits);

// True if 's' is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
bool IsValidUtf8(ByteView s);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_VALUE_TYPE_H_
