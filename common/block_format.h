#pragma once
// Block-quantized weight encodings that backends keep packed, exactly as GGUF
// stores them: a row is a run of fixed-size blocks, each holding its own scales
// (two-level for the K-quants: an fp16 super-block scale and small integer
// sub-block scales), codes, and for some a non-linear code book. Their bit layouts
// are written down in docs/formats.md. The loader maps file types onto these; the
// kernels decode them and never see a file.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nibble {

enum class BlockFormat : std::uint8_t { Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0 };
constexpr int kBlockFormatCount = 12;

struct BlockFormatInfo {
  std::string_view name;
  int elements;  // weights per block (32 or 256)
  int bytes;     // bytes per block
};

const BlockFormatInfo& block_format_info(BlockFormat format);
std::optional<BlockFormat> block_format_named(std::string_view name);

// Decodes one block of `format` into block_format_info(format).elements floats.
// The reference every kernel is checked against; the loader uses it too for
// tensors it widens (embeddings).
void decode_block(BlockFormat format, const std::byte* block, float* out);

// The integer view of one block that int8-activation kernels multiply: elements
// unsigned codes, and per run of 4 elements a step and an offset, with
// weight = step * code - offset (common/block_decode_impl.h says why).
void unpack_block(BlockFormat format, const std::byte* block, std::uint8_t* codes, float* step, float* offset);

}  // namespace nibble
