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
  for (size_t i = 0; i < kMaxLabelSets + 50; ++i) f.Add({{"merchant", "m" + std::to_string(i)}});
  std::string out;
  f.Render(out);
  size_t series = 0;
  for (size_t at = out.find("t_values_total{"); at != std::string::npos; at = out.find("t_values_total{", at + 1)) ++series;
  EXPECT_EQ(series, kMaxLabelSets + 1);
  EXPECT_EQ(f.Value({{"merchant", "_other"}}), 50);
}

}  // namespace
}  // namespace tokenvault::metrics
