#include "vault/base/secret_bytes.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <ostream>
#include <set>
#include <type_traits>
#include <vector>

namespace tokenvault {
namespace {

// What the wipe observer saw: every released buffer, and whether it was all zeros.
struct WipeLog {
  std::vector<std::pair<const uint8_t*, size_t>> released;
  bool all_zero = true;
};
WipeLog* g_log = nullptr;

void RecordWipe(const uint8_t* data, size_t size) {
  if (g_log == nullptr) return;
  g_log->released.emplace_back(data, size);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] != 0) g_log->all_zero = false;
  }
}

class SecretBytesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_log = &log_;
    internal::SetWipeObserverForTesting(&RecordWipe);
  }
  void TearDown() override {
    internal::SetWipeObserverForTesting(nullptr);
    g_log = nullptr;
  }
  bool Released(const uint8_t* p) const {
    return std::any_of(log_.released.begin(), log_.released.end(),
                       [p](const auto& r) { return r.first == p; });
  }
  WipeLog log_;
};

SecretBytes Pattern(size_t n, uint8_t v) {
  SecretBytes s(n);
  std::fill(s.data(), s.data() + n, v);
  return s;
}

TEST_F(SecretBytesTest, BufferIsWipedWhenDestroyed) {
  const uint8_t* p;
  {
    SecretBytes s = Pattern(32, 0xAB);
    p = s.data();
  }
  EXPECT_TRUE(Released(p));
  EXPECT_TRUE(log_.all_zero);
}

TEST_F(SecretBytesTest, WipeReleasesAndZeroesNow) {
  SecretBytes s = Pattern(48, 0x5C);
  const uint8_t* p = s.data();
  s.Wipe();
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(Released(p));
  EXPECT_TRUE(log_.all_zero);
}

TEST_F(SecretBytesTest, GrowingWipesTheOldBuffer) {
  SecretBytes s = Pattern(16, 0x11);
  const uint8_t* old = s.data();
  std::vector<uint8_t> more(4096, 0x22);
  s.Append(ByteView(more));
  EXPECT_NE(s.data(), old);
  EXPECT_TRUE(Released(old));
  EXPECT_TRUE(log_.all_zero);
}

TEST_F(SecretBytesTest, MoveAssignmentWipesTheOverwrittenSecret) {
  SecretBytes a = Pattern(32, 0x01);
  SecretBytes b = Pattern(32, 0x02);
  const uint8_t* pa = a.data();
  const uint8_t* pb = b.data();
  a = std::move(b);
  EXPECT_TRUE(Released(pa));
  EXPECT_EQ(a.data(), pb);  // moved, not copied
  EXPECT_TRUE(log_.all_zero);
}

TEST_F(SecretBytesTest, SelfMoveAssignmentKeepsTheSecret) {
  SecretBytes a = Pattern(8, 0x33);
  SecretBytes& alias = a;
  a = std::move(alias);
  ASSERT_EQ(a.size(), 8u);
  EXPECT_EQ(a.data()[0], 0x33);
}

TEST_F(SecretBytesTest, TruncateWipesTheTail) {
  SecretBytes s = Pattern(10, 0x7F);
  s.Truncate(4);
  ASSERT_EQ(s.size(), 4u);
  // The dropped bytes are still inside the same buffer: check they are zero.
  EXPECT_EQ(s.data()[4], 0);
  EXPECT_EQ(s.data()[9], 0);
  EXPECT_EQ(s.data()[3], 0x7F);
}

TEST_F(SecretBytesTest, CloneIsExplicitAndEqual) {
  SecretBytes a = Pattern(32, 0x42);
  SecretBytes b = a.Clone();
  EXPECT_NE(a.data(), b.data());
  EXPECT_TRUE(a.Equals(b));
  b.data()[31] ^= 1;
  EXPECT_FALSE(a.Equals(b));
  EXPECT_FALSE(a.Equals(Pattern(31, 0x42)));
  static_assert(!std::is_copy_constructible_v<SecretBytes>);
  static_assert(!std::is_copy_assignable_v<SecretBytes>);
}

TEST(ConstantTimeEqualsTest, ComparesContentAndLength) {
  const uint8_t a[] = {1, 2, 3};
  const uint8_t b[] = {1, 2, 3};
  const uint8_t c[] = {1, 2, 4};
  EXPECT_TRUE(ConstantTimeEquals(a, b));
  EXPECT_FALSE(ConstantTimeEquals(a, c));
  EXPECT_FALSE(ConstantTimeEquals(ByteView(a, 2), b));
  EXPECT_TRUE(ConstantTimeEquals(ByteView(), ByteView()));
}

// SecretBytes cannot be streamed or iterated: nothing (fmt, spdlog, iostreams, ranges) can print it.
template <typename T, typename = void>
struct IsStreamable : std::false_type {};
template <typename T>
struct IsStreamable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>>
    : std::true_type {};
template <typename T, typename = void>
struct IsIterable : std::false_type {};
template <typename T>
struct IsIterable<T, std::void_t<decltype(std::begin(std::declval<const T&>()))>> : std::true_type {};

TEST(SecretBytesTypeTest, IsNeitherPrintableNorIterable) {
  EXPECT_FALSE(IsStreamable<SecretBytes>::value);
  EXPECT_FALSE(IsIterable<SecretBytes>::value);
  EXPECT_FALSE((std::is_convertible_v<SecretBytes, std::string>));
  // The detectors themselves work:
  EXPECT_TRUE(IsStreamable<int>::value);
  EXPECT_TRUE(IsIterable<std::vector<int>>::value);
}

}  // namespace
}  // namespace tokenvault
