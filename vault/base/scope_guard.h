// Runs a callback when the scope ends unless Dismiss()ed: wipes outputs and undoes partial work
// on error paths (Tink's absl::MakeCleanup, leveldb's explicit cleanup).
#ifndef TOKENVAULT_VAULT_BASE_SCOPE_GUARD_H_
#define TOKENVAULT_VAULT_BASE_SCOPE_GUARD_H_

#include <utility>

namespace tokenvault {

template <typename F>
class [[nodiscard]] ScopeGuard {
 public:
  explicit ScopeGuard(F f) : f_(std::move(f)) {}
  ~ScopeGuard() {
    if (armed_) f_();
  }
  ScopeGuard(const ScopeGuard&) = delete;
  ScopeGuard& operator=(const ScopeGuard&) = delete;
  void Dismiss() { armed_ = false; }

 private:
  F f_;
  bool armed_ = true;
};

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_SCOPE_GUARD_H_
