#include "vault/base/metrics.h"

#include <cmath>
#include <cstdio>

namespace tokenvault::metrics {
namespace {

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.9g", v);
  }
  return buf;
}

// Label values escaped as the exposition format asks (backslash, quote, newline).
std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string LabelText(const Labels& labels, const std::string& extra_name = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    out += (first ? "" : ",") + k + "=\"" + Escape(v) + "\"";
    first = false;
  }
  if (!extra_name.empty()) out += (first ? "" : ",") + extra_name + "=\"" + extra_value + "\"";
  return out + "}";
}

}  // namespace

Family::Family(std::string name, std::string help, Type type, std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), type_(type), buckets_(std::move(buckets)) {}

Family::Series& Family::SeriesFor(const Labels& labels) {
  auto it = series_.find(labels);
  if (it != series_.end()) return it->second;
  if (!bounded_label_.empty() && series_.size() >= kMaxLabelSets) {
    // Bounded: a new value of the data-driven label shares the "_other" series.
    Labels other = labels;
    for (auto& [k, v] : other) {
      if (k == bounded_label_) v = "_other";
    }
    Series& s = series_[other];
    if (type_ == Type::kHistogram && s.counts.empty()) s.counts.assign(buckets_.size() + 1, 0);
    return s;
  }
  Series& s = series_[labels];
  if (type_ == Type::kHistogram) s.counts.assign(buckets_.size() + 1, 0);
  return s;
}

Family::Cell Family::CellFor(const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  return Cell(this, &SeriesFor(labels));
}

void Family::Cell::Add(double v) {
  std::lock_guard<std::mutex> lock(family_->mu_);
  series_->value += v;
}

void Family::Add(const Labels& labels, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  SeriesFor(labels).value += v;
}

void Family::Set(const Labels& labels, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  SeriesFor(labels).value = v;
}

void Family::Observe(const Labels& labels, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = SeriesFor(labels);
  size_t i = 0;
  while (i < buckets_.size() && v > buckets_[i]) ++i;
  ++s.counts[i];
  s.sum += v;
  ++s.count;
}

double Family::Value(const Labels& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = series_.find(labels);
  return it == series_.end() ? 0 : it->second.value;
}

void Family::Render(std::string& out) const {
  static const char* kTypes[] = {"counter", "gauge", "histogram"};
  out += "# HELP " + name_ + " " + help_ + "\n";
  out += "# TYPE " + name_ + " " + kTypes[static_cast<int>(type_)] + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [labels, s] : series_) {
    if (type_ != Type::kHistogram) {
      out += name_ + LabelText(labels) + " " + Number(s.value) + "\n";
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= buckets_.size(); ++i) {
      cumulative += s.counts[i];
      const std::string le = i < buckets_.size() ? Number(buckets_[i]) : "+Inf";
      out += name_ + "_bucket" + LabelText(labels, "le", le) + " " + std::to_string(cumulative) + "\n";
    }
    out += name_ + "_sum" + LabelText(labels) + " " + Number(s.sum) + "\n";
    out += name_ + "_count" + LabelText(labels) + " " + std::to_string(s.count) + "\n";
  }
}

Registry& Registry::Global() {
  static Registry* registry = new Registry();  // never destroyed: threads may report at exit
  return *registry;
}

Family& Registry::Get(const std::string& name, const std::string& help, Family::Type type,
                      std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it != families_.end()) return *it->second;
  auto family = std::make_unique<Family>(name, help, type, std::move(buckets));
  Family& ref = *family;
  families_.emplace(name, std::move(family));
  return ref;
}

Family& Registry::Counter(const std::string& name, const std::string& help) {
  return Get(name, help, Family::Type::kCounter, {});
}

Family& Registry::Gauge(const std::string& name, const std::string& help) {
  return Get(name, help, Family::Type::kGauge, {});
}

Family& Registry::Histogram(const std::string& name, const std::string& help,
                            std::vector<double> buckets) {
  return Get(name, help, Family::Type::kHistogram, std::move(buckets));
}

std::string Registry::Render() const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, family] : families_) family->Render(out);
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

}  // namespace tokenvault::metrics
