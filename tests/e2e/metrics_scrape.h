// Scrapes GET /metrics and parses the Prometheus text format into series -> value, for
// end-to-end tests. A series is named as it is written: name{label="value",...}.
#ifndef TOKENVAULT_TESTS_E2E_METRICS_SCRAPE_H_
#define TOKENVAULT_TESTS_E2E_METRICS_SCRAPE_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "tests/e2e/http_client.h"

namespace tokenvault::testing {

using MetricSeries = std::map<std::string, double>;

// Fails the test (and returns what it parsed) on a malformed line.
inline MetricSeries ScrapeMetrics(HttpClient& client) {
  Reply r = client.Get("/metrics", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"].rfind("text/plain", 0), 0u) << r.headers["content-type"];
  MetricSeries out;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') {
      EXPECT_TRUE(line.empty() || line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) << line;
      continue;
    }
    const size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    if (space == std::string::npos) continue;
    const std::string series = line.substr(0, space);
    EXPECT_EQ(series.rfind("tokenvault_", 0), 0u) << line;
    char* end = nullptr;
    const std::string value = line.substr(space + 1);
    const double v = value == "+Inf" ? 1e300 : std::strtod(value.c_str(), &end);
    EXPECT_TRUE(value == "+Inf" || (end != nullptr && *end == '\0')) << line;
    EXPECT_EQ(out.count(series), 0u) << "series twice: " << line;
    out[series] = v;
  }
  return out;
}

// The value of a series, 0 when absent.
inline double MetricValue(const MetricSeries& m, const std::string& series) {
  auto it = m.find(series);
  return it == m.end() ? 0 : it->second;
}

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_E2E_METRICS_SCRAPE_H_
