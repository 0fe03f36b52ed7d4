#pragma once
// The FP8 e4m3 linear kernel (Fp8Layout), written once over the vector traits `V`
// of the including per-ISA unit. Include after block_impl.h (it reuses
// block_accumulate); everything lives in the unit's anonymous namespace.
//
// Per output row, up to kBlockChunk weights are widened from e4m3 (V::load with
// E4M3Weights: bit manipulation, no table) and multiplied by their group's scale
// into an L1-resident buffer, then every activation row runs against that buffer,
// so a batch shares one widening. Memory traffic stays one byte per weight.
// Activations stay float32: a checkpoint's "dynamic" FP8 activation scheme is
// what its GPU kernels do, not part of the weights' meaning.
#include <algorithm>
#include <cstdint>

#include "common/fp8.h"

namespace {

using nibble::kernels::cpu::Fp8Layout;

// Widens codes [begin, end) of `code` times `scale` into out[0, end - begin).
inline void fp8_widen(const std::uint8_t* code, std::int64_t begin, std::int64_t end, float scale, float* out) {
  const auto s = V::set1(scale);
  std::int64_t k = begin;
  for (; k + V::kWidth <= end; k += V::kWidth) V::store(out + (k - begin), V::mul(V::load(code + k, E4M3Weights{}), s));
  // A group's ragged end (a partial last block): the scalar reference decoder.
  for (; k < end; ++k) out[k - begin] = nibble::e4m3_to_f32(code[k]) * scale;
}

// x: [rows][ldx] with ldx >= cols rounded up to 2 * V::kWidth, zero past cols.
void fp8_linear(const Fp8Layout& w, const float* x, std::int64_t ldx, std::int64_t rows, std::int64_t n_begin,
                std::int64_t n_end, const float* bias, float* y, std::int64_t ldy, float* scratch) {
  alignas(64) float decoded[kBlockChunk];
  constexpr std::int64_t kStep = 2 * V::kWidth;  // block_accumulate's unit
  float* acc = scratch;
  const std::int64_t acc_floats = rows * 2 * V::kWidth;
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::uint8_t* code = w.codes.as<std::uint8_t>() + n * w.cols;
    const float* scale = w.row_scales(n);
    std::fill(acc, acc + acc_floats, 0.0f);
    std::int64_t g = 0;
    for (std::int64_t c0 = 0; c0 < w.cols; c0 += kBlockChunk) {
      const std::int64_t c1 = std::min(w.cols, c0 + kBlockChunk);
      prefetch_ahead(code + c0, static_cast<std::size_t>(c1 - c0));
      // The chunk's groups, each widened with its own scale.
      for (std::int64_t k = c0; k < c1;) {
        while (w.group_begin[static_cast<std::size_t>(g) + 1] <= k) ++g;
        const std::int64_t end = std::min(c1, w.group_begin[static_cast<std::size_t>(g) + 1]);
        fp8_widen(code, k, end, scale[g], decoded + (k - c0));
        k = end;
      }
      const std::int64_t len = (c1 - c0 + kStep - 1) / kStep * kStep;
      std::fill(decoded + (c1 - c0), decoded + len, 0.0f);
      for (std::int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
        const float* xr = x + r0 * ldx + c0;
        float* ar = acc + r0 * 2 * V::kWidth;
        switch (std::min<std::int64_t>(kBlockRows, rows - r0)) {
          case 4: block_accumulate<4>(decoded, len, xr, ldx, ar); break;
          case 3: block_accumulate<3>(decoded, len, xr, ldx, ar); break;
          case 2: block_accumulate<2>(decoded, len, xr, ldx, ar); break;
          default: block_accumulate<1>(decoded, len, xr, ldx, ar); break;
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

}  // namespace
