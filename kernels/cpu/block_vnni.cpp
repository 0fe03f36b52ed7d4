// Block-quantized weights (GGUF's Q5_0 ... IQ4_XS, TQ1_0/TQ2_0) on int8 activations
// (int8_activations.h). Compiled with the AVX-512 VNNI flags; reached only after
// CPUID says AVX-512 VNNI is there (int8_kernel_table).
//
// A row's blocks are unpacked (common/block_decode_impl.h's `unpack`: u8 codes, and
// per four weights a step and an offset) a chunk at a time into L1, several output
// rows together, and every activation row runs against them: one vpdpbusd per 64
// weights and row gives exact integer sums of four products per lane, which the
// lane's weight step times activation scale turns into a float, minus the
// weight offset times the activation lane sum. Batched rows share the unpacking,
// and the activation rows of a register block stay in L1 across the output rows.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "common/block_decode_impl.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/int8_round_impl.h"
#include "kernels/cpu/quant_layout.h"







namespace {

using nibble::kernels::cpu::BlockActivations;
using nibble::kernels::cpu::BlockLayout;
using nibble::kernels::cpu::kActivationBlock;
using nibble::kernels::cpu::kBlockInt8OutputRows;
using nibble::kernels::cpu::kBlockStep;

static_assert(kActivationBlock == 32 && kBlockStep == 64 && kUnpackLane == 4);

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

// Rounds each row to int8 in blocks of 32 (amax / 127, nearest even), the rest of
// the padded row zero.
void quantize_block_activations(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ldx,
                                std::int8_t* codes, float* lane_scales, float* lane_sums) {
  const __m256i ones = _mm256_set1_epi8(1);
  const std::int64_t lanes_per_row = ldx / kUnpackLane;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    std::int8_t* cr = codes + r * ldx;
    float* sr = lane_scales + r * lanes_per_row;
    float* ur = lane_sums + r * lanes_per_row;
    for (std::int64_t p = 0; p < ldx; p += kActivationBlock) {
      const std::int64_t lane = p / kUnpackLane;
      constexpr int kLanes = kActivationBlock / kUnpackLane;
      // Past cols (the row's padding) the block is empty: codes, scale and sums zero.
      const std::int64_t n = std::clamp<std::int64_t>(cols - p, 0, kActivationBlock);
      const RoundedBlock rounded = round_block(xr + p, n);
      if (!rounded.finite) {
        // NaN or infinity: NaN scales poison this row's output, as the float path's would be.
        std::memset(cr + p, 0, kActivationBlock);
        std::fill(sr + lane, sr + lane + kLanes, std::numeric_limits<float>::quiet_NaN());
        std::fill(ur + lane, ur + lane + kLanes, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const float scale = rounded.scale;
      const __m128i qa = _mm512_cvtsepi32_epi8(rounded.low);
      const __m128i qb = _mm512_cvtsepi32_epi8(rounded.high);
      const __m256i q = _mm256_set_m128i(qb, qa);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(cr + p), q);
      // Sum of each lane's four codes: ones (u8) times codes (s8) on the dot-product unit.
      const __m256 sums = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q));
      const __m256 s = _mm256_set1_ps(scale);
      _mm256_storeu_ps(sr + lane, s);
      _mm256_storeu_ps(ur + lane, _mm256_mul_ps(sums, s));
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
inline __m512 join(float low, float high) {
  return _mm512_insertf32x8(_mm512_set1_ps(low), _mm256_set1_ps(high), 1);
}

// Vector decoders for the types real GGUF files are mostly made of, 64 weights at
// a time into registers: codes, and per lane the step and offset that unpack
// writes, bit for bit (the compiler does not vectorize the bit gathers of the
// portable unpack well, and at decode the unpacking is most of the work). A group
// is two 32-weight blocks or one 256-weight block; each64(group, second, emit)
// calls emit(i, codes, step, offset) for its 64-weight steps i. Both the unpacking
// path (batches) and the direct path (one row) use them, so a row's arithmetic is
// the same whatever the batch. Other types go through Block::unpack.
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
    float step_a, offset_a, step_b, offset_b;
    const __m256i a = Half::codes(first, step_a, offset_a);
    const __m256i b = Half::codes(second, step_b, offset_b);
    emit(0, join(a, b), join(step_a, step_b), join(offset_a, offset_b));
  }
};

template <bool kMin>
struct Q5Half {
  static __m256i codes(const std::uint8_t* b, float& step, float& offset) {
    const std::uint8_t* qh_bytes = b + (kMin ? 4 : 2);
    std::uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    const __m256i low = nibbles(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qh_bytes + 4)));
    step = half_at(b);
    offset = kMin ? -half_at(b + 2) : 16.0f * step;
    // Bit j of qh is element j's fifth bit.
    return _mm256_mask_add_epi8(low, qh, low, _mm256_set1_epi8(16));
  }
};

struct Iq4NlHalf {
  static __m256i codes(const std::uint8_t* b, float& step, float& offset) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Codes)));
    step = half_at(b);
    offset = 128.0f * step;
    return _mm256_shuffle_epi8(table, nibbles(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
  }
};

template <bool kMin>
struct Vec<Q5Block<kMin>> : PairVec<Q5Half<kMin>> {};
template <>
struct Vec<Iq4NlBlock> : PairVec<Iq4NlHalf> {};

template <bool kHigh>
struct Vec<Q45KBlock<kHigh>> {
  static constexpr bool kFast = true;
  static constexpr int kBlocks = 1;
  template <typename Emit>
  static void each64(const std::uint8_t* b, const std::uint8_t*, Emit&& emit) {
    float scale[8], min[8];
    k_scales_mins(b + 4, half_at(b), half_at(b + 2), scale, min);
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
      emit(pair, join(lo, hi), join(scale[2 * pair], scale[2 * pair + 1]), join(min[2 * pair], min[2 * pair + 1]));
    }
  }
};

template <>
struct Vec<Q6KBlock> {
  static constexpr bool kFast = true;
  static constexpr int kBlocks = 1;
  template <typename Emit>
  static void each64(const std::uint8_t* b, const std::uint8_t*, Emit&& emit) {
    // Sub-block i (16 weights, 4 lanes) steps d * scale[i], offsets 32 times that.
    const __m512 steps = _mm512_mul_ps(
        _mm512_set1_ps(half_at(b + 208)),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)))));
    const __m512 thirty_two = _mm512_set1_ps(32.0f);
    const auto lanes = [&](int q) {
      const __m512i index = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 2, 4 * q + 2,
                                             4 * q + 2, 4 * q + 2, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q,
                                             4 * q, 4 * q, 4 * q);
      return _mm512_permutexvar_ps(index, steps);
    };
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h));
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
      const auto high = [&](int shift) {
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, shift), m2), 4);
      };
      const __m512 s0 = lanes(2 * h), s1 = lanes(2 * h + 1);
      emit(2 * h,
           join(_mm256_or_si256(_mm256_and_si256(a, m4), high(0)), _mm256_or_si256(_mm256_and_si256(c, m4), high(2))),
           s0, _mm512_mul_ps(s0, thirty_two));
      emit(2 * h + 1,
           join(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), high(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), m4), high(6))),
           s1, _mm512_mul_ps(s1, thirty_two));
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

// Unpacks row n's inputs [k0, k0 + valid) into u, zero up to len (the padded chunk).
template <typename Block>
void unpack_chunk(const BlockLayout& w, std::int64_t n, std::int64_t k0, std::int64_t valid, std::int64_t len,
                  Unpacked& u) {
  std::int64_t covered = valid;
  for_each_group<Block>(w, n, k0, valid, [&](std::int64_t e, const std::uint8_t* block, const std::uint8_t* second) {
    if constexpr (Vec<Block>::kFast) {
      Vec<Block>::each64(block, second, [&](int i, __m512i codes, __m512 step, __m512 offset) {
        const std::int64_t at = e + kBlockStep * i;
        _mm512_store_si512(u.codes + at, codes);
        _mm512_store_ps(u.step + at / kUnpackLane, step);
        _mm512_store_ps(u.offset + at / kUnpackLane, offset);
        covered = std::max(covered, at + kBlockStep);
      });
    } else {
      Block::unpack(block, u.codes + e, u.step + e / kUnpackLane, u.offset + e / kUnpackLane);
    }
  });
  if (covered < len) {
    std::memset(u.codes + covered, 0, static_cast<std::size_t>(len - covered));
    std::fill(u.step + covered / kUnpackLane, u.step + len / kUnpackLane, 0.0f);
    std::fill(u.offset + covered / kUnpackLane, u.offset + len / kUnpackLane, 0.0f);
  }
}

// acc += one 64-weight step times activation row `x` at input `at`: the integer dot
// product per lane, scaled by step x the activation scale, less offset x the
// activation lane sum. Every path runs exactly this, in input order.
[[gnu::always_inline]] inline __m512 dot_step(__m512 acc, __m512i codes, __m512 step, __m512 offset, __m512i x_codes,
                                             __m512 x_scales, __m512 x_sums) {
  const __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, x_codes);
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(step, x_scales), acc);
  return _mm512_fnmadd_ps(offset, x_sums, acc);
}

[[gnu::always_inline]] inline __m512 dot_step(__m512 acc, __m512i codes, __m512 step, __m512 offset,
                                             const std::int8_t* x_codes, const float* x_scales, const float* x_sums) {
  return dot_step(acc, codes, step, offset, _mm512_loadu_si512(x_codes), _mm512_loadu_ps(x_scales),
                  _mm512_loadu_ps(x_sums));
}

// out[o * rows + r] += the dot product of unpacked chunk u[o] with activation row
// r0 + r, for Outs chunks and Rows rows: each activation vector loaded once feeds
// every chunk, each weight vector every row.
template <int Outs, int Rows>
[[gnu::always_inline]] inline void dot_chunk(const Unpacked* u, std::int64_t len, const BlockActivations& x,
                                             std::int64_t r0, std::int64_t k0, float* out, std::int64_t rows) {
  __m512 acc[Outs][Rows];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  const std::int8_t* codes = x.codes + r0 * x.ldx + k0;
  const std::int64_t lane0 = (r0 * x.ldx + k0) / kUnpackLane;
  const std::int64_t lane_stride = x.ldx / kUnpackLane;
  for (std::int64_t i = 0; i < len; i += kBlockStep) {
    __m512i wc[Outs];
    __m512 ws[Outs], wo[Outs];
    for (int o = 0; o < Outs; ++o) {
      wc[o] = _mm512_load_si512(u[o].codes + i);
      ws[o] = _mm512_load_ps(u[o].step + i / kUnpackLane);
      wo[o] = _mm512_load_ps(u[o].offset + i / kUnpackLane);
    }
    for (int r = 0; r < Rows; ++r) {
      const std::int64_t lane = lane0 + r * lane_stride + i / kUnpackLane;
      const __m512i xc = _mm512_loadu_si512(codes + r * x.ldx + i);
      const __m512 xs = _mm512_loadu_ps(x.lane_scales + lane), xu = _mm512_loadu_ps(x.lane_sums + lane);
      for (int o = 0; o < Outs; ++o) acc[o][r] = dot_step(acc[o][r], wc[o], ws[o], wo[o], xc, xs, xu);
    }
  }
  for (int o = 0; o < Outs; ++o)
    for (int r = 0; r < Rows; ++r) out[o * rows + r] += _mm512_reduce_add_ps(acc[o][r]);
}

// One activation row (decode): weights decoded straight into registers, several
// output rows interleaved (independent FMA chains), the row's activations loaded
// once per step for all of them. Same steps, order and chunk sums as the
// unpacking path, so the results are bit for bit those of a batch.
constexpr int kDirectOutputs = 4;

template <typename Block, int Outputs>
void direct_rows(const BlockLayout& w, const BlockActivations& x, std::int64_t n0, float* out) {
  for (std::int64_t k0 = 0; k0 < w.cols; k0 += kChunk) {
    const std::int64_t valid = std::min(kChunk, w.cols - k0);
    __m512 acc[Outputs];
    for (auto& a : acc) a = _mm512_setzero_ps();
    constexpr std::int64_t kGroup = group_weights<Block>();
    const std::size_t ahead = kPrefetchRows * w.row_bytes;
    for (std::int64_t e = 0; e < valid; e += kGroup) {
      const bool whole = e + kGroup <= valid;
      for (int i = 0; i < Outputs; ++i) {
        const std::uint8_t* block = w.bytes.as<std::uint8_t>() + static_cast<std::size_t>(n0 + i) * w.row_bytes +
                                    (k0 + e) / Block::kElements * Block::kBytes;
        __builtin_prefetch(block + ahead, 0, 3);
        Vec<Block>::each64(block, whole ? block + Block::kBytes : kZeroBlock,
                           [&](int s, __m512i codes, __m512 step, __m512 offset) {
                             const std::int64_t at = k0 + e + kBlockStep * s;
                             acc[i] = dot_step(acc[i], codes, step, offset, x.codes + at,
                                               x.lane_scales + at / kUnpackLane, x.lane_sums + at / kUnpackLane);
                           });
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
                       const float* bias, float* y, std::int64_t ldy, float* scratch) {
  static_assert(kChunk % group_weights<Block>() == 0);
  if constexpr (Vec<Block>::kFast) {
    if (x.rows == 1) return block_int8_direct<Block>(w, x, n_begin, n_end, bias, y);
  }
  Unpacked u[kBlockInt8OutputRows];
  const std::int64_t rows = x.rows;
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kBlockInt8OutputRows) {
    const std::int64_t nb = std::min(kBlockInt8OutputRows, n_end - n0);
    float* partial = scratch;  // [nb][rows]
    std::fill(partial, partial + nb * rows, 0.0f);
    for (std::int64_t k0 = 0; k0 < w.cols; k0 += kChunk) {
      const std::int64_t valid = std::min(kChunk, w.cols - k0);
      const std::int64_t len = std::min(kChunk, x.ldx - k0);
      for (std::int64_t i = 0; i < nb; ++i) unpack_chunk<Block>(w, n0 + i, k0, valid, len, u[i]);
      for (std::int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        for (std::int64_t i = 0; i < nb; i += 2) {
          float* out = partial + i * rows + r0;
          const auto run = [&]<int Outs>() {
            switch (std::min<std::int64_t>(kRowBlock, rows - r0)) {
              case 4: dot_chunk<Outs, 4>(u + i, len, x, r0, k0, out, rows); break;
              case 3: dot_chunk<Outs, 3>(u + i, len, x, r0, k0, out, rows); break;
              case 2: dot_chunk<Outs, 2>(u + i, len, x, r0, k0, out, rows); break;
              default: dot_chunk<Outs, 1>(u + i, len, x, r0, k0, out, rows); break;
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
