#include "cli/json_log.h"

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "vault/base/clock.h"

namespace tokenvault::cli {
namespace {

// key=value words, keys [a-z_]+, values without spaces; false if the message is anything else.
bool ParsePairs(std::string_view text, nlohmann::json& out) {
  nlohmann::json fields = nlohmann::json::object();
  size_t i = 0;
  while (i < text.size()) {
    const size_t end = std::min(text.find(' ', i), text.size());
    const std::string_view word = text.substr(i, end - i);
    const size_t eq = word.find('=');
    if (eq == 0 || eq == std::string_view::npos) return false;
    const std::string key(word.substr(0, eq));
    if (key.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos) return false;
    if (key == "time" || key == "level" || key == "msg") return false;
    const std::string value(word.substr(eq + 1));
    // Only fields that are numbers by nature become numbers: a principal named "007" stays a
    // string, so a field never changes type between lines.
    char* num_end = nullptr;
    const long long n = std::strtoll(value.c_str(), &num_end, 10);
    const bool numeric_field = key == "status" || key == "latency_us";
    if (numeric_field && !value.empty() && num_end != nullptr && *num_end == '\0' && value.size() < 19) {
      fields[key] = n;
    } else {
      fields[key] = value;
    }
    i = end + 1;
  }
  for (auto& [k, v] : fields.items()) out[k] = v;
  return true;
}

}  // namespace

void JsonLineFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count();
  const std::string_view text(msg.payload.data(), msg.payload.size());
  nlohmann::json line = {{"time", Rfc3339(ms)},
                         {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                                               spdlog::level::to_string_view(msg.level).size())},
                         {"msg", std::string(text)}};
  ParsePairs(text, line);
  const std::string out = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  dest.append(out.data(), out.data() + out.size());
}

std::unique_ptr<spdlog::formatter> JsonLineFormatter::clone() const {
  return std::make_unique<JsonLineFormatter>();
}

}  // namespace tokenvault::cli
