#pragma once
// How long compression and evaluation steps report how far they are. The CLI draws
// a bar with an ETA from these; the library only counts.
#include <cstdint>
#include <functional>
#include <string_view>

namespace nibble::quant {

// (step, units done, units in all): called after each unit ("layer 3 of 30").
using Progress = std::function<void(std::string_view step, std::int64_t done, std::int64_t total)>;

}  // namespace nibble::quant
