#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/error.h"

namespace nibble::log {

void init(std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") fail("unknown log level '{}'", level);
  auto logger = spdlog::get("nibble");
  if (!logger) logger = spdlog::stderr_color_mt("nibble");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

std::string clip(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  std::size_t end = max_bytes;
  // Back off continuation bytes so the cut never splits a character.
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return fmt::format("{}…({} bytes)", text.substr(0, end), text.size());
}

}  // namespace nibble::log
