#include "vault/base/metrics.h"

#include <gtest/gtest.h>

namespace tokenvault::metrics {
namespace {

TEST(MetricsTest, RendersCountersGaugesAndCumulativeHistograms) {
  Family counter("t_requests_total", "Requests.", Family::Type::kCounter);
  counter.Add({{"route", "a"}, {"status", "200"}});
  counter.Add({{"route", "a"}, {"status", "200"}}, 2);
  counter.Add({{"route", "b\"x\\\n"}, {"status", "500"}});
  std::string out;
  counter.Render(out);
  EXPECT_NE(out.find("# TYPE t_requests_total counter\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_requests_total{route=\"a\",status=\"200\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_requests_total{route=\"b\\\"x\\\\\\n\",status=\"500\"} 1\n"), std::string::npos) << out;

  Family hist("t_seconds", "Latency.", Family::Type::kHistogram, {0.1, 1});
  hist.Observe({}, 0.05);
  hist.Observe({}, 0.5);
  hist.Observe({}, 5);
  out.clear();
  hist.Render(out);
  EXPECT_NE(out.find("t_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_seconds_bucket{le=\"1\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_seconds_count 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_seconds_sum 5.55\n"), std::string::npos) << out;
}

TEST(MetricsTest, LabelSetsAreBoundedSoDataCannotGrowTheRegistry) {
  Family f("t_values_total", "Values.", Family::Type::kCounter);
  f.BoundLabel("merchant");
  for (size_t i = 0; i < kMaxLabelSets + 50; ++i) f.Add({{"merchant", "m" + std::to_string(i)}, {"reveal", "plain"}});
  std::string out;
  f.Render(out);
  size_t series = 0;
  for (size_t at = out.find("t_values_total{"); at != std::string::npos; at = out.find("t_values_total{", at + 1)) ++series;
  EXPECT_EQ(series, kMaxLabelSets + 1);
  // Only the data-driven label is folded: the others keep their values.
  EXPECT_EQ(f.Value({{"merchant", "_other"}, {"reveal", "plain"}}), 50);
}

TEST(MetricsTest, FamiliesWithoutADataLabelAreNeverFolded) {
  // Route x status is bounded by the code; filling it with 4xx must not hide a later 503.
  Family f("t_requests_total", "Requests.", Family::Type::kCounter);
  for (size_t i = 0; i < kMaxLabelSets + 10; ++i) f.Add({{"route", "r" + std::to_string(i % 30)}, {"status", std::to_string(400 + i)}});
  f.Add({{"route", "tokens.create"}, {"status", "503"}});
  EXPECT_EQ(f.Value({{"route", "tokens.create"}, {"status", "503"}}), 1);
}

}  // namespace
}  // namespace tokenvault::metrics
