#include "vault/value_type.h"

namespace tokenvault {

std::string_view ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kGeneric: return "generic";
    case ValueType::kCard: return "card";
    case ValueType::kSsn: return "ssn";
  }
  return "generic";
}

std::optional<ValueType> ParseValueType(std::string_view name) {
  if (name == "generic") return ValueType::kGeneric;
  if (name == "card") return ValueType::kCard;
  if (name == "ssn") return ValueType::kSsn;
  return std::nullopt;
}

bool LuhnValid(ByteView digits) {
  int sum = 0;
  bool double_it = false;
  for (size_t i = digits.size(); i-- > 0;) {
    int d = digits[i] - '0';
    if (double_it) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double_it = !double_it;
  }
  return sum % 10 == 0;
}

bool IsValidUtf8(ByteView s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = s[i];
    size_t extra;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

namespace {

bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }

StatusOr<SecretBytes> NormalizeCard(ByteView raw) {
  SecretBytes digits;
  digits.Reserve(raw.size());
  for (uint8_t c : raw) {
    if (c == ' ' || c == '-') continue;
    if (!IsDigit(c)) return InvalidArgumentError("invalid_card", "a card number holds only digits");
    if (digits.size() >= 19) break;  // too long either way; stop copying
    const uint8_t one[1] = {c};
    digits.Append(ByteView(one, 1));
  }
  size_t total_digits = 0;
  for (uint8_t c : raw) total_digits += IsDigit(c) ? 1 : 0;
  if (total_digits < 12 || total_digits > 19) {
    return InvalidArgumentError("invalid_card", "a card number has 12 to 19 digits");
  }
  if (!LuhnValid(digits.view())) {
    return InvalidArgumentError("invalid_card", "the card number fails the Luhn check");
  }
  return digits;
}

StatusOr<SecretBytes> NormalizeSsn(ByteView raw) {
  const bool dashed = raw.size() == 11 && raw[3] == '-' && raw[6] == '-';
  const bool plain = raw.size() == 9;
  if (!dashed && !plain) {
    return InvalidArgumentError("invalid_ssn", "an SSN is AAA-GG-SSSS or 9 digits");
  }
  SecretBytes out(11);
  size_t o = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (dashed && (i == 3 || i == 6)) continue;
    if (!IsDigit(raw[i])) return InvalidArgumentError("invalid_ssn", "an SSN is AAA-GG-SSSS or 9 digits");
    if (o == 3 || o == 6) out.data()[o++] = '-';
    out.data()[o++] = raw[i];
  }
  return out;
}

}  // namespace

StatusOr<SecretBytes> NormalizeValue(ValueType type, ByteView raw) {
  switch (type) {
    case ValueType::kCard:
      return NormalizeCard(raw);
    case ValueType::kSsn:
      return NormalizeSsn(raw);
    case ValueType::kGeneric:
      if (raw.empty() || raw.size() > kMaxGenericValueSize) {
        return InvalidArgumentError("invalid_value", "a value has 1 to 4096 bytes");
      }
      if (!IsValidUtf8(raw)) return InvalidArgumentError("invalid_value", "a value must be UTF-8");
      return SecretBytes::CopyFrom(raw);
  }
  return InvalidArgumentError("invalid_type", "unknown value type");
}

std::string MaskValue(ValueType type, const SecretBytes& v) {
  switch (type) {
    case ValueType::kCard: {
      if (v.size() < 4) return std::string(v.size(), '*');
      std::string out(v.size() - 4, '*');
      out.append(reinterpret_cast<const char*>(v.data()) + v.size() - 4, 4);
      return out;
    }
    case ValueType::kSsn:
      if (v.size() != 11) return "***-**-****";
      return "***-**-" + std::string(reinterpret_cast<const char*>(v.data()) + 7, 4);
    case ValueType::kGeneric:
      return "********";
  }
  return "********";
}

}  // namespace tokenvault
