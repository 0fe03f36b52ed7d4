#pragma once
// Structured, quiet-by-default logging: one line per event, "event key=value ...",
// written as such (text) or as one JSON object per line (json) for log pipelines.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace nibble::log {

// level: trace, debug, info, warn, error, off. format: text ("<ts> <level> event
// key=value ...") or json ({"ts", "level", "msg": event, key: value, ...}: quoted
// values are strings, bare numbers and true/false keep their type). Logs go to
// stderr so stdout stays the program's output (generated text, JSON).
void init(std::string_view level, std::string_view format = "text");
// Changes the level, keeping the format.
void set_level(std::string_view level);

// One "event key=value ..." message as the JSON object's fields after ts and
// level ("msg" and the pairs, without braces); text that is no pair goes to
// "text". Exposed for tests.
std::string event_json_fields(std::string_view message);

// Client-controlled text quoted in a log line or an error message (a request body,
// a number, a path) is cut after `max_bytes` (at a UTF-8 character boundary) and
// marked "…(N bytes)", so one request cannot write megabytes into the log.
std::string clip(std::string_view text, std::size_t max_bytes = 200);

// Untrusted text (a model file's vocabulary entry, a config value) in double
// quotes for an error message: quotes, backslashes, control characters and bytes
// that are not valid UTF-8 escaped (\n, \xNN), then clipped like clip(). Use it
// instead of fmt's "{:?}", which aborts the process (fmt 9 assertion) on a
// string ending in a truncated UTF-8 sequence.
std::string quoted(std::string_view text, std::size_t max_bytes = 200);

}  // namespace nibble::log
