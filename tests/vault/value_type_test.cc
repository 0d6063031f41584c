#include "vault/value_type.h"

#include <gtest/gtest.h>

#include "tests/support/matchers.h"

namespace tokenvault {
namespace {

std::string Norm(ValueType t, std::string_view in) {
  StatusOr<SecretBytes> v = NormalizeValue(t, AsBytes(in));
  if (!v.ok()) return "ERR:" + v.status().reason();
  return std::string(AsChars(v->view()));
}

TEST(ValueTypeTest, CardsAreStrippedAndLuhnChecked) {
  EXPECT_EQ(Norm(ValueType::kCard, "4111 1111-1111 1111"), "4111111111111111");
  EXPECT_EQ(Norm(ValueType::kCard, "4111111111111112"), "ERR:invalid_card");  // Luhn
  EXPECT_EQ(Norm(ValueType::kCard, "41111111111"), "ERR:invalid_card");       // 11 digits
  EXPECT_EQ(Norm(ValueType::kCard, "41111111111111111111"), "ERR:invalid_card");  // 20 digits
  EXPECT_EQ(Norm(ValueType::kCard, "4111x11111111111"), "ERR:invalid_card");
  EXPECT_EQ(Norm(ValueType::kCard, ""), "ERR:invalid_card");
  EXPECT_EQ(Norm(ValueType::kCard, "378282246310005"), "378282246310005");  // Amex, 15
  EXPECT_EQ(Norm(ValueType::kCard, "\xd9\xa4" "111111111111111"), "ERR:invalid_card");  // Arabic 4
}

TEST(ValueTypeTest, SsnsNormaliseToDashedForm) {
  EXPECT_EQ(Norm(ValueType::kSsn, "123456789"), "123-45-6789");
  EXPECT_EQ(Norm(ValueType::kSsn, "123-45-6789"), "123-45-6789");
  EXPECT_EQ(Norm(ValueType::kSsn, "12-345-6789"), "ERR:invalid_ssn");
  EXPECT_EQ(Norm(ValueType::kSsn, "12345678"), "ERR:invalid_ssn");
  EXPECT_EQ(Norm(ValueType::kSsn, "12345678a"), "ERR:invalid_ssn");
}

TEST(ValueTypeTest, GenericValuesAreKeptExactly) {
  EXPECT_EQ(Norm(ValueType::kGeneric, " any thing \n"), " any thing \n");
  EXPECT_EQ(Norm(ValueType::kGeneric, "h\xc3\xa9llo"), "h\xc3\xa9llo");
  EXPECT_EQ(Norm(ValueType::kGeneric, ""), "ERR:invalid_value");
  EXPECT_EQ(Norm(ValueType::kGeneric, std::string(4096, 'x')), std::string(4096, 'x'));
  EXPECT_EQ(Norm(ValueType::kGeneric, std::string(4097, 'x')), "ERR:invalid_value");
  EXPECT_EQ(Norm(ValueType::kGeneric, "\xff"), "ERR:invalid_value");
}

TEST(ValueTypeTest, Utf8Validation) {
  EXPECT_TRUE(IsValidUtf8(AsBytes("\xf0\x9f\x94\x91")));  // U+1F511
  EXPECT_FALSE(IsValidUtf8(AsBytes("\xc0\xaf")));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8(AsBytes("\xed\xa0\x80")));      // surrogate
  EXPECT_FALSE(IsValidUtf8(AsBytes("\xf4\x90\x80\x80")));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8(AsBytes("\xe2\x82")));          // truncated
}

TEST(ValueTypeTest, MasksRevealAtMostTheLastFour) {
  auto mask = [](ValueType t, std::string_view v) {
    return MaskValue(t, *NormalizeValue(t, AsBytes(v)));
  };
  EXPECT_EQ(mask(ValueType::kCard, "4111111111111111"), "************1111");
  EXPECT_EQ(mask(ValueType::kSsn, "123-45-6789"), "***-**-6789");
  EXPECT_EQ(mask(ValueType::kGeneric, "secret"), "********");
}

TEST(ValueTypeTest, NamesRoundTrip) {
  for (ValueType t : {ValueType::kGeneric, ValueType::kCard, ValueType::kSsn}) {
    EXPECT_EQ(ParseValueType(ValueTypeName(t)), t);
  }
  EXPECT_FALSE(ParseValueType("Card").has_value());
}

}  // namespace
}  // namespace tokenvault
