// InFlight: counts operations started and not yet completed, so that an owner can wait for all
// of them before it goes away (an asynchronous write's completion still refers to its owner).
#ifndef TOKENVAULT_VAULT_BASE_IN_FLIGHT_H_
#define TOKENVAULT_VAULT_BASE_IN_FLIGHT_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>

namespace tokenvault {

class InFlight {
 public:
  // Held by one operation; the count drops when the last copy is destroyed (on any thread).
  using Ticket = std::shared_ptr<void>;

  InFlight() = default;
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  ~InFlight() { WaitIdle(); }

  Ticket Enter() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++count_;
    }
    // No object behind the ticket: only its deleter matters.
    return Ticket(static_cast<void*>(this), [](void* self) { static_cast<InFlight*>(self)->Leave(); });
  }

  void WaitIdle() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [&] { return count_ == 0; });
  }

  // False if operations are still in flight after 'limit'.
  template <typename Rep, typename Period>
  bool WaitIdleFor(std::chrono::duration<Rep, Period> limit) {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_.wait_for(lock, limit, [&] { return count_ == 0; });
  }

  size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }

 private:
  void Leave() {
    std::lock_guard<std::mutex> lock(mu_);
    // Notify under the lock: the waiter may destroy this object as soon as it sees zero.
    if (--count_ == 0) idle_.notify_all();
  }

  mutable std::mutex mu_;
  std::condition_variable idle_;
  size_t count_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_IN_FLIGHT_H_
