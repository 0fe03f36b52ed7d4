#pragma once
// Whole numbers that arrive as doubles (JSON's 4.0, 1e3) as int64. Casting a
// double outside int64's range is undefined behaviour, and JSON parsers turn
// integers too long for 64 bits (333…334) into doubles, so every such cast in
// nibble goes through this check.
#include <cmath>
#include <cstdint>
#include <optional>

namespace nibble {

// `d` as int64 when it is a whole number in [-2^63, 2^63); nullopt for
// fractions, NaN, infinities and values out of range.
inline std::optional<std::int64_t> whole_int64(double d) {
  constexpr double kBound = 9223372036854775808.0;  // 2^63, exact in a double
  if (!(d >= -kBound && d < kBound) || std::trunc(d) != d) return std::nullopt;
  return static_cast<std::int64_t>(d);
}

}  // namespace nibble
