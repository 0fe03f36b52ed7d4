#include "scheduler/byte_size.h"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>

#include "common/error.h"

namespace nibble::scheduler {
namespace {

struct Unit {
  std::string_view name;
  double bytes;
};

constexpr std::array kUnits{
    Unit{"", 1.0},       Unit{"b", 1.0},
    Unit{"kb", 1e3},     Unit{"mb", 1e6},
    Unit{"gb", 1e9},     Unit{"tb", 1e12},
    Unit{"kib", 0x1p10}, Unit{"mib", 0x1p20},
    Unit{"gib", 0x1p30}, Unit{"tib", 0x1p40},
};

std::string lowercase_trimmed(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (!std::isspace(byte)) out += static_cast<char>(std::tolower(byte));
  }
  return out;
}

}  // namespace

std::uint64_t parse_byte_size(std::string_view text) {
  const std::string compact = lowercase_trimmed(text);
  double number = 0;
  const auto [end, error] = std::from_chars(compact.data(), compact.data() + compact.size(), number);
  if (error != std::errc() || end == compact.data()) {
    fail("'{}' is not a memory size (expected a number and a unit, e.g. 80GB or 24GiB)", text);
  }
  const std::string_view unit(end, static_cast<std::size_t>(compact.data() + compact.size() - end));
  for (const auto& known : kUnits) {
    if (known.name != unit) continue;
    const double bytes = std::round(number * known.bytes);
    // 2^63 keeps every later sum of sizes well inside 64 bits.
    if (!std::isfinite(bytes) || bytes < 0 || bytes >= 0x1p63) fail("memory size '{}' is out of range", text);
    return static_cast<std::uint64_t>(bytes);
  }
  fail("memory size '{}' has an unknown unit '{}' (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)", text, unit);
}

std::string format_bytes(double bytes) {
  constexpr std::array units{"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  std::size_t unit = 0;
  while (std::abs(bytes) >= 1024 && unit + 1 < units.size()) {
    bytes /= 1024;
    ++unit;
  }
  return fmt::format("{:.2f} {}", bytes, units[unit]);
}

}  // namespace nibble::scheduler
