// Status and StatusOr<T>: the one error-handling approach of tokenvault.
//
// Every fallible function returns a Status or a StatusOr<T>; exceptions never cross a module
// boundary. A Status carries three things:
//   - a code, a subset of the canonical abseil codes, which callers branch on and the HTTP layer
//     maps to a status line;
//   - a reason, a short stable machine-readable word ("hsm_login_refused", "integrity_failure")
//     that tests and API error bodies can rely on;
//   - a message for humans and logs. Messages never contain a secret or a value.
#ifndef TOKENVAULT_VAULT_BASE_STATUS_H_
#define TOKENVAULT_VAULT_BASE_STATUS_H_

#include <cassert>
#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace tokenvault {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // the caller's input is wrong; retrying it unchanged will fail again
  kUnauthenticated,     // credentials (API key, HSM PIN) missing or refused
  kPermissionDenied,    // authenticated, but not allowed
  kNotFound,            // no such merchant, token or key
  kAlreadyExists,       // creating something that exists
  kFailedPrecondition,  // the system is not in a state where the operation can run
  kResourceExhausted,   // a limit was reached
  kUnavailable,         // a dependency (HSM, disk) is down; retryable, nothing was changed
  kDataLoss,            // stored data failed an integrity check: never return a value
  kInternal,            // a broken invariant or an unexpected library failure
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  // An OK status.
  Status() = default;
  Status(StatusCode code, std::string reason, std::string message)
      : code_(code), reason_(std::move(reason)), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  // Stable machine-readable word; empty for OK.
  const std::string& reason() const { return reason_; }
  const std::string& message() const { return message_; }
  // "UNAVAILABLE (hsm_token_not_found): no token labelled ..." - safe to log.
  std::string ToString() const;

  // Retryable failures are those of a dependency, not of the request.
  bool IsRetryable() const { return code_ == StatusCode::kUnavailable; }

  // Used in the rare places where an error is deliberately dropped (best-effort cleanup).
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string reason_;
  std::string message_;
};

inline Status InvalidArgumentError(std::string reason, std::string message) {
  return Status(StatusCode::kInvalidArgument, std::move(reason), std::move(message));
}
inline Status UnauthenticatedError(std::string reason, std::string message) {
  return Status(StatusCode::kUnauthenticated, std::move(reason), std::move(message));
}
inline Status PermissionDeniedError(std::string reason, std::string message) {
  return Status(StatusCode::kPermissionDenied, std::move(reason), std::move(message));
}
inline Status NotFoundError(std::string reason, std::string message) {
  return Status(StatusCode::kNotFound, std::move(reason), std::move(message));
}
inline Status AlreadyExistsError(std::string reason, std::string message) {
  return Status(StatusCode::kAlreadyExists, std::move(reason), std::move(message));
}
inline Status FailedPreconditionError(std::string reason, std::string message) {
  return Status(StatusCode::kFailedPrecondition, std::move(reason), std::move(message));
}
inline Status ResourceExhaustedError(std::string reason, std::string message) {
  return Status(StatusCode::kResourceExhausted, std::move(reason), std::move(message));
}
inline Status UnavailableError(std::string reason, std::string message) {
  return Status(StatusCode::kUnavailable, std::move(reason), std::move(message));
}
inline Status DataLossError(std::string reason, std::string message) {
  return Status(StatusCode::kDataLoss, std::move(reason), std::move(message));
}
inline Status InternalError(std::string reason, std::string message) {
  return Status(StatusCode::kInternal, std::move(reason), std::move(message));
}

// StatusOr<T> holds either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  static_assert(!std::is_same_v<std::decay_t<T>, Status>, "StatusOr<Status> is meaningless");

  // REQUIRES: !status.ok(). An OK status without a value is a programming error and aborts.
  StatusOr(Status status) : rep_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(rep_).ok()) std::abort();
  }
  StatusOr(T value) : rep_(std::move(value)) {}  // NOLINT: implicit by design

  StatusOr(StatusOr&&) = default;
  StatusOr& operator=(StatusOr&&) = default;
  StatusOr(const StatusOr&) = default;
  StatusOr& operator=(const StatusOr&) = default;

  bool ok() const { return std::holds_alternative<T>(rep_); }
  // OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(rep_); }

  // REQUIRES: ok(). Accessing the value of an error aborts: it is never a silent default.
  T& value() & { return Checked(); }
  const T& value() const& { return const_cast<StatusOr*>(this)->Checked(); }
  T&& value() && { return std::move(Checked()); }
  T& operator*() & { return Checked(); }
  const T& operator*() const& { return const_cast<StatusOr*>(this)->Checked(); }
  T&& operator*() && { return std::move(Checked()); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &const_cast<StatusOr*>(this)->Checked(); }

 private:
  T& Checked() {
    if (!ok()) std::abort();
    return std::get<T>(rep_);
  }
  std::variant<Status, T> rep_;
};

}  // namespace tokenvault

#define TV_STATUS_CONCAT_INNER_(a, b) a##b
#define TV_STATUS_CONCAT_(a, b) TV_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when 'expr' (a Status) is not OK.
#define TV_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    ::tokenvault::Status tv_status_ = (expr);             \
    if (!tv_status_.ok()) return tv_status_;              \
  } while (false)

// 'lhs' = value of 'expr' (a StatusOr), or return its error from the enclosing function.
#define TV_ASSIGN_OR_RETURN(lhs, expr) \
  TV_ASSIGN_OR_RETURN_IMPL_(TV_STATUS_CONCAT_(tv_statusor_, __LINE__), lhs, expr)
#define TV_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

#endif  // TOKENVAULT_VAULT_BASE_STATUS_H_
