#pragma once
// GGUF K-quants (Q4_K, Q5_K, Q6_K), and Q5_0 / Q5_1 on the same machinery, in the
// CUDA tile layout: where each code's bits sit and how a weight is computed from
// them, written once for the host (repack, its decoder, the CPU tests) and the
// device (the GEMM, dequantize_rows).
//
// Why not Q4_1-style fp16 (scale, minimum) records: a sub-block's scale d * sc is an
// fp16 times a 6-bit integer, up to 17 significant bits where fp16 has 11, so most
// records would be rounded (tests/cuda/kquant_layout_test.cpp measures how often and
// by how much). Instead the super-block scales stay as the file has them and each
// weight is computed in fp32 exactly as common/block_decode_impl.h computes it:
//   Q4_K, Q5_K: (d * sc) * q - dmin * m     d * sc * q needs <= 22 bits: exact
//   Q6_K:       (d * sc) * (q - 32)         <= 23 bits: exact
//   Q5_0:       d * (q - 16)                <= 16 bits: exact
//   Q5_1:       d * q + m                   d * q exact; the add rounds
// so the fp32 value is the CPU decoder's bit for bit, and the mma multiplies that
// float rounded once to fp16 (nearest even), the one rounding fp16 tensor cores need.
//
// Per 16-row tile and 64-column chunk, one blob of u32 words (copied verbatim to
// shared memory like the other formats):
//   words 0..127   the low 4 bits of every code, exactly the Dense4 blob
//                  (dense_word_index, nibble_shift: fragment_layout.h)
//   Q5K, Q50, Q51 128 + lane bit 8 t + v: bit 4 of value v of tile t of that lane
//   Q6K 128 + 2 lane + t / 2 bits 2 (8 (t % 2) + v) .. +1: bits 4, 5 of value v of tile t
// Records, [outer][n_pad] like the scale records of the other formats:
//   scales     [super-block][n_pad]  fp16 d | fp16 dmin << 16 (Q6K: dmin 0); the
//              super-block is the layout's "group" (256 columns = 16 tiles)
//              Q50, Q51: [block][n_pad] fp16 d | fp16 m << 16 (Q50: m 0), a group
//              of 32 columns (2 tiles), staged through the usual slots
//   sub_scales (K-quants only, kquant_has_sub_scales):
//              [chunk][n_pad]        4 bytes for the chunk's 64 columns:
//              Q4K, Q5K: sc, m of the chunk's first 32-column sub-block, then sc, m
//              of the second (6-bit values, one per byte)
//              Q6K: byte t = the int8 scale of tile t (a 16-column sub-block)
// Bits per weight: 4 / 5 / 6 + 0.125 (scales) + 0.5 (sub_scales), against the
// file's 4.5 / 5.5 / 6.5625: at most 3% more than the file; Q5_0 / Q5_1: 5 + 1
// against 5.5 / 6 (9% / 0% more).
#include <bit>
#include <cstdint>

#include "common/half.h"
#include "kernels/cuda/fragment_layout.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace nibble::kernels::cuda::layout {

inline constexpr int kSuperBlockK = 256;
inline constexpr int kChunksPerSuperBlock = kSuperBlockK / kChunkK;  // 4
static_assert(kSuperBlockK % kChunkK == 0, "a chunk never straddles two super-blocks");

// Lane word w (0..words_per_lane - 1) of a K-quant blob: 0..3 the nibbles of tiles
// 0..3 (Dense4's positions), 4.. the high-bit planes.
NIBBLE_HD constexpr int kquant_word_index(QuantFormat format, int lane, int w) {
  return w < 4 ? dense_word_index(lane, w)
               : 4 * kWarpSize + (format == QuantFormat::Q6K ? 2 * lane + (w - 4) : lane);
}
// The lane word holding the high bits of tile t, and the bit offset of value v there.
NIBBLE_HD constexpr int kquant_high_word(QuantFormat format, int t) {
  return 4 + (format == QuantFormat::Q6K ? t >> 1 : 0);
}
NIBBLE_HD constexpr int kquant_high_shift(QuantFormat format, int t, int v) {
  return format == QuantFormat::Q6K ? 2 * (8 * (t & 1) + v) : 8 * t + v;
}

// The code (0..15, 0..31 or 0..63) of value v of tile t, from one lane's words.
NIBBLE_HD constexpr std::uint32_t kquant_code(QuantFormat format, const std::uint32_t* words, int t, int v) {
  std::uint32_t q = (words[t] >> nibble_shift(v)) & 0xfu;
  const int high_bits = kquant_high_bits(format);
  if (high_bits > 0) {
    const std::uint32_t mask = (1u << high_bits) - 1u;
    q |= ((words[kquant_high_word(format, t)] >> kquant_high_shift(format, t, v)) & mask) << 4;
  }
  return q;
}

NIBBLE_HD float kquant_half_to_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
#else
  return nibble::f16_to_f32(static_cast<std::uint16_t>(bits & 0xffffu));
#endif
}

// Bits as a float, on either side.
NIBBLE_HD float kquant_bits_to_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}

// 2^23 as a float: OR-ing a small code into its mantissa gives 2^23 + q exactly, so
// one float subtraction of (2^23 + offset) yields q - offset exactly, with two
// full-rate instructions where an int-to-float conversion runs at 1/8 of the rate
// (sm_80/sm_90).
inline constexpr std::uint32_t kF32_2p23 = 0x4b000000u;

// What one row needs to compute the weights of one tile: value = scale * (q - offset) + neg_min.
struct KquantRow {
  float scale;    // d * sc
  float neg_min;  // -(dmin * m); Q5_1: m; -0.0 for Q6_K, Q5_0, so that the sum is the product bit for bit
  float magic;    // 2^23 + offset: offset 32 for Q6_K, 16 for Q5_0, else 0
};

NIBBLE_HD KquantRow kquant_row(QuantFormat format, std::uint32_t super_record, std::uint32_t sub_record, int t) {
  const float d = kquant_half_to_float(super_record);
  KquantRow row{};
  if (format == QuantFormat::Q50 || format == QuantFormat::Q51) {
    row.scale = d;
    row.neg_min = format == QuantFormat::Q51 ? kquant_half_to_float(super_record >> 16) : -0.0f;
    row.magic = format == QuantFormat::Q50 ? 8388624.0f : 8388608.0f;
  } else if (format == QuantFormat::Q6K) {
    // The int8 scale: its byte with the sign bit flipped is sc + 128, then the 2^23 trick.
    const std::uint32_t biased = ((sub_record >> (8 * t)) & 0xffu) ^ 0x80u;
    row.scale = d * (kquant_bits_to_float(kF32_2p23 | biased) - 8388736.0f);
    row.neg_min = -0.0f;
    row.magic = 8388640.0f;
  } else {
    const std::uint32_t pair = sub_record >> (16 * (t >> 1));  // sub-block t / 2 of the chunk
    const float dmin = kquant_half_to_float(super_record >> 16);
    row.scale = d * (kquant_bits_to_float(kF32_2p23 | (pair & 63u)) - 8388608.0f);
    row.neg_min = -(dmin * (kquant_bits_to_float(kF32_2p23 | ((pair >> 8) & 63u)) - 8388608.0f));
    row.magic = 8388608.0f;
  }
  return row;
}

// The fp32 weight: scale * (q - offset) is exact (see the top), so the add rounds
// once whether or not the compiler fuses it, as the CPU decoder's subtraction does.
// x + (-0.0) is x for every x, signed zeros included, which keeps Q6_K's product as is.
NIBBLE_HD float kquant_value(const KquantRow& row, std::uint32_t q) {
  const float code = kquant_bits_to_float(kF32_2p23 | q) - row.magic;  // q - offset, exact (q < 64)
  return row.scale * code + row.neg_min;
}

// The 8 weights of one lane's A fragment of tile t (value v = 2 register + half,
// fragment_layout.h: registers 0 and 2 are row gid, `lo`; 1 and 3 row gid + 8, `hi`):
// what the GEMM rounds to fp16 pairs right before the mma.
template <QuantFormat F>
NIBBLE_HD void kquant_fragment(const std::uint32_t (&words)[words_per_lane(F)], int t, const KquantRow& lo,
                               const KquantRow& hi, float (&values)[8]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int v = 0; v < 8; ++v) values[v] = kquant_value(((v >> 1) & 1) != 0 ? hi : lo, kquant_code(F, words, t, v));
}

// The sub-scale record of a chunk: Q4K/Q5K from its two sub-blocks' (sc, m), Q6K
// from its four int8 scales.
NIBBLE_HD constexpr std::uint32_t kquant_sub_record_sm(std::uint32_t sc0, std::uint32_t m0, std::uint32_t sc1,
                                                       std::uint32_t m1) {
  return (sc0 & 63u) | ((m0 & 63u) << 8) | ((sc1 & 63u) << 16) | ((m1 & 63u) << 24);
}
NIBBLE_HD constexpr std::uint32_t kquant_sub_record_i8(std::int8_t s0, std::int8_t s1, std::int8_t s2, std::int8_t s3) {
  return static_cast<std::uint32_t>(static_cast<std::uint8_t>(s0)) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(s1)) << 8) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(s2)) << 16) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(s3)) << 24);
}

}  // namespace nibble::kernels::cuda::layout
