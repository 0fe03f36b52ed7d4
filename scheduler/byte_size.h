#pragma once
// Memory sizes as people write them on a command line ("80GB", "24 GiB", "512MiB")
// and as the planner prints them. GB is 10^9 bytes (what GPU vendors sell), GiB 2^30.
#include <cstdint>
#include <string>
#include <string_view>

namespace nibble::scheduler {

// A number (fractions allowed) and an optional unit: B, KB, MB, GB, TB (powers of
// 1000) or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive; no unit means
// bytes. Throws nibble::Error naming the text for anything else, negatives included.
std::uint64_t parse_byte_size(std::string_view text);

// "325.96 GiB": binary units, as `nibble inspect` and nvidia-smi (MiB) print them.
std::string format_bytes(double bytes);

}  // namespace nibble::scheduler
