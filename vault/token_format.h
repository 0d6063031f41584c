// Token formats (API.md, Tokens): how a new token string is drawn, and the shape check every
// token string passes before any lookup.
//
// - random: "tok_" + 22 base62 characters, 128 bits from the CSPRNG (token_id.h).
// - preserving, card: as many digits as the card, the last four kept (and the first six too with
//   keep_bin), every other digit random, and the whole never Luhn-valid - so a token can never
//   be mistaken for, or equal, a card number, and a Luhn-valid digit string is never taken for a
//   token (a card number pasted where a token belongs is refused as malformed, and never named
//   in the audit trail).
// - preserving, ssn: "9GG-GG-SSSS": area numbers 900-999 are never issued as SSNs, four random
//   digits, the last four of the value kept.
// Nothing but the kept digits comes from the value. Uniqueness is the store's: a token that
// exists already is drawn again (docs/api.md says how many a merchant can hold).
#ifndef TOKENVAULT_VAULT_TOKEN_FORMAT_H_
#define TOKENVAULT_VAULT_TOKEN_FORMAT_H_

#include <optional>
#include <string>
#include <string_view>

#include "vault/base/secret_bytes.h"
#include "vault/base/status.h"
#include "vault/value_type.h"

namespace tokenvault {

enum class TokenFormat { kRandom, kPreserving };

// "random", "preserving": stored with the token. Frozen.
std::string_view TokenFormatName(TokenFormat format);
std::optional<TokenFormat> ParseTokenFormat(std::string_view name);

struct TokenFormatOptions {
  TokenFormat format = TokenFormat::kRandom;
  bool keep_bin = false;  // preserving card tokens only: keep the first six digits too
};

// kInvalidArgument (invalid_format) when the options do not apply to the type: preserving is for
// card and ssn; keep_bin only for preserving card tokens.
Status CheckTokenFormat(ValueType type, const TokenFormatOptions& options);

// CheckTokenFormat, plus what depends on the normalised value itself: keep_bin needs a card of
// 15 or more digits. Done before sealing, so that a batch answers it as the item's error.
Status CheckTokenFormatFor(ValueType type, const SecretBytes& normalized,
                           const TokenFormatOptions& options);

// A new token for the normalised value. Fails as CheckTokenFormatFor.
StatusOr<std::string> NewToken(ValueType type, const SecretBytes& normalized,
                               const TokenFormatOptions& options);

// The shape of some token of any format: a random token, 12-19 digits that fail Luhn, or
// 9dd-dd-dddd. Done before any lookup or audit naming.
bool IsWellFormedToken(std::string_view token);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_TOKEN_FORMAT_H_
