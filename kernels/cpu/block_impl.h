#pragma once
// The block-quantized linear kernel (BlockLayout), written once over the vector
// traits `V` of the including per-ISA unit and over the block decoders of
// common/block_decode_impl.h, which that unit compiles with its own flags. Include
// after packed_impl.h; everything lives in the unit's anonymous namespace.
//
// Per output row, up to kBlockChunk weights of its blocks are decoded into an
// L1-resident buffer (each block's scales once), then every activation row runs
// against that buffer: batched rows share one decode, as the packed kernels share
// an unpacked tile.
#include <algorithm>
#include <cstdint>

#include "common/block_decode_impl.h"

namespace {

using nibble::kernels::cpu::BlockLayout;

constexpr std::int64_t kBlockChunk = 1024;  // decoded floats at a time: 4 KiB
constexpr int kBlockRows = 4;                 // activation rows sharing each loaded weight vector
static_assert(32 % (2 * V::kWidth) == 0, "a block's 32-weight runs must be whole pairs of vectors");

// Rows x `len` decoded weights into acc ([rows][2][kWidth]): two chains per row so
// a lone decode row is not bound by one FMA chain's latency.
template <int Rows>
inline void block_accumulate(const float* w, std::int64_t len, const float* x, std::int64_t ldx, float* acc) {
  typename V::reg a[Rows][2];
  for (int r = 0; r < Rows; ++r) {
    a[r][0] = V::load(acc + (2 * r) * V::kWidth);
    a[r][1] = V::load(acc + (2 * r + 1) * V::kWidth);
  }
  for (std::int64_t i = 0; i < len; i += 2 * V::kWidth) {
    const auto w0 = V::load(w + i);
    const auto w1 = V::load(w + i + V::kWidth);
    for (int r = 0; r < Rows; ++r) {
      a[r][0] = V::fma(V::load(x + r * ldx + i), w0, a[r][0]);
      a[r][1] = V::fma(V::load(x + r * ldx + i + V::kWidth), w1, a[r][1]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    V::store(acc + (2 * r) * V::kWidth, a[r][0]);
    V::store(acc + (2 * r + 1) * V::kWidth, a[r][1]);
  }
}

template <typename Block>
void block_linear(const BlockLayout& w, const float* x, std::int64_t rows, std::int64_t n_begin, std::int64_t n_end,
                  const float* bias, float* y, std::int64_t ldy, float* scratch) {
  constexpr std::int64_t kChunkBlocks = std::max<std::int64_t>(1, kBlockChunk / Block::kElements);
  alignas(64) float decoded[kChunkBlocks * Block::kElements];
  const std::int64_t blocks_per_row = w.cols / Block::kElements;
  float* acc = scratch;
  const std::int64_t acc_floats = rows * 2 * V::kWidth;
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::uint8_t* row = w.bytes.as<std::uint8_t>() + static_cast<std::size_t>(n) * w.row_bytes;
    std::fill(acc, acc + acc_floats, 0.0f);
    for (std::int64_t b0 = 0; b0 < blocks_per_row; b0 += kChunkBlocks) {
      const std::int64_t b1 = std::min(blocks_per_row, b0 + kChunkBlocks);
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::uint8_t* block = row + b * Block::kBytes;
        prefetch_ahead(block, Block::kBytes);
        Block::decode(block, decoded + (b - b0) * Block::kElements);
      }
      const std::int64_t len = (b1 - b0) * Block::kElements;
      const float* xc = x + b0 * Block::kElements;
      for (std::int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
        const float* xr = xc + r0 * w.cols;
        float* ar = acc + r0 * 2 * V::kWidth;
        switch (std::min<std::int64_t>(kBlockRows, rows - r0)) {
          case 4: block_accumulate<4>(decoded, len, xr, w.cols, ar); break;
          case 3: block_accumulate<3>(decoded, len, xr, w.cols, ar); break;
          case 2: block_accumulate<2>(decoded, len, xr, w.cols, ar); break;
          default: block_accumulate<1>(decoded, len, xr, w.cols, ar); break;
        }
      }
    }
    const float b = bias != nullptr ? bias[n] : 0.0f;
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto sum = V::add(V::load(acc + (2 * r) * V::kWidth), V::load(acc + (2 * r + 1) * V::kWidth));
      y[r * ldy + n] = V::sum(sum) + b;
    }
  }
}

void fill_block_kernels(nibble::kernels::cpu::LinearKernelTable& table) {
  for (int f = 0; f < nibble::kBlockFormatCount; ++f) {
    with_block_decoder(static_cast<nibble::BlockFormat>(f),
                       [&](auto decoder) { table.block[f] = block_linear<decltype(decoder)>; });
  }
}

}  // namespace
