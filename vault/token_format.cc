#include "vault/token_format.h"

#include <cstring>

#include "vault/base/random.h"
#include "vault/token_id.h"

namespace tokenvault {
namespace {

constexpr size_t kMinCardDigits = 12;
constexpr size_t kMaxCardDigits = 19;
constexpr size_t kBinDigits = 6;
constexpr size_t kLastDigits = 4;
constexpr size_t kMinCardDigitsForBin = 15;  // at least five random digits

bool AllDigits(std::string_view s) {
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return !s.empty();
}

// Uniform random decimal digits (bytes >= 250 are redrawn so that every digit is equally likely).
Status FillRandomDigits(char* out, size_t count) {
  uint8_t pool[64];
  size_t used = sizeof(pool);
  for (size_t i = 0; i < count;) {
    if (used == sizeof(pool)) {
      TV_RETURN_IF_ERROR(RandomBytesFast(pool, sizeof(pool)));
      used = 0;
    }
    const uint8_t b = pool[used++];
    if (b < 250) out[i++] = static_cast<char>('0' + b % 10);
  }
  return Status::Ok();
}

StatusOr<std::string> PreservingCardToken(const SecretBytes& card, bool keep_bin) {
  const std::string_view digits(reinterpret_cast<const char*>(card.data()), card.size());
  std::string token(digits.size(), '0');
  const size_t head = keep_bin ? kBinDigits : 0;
  std::memcpy(token.data(), digits.data(), head);
  std::memcpy(token.data() + token.size() - kLastDigits, digits.data() + digits.size() - kLastDigits,
              kLastDigits);
  // About one draw in ten is Luhn-valid and drawn again.
  for (;;) {
    TV_RETURN_IF_ERROR(FillRandomDigits(token.data() + head, token.size() - head - kLastDigits));
    if (!LuhnValid(AsBytes(token))) return token;
  }
}

StatusOr<std::string> PreservingSsnToken(const SecretBytes& ssn) {
  // The normalised value is AAA-GG-SSSS. An ITIN-like value (area 9xx) could be drawn as its own
  // token: drawn again then.
  const std::string_view value(reinterpret_cast<const char*>(ssn.data()), ssn.size());
  for (;;) {
    std::string token = "9dd-dd-";
    TV_RETURN_IF_ERROR(FillRandomDigits(token.data() + 1, 2));
    TV_RETURN_IF_ERROR(FillRandomDigits(token.data() + 4, 2));
    token.append(value.substr(value.size() - kLastDigits));
    if (token != value) return token;
  }
}

bool IsPreservingSsnShape(std::string_view t) {
  return t.size() == 11 && t[0] == '9' && t[3] == '-' && t[6] == '-' &&
         AllDigits(t.substr(1, 2)) && AllDigits(t.substr(4, 2)) && AllDigits(t.substr(7, 4));
}

}  // namespace

std::string_view TokenFormatName(TokenFormat format) {
  return format == TokenFormat::kPreserving ? "preserving" : "random";
}

std::optional<TokenFormat> ParseTokenFormat(std::string_view name) {
  if (name == "random") return TokenFormat::kRandom;
  if (name == "preserving") return TokenFormat::kPreserving;
  return std::nullopt;
}

Status CheckTokenFormat(ValueType type, const TokenFormatOptions& options) {
  if (options.format == TokenFormat::kPreserving && type == ValueType::kGeneric) {
    return InvalidArgumentError("invalid_format", "format-preserving tokens are for card and ssn");
  }
  if (options.keep_bin &&
      (options.format != TokenFormat::kPreserving || type != ValueType::kCard)) {
    return InvalidArgumentError("invalid_format", "keep_bin applies to preserving card tokens");
  }
  return Status::Ok();
}

Status CheckTokenFormatFor(ValueType type, const SecretBytes& normalized,
                           const TokenFormatOptions& options) {
  TV_RETURN_IF_ERROR(CheckTokenFormat(type, options));
  if (options.format == TokenFormat::kRandom) return Status::Ok();
  if (type == ValueType::kCard) {
    if (normalized.size() < kMinCardDigits || normalized.size() > kMaxCardDigits) {
      return InvalidArgumentError("invalid_card", "a card has 12 to 19 digits");
    }
    // Six kept at the front and four at the back leave a short card almost nothing random: a
    // 13-digit token would narrow its card down to ~100 candidates.
    if (options.keep_bin && normalized.size() < kMinCardDigitsForBin) {
      return InvalidArgumentError("invalid_format", "keep_bin needs a card of 15 or more digits");
    }
    return Status::Ok();
  }
  if (normalized.size() != 11) return InvalidArgumentError("invalid_ssn", "not a normalised SSN");
  return Status::Ok();
}

StatusOr<std::string> NewToken(ValueType type, const SecretBytes& normalized,
                               const TokenFormatOptions& options) {
  TV_RETURN_IF_ERROR(CheckTokenFormatFor(type, normalized, options));
  if (options.format == TokenFormat::kRandom) return NewRandomToken();
  if (type == ValueType::kCard) return PreservingCardToken(normalized, options.keep_bin);
  return PreservingSsnToken(normalized);
}

bool IsWellFormedToken(std::string_view token) {
  if (IsWellFormedRandomToken(token)) return true;
  if (IsPreservingSsnShape(token)) return true;
  return token.size() >= kMinCardDigits && token.size() <= kMaxCardDigits && AllDigits(token) &&
         !LuhnValid(AsBytes(token));
}

}  // namespace tokenvault
