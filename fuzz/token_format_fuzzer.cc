// The format-preserving token generator's properties (token_format.h), on values the fuzzer picks:
// for a card of 12-19 digits it makes a Luhn-valid card from the fuzzer's digits; for an SSN, a
// dashed or plain nine-digit string; sometimes raw bytes, which must be refused or normalised.
// Properties checked for every token drawn:
// - same length as the card, digits only; an SSN token is 9dd-dd-dddd;
// - the last four digits kept, and the first six too with keep_bin; nothing else of the value;
// - never Luhn-valid, never equal to the value; accepted by IsWellFormedToken;
// - the masked form never shows more than the last four.
// The generator draws from the CSPRNG, not from a seed, so "a fixed seed gives the same output"
// does not apply; two draws are checked to satisfy the properties independently instead.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "vault/base/bytes.h"
#include "vault/token_format.h"
#include "vault/value_type.h"

using namespace tokenvault;

namespace {

bool AllDigits(std::string_view s) {
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// Makes 'digits' Luhn-valid by choosing its last digit.
void FixLuhn(std::string& digits) {
  for (char d = '0'; d <= '9'; ++d) {
    digits.back() = d;
    if (LuhnValid(AsBytes(digits))) return;
  }
  std::abort();  // one of ten check digits always works
}

void CheckCardToken(const std::string& card, const std::string& token, bool keep_bin) {
  if (token.size() != card.size() || !AllDigits(token)) std::abort();
  if (token.substr(token.size() - 4) != card.substr(card.size() - 4)) std::abort();
  if (keep_bin && token.substr(0, 6) != card.substr(0, 6)) std::abort();
  if (LuhnValid(AsBytes(token)) || token == card || !IsWellFormedToken(token)) std::abort();
}

void CheckSsnToken(const std::string& ssn, const std::string& token) {
  if (token.size() != 11 || token[0] != '9' || token[3] != '-' || token[6] != '-') std::abort();
  if (token.substr(7) != ssn.substr(7) || token == ssn || !IsWellFormedToken(token)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int kind = in.ConsumeIntegralInRange<int>(0, 2);
  const bool keep_bin = in.ConsumeBool();
  ValueType type = ValueType::kCard;
  std::string raw;
  if (kind == 0) {  // a valid card from the fuzzer's digits
    const size_t length = in.ConsumeIntegralInRange<size_t>(12, 19);
    for (size_t i = 0; i < length; ++i) raw.push_back(static_cast<char>('0' + in.ConsumeIntegralInRange<int>(0, 9)));
    FixLuhn(raw);
  } else if (kind == 1) {  // an SSN, dashed or not
    type = ValueType::kSsn;
    for (int i = 0; i < 9; ++i) raw.push_back(static_cast<char>('0' + in.ConsumeIntegralInRange<int>(0, 9)));
    if (in.ConsumeBool()) raw = raw.substr(0, 3) + "-" + raw.substr(3, 2) + "-" + raw.substr(5);
  } else {  // raw bytes as a card or an SSN
    type = in.ConsumeBool() ? ValueType::kCard : ValueType::kSsn;
    raw = in.ConsumeRemainingBytesAsString();
  }
  StatusOr<SecretBytes> normalized = NormalizeValue(type, AsBytes(raw));
  if (!normalized.ok()) {
    if (kind != 2) std::abort();  // the values built above are valid
    return 0;
  }
  const std::string value(AsChars(normalized->view()));
  // The masked form shows at most the last four of the value's digits.
  const std::string masked = MaskValue(type, *normalized);
  size_t shown = 0;
  for (char c : masked) shown += (c >= '0' && c <= '9') ? 1 : 0;
  if (shown > 4) std::abort();

  const TokenFormatOptions options{TokenFormat::kPreserving, keep_bin};
  for (int draw = 0; draw < 2; ++draw) {
    StatusOr<std::string> token = NewToken(type, *normalized, options);
    if (!token.ok()) {
      // Refused only as CheckTokenFormatFor says: keep_bin on an SSN or a short card.
      if (CheckTokenFormatFor(type, *normalized, options).ok()) std::abort();
      return 0;
    }
    if (type == ValueType::kCard) {
      CheckCardToken(value, *token, keep_bin);
    } else {
      CheckSsnToken(value, *token);
    }
  }
  return 0;
}
