// gtest helpers for Status and StatusOr.
#ifndef TOKENVAULT_TESTS_SUPPORT_MATCHERS_H_
#define TOKENVAULT_TESTS_SUPPORT_MATCHERS_H_

#include <gtest/gtest.h>

#include "vault/base/status.h"

namespace tokenvault::testing {

inline const Status& GetStatus(const Status& s) { return s; }
template <typename T>
Status GetStatus(const StatusOr<T>& s) {
  return s.status();
}

}  // namespace tokenvault::testing

#define TV_EXPECT_OK(expr)                                                           \
  do {                                                                               \
    const ::tokenvault::Status tv_s_ = ::tokenvault::testing::GetStatus(expr);       \
    EXPECT_TRUE(tv_s_.ok()) << tv_s_.ToString();                                     \
  } while (false)
#define TV_ASSERT_OK(expr)                                                           \
  do {                                                                               \
    const ::tokenvault::Status tv_s_ = ::tokenvault::testing::GetStatus(expr);       \
    ASSERT_TRUE(tv_s_.ok()) << tv_s_.ToString();                                     \
  } while (false)
// Checks code and reason.
#define TV_EXPECT_ERROR(expr, code_, reason_)                                        \
  do {                                                                               \
    const ::tokenvault::Status tv_s_ = ::tokenvault::testing::GetStatus(expr);       \
    EXPECT_EQ(tv_s_.code(), code_) << tv_s_.ToString();                              \
    EXPECT_EQ(tv_s_.reason(), reason_) << tv_s_.ToString();                          \
  } while (false)

#endif  // TOKENVAULT_TESTS_SUPPORT_MATCHERS_H_
