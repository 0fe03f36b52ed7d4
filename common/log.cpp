#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>

#include "common/error.h"

namespace nibble::log {

namespace {

std::size_t utf8_sequence(std::string_view text, std::size_t i);

// `text` as a JSON string literal; bytes that are not UTF-8 become U+FFFD, so a
// line is always valid JSON whatever a client or a model file put into it.
void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\u{:04x}", c);
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (const std::size_t length = utf8_sequence(text, i); length > 0) {
      out.append(text.substr(i, length));
      i += length;
      continue;
    } else {
      out += "\\ufffd";
    }
    ++i;
  }
  out += '"';
}

// A JSON number as JSON writes it (no leading zeros, no inf/nan).
bool is_json_number(std::string_view v) {
  std::size_t i = 0;
  const auto digits = [&] {
    const std::size_t from = i;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
    return i - from;
  };
  if (i < v.size() && v[i] == '-') ++i;
  if (i < v.size() && v[i] == '0') {
    ++i;
  } else if (digits() == 0) {
    return false;
  }
  if (i < v.size() && v[i] == '.') {
    ++i;
    if (digits() == 0) return false;
  }
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == v.size();
}

bool is_key(std::string_view key) {
  if (key.empty() || !(std::isalpha(static_cast<unsigned char>(key[0])) || key[0] == '_')) return false;
  for (const char c : key) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

// Reads a value quoted by log::quoted (or by hand: "..."), undoing its escapes.
// Returns the position after the closing quote, or npos when it is not closed.
std::size_t read_quoted(std::string_view text, std::size_t i, std::string& value) {
  for (++i; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') return i + 1;
    if (c != '\\' || i + 1 == text.size()) {
      value += c;
      continue;
    }
    const char e = text[++i];
    if (e == 'n') {
      value += '\n';
    } else if (e == 't') {
      value += '\t';
    } else if (e == 'r') {
      value += '\r';
    } else if (e == 'x' && i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      value += static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      value += e;
    }
  }
  return std::string_view::npos;
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto time = msg.time.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(time);
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(time - seconds).count();
    const std::time_t t = seconds.count();
    std::tm utc{};
    gmtime_r(&t, &utc);
    std::string out = fmt::format("{{\"ts\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"level\":", utc.tm_year + 1900,
                                  utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
    const auto level = spdlog::level::to_string_view(msg.level);
    append_json_string(out, std::string_view(level.data(), level.size()));
    out += ',';
    out += event_json_fields(std::string_view(msg.payload.data(), msg.payload.size()));
    out += "}\n";
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

std::string event_json_fields(std::string_view message) {
  std::string out = "\"msg\":";
  std::string text;  // whatever is not a key=value pair
  std::size_t i = 0;
  const auto skip_spaces = [&] {
    while (i < message.size() && message[i] == ' ') ++i;
  };
  const std::size_t event_end = std::min(message.find(' '), message.size());
  const std::string_view event = message.substr(0, event_end);
  if (event.find('=') == std::string_view::npos) {
    append_json_string(out, event);
    i = event_end;
  } else {
    append_json_string(out, "");
  }
  while (true) {
    skip_spaces();
    if (i >= message.size()) break;
    const std::size_t token_end = std::min(message.find(' ', i), message.size());
    const std::size_t equals = message.find('=', i);
    const std::string_view key =
        equals < token_end ? message.substr(i, equals - i) : std::string_view();
    if (!is_key(key)) {
      // Not a pair: kept, in order, as free text.
      if (!text.empty()) text += ' ';
      text += message.substr(i, token_end - i);
      i = token_end;
      continue;
    }
    std::size_t next = equals + 1;
    out += ',';
    append_json_string(out, key);
    out += ':';
    if (next < message.size() && message[next] == '"') {
      std::string value;
      // Unclosed: log::quoted clipped it ("…(N bytes)" after the cut), so it runs to the end.
      const std::size_t after = read_quoted(message, next, value);
      append_json_string(out, value);
      i = std::min(after, message.size());
      continue;
    }
    const std::string_view value = message.substr(next, token_end - next);
    if (is_json_number(value) || value == "true" || value == "false") {
      out += value;
    } else {
      append_json_string(out, value);
    }
    i = token_end;
  }
  if (!text.empty()) {
    out += ",\"text\":";
    append_json_string(out, text);
  }
  return out;
}

namespace {

// spdlog builds its registry (and the default logger) lazily, inside its own
// shared library, on the first call to log. Built by whichever server or pool
// thread logs first, it is published to the others through a static guard
// that library reads without instrumentation, so ThreadSanitizer reports every
// later use as a race (CI did). Building it during static initialization, on
// the main thread before any thread exists, orders it before all of them.
[[maybe_unused]] const spdlog::logger* const kDefaultLoggerBeforeAnyThread = spdlog::default_logger_raw();

spdlog::level::level_enum parse_level(std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") fail("unknown log level '{}'", level);
  return parsed;
}

}  // namespace

void init(std::string_view level, std::string_view format) {
  const auto parsed = parse_level(level);
  if (format != "text" && format != "json") fail("unknown log format '{}' (text or json)", format);
  auto logger = spdlog::get("nibble");
  if (!logger) logger = spdlog::stderr_color_mt("nibble");
  if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  }
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

void set_level(std::string_view level) { spdlog::default_logger()->set_level(parse_level(level)); }

std::string clip(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  std::size_t end = max_bytes;
  // Back off continuation bytes so the cut never splits a character.
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return fmt::format("{}…({} bytes)", text.substr(0, end), text.size());
}

namespace {

// Length of the valid UTF-8 sequence starting at text[i], or 0.
std::size_t utf8_sequence(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length = 0;
  std::uint32_t cp = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, cp = lead & 0x1Fu;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, cp = lead & 0x0Fu;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, cp = lead & 0x07u;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3Fu);
  }
  const bool overlong = (length == 3 && cp < 0x800) || (length == 4 && cp < 0x10000);
  if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

}  // namespace

std::string quoted(std::string_view text, std::size_t max_bytes) {
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else if (const std::size_t length = c >= 0x80 ? utf8_sequence(text, i) : 0; length > 0) {
      out.append(text.substr(i, length));
      i += length;
      continue;
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
    ++i;
  }
  out += '"';
  return clip(out, max_bytes);
}

}  // namespace nibble::log
