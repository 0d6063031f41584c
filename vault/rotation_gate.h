// RotationGate: a shared/exclusive lock whose shared side may be released on another thread.
//
// A tokenize encrypts under a DEK version on one thread and its insert commits later on the
// store's writer thread; the merchant's DEK must not rotate in between, so the shared hold has to
// travel with the write and end on whatever thread completes it. std::shared_mutex forbids that
// (unlocking from another thread is undefined), hence this small counter-based gate.
//
// Exclusive holders are preferred: once one waits, new shared holders wait too, so a rotation is
// never starved by a steady stream of writes. The price is that a thread must never ask for a
// second shared hold while it has one (it could wait behind a rotation that waits for it).
#ifndef TOKENVAULT_VAULT_ROTATION_GATE_H_
#define TOKENVAULT_VAULT_ROTATION_GATE_H_

#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace tokenvault {

class RotationGate {
 public:
  // A shared hold: movable, released when destroyed (on any thread) or by Release().
  class Shared {
   public:
    Shared() = default;
    Shared(Shared&& other) noexcept : gate_(other.gate_) { other.gate_ = nullptr; }
    Shared& operator=(Shared&& other) noexcept {
      if (this != &other) {
        Release();
        gate_ = other.gate_;
        other.gate_ = nullptr;
      }
      return *this;
    }
    Shared(const Shared&) = delete;
    Shared& operator=(const Shared&) = delete;
    ~Shared() { Release(); }

    void Release() {
      if (gate_ != nullptr) gate_->LeaveShared();
      gate_ = nullptr;
    }
    bool held() const { return gate_ != nullptr; }

   private:
    friend class RotationGate;
    explicit Shared(RotationGate* gate) : gate_(gate) {}
    RotationGate* gate_ = nullptr;
  };

  // An exclusive hold, scoped to the thread that took it.
  class Exclusive {
   public:
    explicit Exclusive(RotationGate& gate) : gate_(gate) { gate_.EnterExclusive(); }
    ~Exclusive() { gate_.LeaveExclusive(); }
    Exclusive(const Exclusive&) = delete;
    Exclusive& operator=(const Exclusive&) = delete;

   private:
    RotationGate& gate_;
  };

  RotationGate() = default;
  RotationGate(const RotationGate&) = delete;
  RotationGate& operator=(const RotationGate&) = delete;

  // Waits while an exclusive holder holds or waits.
  Shared EnterShared() {
    std::unique_lock<std::mutex> lock(mu_);
    ++shared_waiting_;
    changed_.wait(lock, [&] { return !exclusive_ && exclusive_waiting_ == 0; });
    --shared_waiting_;
    ++shared_;
    return Shared(this);
  }

  // For tests: threads waiting for each kind of hold, and the shared holds that exist.
  size_t exclusive_waiting() const {
    std::lock_guard<std::mutex> lock(mu_);
    return exclusive_waiting_;
  }
  size_t shared_waiting() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shared_waiting_;
  }
  size_t shared_holds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shared_;
  }

 private:
  void LeaveShared() {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --shared_ == 0;
    }
    if (last) changed_.notify_all();
  }

  void EnterExclusive() {
    std::unique_lock<std::mutex> lock(mu_);
    ++exclusive_waiting_;
    changed_.wait(lock, [&] { return !exclusive_ && shared_ == 0; });
    --exclusive_waiting_;
    exclusive_ = true;
  }

  void LeaveExclusive() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      exclusive_ = false;
    }
    changed_.notify_all();
  }

  mutable std::mutex mu_;
  std::condition_variable changed_;
  size_t shared_ = 0;             // GUARDED_BY(mu_)
  size_t shared_waiting_ = 0;     // GUARDED_BY(mu_)
  size_t exclusive_waiting_ = 0;  // GUARDED_BY(mu_)
  bool exclusive_ = false;        // GUARDED_BY(mu_)
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_ROTATION_GATE_H_
