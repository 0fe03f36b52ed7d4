#pragma once
// Structured, quiet-by-default logging: one line per event, "event key=value ...".
#include <spdlog/spdlog.h>

#include <string_view>

namespace nibble::log {

// level: trace, debug, info, warn, error, off. Logs go to stderr so stdout stays
// the program's output (generated text, JSON).
void init(std::string_view level);

}  // namespace nibble::log
