// Compiled with the AVX-512 flags plus -mavx512vnni; only reached after CPUID says
// AVX-512 VNNI is there (int8_kernel_table). See int8_activations.h.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/avx512_traits.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/linear_kernels.h"
#include "kernels/cpu/packed_impl.h"
#include "kernels/cpu/int8_round_impl.h"

namespace {

using nibble::kernels::cpu::activation_blocks;
using nibble::kernels::cpu::Int8KernelTable;
using nibble::kernels::cpu::kActivationBlock;

// A unit of Bits-bit codes: one u32 per lane, kPlanes byte planes of 4 codes.
template <int Bits>
struct ByteUnit {
  static constexpr int kPlanes = 8 / Bits;
  static constexpr int kCodes = 4 * kPlanes;
  static constexpr std::uint32_t kMask = Bits == 8 ? 0xFFFFFFFFu : 0x01010101u * ((1u << Bits) - 1u);
  static constexpr std::int64_t kUnitsPerBlock = kActivationBlock / kCodes;
  static_assert(kActivationBlock % kCodes == 0 && kCodes <= 16);
};

// Byte order within each unit of 16 bytes: position i*kPlanes + j goes to 4*j + i.
template <int Bits>
__m128i plane_order() {
  alignas(16) std::int8_t order[16];
  using Unit = ByteUnit<Bits>;
  for (int base = 0; base < 16; base += Unit::kCodes)
    for (int j = 0; j < Unit::kPlanes; ++j)
      for (int i = 0; i < 4; ++i) order[base + 4 * j + i] = static_cast<std::int8_t>(base + i * Unit::kPlanes + j);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(order));
}

template <int Bits>
void quantize_activations(const nibble::kernels::cpu::QuantLayout& w, const float* x, std::int64_t rows,
                          std::int8_t* codes, float* scales, float* group_sums) {
  const std::int64_t ldx = w.packed_cols();
  const std::int64_t blocks = activation_blocks(w);
  const __m128i order = plane_order<Bits>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    std::int8_t* cr = codes + r * ldx;
    float* sr = scales + r * blocks;
    std::int64_t block = 0;
    for (std::int64_t g = 0; g < w.groups; ++g) {
      const std::int64_t end = w.group_unit_begin[static_cast<std::size_t>(g) + 1] * w.codes_per_unit;
      float group_sum = 0.0f;
      for (std::int64_t p = w.group_unit_begin[static_cast<std::size_t>(g)] * w.codes_per_unit; p < end;
           p += kActivationBlock, ++block) {
        const std::int64_t n = std::min<std::int64_t>(kActivationBlock, end - p);
        const RoundedBlock q = round_block(xr + p, n);
        if (!q.finite) {
          // This block poisons its row's output.
          sr[block] = std::numeric_limits<float>::quiet_NaN();
          group_sum = std::numeric_limits<float>::quiet_NaN();
          std::memset(cr + p, 0, static_cast<std::size_t>(n));
          continue;
        }
        group_sum += q.scale * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q.low, q.high)));
        _mm_mask_storeu_epi8(cr + p, q.low_mask, _mm_shuffle_epi8(_mm512_cvtsepi32_epi8(q.low), order));
        _mm_mask_storeu_epi8(cr + p + 16, q.high_mask, _mm_shuffle_epi8(_mm512_cvtsepi32_epi8(q.high), order));
        sr[block] = q.scale;
      }
      group_sums[r * w.groups + g] = group_sum;
    }
  }
}

inline __m512i broadcast4(const std::int8_t* p) {
  std::int32_t four;
  std::memcpy(&four, p, sizeof four);
  return _mm512_set1_epi32(four);
}

// Integer dot products of units [u0, u1) of a tile with Rows activation rows:
// acc[r][v] = sum over those units of weight codes x activation codes, exactly.
template <int Bits, int Rows>
[[gnu::always_inline]] inline void dot_units(const std::uint32_t* tile_words, const std::int8_t* xq, std::int64_t ldx,
                                             std::int64_t u0, std::int64_t u1, __m512i (&acc)[Rows][kRegsPerTile]) {
  using Unit = ByteUnit<Bits>;
  const __m512i mask = _mm512_set1_epi32(static_cast<int>(Unit::kMask));
  for (auto& row : acc)
    for (auto& reg : row) reg = _mm512_setzero_si512();
  for (std::int64_t u = u0; u < u1; ++u) {
    const std::uint32_t* unit = tile_words + u * kLanes;
    const std::int8_t* xu = xq + u * Unit::kCodes;
    prefetch_ahead(unit, kLanes * sizeof(std::uint32_t));
    for (int v = 0; v < kRegsPerTile; ++v) {
      const __m512i words = _mm512_loadu_si512(unit + v * V::kWidth);
      unrolled<Unit::kPlanes>([&](auto j) {
        constexpr int kPlane = decltype(j)::value;
        const __m512i codes = Bits == 8 ? words : _mm512_and_si512(_mm512_srli_epi32(words, Bits * kPlane), mask);
        for (int r = 0; r < Rows; ++r) {
          acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], codes, broadcast4(xu + r * ldx + 4 * kPlane));
        }
      });
    }
  }
}

// Rows r0..r0+Rows of one tile into totals [rows][kLanes]. Integer sums stay
// exact within a block; each block's sum is scaled into a float per group.
template <int Bits, typename ScaleFormat, bool kMin, int Rows>
void int8_tile_rows(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile, std::int64_t r0,
                    float* totals) {
  using Unit = ByteUnit<Bits>;
  const std::uint32_t* tile_words = w.words.as<std::uint32_t>() + tile * w.units * kLanes;
  const std::int8_t* xq = a.x_codes + r0 * a.ldx;
  const float* xs = a.x_scales + r0 * a.x_blocks;
  std::int64_t block = 0;
  for (std::int64_t g = 0; g < w.groups; ++g) {
    __m512 group_acc[Rows][kRegsPerTile];
    for (auto& row : group_acc)
      for (auto& reg : row) reg = _mm512_setzero_ps();
    const std::int64_t unit_end = w.group_unit_begin[static_cast<std::size_t>(g) + 1];
    for (std::int64_t u0 = w.group_unit_begin[static_cast<std::size_t>(g)]; u0 < unit_end;
         u0 += Unit::kUnitsPerBlock, ++block) {
      const std::int64_t u1 = std::min(unit_end, u0 + Unit::kUnitsPerBlock);
      __m512i acc[Rows][kRegsPerTile];
      dot_units<Bits, Rows>(tile_words, xq, a.ldx, u0, u1, acc);
      for (int r = 0; r < Rows; ++r) {
        const __m512 scale = _mm512_set1_ps(xs[r * a.x_blocks + block]);
        for (int v = 0; v < kRegsPerTile; ++v) group_acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][v]), scale, group_acc[r][v]);
      }
    }
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto scale = V::load(group_row<ScaleFormat>(w.scales, tile, g, w.groups) + v * V::kWidth, ScaleFormat{});
      const auto offset = group_offset<ScaleFormat, kMin>(w.offsets, tile, g, w.groups, v, scale);
      for (int r = 0; r < Rows; ++r) {
        float* total = totals + (r0 + r) * kLanes + v * V::kWidth;
        const auto x_sum = V::set1(a.group_sums[(r0 + r) * w.groups + g]);
        V::store(total, V::fma(scale, group_acc[r][v], V::fma(offset, x_sum, V::load(total))));
      }
    }
  }
}

// The same when every group is one activation block (GGUF's 32-input blocks): the
// block's integer sum is scaled once by weight scale x activation scale and the
// totals stay in registers, instead of a float group sum and a trip through
// memory per group, which cost more than the dot products for 32-input groups.
template <int Bits, typename ScaleFormat, bool kMin, int Rows>
void int8_tile_rows_block_groups(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile,
                                 std::int64_t r0, float* totals) {
  const std::uint32_t* tile_words = w.words.as<std::uint32_t>() + tile * w.units * kLanes;
  const std::int8_t* xq = a.x_codes + r0 * a.ldx;
  const float* xs = a.x_scales + r0 * a.x_blocks;
  const float* sums = a.group_sums + r0 * w.groups;
  __m512 total[Rows][kRegsPerTile];
  for (auto& row : total)
    for (auto& reg : row) reg = _mm512_setzero_ps();
  for (std::int64_t g = 0; g < w.groups; ++g) {
    __m512i acc[Rows][kRegsPerTile];
    dot_units<Bits, Rows>(tile_words, xq, a.ldx, w.group_unit_begin[static_cast<std::size_t>(g)],
                          w.group_unit_begin[static_cast<std::size_t>(g) + 1], acc);
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto scale = V::load(group_row<ScaleFormat>(w.scales, tile, g, w.groups) + v * V::kWidth, ScaleFormat{});
      const auto offset = group_offset<ScaleFormat, kMin>(w.offsets, tile, g, w.groups, v, scale);
      for (int r = 0; r < Rows; ++r) {
        const auto both = V::mul(scale, V::set1(xs[r * a.x_blocks + g]));
        total[r][v] = V::fma(_mm512_cvtepi32_ps(acc[r][v]), both, V::fma(offset, V::set1(sums[r * w.groups + g]), total[r][v]));
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < kRegsPerTile; ++v) V::store(totals + (r0 + r) * kLanes + v * V::kWidth, total[r][v]);
}

// Rows at a time: 4 x Rows accumulators (int and float, two registers per tile)
// plus the weight codes must fit the 32 vector registers.
constexpr int kInt8RowBlock = 6;

template <int Bits, typename ScaleFormat, bool kMin>
void int8_quant_linear(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile_begin,
                       std::int64_t tile_end) {
  float* totals = a.scratch;
  // Chosen by the layout, never by the batch, so a row's arithmetic is fixed.
  const bool block_groups = a.x_blocks == w.groups;
  const auto rows_of = [&]<int Rows>(std::int64_t tile, std::int64_t r0) {
    if (block_groups) {
      int8_tile_rows_block_groups<Bits, ScaleFormat, kMin, Rows>(w, a, tile, r0, totals);
    } else {
      int8_tile_rows<Bits, ScaleFormat, kMin, Rows>(w, a, tile, r0, totals);
    }
  };
  for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
    std::fill(totals, totals + a.rows * kLanes, 0.0f);
    for (std::int64_t r0 = 0; r0 < a.rows; r0 += kInt8RowBlock) {
      switch (std::min<std::int64_t>(kInt8RowBlock, a.rows - r0)) {
        case 6:
          rows_of.template operator()<6>(tile, r0);
          break;
        case 5:
          rows_of.template operator()<5>(tile, r0);
          break;
        case 4:
          rows_of.template operator()<4>(tile, r0);
          break;
        case 3:
          rows_of.template operator()<3>(tile, r0);
          break;
        case 2:
          rows_of.template operator()<2>(tile, r0);
          break;
        default:
          rows_of.template operator()<1>(tile, r0);
          break;
      }
    }
    store_tile(a, w.rows, tile, 0, a.rows, totals);
  }
}

template <int Bits>
void fill_int8(Int8KernelTable& table) {
  using namespace nibble::kernels::cpu;
  const int slot = int8_bits_slot(Bits);
  table.quantize[slot] = quantize_activations<Bits>;
  table.quant[slot][kScaleF32][0] = int8_quant_linear<Bits, F32Weights, false>;
  table.quant[slot][kScaleF32][1] = int8_quant_linear<Bits, F32Weights, true>;
  table.quant[slot][kScaleF16][0] = int8_quant_linear<Bits, F16Weights, false>;
  table.quant[slot][kScaleF16][1] = int8_quant_linear<Bits, F16Weights, true>;
  table.quant[slot][kScaleBF16][0] = int8_quant_linear<Bits, BF16Weights, false>;
  table.quant[slot][kScaleBF16][1] = int8_quant_linear<Bits, BF16Weights, true>;
}

const Int8KernelTable kInt8Table = [] {
  Int8KernelTable table{};
  fill_int8<2>(table);
  fill_int8<4>(table);
  fill_int8<8>(table);
  nibble::kernels::cpu::fill_block_int8_kernels(table);
  return table;
}();

}  // namespace

namespace nibble::kernels::cpu {
const Int8KernelTable& int8_kernels_avx512_vnni() { return kInt8Table; }
}  // namespace nibble::kernels::cpu
