// Process-wide Prometheus metrics: counters, gauges and histograms with labels, cheap to update
// from any thread, rendered in the text exposition format for GET /metrics.
//
// Label values come from the code, never from requests, with one exception the caller bounds:
// merchant ids (at most kMaxLabelSets label sets per metric; beyond, updates go to the series
// labelled "_other"), so that a client cannot grow the registry without limit.
#ifndef TOKENVAULT_VAULT_BASE_METRICS_H_
#define TOKENVAULT_VAULT_BASE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tokenvault::metrics {

inline constexpr size_t kMaxLabelSets = 200;

using Labels = std::vector<std::pair<std::string, std::string>>;

// One metric family: a name, help text, type, and its series by label set.
class Family {
 public:
  enum class Type { kCounter, kGauge, kHistogram };
  Family(std::string name, std::string help, Type type, std::vector<double> buckets = {});

  // Names the one label whose values come from data (merchant ids): once kMaxLabelSets series
  // exist, new values of that label are counted under "_other". Other labels are bounded by the
  // code that sets them and never folded, so an alert on, say, a route's 5xx cannot be hidden.
  Family& BoundLabel(std::string label) {
    std::lock_guard<std::mutex> lock(mu_);
    bounded_label_ = std::move(label);
    return *this;
  }

  struct Series;
  // One series found once, for a hot path whose labels are fixed: adding to it costs no
  // allocation and no lookup. Valid for the life of the family (series are never removed).
  class Cell {
   public:
    void Add(double v = 1);
   private:
    friend class Family;
    Cell(Family* family, Series* series) : family_(family), series_(series) {}
    Family* family_;
    Series* series_;
  };
  Cell CellFor(const Labels& labels);

  // Counter: adds 'v' (>= 0). Gauge: adds 'v' (any sign).
  void Add(const Labels& labels, double v = 1);
  // Gauge: sets the value.
  void Set(const Labels& labels, double v);
  // Histogram: records one observation.
  void Observe(const Labels& labels, double v);
  // The current value of a counter or gauge series (0 if absent); tests and gauges' readers.
  double Value(const Labels& labels) const;

  void Render(std::string& out) const;

 private:
  friend class Cell;
 public:
  struct Series {
    double value = 0;                  // counter, gauge
    std::vector<uint64_t> counts;      // histogram: per bucket (not cumulative), +Inf last
    double sum = 0;
    uint64_t count = 0;
  };

 private:
  Series& SeriesFor(const Labels& labels);  // REQUIRES: mu_ held

  const std::string name_, help_;
  const Type type_;
  const std::vector<double> buckets_;
  mutable std::mutex mu_;
  std::map<Labels, Series> series_;  // GUARDED_BY(mu_)
  std::string bounded_label_;        // GUARDED_BY(mu_)
};

// The registry every component reports to.
class Registry {
 public:
  static Registry& Global();
  // The family 'name', made on first use (later calls return it and ignore the other arguments).
  Family& Counter(const std::string& name, const std::string& help);
  Family& Gauge(const std::string& name, const std::string& help);
  Family& Histogram(const std::string& name, const std::string& help, std::vector<double> buckets);
  std::string Render() const;

 private:
  Family& Get(const std::string& name, const std::string& help, Family::Type type,
              std::vector<double> buckets);
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Family>> families_;  // GUARDED_BY(mu_)
};

// Latency buckets in seconds, 100 us to 10 s.
std::vector<double> LatencyBuckets();

}  // namespace tokenvault::metrics

#endif  // TOKENVAULT_VAULT_BASE_METRICS_H_
