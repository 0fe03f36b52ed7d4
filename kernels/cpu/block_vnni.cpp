// Block-quantized weights (GGUF's Q5_0 ... IQ4_XS, TQ1_0/TQ2_0) on int8 activations
// (int8_activations.h). Compiled with the AVX-512 VNNI flags; reached only after
// CPUID says AVX-512 VNNI is there (int8_kernel_table).
//
// The arithmetic works per 16-weight sub-block, over which every type's step and
// offset are constant (common/block_decode_impl.h's `unpack`: u8 codes, weight =
// step * code - offset). Activations are rounded per 32 inputs (scale, and per 16
// inputs scale times the codes' sum). Four vpdpbusd give the exact integer dot
// product of a whole 256-weight tile's 16 sub-blocks, one per lane; then a
// conversion, a multiply and two FMAs per tile apply weight step x activation scale
// and take weight offset x activation sum. Per 64 weights and row that is one
// vpdpbusd and one float operation (scaling per lane of four took five per 64).
// - Batches (tile_chunk, dot_tiles): eight output rows' chunks are unpacked into L1
//   in tile order, where lane b of vector v holds inputs 16b + 4v .. of the tile,
//   and every activation row (also in tile order) runs against them in 2 x 4
//   register blocks.
// - One row (direct_rows, decode): weights decode straight into registers in input
//   order; each tile's four vpdpbusd results are folded into sub-block sums by
//   shuffles (integer, so exact) and end in the same add_tile. A row's result is
//   therefore bit for bit the same alone or in any batch.

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "common/block_decode_impl.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/int8_round_impl.h"
#include "kernels/cpu/quant_layout.h"







namespace {

using nibble::kernels::cpu::block_activation_ldx;
using nibble::kernels::cpu::block_activation_tile_ldx;
using nibble::kernels::cpu::BlockActivationOutput;
using nibble::kernels::cpu::BlockActivations;
using nibble::kernels::cpu::BlockLayout;
using nibble::kernels::cpu::kActivationBlock;
using nibble::kernels::cpu::kBlockInt8OutputRows;
using nibble::kernels::cpu::kBlockStep;
using nibble::kernels::cpu::kBlockSubBlock;
using nibble::kernels::cpu::kBlockTile;

static_assert(kActivationBlock == 32 && kBlockStep == 64 && kUnpackLane == 4);
static_assert(kBlockSubBlock == 16 && kBlockTile == 16 * kBlockSubBlock);

constexpr std::int64_t kChunk = 1024;  // inputs unpacked at a time: whole 256-weight blocks and vectors
constexpr int kRowBlock = 4;           // activation rows per register block
// Prefetch a group of output rows ahead, into L1 (bench/quant_bench, Q5_0 at
// decode: 2.2x faster than 2 KB ahead non-temporally, which left the unpacking
// waiting on memory while the group's dot products ran).
constexpr std::int64_t kPrefetchRows = kBlockInt8OutputRows;

struct Unpacked {
  alignas(64) std::uint8_t codes[kChunk];
  alignas(64) float step[kChunk / kUnpackLane];
  alignas(64) float offset[kChunk / kUnpackLane];
};

// One output row's chunk in sub-block tiles (int8_activations.h), with one step and
// one offset per 16 weights: every type's are constant over aligned runs of 16
// (block_kernels_test checks unpack for it).
struct Tiled {
  alignas(64) std::uint8_t codes[kChunk];
  alignas(64) float step[kChunk / kBlockSubBlock];
  alignas(64) float offset[kChunk / kBlockSubBlock];
};

// Input order -> sub-block tile order for one tile of kBlockTile bytes
// (int8_activations.h): lane b of output vector v is lane 4 * (b % 4) + v of input
// vector b / 4. A dword transpose inside each vector, then a 4 x 4 transpose of
// their 128-bit quarters.
inline void to_tile_order(const void* natural, void* tiled) {
  const __m512i within = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const auto* in = static_cast<const std::uint8_t*>(natural);
  auto* out = static_cast<std::uint8_t*>(tiled);
  __m512i m[4];
  for (int i = 0; i < 4; ++i) m[i] = _mm512_permutexvar_epi32(within, _mm512_loadu_si512(in + 64 * i));
  const __m512i a = _mm512_shuffle_i32x4(m[0], m[1], 0x44), b = _mm512_shuffle_i32x4(m[0], m[1], 0xEE);
  const __m512i c = _mm512_shuffle_i32x4(m[2], m[3], 0x44), d = _mm512_shuffle_i32x4(m[2], m[3], 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(a, c, 0x88));
  _mm512_storeu_si512(out + 64, _mm512_shuffle_i32x4(a, c, 0xDD));
  _mm512_storeu_si512(out + 128, _mm512_shuffle_i32x4(b, d, 0x88));
  _mm512_storeu_si512(out + 192, _mm512_shuffle_i32x4(b, d, 0xDD));
}

// Rounds each row to int8 in blocks of 32 (amax / 127, nearest even), the rest of
// the padded row zero, and writes both layouts of int8_activations.h.
void quantize_block_activations(const float* x, std::int64_t rows, std::int64_t cols,
                                const BlockActivationOutput& out) {
  const std::int64_t ldx = block_activation_ldx(cols), tile_ldx = block_activation_tile_ldx(cols);
  const std::int64_t sub_blocks_per_row = tile_ldx / kBlockSubBlock;
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    std::int8_t* cr = out.codes + r * ldx;
    float* sr = out.sub_scales + r * sub_blocks_per_row;
    float* ur = out.sub_sums + r * sub_blocks_per_row;
    for (std::int64_t p = 0; p < ldx; p += kActivationBlock) {
      const std::int64_t sub = p / kBlockSubBlock;
      // Past cols (the row's padding) the block is empty: codes, scale and sums zero.
      const std::int64_t n = std::clamp<std::int64_t>(cols - p, 0, kActivationBlock);
      const RoundedBlock rounded = round_block(xr + p, n);
      if (!rounded.finite) {
        // NaN or infinity: NaN scales poison this row's output, as the float path's would be.
        std::memset(cr + p, 0, kActivationBlock);
        sr[sub] = sr[sub + 1] = ur[sub] = ur[sub + 1] = kNaN;
        continue;
      }
      const __m128i qa = _mm512_cvtsepi32_epi8(rounded.low);
      const __m128i qb = _mm512_cvtsepi32_epi8(rounded.high);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(cr + p), _mm256_set_m128i(qb, qa));
      sr[sub] = sr[sub + 1] = rounded.scale;
      ur[sub] = rounded.scale * static_cast<float>(_mm512_reduce_add_epi32(rounded.low));
      ur[sub + 1] = rounded.scale * static_cast<float>(_mm512_reduce_add_epi32(rounded.high));
    }
    std::fill(sr + ldx / kBlockSubBlock, sr + sub_blocks_per_row, 0.0f);
    std::fill(ur + ldx / kBlockSubBlock, ur + sub_blocks_per_row, 0.0f);
    std::int8_t* tcr = out.tile_codes + r * tile_ldx;
    for (std::int64_t p = 0; p < tile_ldx; p += kBlockTile) {
      if (p + kBlockTile <= ldx) {
        to_tile_order(cr + p, tcr + p);
      } else {
        alignas(64) std::int8_t last[kBlockTile] = {};
        std::memcpy(last, cr + p, static_cast<std::size_t>(ldx - p));
        to_tile_order(last, tcr + p);
      }
    }
  }
}

// An fp16 scale by F16C (exact, subnormals included), not the portable bit decoder.
inline float half_at(const std::uint8_t* at) {
  std::uint16_t bits;
  std::memcpy(&bits, at, 2);
  return _cvtsh_ss(bits);
}

inline __m256i nibbles(__m128i bytes) {  // low nibbles, then high nibbles
  const __m128i mask = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask));
}

inline __m512i join(__m256i low, __m256i high) { return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1); }

// Vector decoders for the types real GGUF files are mostly made of, 64 weights at
// a time into registers: the codes that unpack writes, bit for bit (the compiler
// does not vectorize the bit gathers of the portable unpack well, and at decode
// the unpacking is most of the work). A group is two 32-weight blocks or one
// 256-weight block; each64(group, second, emit) calls emit(i, codes) for its
// 64-weight steps i. The steps and offsets come per 16 weights (the values unpack
// repeats over four lanes): per sub-block, not per lane, because that is all the
// tile arithmetic needs. tile_scales(first block, step, offset) gives a whole
// tile's in registers; scales(group, second, step, offset) writes one group's to
// memory, for a row's last, partial tile. Both the
// tiled path (batches) and the direct path (one row) use them, so a row's
// arithmetic is the same whatever the batch. Other types go through Block::unpack.
template <typename Block>
struct Vec {
  static constexpr bool kFast = false;
};

// Two 32-weight blocks per step; `second` is a zero block past the row's end.
template <typename Half>
struct PairVec {
  static constexpr bool kFast = true;
  static constexpr int kBlocks = 2;
  template <typename Emit>
  static void each64(const std::uint8_t* first, const std::uint8_t* second, Emit&& emit) {
    emit(0, join(Half::codes(first), Half::codes(second)));
  }
  // A whole tile is eight consecutive blocks: their scale words by one gather.
  static void tile_scales(const std::uint8_t* first, __m512& step, __m512& offset) {
    const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(Half::kBytes));
    const __m256i words = _mm256_i32gather_epi32(reinterpret_cast<const int*>(first), at, 1);
    __m256 step8, offset8;
    Half::scales8(words, step8, offset8);
    // Block i is sub-blocks 2i and 2i + 1.
    const __m512i twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    step = _mm512_permutexvar_ps(twice, _mm512_castps256_ps512(step8));
    offset = _mm512_permutexvar_ps(twice, _mm512_castps256_ps512(offset8));
  }
  static void scales(const std::uint8_t* first, const std::uint8_t* second, float* step, float* offset) {
    Half::scale(first, step[0], offset[0]);
    Half::scale(second, step[2], offset[2]);
    step[1] = step[0];
    offset[1] = offset[0];
    step[3] = step[2];
    offset[3] = offset[2];
  }
};

template <bool kMin>
struct Q5Half {
  static __m256i codes(const std::uint8_t* b) {
    const std::uint8_t* qh_bytes = b + (kMin ? 4 : 2);
    std::uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    const __m256i low = nibbles(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qh_bytes + 4)));
    // Bit j of qh is element j's fifth bit.
    return _mm256_mask_add_epi8(low, qh, low, _mm256_set1_epi8(16));
  }
  static constexpr int kBytes = Q5Block<kMin>::kBytes;
  static void scale(const std::uint8_t* b, float& step, float& offset) {
    step = half_at(b);
    offset = kMin ? -half_at(b + 2) : 16.0f * step;
  }
  // The same for eight blocks from their first four bytes each (d, then m).
  static void scales8(__m256i words, __m256& step, __m256& offset) {
    step = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(words));
    if constexpr (kMin) {
      const __m256 m = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(words, 16)));
      offset = _mm256_xor_ps(m, _mm256_set1_ps(-0.0f));  // exactly -m, as the scalar path
    } else {
      offset = _mm256_mul_ps(_mm256_set1_ps(16.0f), step);
    }
  }
};

struct Iq4NlHalf {
  static __m256i codes(const std::uint8_t* b) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Codes)));
    return _mm256_shuffle_epi8(table, nibbles(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
  }
  static constexpr int kBytes = Iq4NlBlock::kBytes;
  static void scale(const std::uint8_t* b, float& step, float& offset) {
    step = half_at(b);
    offset = 128.0f * step;
  }
  static void scales8(__m256i words, __m256& step, __m256& offset) {
    step = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(words));
    offset = _mm256_mul_ps(_mm256_set1_ps(128.0f), step);
  }
};

template <bool kMin>
struct Vec<Q5Block<kMin>> : PairVec<Q5Half<kMin>> {};
template <>
struct Vec<Iq4NlBlock> : PairVec<Iq4NlHalf> {};

// Types whose block is a whole tile (the K-quants): a row is whole blocks, so the
// partial-tile path never runs for them, and scales() is tile_scales() stored.
template <typename Self>
struct WholeTileVec {
  static constexpr bool kFast = true;
  static constexpr int kBlocks = 1;
  static void scales(const std::uint8_t* b, const std::uint8_t*, float* step, float* offset) {
    __m512 st, of;
    Self::tile_scales(b, st, of);
    _mm512_storeu_ps(step, st);
    _mm512_storeu_ps(offset, of);
  }
};

template <bool kHigh>
struct Vec<Q45KBlock<kHigh>> : WholeTileVec<Vec<Q45KBlock<kHigh>>> {
  static void tile_scales(const std::uint8_t* b, __m512& step, __m512& offset) {
    alignas(32) float scale[8], min[8];
    k_scales_mins(b + 4, half_at(b), half_at(b + 2), scale, min);
    // Sub-block i of 32 is sub-blocks 2i and 2i + 1 of 16.
    const __m512i twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    step = _mm512_permutexvar_ps(twice, _mm512_castps256_ps512(_mm256_load_ps(scale)));
    offset = _mm512_permutexvar_ps(twice, _mm512_castps256_ps512(_mm256_load_ps(min)));
  }
  template <typename Emit>
  static void each64(const std::uint8_t* b, const std::uint8_t*, Emit&& emit) {
    const std::uint8_t* qs = b + 16 + (kHigh ? 32 : 0);
    const __m256i mask = _mm256_set1_epi8(15);
    [[maybe_unused]] __m256i qh;
    if constexpr (kHigh) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    for (int pair = 0; pair < 4; ++pair) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * pair));
      __m256i lo = _mm256_and_si256(q, mask), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
      if constexpr (kHigh) {
        // Bit 2 * pair of qh[l] is element 64 * pair + l's fifth bit, bit 2 * pair + 1 the next 32's.
        const __m256i sixteen = _mm256_set1_epi8(16);
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * pair), 4), sixteen));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * pair + 1), 4), sixteen));
      }
      emit(pair, join(lo, hi));
    }
  }
};

template <>
struct Vec<Q6KBlock> : WholeTileVec<Vec<Q6KBlock>> {
  // Sub-block i (16 weights) steps d * scale[i], offsets 32 times that.
  static void tile_scales(const std::uint8_t* b, __m512& step, __m512& offset) {
    step = _mm512_mul_ps(
        _mm512_set1_ps(half_at(b + 208)),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)))));
    offset = _mm512_mul_ps(step, _mm512_set1_ps(32.0f));
  }
  template <typename Emit>
  static void each64(const std::uint8_t* b, const std::uint8_t*, Emit&& emit) {
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h));
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
      const auto high = [&](int shift) {
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, shift), m2), 4);
      };
      emit(2 * h,
           join(_mm256_or_si256(_mm256_and_si256(a, m4), high(0)), _mm256_or_si256(_mm256_and_si256(c, m4), high(2))));
      emit(2 * h + 1, join(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), high(4)),
                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), m4), high(6))));
    }
  }
};

// A block of zero bytes, the second half of a row's last pair of 32-weight blocks.
alignas(64) constexpr std::uint8_t kZeroBlock[64] = {};

// Weights per step of Vec<Block>::each64's group.
template <typename Block>
constexpr std::int64_t group_weights() {
  if constexpr (Vec<Block>::kFast) return Vec<Block>::kBlocks * Block::kElements;
  return Block::kElements;
}

// Calls body(group bytes, second block) for each group of row n's inputs [k0, k0 + valid).
template <typename Block, typename Body>
[[gnu::always_inline]] inline void for_each_group(const BlockLayout& w, std::int64_t n, std::int64_t k0,
                                                  std::int64_t valid, Body&& body) {
  const std::uint8_t* row = w.bytes.as<std::uint8_t>() + static_cast<std::size_t>(n) * w.row_bytes;
  const std::size_t ahead = kPrefetchRows * w.row_bytes;
  constexpr std::int64_t kGroup = group_weights<Block>();
  for (std::int64_t e = 0; e < valid; e += kGroup) {
    const std::uint8_t* block = row + (k0 + e) / Block::kElements * Block::kBytes;
    __builtin_prefetch(block + ahead, 0, 3);
    const bool whole = e + kGroup <= valid;
    body(e, block, whole ? block + Block::kBytes : kZeroBlock);
  }
}

// Unpacks row n's inputs [k0, k0 + valid) into u with the portable unpack (the
// types without a vector decoder), zero up to len (the padded chunk).
template <typename Block>
void unpack_chunk(const BlockLayout& w, std::int64_t n, std::int64_t k0, std::int64_t valid, std::int64_t len,
                  Unpacked& u) {
  for_each_group<Block>(w, n, k0, valid, [&](std::int64_t e, const std::uint8_t* block, const std::uint8_t*) {
    Block::unpack(block, u.codes + e, u.step + e / kUnpackLane, u.offset + e / kUnpackLane);
  });
  if (valid < len) {
    std::memset(u.codes + valid, 0, static_cast<std::size_t>(len - valid));
    std::fill(u.step + valid / kUnpackLane, u.step + len / kUnpackLane, 0.0f);
    std::fill(u.offset + valid / kUnpackLane, u.offset + len / kUnpackLane, 0.0f);
  }
}

// Lanes 0, 4, 8, 12 of four vectors, in order: per 64 inputs, one value per 16
// (the step or offset of each sub-block, which unpack repeats over its four lanes).
[[gnu::always_inline]] inline __m512 every_fourth_lane(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
  const __m512 low = _mm512_permutex2var_ps(a, pick, b), high = _mm512_permutex2var_ps(c, pick, d);
  return _mm512_insertf32x8(low, _mm512_castps512_ps256(high), 1);
}

// acc += one tile's sub-block sums: lane b holds sub-block b's exact integer dot
// product `dots`, times the weight step times the activation scale, less the
// weight offset times the activation sum. Both paths (tiled batches and the
// single-row register path) end every tile with exactly this, so a row's result
// does not depend on the batch.
[[gnu::always_inline]] inline __m512 add_tile(__m512 acc, __m512i dots, __m512 step, __m512 offset, __m512 x_scales,
                                             __m512 x_sums) {
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(step, x_scales), acc);
  return _mm512_fnmadd_ps(offset, x_sums, acc);
}

// out[o * rows + r] += the dot product of tiled chunk t[o] with activation row
// r0 + r, for Outs chunks and Rows rows. Per tile, four vpdpbusd per pair give each
// sub-block's exact integer sum; then one conversion and two FMAs per pair apply
// the sub-blocks' weight step times activation scale, less weight offset times
// activation sum. Each activation vector loaded feeds every chunk, each weight
// vector every row.
template <int Outs, int Rows>
[[gnu::always_inline]] inline void dot_tiles(const Tiled* t, std::int64_t len, const BlockActivations& x,
                                             std::int64_t r0, std::int64_t k0, float* out, std::int64_t rows) {
  __m512 acc[Outs][Rows];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  const std::int8_t* codes = x.tile_codes + r0 * x.tile_ldx + k0;
  const std::int64_t sub0 = (r0 * x.tile_ldx + k0) / kBlockSubBlock;
  const std::int64_t sub_stride = x.tile_ldx / kBlockSubBlock;
  for (std::int64_t i = 0; i < len; i += kBlockTile) {
    __m512i dots[Outs][Rows];
    for (auto& row : dots)
      for (auto& d : row) d = _mm512_setzero_si512();
    for (std::int64_t v = 0; v < kBlockTile; v += kBlockStep) {
      __m512i wc[Outs];
      for (int o = 0; o < Outs; ++o) wc[o] = _mm512_load_si512(t[o].codes + i + v);
      for (int r = 0; r < Rows; ++r) {
        const __m512i xc = _mm512_loadu_si512(codes + r * x.tile_ldx + i + v);
        for (int o = 0; o < Outs; ++o) dots[o][r] = _mm512_dpbusd_epi32(dots[o][r], wc[o], xc);
      }
    }
    const std::int64_t sub = i / kBlockSubBlock;
    for (int r = 0; r < Rows; ++r) {
      const __m512 xs = _mm512_loadu_ps(x.sub_scales + sub0 + r * sub_stride + sub);
      const __m512 xu = _mm512_loadu_ps(x.sub_sums + sub0 + r * sub_stride + sub);
      for (int o = 0; o < Outs; ++o) {
        acc[o][r] = add_tile(acc[o][r], dots[o][r], _mm512_load_ps(t[o].step + sub), _mm512_load_ps(t[o].offset + sub),
                             xs, xu);
      }
    }
  }
  for (int o = 0; o < Outs; ++o)
    for (int r = 0; r < Rows; ++r) out[o * rows + r] += _mm512_reduce_add_ps(acc[o][r]);
}

// Unpacks row n's inputs [k0, k0 + valid) (zero up to len, whole tiles) into t.
template <typename Block>
void tile_chunk(const BlockLayout& w, std::int64_t n, std::int64_t k0, std::int64_t valid, std::int64_t len,
                Unpacked& scratch, Tiled& t) {
  if constexpr (Vec<Block>::kFast) {
    std::int64_t covered = valid;  // a pair's zero second block may reach past it
    for_each_group<Block>(w, n, k0, valid, [&](std::int64_t e, const std::uint8_t* block, const std::uint8_t* second) {
      // The scales of a whole tile at its first group, of a partial one group by group
      // (as the direct path does).
      const std::int64_t tile = e - e % kBlockTile;
      if (tile + kBlockTile > valid) {
        Vec<Block>::scales(block, second, t.step + e / kBlockSubBlock, t.offset + e / kBlockSubBlock);
      } else if (e == tile) {
        __m512 step, offset;
        Vec<Block>::tile_scales(block, step, offset);
        _mm512_store_ps(t.step + e / kBlockSubBlock, step);
        _mm512_store_ps(t.offset + e / kBlockSubBlock, offset);
      }
      Vec<Block>::each64(block, second,
                         [&](int i, __m512i codes) { _mm512_store_si512(scratch.codes + e + kBlockStep * i, codes); });
      covered = std::max(covered, e + group_weights<Block>());
    });
    if (covered < len) {
      std::memset(scratch.codes + covered, 0, static_cast<std::size_t>(len - covered));
      std::fill(t.step + covered / kBlockSubBlock, t.step + len / kBlockSubBlock, 0.0f);
      std::fill(t.offset + covered / kBlockSubBlock, t.offset + len / kBlockSubBlock, 0.0f);
    }
  } else {
    unpack_chunk<Block>(w, n, k0, valid, len, scratch);
    for (std::int64_t i = 0; i < len / kUnpackLane; i += 64) {  // 64 lanes = 16 sub-blocks
      const auto gather = [&](const float* lanes) {
        return every_fourth_lane(_mm512_load_ps(lanes), _mm512_load_ps(lanes + 16), _mm512_load_ps(lanes + 32),
                                 _mm512_load_ps(lanes + 48));
      };
      _mm512_store_ps(t.step + i / 4, gather(scratch.step + i));
      _mm512_store_ps(t.offset + i / 4, gather(scratch.offset + i));
    }
  }
  for (std::int64_t i = 0; i < len; i += kBlockTile) to_tile_order(scratch.codes + i, t.codes + i);
}

// Lane 4i + g of the result: the sum of lanes 4g .. 4g + 3 of d[i] (per 64 inputs,
// the four lanes of each 16-input sub-block), i.e. a tile's sub-block sums from
// its four vectors in input order. Integer adds, so exact in any order.
[[gnu::always_inline]] inline __m512i sub_block_sums(const __m512i (&d)[4]) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const auto pairs = [&](__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, even, b), _mm512_permutex2var_epi32(a, odd, b));
  };
  return pairs(pairs(d[0], d[1]), pairs(d[2], d[3]));
}

// One activation row (decode): weights decoded straight into registers in input
// order, several output rows interleaved (independent chains). Each tile's four
// vpdpbusd results are folded into sub-block sums and end in add_tile, as in the
// tiled path, so the results are bit for bit those of a batch; the folding costs
// a few shuffles per 256 weights, less than storing and re-reading the weights.
constexpr int kDirectOutputs = 4;

template <typename Block, int Outputs>
void direct_rows(const BlockLayout& w, const BlockActivations& x, std::int64_t n0, float* out) {
  constexpr std::int64_t kGroup = group_weights<Block>();
  static_assert(kBlockTile % kGroup == 0);
  const std::size_t ahead = kPrefetchRows * w.row_bytes;
  for (std::int64_t k0 = 0; k0 < w.cols; k0 += kChunk) {
    const std::int64_t valid = std::min(kChunk, w.cols - k0);
    __m512 acc[Outputs];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (std::int64_t tile = 0; tile < valid; tile += kBlockTile) {
      const std::int64_t sub = (k0 + tile) / kBlockSubBlock;
      const __m512 xs = _mm512_loadu_ps(x.sub_scales + sub), xu = _mm512_loadu_ps(x.sub_sums + sub);
      const std::int64_t end = std::min(valid, tile + kBlockTile);
      const bool whole_tile = tile + kBlockTile <= valid;
      for (int i = 0; i < Outputs; ++i) {
        __m512i dots[4];
        for (auto& d : dots) d = _mm512_setzero_si512();
        const std::uint8_t* row = w.bytes.as<std::uint8_t>() + static_cast<std::size_t>(n0 + i) * w.row_bytes;
        __m512 step, offset;
        alignas(64) float part_step[kBlockTile / kBlockSubBlock] = {}, part_offset[kBlockTile / kBlockSubBlock] = {};
        if (whole_tile) Vec<Block>::tile_scales(row + (k0 + tile) / Block::kElements * Block::kBytes, step, offset);
        for (std::int64_t e = tile; e < end; e += kGroup) {
          const std::uint8_t* block = row + (k0 + e) / Block::kElements * Block::kBytes;
          __builtin_prefetch(block + ahead, 0, 3);
          const std::uint8_t* second = e + kGroup <= valid ? block + Block::kBytes : kZeroBlock;
          if (!whole_tile) {
            Vec<Block>::scales(block, second, part_step + (e - tile) / kBlockSubBlock,
                               part_offset + (e - tile) / kBlockSubBlock);
          }
          Vec<Block>::each64(block, second, [&](int s, __m512i codes) {
            const std::int64_t at = e + kBlockStep * s;  // within the chunk
            if (at >= valid) return;                     // past the row: no activations there
            dots[(at - tile) / kBlockStep] =
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, _mm512_loadu_si512(x.codes + k0 + at));
          });
        }
        if (!whole_tile) {
          step = _mm512_load_ps(part_step);
          offset = _mm512_load_ps(part_offset);
        }
        acc[i] = add_tile(acc[i], sub_block_sums(dots), step, offset, xs, xu);
      }
    }
    for (int i = 0; i < Outputs; ++i) out[i] += _mm512_reduce_add_ps(acc[i]);
  }
}

template <typename Block>
void block_int8_direct(const BlockLayout& w, const BlockActivations& x, std::int64_t n_begin, std::int64_t n_end,
                       const float* bias, float* y) {
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kDirectOutputs) {
    float out[kDirectOutputs] = {};
    const std::int64_t nb = std::min<std::int64_t>(kDirectOutputs, n_end - n0);
    switch (nb) {
      case 4: direct_rows<Block, 4>(w, x, n0, out); break;
      case 3: direct_rows<Block, 3>(w, x, n0, out); break;
      case 2: direct_rows<Block, 2>(w, x, n0, out); break;
      default: direct_rows<Block, 1>(w, x, n0, out); break;
    }
    for (std::int64_t i = 0; i < nb; ++i) y[n0 + i] = out[i] + (bias != nullptr ? bias[n0 + i] : 0.0f);
  }
}

template <typename Block>
void block_int8_linear(const BlockLayout& w, const BlockActivations& x, std::int64_t n_begin, std::int64_t n_end,
                       const float* bias, float* y, std::int64_t ldy, float* scratch_out) {
  static_assert(kChunk % group_weights<Block>() == 0);
  if constexpr (Vec<Block>::kFast) {
    if (x.rows == 1) return block_int8_direct<Block>(w, x, n_begin, n_end, bias, y);
  }
  Unpacked scratch;
  Tiled t[kBlockInt8OutputRows];
  const std::int64_t rows = x.rows;
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kBlockInt8OutputRows) {
    const std::int64_t nb = std::min(kBlockInt8OutputRows, n_end - n0);
    float* partial = scratch_out;  // [nb][rows]
    std::fill(partial, partial + nb * rows, 0.0f);
    for (std::int64_t k0 = 0; k0 < w.cols; k0 += kChunk) {
      const std::int64_t valid = std::min(kChunk, w.cols - k0);
      const std::int64_t len = std::min(kChunk, x.tile_ldx - k0);
      for (std::int64_t i = 0; i < nb; ++i) tile_chunk<Block>(w, n0 + i, k0, valid, len, scratch, t[i]);
      for (std::int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        for (std::int64_t i = 0; i < nb; i += 2) {
          float* out = partial + i * rows + r0;
          const auto run = [&]<int Outs>() {
            switch (std::min<std::int64_t>(kRowBlock, rows - r0)) {
              case 4: dot_tiles<Outs, 4>(t + i, len, x, r0, k0, out, rows); break;
              case 3: dot_tiles<Outs, 3>(t + i, len, x, r0, k0, out, rows); break;
              case 2: dot_tiles<Outs, 2>(t + i, len, x, r0, k0, out, rows); break;
              default: dot_tiles<Outs, 1>(t + i, len, x, r0, k0, out, rows); break;
            }
          };
          if (i + 1 < nb) {
            run.template operator()<2>();
          } else {
            run.template operator()<1>();
          }
        }
      }
    }
    for (std::int64_t i = 0; i < nb; ++i) {
      const float b = bias != nullptr ? bias[n0 + i] : 0.0f;
      for (std::int64_t r = 0; r < rows; ++r) y[r * ldy + n0 + i] = partial[i * rows + r] + b;
    }
  }
}

}  // namespace

namespace nibble::kernels::cpu {

void fill_block_int8_kernels(Int8KernelTable& table) {
  table.quantize_blocks = quantize_block_activations;
  for (int f = 0; f < kBlockFormatCount; ++f) {
    with_block_decoder(static_cast<BlockFormat>(f),
                       [&](auto decoder) { table.block[f] = block_int8_linear<decltype(decoder)>; });
  }
}

}  // namespace nibble::kernels::cpu
