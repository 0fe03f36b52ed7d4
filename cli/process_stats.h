#pragma once
#include <cstdint>

namespace nibble::cli {

// Peak resident set size of this process so far, in bytes.
std::uint64_t peak_rss_bytes();

}  // namespace nibble::cli
