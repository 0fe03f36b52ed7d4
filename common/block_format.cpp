#include "common/block_format.h"

#include <array>

#include "common/block_decode_impl.h"
#include "common/error.h"

namespace nibble {
namespace {

constexpr std::array<BlockFormatInfo, kBlockFormatCount> kInfo = {{
    {"Q5_0", 32, 22},
    {"Q5_1", 32, 24},
    {"Q2_K", 256, 84},
    {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},
    {"Q5_K", 256, 176},
    {"Q6_K", 256, 210},
    {"Q8_K", 256, 292},
    {"IQ4_NL", 32, 18},
    {"IQ4_XS", 256, 136},
    {"TQ1_0", 256, 54},
    {"TQ2_0", 256, 66},
}};

// The table above and the decoders must agree on every block's shape.
template <typename Block>
constexpr bool matches_table() {
  const BlockFormatInfo& info = kInfo[static_cast<std::size_t>(Block::kFormat)];
  return info.elements == Block::kElements && info.bytes == Block::kBytes;
}
static_assert(matches_table<Q5Block<false>>() && matches_table<Q5Block<true>>() && matches_table<Q2KBlock>() &&
              matches_table<Q3KBlock>() && matches_table<Q45KBlock<false>>() && matches_table<Q45KBlock<true>>() &&
              matches_table<Q6KBlock>() && matches_table<Q8KBlock>() && matches_table<Iq4NlBlock>() &&
              matches_table<Iq4XsBlock>() && matches_table<Tq1Block>() && matches_table<Tq2Block>());

}  // namespace

const BlockFormatInfo& block_format_info(BlockFormat format) {
  const auto index = static_cast<std::size_t>(format);
  if (index >= kInfo.size()) fail("unknown block format {}", index);
  return kInfo[index];
}

std::optional<BlockFormat> block_format_named(std::string_view name) {
  for (std::size_t i = 0; i < kInfo.size(); ++i) {
    if (kInfo[i].name == name) return static_cast<BlockFormat>(i);
  }
  return std::nullopt;
}

void decode_block(BlockFormat format, const std::byte* block, float* out) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(block);
  with_block_decoder(format, [&](auto decoder) { decltype(decoder)::decode(bytes, out); });
}

void unpack_block(BlockFormat format, const std::byte* block, std::uint8_t* codes, float* step, float* offset) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(block);
  with_block_decoder(format, [&](auto decoder) { decltype(decoder)::unpack(bytes, codes, step, offset); });
}

}  // namespace nibble
