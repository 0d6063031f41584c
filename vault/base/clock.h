// Time source, injectable so that TTLs and caches are tested without sleeping.
#ifndef TOKENVAULT_VAULT_BASE_CLOCK_H_
#define TOKENVAULT_VAULT_BASE_CLOCK_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace tokenvault {

// "2026-11-29T12:00:00.250Z": RFC 3339 in UTC with milliseconds (API.md's times).
std::string Rfc3339(int64_t unix_millis);

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time in milliseconds since the Unix epoch (stored timestamps).
  virtual int64_t NowUnixMillis() const = 0;
  // Monotonic time (cache expiry, timeouts).
  virtual std::chrono::steady_clock::time_point SteadyNow() const = 0;

  // The process-wide real clock.
  static Clock& Real();
};

// A clock tests move by hand. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t unix_millis = 1'700'000'000'000) : millis_(unix_millis) {}
  int64_t NowUnixMillis() const override { return millis_.load(); }
  std::chrono::steady_clock::time_point SteadyNow() const override {
    return std::chrono::steady_clock::time_point(std::chrono::milliseconds(millis_.load()));
  }
  void Advance(std::chrono::milliseconds d) { millis_ += d.count(); }

 private:
  std::atomic<int64_t> millis_;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_CLOCK_H_
