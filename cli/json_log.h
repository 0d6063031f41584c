// JSON-lines log output (setting log_format: "json"): one object per line with time, level and
// msg; a message made of key=value words (the per-request line: request_id, principal, route,
// status, latency_us) also gets each pair as a field, numbers as numbers, so a log pipeline can
// index them without parsing text. Messages never hold a value, key or PIN (they are written
// that way); this only changes their shape.
#ifndef TOKENVAULT_CLI_JSON_LOG_H_
#define TOKENVAULT_CLI_JSON_LOG_H_

#include <spdlog/formatter.h>

#include <memory>

namespace tokenvault::cli {

class JsonLineFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

}  // namespace tokenvault::cli

#endif  // TOKENVAULT_CLI_JSON_LOG_H_
