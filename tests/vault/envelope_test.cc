#include "vault/envelope.h"

#include <gtest/gtest.h>

#include "tests/support/matchers.h"

namespace tokenvault::envelope {
namespace {

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
Bytes Str(std::string_view s) { return Bytes(s.begin(), s.end()); }

// The layouts are frozen (docs/formats.md): these known answers must never change.
TEST(EnvelopeTest, ValueAadLayoutIsFrozen) {
  const Bytes expected = Concat({Str("tokenvault/value"), {0x01}, {0x00, 0x02}, Str("m1"),
                                 {0x00, 0x05}, Str("tok_x"), {0x00, 0x04}, Str("card"),
                                 {0x00, 0x00, 0x01, 0x02}});
  EXPECT_EQ(ValueAad(kValueFormatV1, "m1", "tok_x", "card", 258), expected);
}

TEST(EnvelopeTest, DekAadLayoutIsFrozen) {
  const Bytes expected = Concat({Str("tokenvault/dek"), {0x01}, {0x00, 0x03}, Str("acm"),
                                 {0x00, 0x00, 0x00, 0x07}, {0x00, 0x00, 0x00, 0x02}});
  EXPECT_EQ(DekAad(kWrappedKeyFormatV1, "acm", 7, 2), expected);
}

TEST(EnvelopeTest, LengthPrefixesKeepFieldsApart) {
  // Without length prefixes these two would encode the same bytes.
  EXPECT_NE(ValueAad(1, "ab", "c", "generic", 1), ValueAad(1, "a", "bc", "generic", 1));
}

TEST(EnvelopeTest, WrappedDekRoundTripsAndRejectsOtherShapes) {
  const Bytes hsm_output(60, 0x33);
  const Bytes stored = EncodeWrappedDek(hsm_output);
  ASSERT_EQ(stored.size(), kWrappedDekSizeV1);
  EXPECT_EQ(stored[0], kWrappedKeyFormatV1);
  StatusOr<ByteView> decoded = DecodeWrappedDek(stored);
  TV_ASSERT_OK(decoded);
  EXPECT_EQ(Bytes(decoded->begin(), decoded->end()), hsm_output);

  Bytes bad_version = stored;
  bad_version[0] = 2;
  TV_EXPECT_ERROR(DecodeWrappedDek(bad_version), StatusCode::kDataLoss, "integrity_failure");
  TV_EXPECT_ERROR(DecodeWrappedDek(ByteView(stored).subspan(1)), StatusCode::kDataLoss,
                  "integrity_failure");
}

}  // namespace
}  // namespace tokenvault::envelope
