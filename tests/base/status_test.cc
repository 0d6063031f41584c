#include "vault/base/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace tokenvault {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd", "not even");
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  TV_ASSIGN_OR_RETURN(int half, Half(x));
  TV_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

Status CheckEven(int x) {
  TV_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesCodeReasonAndMessage) {
  Status s = UnavailableError("hsm_unavailable", "device gone");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.IsRetryable());
  EXPECT_EQ(s.reason(), "hsm_unavailable");
  EXPECT_EQ(s.ToString(), "UNAVAILABLE (hsm_unavailable): device gone");
  EXPECT_FALSE(DataLossError("x", "y").IsRetryable());
}

TEST(StatusOrTest, HoldsValueOrError) {
  StatusOr<int> v = Half(8);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 4);
  StatusOr<int> e = Half(3);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().reason(), "odd");
}

TEST(StatusOrTest, MacrosPropagateTheFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().reason(), "odd");  // 6 -> 3 -> error
  EXPECT_TRUE(CheckEven(2).ok());
  EXPECT_EQ(CheckEven(1).code(), StatusCode::kInvalidArgument);
}

TEST(StatusOrTest, HoldsMoveOnlyTypes) {
  StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> owned = std::move(p).value();
  EXPECT_EQ(*owned, 7);
}

TEST(StatusOrDeathTest, ValueOfAnErrorAborts) {
  StatusOr<int> e = Half(3);
  EXPECT_DEATH({ (void)e.value(); }, "");
}

TEST(StatusOrDeathTest, OkStatusWithoutValueAborts) {
  EXPECT_DEATH({ StatusOr<int> bad{Status::Ok()}; (void)bad; }, "");
}

}  // namespace
}  // namespace tokenvault
