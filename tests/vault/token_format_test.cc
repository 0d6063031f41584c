// Property tests of the token formats over 100,000 generated tokens each (API.md, Tokens), and
// of the shape check that runs before any lookup.
#include "vault/token_format.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "tests/support/matchers.h"
#include "tests/support/test_values.h"
#include "vault/value_type.h"

namespace tokenvault {
namespace {

using testing::RandomCard;
using testing::RandomSsn;

constexpr int kSamples = 100000;

// ^tok_[0-9A-Za-z]{22}$ and ^9\d\d-\d\d-\d{4}$, matched by hand: <regex> trips GCC 12's
// -Wmaybe-uninitialized in the sanitizer build.
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool MatchesRandomShape(const std::string& t) {
  if (t.size() != 26 || t.compare(0, 4, "tok_") != 0) return false;
  for (size_t i = 4; i < t.size(); ++i) {
    const char c = t[i];
    if (!IsDigit(c) && !(c >= 'A' && c <= 'Z') && !(c >= 'a' && c <= 'z')) return false;
  }
  return true;
}
bool MatchesSsnTokenShape(const std::string& t) {
  if (t.size() != 11 || t[0] != '9' || t[3] != '-' || t[6] != '-') return false;
  for (size_t i : {1, 2, 4, 5, 7, 8, 9, 10}) {
    if (!IsDigit(t[i])) return false;
  }
  return true;
}

SecretBytes Normalized(ValueType type, const std::string& raw) {
  StatusOr<SecretBytes> v = NormalizeValue(type, AsBytes(raw));
  EXPECT_TRUE(v.ok()) << raw;
  return v.ok() ? std::move(v).value() : SecretBytes();
}

TEST(TokenFormatTest, RandomTokensHaveTheirShape) {
  const SecretBytes value = Normalized(ValueType::kGeneric, "anything");
  for (int i = 0; i < kSamples; ++i) {
    StatusOr<std::string> t = NewToken(ValueType::kGeneric, value, {});
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(MatchesRandomShape(*t)) << *t;
    ASSERT_TRUE(IsWellFormedToken(*t)) << *t;
  }
}

TEST(TokenFormatTest, PreservingCardTokensKeepLengthAndLastFourAndFailLuhn) {
  std::mt19937_64 rng(42);
  for (bool keep_bin : {false, true}) {
    for (int i = 0; i < kSamples; ++i) {
      // 12..19 digits; with the BIN kept, 15..19 (shorter cards are refused, below).
      const std::string card = keep_bin ? RandomCard(rng, 15 + rng() % 5) : RandomCard(rng, 12 + rng() % 8);
      const SecretBytes value = Normalized(ValueType::kCard, card);
      StatusOr<std::string> t =
          NewToken(ValueType::kCard, value, {TokenFormat::kPreserving, keep_bin});
      ASSERT_TRUE(t.ok());
      ASSERT_EQ(t->size(), card.size());
      ASSERT_EQ(t->find_first_not_of("0123456789"), std::string::npos) << *t;
      ASSERT_EQ(t->substr(t->size() - 4), card.substr(card.size() - 4));
      if (keep_bin) {
        ASSERT_EQ(t->substr(0, 6), card.substr(0, 6));
      }
      ASSERT_FALSE(LuhnValid(AsBytes(*t))) << *t;
      ASSERT_NE(*t, card);
      ASSERT_TRUE(IsWellFormedToken(*t)) << *t;
    }
  }
}

TEST(TokenFormatTest, PreservingSsnTokensAreNeverIssuableSsnsAndKeepTheLastFour) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < kSamples; ++i) {
    const std::string ssn = RandomSsn(rng);
    const SecretBytes value = Normalized(ValueType::kSsn, ssn);
    StatusOr<std::string> t = NewToken(ValueType::kSsn, value, {TokenFormat::kPreserving, false});
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(MatchesSsnTokenShape(*t)) << *t;
    ASSERT_EQ(t->substr(7), ssn.substr(7));
    ASSERT_TRUE(IsWellFormedToken(*t)) << *t;
  }
}

TEST(TokenFormatTest, PreservingDigitsAreSpreadOverAllTen) {
  // The random digits are uniform: over 100,000 16-digit tokens (11 random digits each), every
  // digit value appears at each position - a generator stuck on a subset would not.
  std::mt19937_64 rng(1);
  const SecretBytes value = Normalized(ValueType::kCard, RandomCard(rng, 16));
  std::array<std::array<int, 10>, 12> seen{};
  for (int i = 0; i < kSamples; ++i) {
    StatusOr<std::string> t = NewToken(ValueType::kCard, value, {TokenFormat::kPreserving, false});
    ASSERT_TRUE(t.ok());
    for (size_t pos = 0; pos < 12; ++pos) ++seen[pos][(*t)[pos] - '0'];
  }
  for (size_t pos = 0; pos < 11; ++pos) {  // position 11 is sometimes forced by Luhn
    for (int d = 0; d < 10; ++d) EXPECT_GT(seen[pos][d], 8000) << "position " << pos << " digit " << d;
  }
}

TEST(TokenFormatTest, TheShapeMatchersThemselvesRefuseNearMisses) {
  EXPECT_TRUE(MatchesRandomShape("tok_0123456789ABCDEFabcdef"));
  EXPECT_FALSE(MatchesRandomShape("tok_0123456789ABCDEFabcde-"));
  EXPECT_FALSE(MatchesRandomShape("tok_0123456789ABCDEFabcde"));
  EXPECT_TRUE(MatchesSsnTokenShape("912-34-5678"));
  EXPECT_FALSE(MatchesSsnTokenShape("812-34-5678"));
  EXPECT_FALSE(MatchesSsnTokenShape("912-3a-5678"));
}

TEST(TokenFormatTest, KeepingTheBinNeedsALongEnoughCard) {
  std::mt19937_64 rng(3);
  for (size_t length = 12; length <= 19; ++length) {
    const SecretBytes value = Normalized(ValueType::kCard, RandomCard(rng, length));
    StatusOr<std::string> t = NewToken(ValueType::kCard, value, {TokenFormat::kPreserving, true});
    if (length < 15) {
      TV_EXPECT_ERROR(t, StatusCode::kInvalidArgument, "invalid_format");
    } else {
      TV_EXPECT_OK(t);
    }
  }
}

TEST(TokenFormatTest, AnSsnTokenIsNeverItsValue) {
  // An ITIN-like value (area 9xx) has a token's shape; with only four random digits the token
  // would be the value one time in 10,000 without the redraw.
  const SecretBytes value = Normalized(ValueType::kSsn, "912-34-5678");
  for (int i = 0; i < kSamples; ++i) {
    StatusOr<std::string> t = NewToken(ValueType::kSsn, value, {TokenFormat::kPreserving, false});
    ASSERT_TRUE(t.ok());
    ASSERT_NE(*t, "912-34-5678");
  }
}

TEST(TokenFormatTest, OptionsMustFitTheType) {
  TV_EXPECT_ERROR(CheckTokenFormat(ValueType::kGeneric, {TokenFormat::kPreserving, false}),
                  StatusCode::kInvalidArgument, "invalid_format");
  TV_EXPECT_ERROR(CheckTokenFormat(ValueType::kSsn, {TokenFormat::kPreserving, true}),
                  StatusCode::kInvalidArgument, "invalid_format");
  TV_EXPECT_ERROR(CheckTokenFormat(ValueType::kCard, {TokenFormat::kRandom, true}),
                  StatusCode::kInvalidArgument, "invalid_format");
  TV_EXPECT_OK(CheckTokenFormat(ValueType::kCard, {TokenFormat::kPreserving, true}));
  TV_EXPECT_OK(CheckTokenFormat(ValueType::kGeneric, {}));
  EXPECT_EQ(ParseTokenFormat("preserving"), TokenFormat::kPreserving);
  EXPECT_EQ(ParseTokenFormat("Preserving"), std::nullopt);
}

TEST(TokenFormatTest, ShapeCheckRefusesCardNumbersAndNearMisses) {
  EXPECT_FALSE(IsWellFormedToken("4111111111111111"));  // a real (Luhn-valid) card number
  EXPECT_TRUE(IsWellFormedToken("4111111111111112"));   // fails Luhn: a preserving token's shape
  EXPECT_FALSE(IsWellFormedToken("41111111112"));       // 11 digits
  EXPECT_FALSE(IsWellFormedToken("41111111111111111112"));  // 20 digits
  EXPECT_FALSE(IsWellFormedToken("4111 1111 1111 1112"));
  EXPECT_TRUE(IsWellFormedToken("912-34-5678"));
  EXPECT_FALSE(IsWellFormedToken("123-45-6789"));  // an issuable SSN is never a token
  EXPECT_FALSE(IsWellFormedToken("912345678"));
  EXPECT_FALSE(IsWellFormedToken("9a2-34-5678"));
  EXPECT_FALSE(IsWellFormedToken(""));
  EXPECT_FALSE(IsWellFormedToken("tok_"));
}

}  // namespace
}  // namespace tokenvault
