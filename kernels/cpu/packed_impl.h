#pragma once
// The quantized, 2:4-sparse and CSR linear kernels, written once over the
// vector-traits type `V` of the including per-ISA unit (see linear_impl.h for the
// scheme). Everything lives in that unit's anonymous namespace.
//
// V adds to the dense traits: ireg (kWidth u32 lanes), load_u32, load_u16 (zero-
// extended), srli/slli by a constant, and_ (with a constant), or_, add_i (constant),
// to_float (u32 -> float), load_u8 (u8 -> float), set1, add, mul, store,
// lookup16 (per-lane pick from 16 floats), gather (floats at u32 indices,
// from u16 indices widened by load_u16), kRowBlock.
#include <algorithm>
#include <cstdint>
#include <utility>

namespace {

using nibble::kernels::cpu::AlignedBytes;
using nibble::kernels::cpu::CsrMatrix;
using nibble::kernels::cpu::kLanes;
using nibble::kernels::cpu::kUnpackChunk;
using nibble::kernels::cpu::PackedKernelArgs;
using nibble::kernels::cpu::QuantLayout;
using nibble::kernels::cpu::Sparse24Layout;

constexpr int kRegsPerTile = static_cast<int>(kLanes / V::kWidth);
static_assert(V::kRowBlock <= nibble::kernels::cpu::kMaxRowBlock);

template <int Bits>
struct UnitShape {
  static constexpr int kCodes = Bits == 3 ? 32 : 32 / Bits;
  static constexpr int kWords = Bits == 3 ? 3 : 1;
};

template <int N, typename F>
inline void unrolled(F&& body) {
  [&]<int... I>(std::integer_sequence<int, I...>) { (body(std::integral_constant<int, I>{}), ...); }(
      std::make_integer_sequence<int, N>{});
}

// Code J of a unit, for the lanes whose words are w[0..kWords).
template <int Bits, int J>
inline typename V::reg code_at(const typename V::ireg* w) {
  if constexpr (Bits == 3) {
    const auto low = V::and_(V::srli(w[J < 16 ? 0 : 1], 2 * (J % 16)), 3u);
    const auto high = V::and_(V::srli(w[2], J), 1u);
    return V::to_float(V::or_(low, V::slli(high, 2)));
  } else {
    return V::to_float(V::and_(V::srli(w[0], Bits * J), (1u << Bits) - 1u));
  }
}

template <typename ScaleFormat>
inline const typename ScaleFormat::Element* group_row(const AlignedBytes& bytes, std::int64_t tile, std::int64_t group,
                                                      std::int64_t groups) {
  return bytes.as<typename ScaleFormat::Element>() + (tile * groups + group) * kLanes;
}

// The group's correction term c, added as c * (sum of x over the group):
// -scale * zero for zero-point formats, the minimum for Min formats.
template <typename ScaleFormat, bool kMin>
inline typename V::reg group_offset(const AlignedBytes& offsets, std::int64_t tile, std::int64_t group,
                                    std::int64_t groups, int reg, typename V::reg scale) {
  if constexpr (kMin) {
    return V::load(group_row<ScaleFormat>(offsets, tile, group, groups) + reg * V::kWidth, ScaleFormat{});
  } else {
    const auto* zeros = offsets.as<std::uint8_t>() + (tile * groups + group) * kLanes + reg * V::kWidth;
    return V::mul(V::mul(scale, V::set1(-1.0f)), V::load_u8(zeros));
  }
}

inline void store_tile(const PackedKernelArgs& a, std::int64_t layout_rows, std::int64_t tile, std::int64_t r0,
                       std::int64_t rows, const float* totals) {
  const std::int64_t n0 = tile * kLanes;
  const std::int64_t lanes = std::min<std::int64_t>(kLanes, layout_rows - n0);
  for (std::int64_t r = 0; r < rows; ++r) {
    float* yr = a.y + (r0 + r) * a.ldy + n0;
    const float* tr = totals + r * kLanes;
    for (std::int64_t l = 0; l < lanes; ++l) yr[l] = tr[l] + (a.bias != nullptr ? a.bias[n0 + l] : 0.0f);
  }
}

// Few rows (decode): each unpacked weight register feeds all Rows FMAs at once.
// The weights stream from memory once per call (decode reads every layer in turn, far
// more than the caches hold). The hardware prefetcher alone leaves the unpacking
// waiting on memory; asking for the cache lines a few KB ahead overlaps the two.
// Into every cache level (T0), not non-temporally: on Gemma 3's 262144 x 640 Q8_0
// lm_head at decode (bench/quant_bench, 2 threads) the non-temporal hint left 70 %
// of the samples on the weight loads and ran at 17 ms; T0 runs at 10 ms, the
// machine's read bandwidth (as the block kernels found, block_vnni.cpp).
constexpr std::size_t kPrefetchDistance = 2048;

inline void prefetch_ahead(const void* at, std::size_t bytes) {
  const char* ahead = static_cast<const char*>(at) + kPrefetchDistance;
  for (std::size_t line = 0; line < bytes; line += 64) __builtin_prefetch(ahead + line, 0, 3);
}

template <int Bits, typename ScaleFormat, bool kMin, int Rows>
void quant_tile_direct(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile, std::int64_t r0) {
  using Shape = UnitShape<Bits>;
  // One row alone would serialize on a single FMA chain per register; two
  // interleaved accumulators keep the FMA units busy.
  constexpr int kSplit = Rows == 1 ? 2 : 1;
  const std::uint32_t* tile_words = w.words.as<std::uint32_t>() + tile * w.units * Shape::kWords * kLanes;
  const float* x = a.x + r0 * a.ldx;
  alignas(64) float totals[Rows * kLanes] = {};
  for (std::int64_t g = 0; g < w.groups; ++g) {
    typename V::reg acc[Rows][kSplit][kRegsPerTile];
    for (auto& row : acc)
      for (auto& split : row)
        for (auto& reg : split) reg = V::zero();
    const std::int64_t unit_end = w.group_unit_begin[static_cast<std::size_t>(g) + 1];
    for (std::int64_t u = w.group_unit_begin[static_cast<std::size_t>(g)]; u < unit_end; ++u) {
      const std::uint32_t* unit = tile_words + u * Shape::kWords * kLanes;
      const float* xu = x + u * Shape::kCodes;
      prefetch_ahead(unit, Shape::kWords * kLanes * sizeof(std::uint32_t));
      for (int v = 0; v < kRegsPerTile; ++v) {
        typename V::ireg words[Shape::kWords];
        for (int plane = 0; plane < Shape::kWords; ++plane) words[plane] = V::load_u32(unit + plane * kLanes + v * V::kWidth);
        unrolled<Shape::kCodes>([&](auto j) {
          const auto q = code_at<Bits, decltype(j)::value>(words);
          for (int r = 0; r < Rows; ++r) {
            auto& target = acc[r][decltype(j)::value % kSplit][v];
            target = V::fma(q, V::set1(xu[r * a.ldx + decltype(j)::value]), target);
          }
        });
      }
    }
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto scale = V::load(group_row<ScaleFormat>(w.scales, tile, g, w.groups) + v * V::kWidth, ScaleFormat{});
      const auto offset = group_offset<ScaleFormat, kMin>(w.offsets, tile, g, w.groups, v, scale);
      for (int r = 0; r < Rows; ++r) {
        auto sum = acc[r][0][v];
        if constexpr (kSplit == 2) sum = V::add(sum, acc[r][1][v]);
        float* total = totals + r * kLanes + v * V::kWidth;
        const auto x_sum = V::set1(a.group_sums[(r0 + r) * w.groups + g]);
        V::store(total, V::fma(scale, sum, V::fma(offset, x_sum, V::load(total))));
      }
    }
  }
  store_tile(a, w.rows, tile, r0, Rows, totals);
}

// Rows of the batch against codes already unpacked to floats, [codes][kLanes].
template <int Rows>
void accumulate_unpacked(const float* unpacked, std::int64_t codes, const float* x, std::int64_t ldx, float* acc_rows) {
  typename V::reg acc[Rows][kRegsPerTile];
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < kRegsPerTile; ++v) acc[r][v] = V::load(acc_rows + r * kLanes + v * V::kWidth);
  for (std::int64_t c = 0; c < codes; ++c) {
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto q = V::load(unpacked + c * kLanes + v * V::kWidth);
      for (int r = 0; r < Rows; ++r) acc[r][v] = V::fma(q, V::set1(x[r * ldx + c]), acc[r][v]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < kRegsPerTile; ++v) V::store(acc_rows + r * kLanes + v * V::kWidth, acc[r][v]);
}

// Many rows (prefill, batched decode): each chunk of a tile is unpacked once into
// L1-resident scratch and reused by every row of the batch.
template <int Bits, typename ScaleFormat, bool kMin>
void quant_tile_batched(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile) {
  using Shape = UnitShape<Bits>;
  constexpr std::int64_t kChunkUnits = std::max<std::int64_t>(1, kUnpackChunk / Shape::kCodes);
  float* totals = a.scratch;
  float* acc_rows = totals + a.rows * kLanes;
  float* unpacked = acc_rows + a.rows * kLanes;
  std::fill(totals, totals + a.rows * kLanes, 0.0f);
  const std::uint32_t* tile_words = w.words.as<std::uint32_t>() + tile * w.units * Shape::kWords * kLanes;
  for (std::int64_t g = 0; g < w.groups; ++g) {
    std::fill(acc_rows, acc_rows + a.rows * kLanes, 0.0f);
    const std::int64_t unit_end = w.group_unit_begin[static_cast<std::size_t>(g) + 1];
    for (std::int64_t u0 = w.group_unit_begin[static_cast<std::size_t>(g)]; u0 < unit_end; u0 += kChunkUnits) {
      const std::int64_t u1 = std::min(unit_end, u0 + kChunkUnits);
      for (std::int64_t u = u0; u < u1; ++u) {
        const std::uint32_t* unit = tile_words + u * Shape::kWords * kLanes;
        float* out = unpacked + (u - u0) * Shape::kCodes * kLanes;
        prefetch_ahead(unit, Shape::kWords * kLanes * sizeof(std::uint32_t));
        for (int v = 0; v < kRegsPerTile; ++v) {
          typename V::ireg words[Shape::kWords];
          for (int plane = 0; plane < Shape::kWords; ++plane) words[plane] = V::load_u32(unit + plane * kLanes + v * V::kWidth);
          unrolled<Shape::kCodes>([&](auto j) {
            V::store(out + decltype(j)::value * kLanes + v * V::kWidth, code_at<Bits, decltype(j)::value>(words));
          });
        }
      }
      const std::int64_t codes = (u1 - u0) * Shape::kCodes;
      const float* x = a.x + u0 * Shape::kCodes;
      for (std::int64_t r0 = 0; r0 < a.rows; r0 += V::kRowBlock) {
        const float* xr = x + r0 * a.ldx;
        float* accr = acc_rows + r0 * kLanes;
        switch (std::min<std::int64_t>(V::kRowBlock, a.rows - r0)) {
          case 4:
            if constexpr (V::kRowBlock >= 4) accumulate_unpacked<4>(unpacked, codes, xr, a.ldx, accr);
            break;
          case 3:
            if constexpr (V::kRowBlock >= 3) accumulate_unpacked<3>(unpacked, codes, xr, a.ldx, accr);
            break;
          case 2:
            accumulate_unpacked<2>(unpacked, codes, xr, a.ldx, accr);
            break;
          default:
            accumulate_unpacked<1>(unpacked, codes, xr, a.ldx, accr);
            break;
        }
      }
    }
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto scale = V::load(group_row<ScaleFormat>(w.scales, tile, g, w.groups) + v * V::kWidth, ScaleFormat{});
      const auto offset = group_offset<ScaleFormat, kMin>(w.offsets, tile, g, w.groups, v, scale);
      for (std::int64_t r = 0; r < a.rows; ++r) {
        float* total = totals + r * kLanes + v * V::kWidth;
        const auto x_sum = V::set1(a.group_sums[r * w.groups + g]);
        const auto sum = V::load(acc_rows + r * kLanes + v * V::kWidth);
        V::store(total, V::fma(scale, sum, V::fma(offset, x_sum, V::load(total))));
      }
    }
  }
  store_tile(a, w.rows, tile, 0, a.rows, totals);
}

template <int Bits, typename ScaleFormat, bool kMin>
void quant_linear(const QuantLayout& w, const PackedKernelArgs& a, std::int64_t tile_begin, std::int64_t tile_end) {
  for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
    switch (a.rows) {
      case 1:
        quant_tile_direct<Bits, ScaleFormat, kMin, 1>(w, a, tile, 0);
        break;
      case 2:
        quant_tile_direct<Bits, ScaleFormat, kMin, 2>(w, a, tile, 0);
        break;
      case 3:
        if constexpr (V::kRowBlock >= 3) {
          quant_tile_direct<Bits, ScaleFormat, kMin, 3>(w, a, tile, 0);
          break;
        }
        [[fallthrough]];
      case 4:
        if constexpr (V::kRowBlock >= 4) {
          quant_tile_direct<Bits, ScaleFormat, kMin, 4>(w, a, tile, 0);
          break;
        }
        [[fallthrough]];
      default:
        quant_tile_batched<Bits, ScaleFormat, kMin>(w, a, tile);
        break;
    }
  }
}

// 2:4-sparse 4-bit: only the kept half of the codes is read and multiplied; each
// lane picks its inputs by the stored positions. Pruned slots are never stored,
// so the zero-point term needs the per-lane sum of the inputs actually picked.
template <typename ScaleFormat, int Rows>
void sparse24_tile(const Sparse24Layout& w, const PackedKernelArgs& a, std::int64_t tile, std::int64_t r0) {
  constexpr int kUnitInputs = Sparse24Layout::kInputsPerUnit;
  const std::uint32_t* tile_codes = w.codes.as<std::uint32_t>() + tile * w.units * kLanes;
  const std::uint16_t* tile_positions = w.positions.as<std::uint16_t>() + tile * w.units * kLanes;
  alignas(64) float totals[Rows * kLanes] = {};
  for (std::int64_t g = 0; g < w.groups; ++g) {
    typename V::reg acc[Rows][kRegsPerTile];
    typename V::reg picked[Rows][kRegsPerTile];
    for (int r = 0; r < Rows; ++r)
      for (int v = 0; v < kRegsPerTile; ++v) acc[r][v] = picked[r][v] = V::zero();
    const std::int64_t unit_end = (g + 1) * w.units_per_group;
    for (std::int64_t u = g * w.units_per_group; u < unit_end; ++u) {
      const float* xu = a.x + r0 * a.ldx + u * kUnitInputs;
      prefetch_ahead(tile_codes + u * kLanes, kLanes * sizeof(std::uint32_t));
      prefetch_ahead(tile_positions + u * kLanes, kLanes * sizeof(std::uint16_t));
      for (int v = 0; v < kRegsPerTile; ++v) {
        const auto codes = V::load_u32(tile_codes + u * kLanes + v * V::kWidth);
        const auto positions = V::load_u16(tile_positions + u * kLanes + v * V::kWidth);
        unrolled<Sparse24Layout::kCodesPerUnit>([&](auto j) {
          constexpr int kSlot = decltype(j)::value;
          const auto q = V::to_float(V::and_(V::srli(codes, 4 * kSlot), 15u));
          const auto index = V::add_i(V::and_(V::srli(positions, 2 * kSlot), 3u), 4u * (kSlot / 2));
          for (int r = 0; r < Rows; ++r) {
            const auto xv = V::lookup16(xu + r * a.ldx, index);
            acc[r][v] = V::fma(q, xv, acc[r][v]);
            picked[r][v] = V::add(picked[r][v], xv);
          }
        });
      }
    }
    for (int v = 0; v < kRegsPerTile; ++v) {
      const auto scale = V::load(group_row<ScaleFormat>(w.scales, tile, g, w.groups) + v * V::kWidth, ScaleFormat{});
      const auto offset = group_offset<ScaleFormat, false>(w.zeros, tile, g, w.groups, v, scale);
      for (int r = 0; r < Rows; ++r) {
        float* total = totals + r * kLanes + v * V::kWidth;
        V::store(total, V::fma(scale, acc[r][v], V::fma(offset, picked[r][v], V::load(total))));
      }
    }
  }
  store_tile(a, w.rows, tile, r0, Rows, totals);
}

template <typename ScaleFormat>
void sparse24_linear(const Sparse24Layout& w, const PackedKernelArgs& a, std::int64_t tile_begin,
                     std::int64_t tile_end) {
  for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
    for (std::int64_t r0 = 0; r0 < a.rows; r0 += V::kRowBlock) {
      switch (std::min<std::int64_t>(V::kRowBlock, a.rows - r0)) {
        case 4:
          if constexpr (V::kRowBlock >= 4) sparse24_tile<ScaleFormat, 4>(w, a, tile, r0);
          break;
        case 3:
          if constexpr (V::kRowBlock >= 3) sparse24_tile<ScaleFormat, 3>(w, a, tile, r0);
          break;
        case 2:
          sparse24_tile<ScaleFormat, 2>(w, a, tile, r0);
          break;
        default:
          sparse24_tile<ScaleFormat, 1>(w, a, tile, r0);
          break;
      }
    }
  }
}

// Unstructured sparse rows: gathers the inputs of each stored weight.
template <typename Format>
void csr_linear(const CsrMatrix& w, const float* x, std::int64_t rows, std::int64_t n_begin, std::int64_t n_end,
                const float* bias, float* y, std::int64_t ldy) {
  const auto* values = w.values.as<typename Format::Element>();
  const std::uint16_t* columns = w.columns.data();
  for (std::int64_t r0 = 0; r0 < rows; r0 += V::kRowBlock) {
    const std::int64_t block = std::min<std::int64_t>(V::kRowBlock, rows - r0);
    for (std::int64_t n = n_begin; n < n_end; ++n) {
      typename V::reg acc[nibble::kernels::cpu::kMaxRowBlock];
      for (auto& reg : acc) reg = V::zero();
      std::int64_t j = w.row_begin[static_cast<std::size_t>(n)];
      const std::int64_t end = w.row_begin[static_cast<std::size_t>(n) + 1];
      for (; j + V::kWidth <= end; j += V::kWidth) {
        const auto wv = V::load(values + j, Format{});
        const auto index = V::load_u16(columns + j);
        for (std::int64_t r = 0; r < block; ++r) acc[r] = V::fma(wv, V::gather(x + (r0 + r) * w.cols, index), acc[r]);
      }
      float tail[nibble::kernels::cpu::kMaxRowBlock] = {};
      for (; j < end; ++j) {
        const float wj = widen(values[j], Format{});
        for (std::int64_t r = 0; r < block; ++r) tail[r] += wj * x[(r0 + r) * w.cols + columns[j]];
      }
      const float b = bias != nullptr ? bias[n] : 0.0f;
      for (std::int64_t r = 0; r < block; ++r) y[(r0 + r) * ldy + n] = V::sum(acc[r]) + tail[r] + b;
    }
  }
}

}  // namespace
