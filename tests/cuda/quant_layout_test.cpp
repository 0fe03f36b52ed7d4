// The CUDA backend's host side, tested on the CPU (no GPU needed): the repacked
// tile layout decodes back to the QuantizedMatrix's codes, scales, zero points and
// minimums (every format, group size, act-order, odd shapes); the magic-number
// fp16 dequant reproduces s (q - z) and s q + m exactly; the 2:4 metadata is
// well-formed and points at the kept codes; and a warp-level emulation of the
// kernel's data path (ldmatrix from the swizzled stage, mma.m16n8k16 and
// mma.sp.m16n8k32 with fragments as the PTX ISA defines them) computes the same
// products as a plain float64 loop. The emulator is written from the PTX ISA text,
// independently of fragment_layout.h, so a slip in either shows up here.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/half.h"
#include "cuda_test_util.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/fragment_layout.h"
#include "kernels/cuda/kquant_layout.h"
#include "kernels/cuda/quant_gemm.h"
#include "kernels/cuda/quant_repack.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::QuantCase;
using cuda_testing::random_quantized;
using namespace layout;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

// ---------------------------------------------------------------------------------
// fp16 emulation and the magic-number dequant.

TEST(CudaF16Emulation, RoundsLikeTheCpuConversion) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> exponent(-27.0f, 17.0f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 200000; ++i) {
    const float value = std::ldexp(mantissa(rng), static_cast<int>(exponent(rng))) * (i % 2 == 0 ? 1.0f : -1.0f);
    ASSERT_EQ(f16emu::from_double(value), f32_to_f16(value)) << value;
  }
  // Exact midpoints round to even, in the normal and the subnormal range.
  EXPECT_EQ(f16emu::from_double(1.0 + 0x1p-11), 0x3c00u);
  EXPECT_EQ(f16emu::from_double(1.0 + 3 * 0x1p-11), 0x3c02u);
  EXPECT_EQ(f16emu::from_double(0x1p-25), 0x0000u);
  EXPECT_EQ(f16emu::from_double(3 * 0x1p-25), 0x0002u);
  EXPECT_EQ(f16emu::from_double(65504.0), 0x7bffu);
  EXPECT_EQ(f16emu::from_double(65519.0), 0x7bffu);
  EXPECT_EQ(f16emu::from_double(65520.0), 0x7c00u);
  EXPECT_EQ(f16emu::from_double(-0.0), 0x8000u);
}

TEST(CudaMagicDequant, ReproducesScaleTimesCodeMinusZero) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> scale(1e-4f, 0.5f);
  for (const QuantFormat format : {QuantFormat::Dense4, QuantFormat::Dense8, QuantFormat::Sparse4}) {
    const int levels = format == QuantFormat::Dense8 ? 256 : 16;
    for (int trial = 0; trial < 40; ++trial) {
      const std::uint16_t s = f32_to_f16(scale(rng) * (trial % 3 == 0 ? -1.0f : 1.0f));
      const std::uint16_t m = f32_to_f16(-scale(rng) * 8);
      for (int zero = 0; zero <= std::min(levels, 255); ++zero) {
        const std::uint32_t record = scale_record(s, f32_to_f16(static_cast<float>(zero)));
        for (int q = 0; q < levels; ++q) {
          for (const int row : {0, 7, 8, 15}) {  // lo and hi registers for 4-bit
            const std::uint16_t expected = f16emu::from_double(f16emu::to_double(s) * (q - zero));
            ASSERT_EQ(f16_to_f32(decode_weight_f16(format, static_cast<std::uint8_t>(q), record, false, row)),
                      f16_to_f32(expected))
                << "q " << q << " zero " << zero << " row " << row;
          }
        }
      }
      const std::uint32_t min_record = scale_record(s, m);
      for (int q = 0; q < levels; ++q) {
        for (const int row : {3, 12}) {
          const std::uint16_t expected =
              f16emu::from_double(f16emu::to_double(s) * q + f16emu::to_double(m));
          ASSERT_EQ(decode_weight_f16(format, static_cast<std::uint8_t>(q), min_record, true, row), expected);
        }
      }
    }
  }
}

TEST(CudaMagicDequant, ExtractsEveryNibbleAndByteOfAWord) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 1000; ++trial) {
    const std::uint32_t w = static_cast<std::uint32_t>(rng());
    std::uint32_t r4[4];
    extract4(w, r4);
    for (int v = 0; v < 8; ++v) {
      const std::uint32_t reg = r4[v >> 1];
      const std::uint16_t half = static_cast<std::uint16_t>((v & 1) ? reg >> 16 : reg & 0xffffu);
      const std::uint32_t nibble = (w >> nibble_shift(v)) & 0xfu;
      const double value = f16emu::to_double(half) - 1024.0;
      ASSERT_EQ(value, extract4_is_hi(v >> 1) ? 16.0 * nibble : 1.0 * nibble) << v;
    }
    std::uint32_t r8[2];
    extract8(w, r8);
    for (int v = 0; v < 4; ++v) {  // part 0 holds values 0..3
      const std::uint32_t reg = r8[v >> 1];
      const std::uint16_t half = static_cast<std::uint16_t>((v & 1) ? reg >> 16 : reg & 0xffffu);
      ASSERT_EQ(f16emu::to_double(half) - 1024.0, static_cast<double>((w >> byte_shift(v)) & 0xffu)) << v;
    }
  }
}

// ---------------------------------------------------------------------------------
// Fragment index functions.

TEST(CudaFragmentLayout, DenseTileIsCoveredOnceAndInvertible) {
  std::set<std::pair<int, int>> seen;
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < 8; ++v) {
      const int row = fragment_row(lane, v);
      const int col = fragment_col(lane, v);
      ASSERT_TRUE(seen.insert({row, col}).second);
      EXPECT_EQ(fragment_lane(row, col), lane);
      EXPECT_EQ(fragment_value(row, col), v);
    }
  }
  EXPECT_EQ(seen.size(), 256u);
  // Bit fields do not overlap and fill the words exactly.
  std::uint32_t nibbles = 0;
  for (int v = 0; v < 8; ++v) {
    EXPECT_EQ(nibbles & (0xfu << nibble_shift(v)), 0u);
    nibbles |= 0xfu << nibble_shift(v);
  }
  EXPECT_EQ(nibbles, 0xffffffffu);
  std::uint32_t bytes[2] = {0, 0};
  for (int v = 0; v < 8; ++v) {
    EXPECT_EQ(bytes[byte_part(v)] & (0xffu << byte_shift(v)), 0u);
    bytes[byte_part(v)] |= 0xffu << byte_shift(v);
  }
  EXPECT_EQ(bytes[0], 0xffffffffu);
  EXPECT_EQ(bytes[1], 0xffffffffu);
}

TEST(CudaFragmentLayout, SparseUnitAndMetadataAreCoveredOnce) {
  std::set<std::tuple<int, int, int>> values;  // (row, chunk, slot)
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < 8; ++v) {
      const int row = fragment_row(lane, v);
      const int chunk = fragment_sparse_chunk(lane, v);
      ASSERT_TRUE(values.insert({row, chunk, v & 1}).second);
      EXPECT_EQ(sparse_lane(row, chunk), lane);
      EXPECT_EQ(sparse_value(row, chunk) + (v & 1), v);
    }
  }
  EXPECT_EQ(values.size(), 16u * 8u * 2u);
  std::map<int, std::uint32_t> meta_bits;  // lane -> bits used
  for (int unit = 0; unit < 2; ++unit) {
    for (int row = 0; row < 16; ++row) {
      for (int chunk = 0; chunk < 8; ++chunk) {
        const int lane = sparse_meta_lane(row, chunk, unit);
        EXPECT_EQ(lane >> 2, row & 7);          // the quad of the row
        EXPECT_EQ((lane & 3) >> 1, unit);       // tig 0,1: unit 0; tig 2,3: unit 1
        EXPECT_EQ(lane & 1, chunk >> 2);        // role: inputs 0-15 or 16-31 of the unit
        const std::uint32_t field = 0xfu << sparse_meta_shift(row, chunk);
        EXPECT_EQ(meta_bits[lane] & field, 0u);
        meta_bits[lane] |= field;
      }
    }
  }
  EXPECT_EQ(meta_bits.size(), 32u);
  for (const auto& [lane, bits] : meta_bits) EXPECT_EQ(bits, 0xffffffffu) << lane;
  // Blob word positions are a permutation of the blob.
  for (const QuantFormat format : {QuantFormat::Dense4, QuantFormat::Dense8, QuantFormat::Sparse4}) {
    std::set<int> words;
    for (int lane = 0; lane < 32; ++lane) {
      if (format == QuantFormat::Sparse4) {
        words.insert(sparse_code_index(lane, 0));
        words.insert(sparse_code_index(lane, 1));
        words.insert(sparse_meta_index(lane));
      } else {
        for (int w = 0; w < words_per_lane(format); ++w) words.insert(dense_word_index(lane, w));
      }
    }
    EXPECT_EQ(static_cast<int>(words.size()), blob_words(format));
    EXPECT_EQ(*words.rbegin(), blob_words(format) - 1);
  }
}

TEST(CudaFragmentLayout, StageSwizzleIsConflictFreeForLdmatrix) {
  for (const int m_tile : {0, 1, 7}) {
    for (const int pair : {0, 1}) {
      for (int matrix = 0; matrix < 4; ++matrix) {
        std::set<int> bank_groups;  // 16-byte groups of 4 banks among 128 bytes
        std::set<int> rows;
        for (int lane = 8 * matrix; lane < 8 * matrix + 8; ++lane) {
          const int offset = b_fragment_offset(lane, m_tile, pair);
          EXPECT_EQ(offset % 16, 0);
          bank_groups.insert((offset % 128) / 16);
          rows.insert(offset / kXRowBytes);
        }
        EXPECT_EQ(bank_groups.size(), 8u);
        EXPECT_EQ(rows.size(), 8u);
      }
    }
  }
  // Every (row, piece) has its own place within its row.
  for (int row = 0; row < 64; ++row) {
    std::set<int> places;
    for (int piece = 0; piece < 8; ++piece) places.insert(x_stage_offset(row, piece));
    EXPECT_EQ(places.size(), 8u);
    EXPECT_EQ(*places.begin(), row * kXRowBytes);
  }
}

TEST(CudaFragmentLayout, ChunkSlotsDeduplicateRunsOfGroups) {
  int slot[4];
  bool starts[4];
  chunk_slots(3, 3, 3, 3, slot, starts);
  EXPECT_EQ(slot[3], 0);
  EXPECT_TRUE(starts[0]);
  EXPECT_FALSE(starts[1] || starts[2] || starts[3]);
  chunk_slots(0, 0, 1, 1, slot, starts);
  EXPECT_EQ(slot[1], 0);
  EXPECT_EQ(slot[2], 1);
  EXPECT_EQ(slot[3], 1);
  EXPECT_TRUE(starts[2]);
  chunk_slots(4, 5, 6, 7, slot, starts);
  EXPECT_EQ(slot[3], 3);
  EXPECT_TRUE(starts[0] && starts[1] && starts[2] && starts[3]);
}

// ---------------------------------------------------------------------------------
// Repacking round trips.

std::vector<QuantCase> layout_cases() {
  using Offset = QuantizedMatrix::Offset;
  std::vector<QuantCase> cases;
  for (const int bits : {2, 3, 4, 8}) {
    for (const std::int64_t group : {16, 32, 64, 128, -1, 40, 48}) {
      cases.push_back({33, 200, bits, group});
      cases.push_back({130, 256, bits, group, /*act_order=*/true});
    }
    cases.push_back({1, 64, bits, 32, false, true});
    cases.push_back({17, 96, bits, 32, false, false, Offset::Min});
    cases.push_back({24, 128, bits, 64, false, false, Offset::ZeroPoint, DType::BF16});
    cases.push_back({24, 130, bits, 64, false, false, Offset::ZeroPoint, DType::F32});
  }
  for (const std::int64_t group : {32, 64, 128, -1, 48}) {
    cases.push_back({40, 256, 4, group, false, false, Offset::ZeroPoint, DType::F16, /*sparse_2_4=*/true});
    cases.push_back({9, 148, 4, group, false, false, Offset::ZeroPoint, DType::F16, true});
  }
  cases.push_back({20, 256, 4, 64, /*act_order=*/true, false, Offset::ZeroPoint, DType::F16, true});
  cases.push_back({20, 256, 8, 64, false, false, Offset::ZeroPoint, DType::F16, true});
  cases.push_back({20, 256, 2, 64, false, false, Offset::ZeroPoint, DType::F16, true});
  return cases;
}

// value(n, k) with the scale (and minimum) as the layout stores them, rounded to fp16 once.
std::uint16_t expected_weight(const QuantizedMatrix& m, std::int64_t n, std::int64_t k) {
  const std::size_t cell = at(n * m.groups + m.group(k));
  const double s = f16emu::to_double(f32_to_f16(m.scales[cell]));
  const double q = m.codes[at(n * m.cols + k)];
  if (m.offset == QuantizedMatrix::Offset::Min) return f16emu::from_double(s * q + f16emu::to_double(f32_to_f16(m.mins[cell])));
  return f16emu::from_double(s * (q - m.zeros[cell]));
}

void check_round_trip(const QuantizedMatrix& m) {
  SCOPED_TRACE(m.name);
  const RepackedQuant l = repack_quantized(m);
  const QuantLayoutDims& d = l.dims;
  const bool want_sparse = sparse_ineligibility(m).empty();
  EXPECT_EQ(d.format == QuantFormat::Sparse4, want_sparse);
  EXPECT_EQ(d.format == QuantFormat::Dense8, m.bits == 8);
  EXPECT_EQ(d.n_pad % kBlockN, 0);
  EXPECT_GE(d.n_pad, m.rows);
  EXPECT_LT(d.n_pad - m.rows, kBlockN);
  EXPECT_EQ(d.k_pad % kChunkK, 0);
  ASSERT_EQ(l.weights.size(), at(d.n_tiles() * d.k_chunks() * d.blob_words()));
  ASSERT_EQ(l.scales.size(), at(d.groups * d.n_pad));
  ASSERT_EQ(l.tile_group.size(), at(d.k_tiles()));
  ASSERT_EQ(l.column_source.size(), at(d.k_pad));

  // column_source: every input column exactly once, padding -1; each tile one group.
  std::vector<int> count(at(m.cols), 0);
  bool identity = true;
  for (std::int64_t j = 0; j < d.k_pad; ++j) {
    const std::int32_t col = l.column_source[at(j)];
    if (col != (j < m.cols ? j : -1)) identity = false;
    if (col < 0) continue;
    ASSERT_LT(col, m.cols);
    ++count[at(col)];
    EXPECT_EQ(l.tile_group[at(j / kTileK)], m.group(col)) << "packed column " << j;
    if (d.format == QuantFormat::Sparse4) {
      EXPECT_EQ(col, j) << "2:4 layouts keep the input order";
      EXPECT_EQ(l.tile_group[at(j / kSparseUnitK * 2)], l.tile_group[at(j / kSparseUnitK * 2 + 1)]);
    }
  }
  EXPECT_EQ(identity, l.identity_columns);
  for (std::int64_t k = 0; k < m.cols; ++k) ASSERT_EQ(count[at(k)], 1) << "input column " << k;
  for (const auto g : l.tile_group) {
    EXPECT_GE(g, 0);
    EXPECT_LT(g, m.groups);
  }
  // Monotone groups keep input order unless a group must be padded to whole tiles.
  if (!m.sparse_2_4 && std::is_sorted(m.group_of_col.begin(), m.group_of_col.end())) {
    const std::int64_t size = m.groups == 1 ? m.cols : m.cols / m.groups;
    if (size % kTileK == 0 || m.groups == 1) {
      EXPECT_TRUE(l.identity_columns);
    }
  }

  bool scales_exact = true;
  for (std::int64_t n = 0; n < d.n_pad; ++n) {
    for (std::int64_t j = 0; j < d.k_pad; ++j) {
      const std::int32_t col = l.column_source[at(j)];
      const DecodedCode code = repacked_code(l, n, j);
      if (n >= m.rows) {
        if (d.format != QuantFormat::Sparse4) {
          ASSERT_EQ(code.code, 0);
        }
        continue;
      }
      if (col < 0) {
        if (d.format != QuantFormat::Sparse4) {
          ASSERT_EQ(code.code, 0);
        }
        continue;
      }
      const std::uint8_t want = m.codes[at(n * m.cols + col)];
      const std::uint32_t record = repacked_scale_record(l, n, j);
      const std::size_t cell = at(n * m.groups + m.group(col));
      ASSERT_EQ(record & 0xffffu, f32_to_f16(m.scales[cell])) << n << " " << j;
      if (m.offset == QuantizedMatrix::Offset::Min) {
        ASSERT_EQ(record >> 16, f32_to_f16(m.mins[cell]));
        scales_exact = scales_exact && f16_to_f32(f32_to_f16(m.mins[cell])) == m.mins[cell];
      } else {
        ASSERT_EQ(f16_to_f32(static_cast<std::uint16_t>(record >> 16)), static_cast<float>(m.zeros[cell]));
      }
      scales_exact = scales_exact && f16_to_f32(f32_to_f16(m.scales[cell])) == m.scales[cell];
      if (code.kept) {
        ASSERT_EQ(code.code, want) << "row " << n << " packed column " << j << " (input " << col << ")";
        ASSERT_EQ(f16_to_f32(repacked_weight_f16(l, n, j)), f16_to_f32(expected_weight(m, n, col)));
      } else {
        ASSERT_EQ(d.format, QuantFormat::Sparse4);
        ASSERT_EQ(want, m.zeros[cell]) << "a pruned position must hold the zero point";
      }
    }
  }
  EXPECT_EQ(scales_exact, l.scales_exact);

  if (d.format == QuantFormat::Sparse4) {
    for (std::int64_t n = 0; n < d.n_pad; ++n) {
      for (std::int64_t c = 0; c < d.k_pad / 4; ++c) {
        const int field = repacked_sparse_meta(l, n, c);
        const int idx0 = field & 3;
        const int idx1 = field >> 2;
        ASSERT_LT(idx0, idx1) << "metadata must name two distinct positions in increasing order";
        ASSERT_TRUE(field != 0x0 && field != 0x5 && field != 0xa && field != 0xf);
        if (n >= m.rows) continue;
        int nonzero = 0;
        for (int p = 0; p < 4; ++p) {
          const std::int32_t col = l.column_source[at(4 * c + p)];
          if (col < 0) continue;
          const bool kept = p == idx0 || p == idx1;
          const auto code = m.codes[at(n * m.cols + col)];
          const auto zero = m.zeros[at(n * m.groups + m.group(col))];
          if (code != zero) {
            ++nonzero;
            ASSERT_TRUE(kept) << "a nonzero weight was pruned: row " << n << " column " << col;
          }
        }
        ASSERT_LE(nonzero, 2);
      }
    }
  }

  // Whole rows, as dequantize_row reads them.
  const std::int64_t tile_words = d.k_chunks() * d.blob_words();
  for (std::int64_t n = 0; n < m.rows; n += std::max<std::int64_t>(1, m.rows / 7)) {
    std::vector<std::uint32_t> records(at(d.groups));
    for (std::int64_t g = 0; g < d.groups; ++g) records[at(g)] = l.scales[at(g * d.n_pad + n)];
    std::vector<float> row(at(m.cols));
    decode_row(d, std::span(l.weights).subspan(at(n / kTileN * tile_words), at(tile_words)), records, l.tile_group,
               l.column_source, static_cast<int>(n % kTileN), row);
    for (std::int64_t k = 0; k < m.cols; ++k) {
      ASSERT_EQ(row[at(k)], f16_to_f32(expected_weight(m, n, k))) << "row " << n << " column " << k;
    }
  }
}

TEST(CudaQuantRepack, DecodesBackToTheQuantizedMatrix) {
  std::mt19937 rng(4);
  for (const QuantCase& c : layout_cases()) check_round_trip(random_quantized(rng, c));
}

TEST(CudaQuantRepack, PicksTheSparseKernelOnlyWhenThePatternSurvives) {
  std::mt19937 rng(5);
  using Offset = QuantizedMatrix::Offset;
  EXPECT_EQ(repack_quantized(random_quantized(rng, {16, 128, 4, 64, false, false, Offset::ZeroPoint, DType::F16, true}))
                .dims.format,
            QuantFormat::Sparse4);
  EXPECT_EQ(repack_quantized(random_quantized(rng, {16, 128, 4, 64, false, false, Offset::ZeroPoint, DType::F16, true}),
                             SparsePolicy::Dense)
                .dims.format,
            QuantFormat::Dense4);
  EXPECT_NE(sparse_ineligibility(random_quantized(rng, {16, 128, 4, 64, true, false, Offset::ZeroPoint, DType::F16, true})),
            "");
  EXPECT_NE(sparse_ineligibility(random_quantized(rng, {16, 96, 4, 48, false, false, Offset::ZeroPoint, DType::F16, true})),
            "");
  EXPECT_NE(sparse_ineligibility(random_quantized(rng, {16, 96, 8, 32, false, false, Offset::ZeroPoint, DType::F16, true})),
            "");
  EXPECT_EQ(sparse_ineligibility(random_quantized(rng, {16, 100, 4, -1, false, false, Offset::ZeroPoint, DType::F16, true})),
            "");
}

TEST(CudaQuantRepack, RejectsScalesOutsideFp16) {
  std::mt19937 rng(6);
  QuantizedMatrix m = random_quantized(rng, {8, 64, 4, 32, false, false, QuantizedMatrix::Offset::ZeroPoint, DType::F32});
  m.scales[3] = 1e6f;
  EXPECT_THROW(repack_quantized(m), Error);
}

// ---------------------------------------------------------------------------------
// Warp emulation of the kernel's inner step, fragments per the PTX ISA text.

// fp16 bit patterns of a 32-bit register's halves.
std::array<double, 2> halves(std::uint32_t reg) {
  return {f16emu::to_double(static_cast<std::uint16_t>(reg & 0xffffu)), f16emu::to_double(static_cast<std::uint16_t>(reg >> 16))};
}

// mma.m16n8k16 .f32.f16.f16.f32 (PTX ISA 9.7.14.5.8): A a0..a7 in 4 registers,
// "row = groupID for a0,a1,a4,a5, groupID + 8 for a2,a3,a6,a7; col =
// threadID_in_group * 2 + (i & 1) for i < 4, + 8 for i >= 4"; B b0..b3 in 2 registers,
// "row = threadID_in_group * 2 + (i & 1) for i < 2, + 8 for i >= 2; col = groupID";
// C/D c0..c3, "row = groupID for c0,c1, groupID + 8 for c2,c3; col = threadID_in_group * 2 + (i & 1)".
void emulate_mma_16816(const std::uint32_t (&a)[32][4], const std::uint32_t (&b)[32][2], double (&d)[32][4]) {
  double A[16][16] = {};
  double B[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, thread = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
      const int col = thread * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = halves(a[lane][i / 2])[static_cast<std::size_t>(i % 2)];
    }
    for (int i = 0; i < 4; ++i) {
      const int row = thread * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][group] = halves(b[lane][i / 2])[static_cast<std::size_t>(i % 2)];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, thread = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? group : group + 8;
      const int col = thread * 2 + (i & 1);
      for (int k = 0; k < 16; ++k) d[lane][i] += A[row][k] * B[k][col];
    }
  }
}

// mma.sp.m16n8k32 .f16 (PTX ISA 9.7.14.6.2.2): A holds the two kept values of
// 4-wide chunks, "row = groupID for a_i, 0 <= i < 2 || 4 <= i < 6, else groupID + 8;
// columns threadID_in_group * 4 .. + 3 for i < 4, + 16 for i >= 4"; B b0..b7 in 4
// registers, row = threadID_in_group * 2 + (i & 1) + 8 (i / 2), col = groupID;
// metadata with sparsity selector 0 in threads 0 and 1 of each group of four:
// thread 0 bits [15:0] = row groupID columns 0-15, [31:16] = row groupID + 8
// columns 0-15; thread 1 the same for columns 16-31; 4 bits per chunk, the lower 2
// bits the position of the first kept value, the upper 2 of the second.
void emulate_mma_sp_16832(const std::uint32_t (&a)[32][4], const std::uint32_t (&b)[32][4],
                          const std::uint32_t (&e)[32], double (&d)[32][4]) {
  double A[16][32] = {};
  double B[32][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, thread = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
      const int first_col = thread * 4 + (i >= 4 ? 16 : 0);
      const int meta_thread = group * 4 + (first_col >= 16 ? 1 : 0);
      const int shift = (row >= 8 ? 16 : 0) + ((first_col % 16) / 4) * 4;
      const std::uint32_t field = (e[meta_thread] >> shift) & 0xfu;
      const int position = static_cast<int>(i % 2 == 0 ? field & 3u : field >> 2);
      A[row][first_col + position] = halves(a[lane][i / 2])[static_cast<std::size_t>(i % 2)];
    }
    for (int i = 0; i < 8; ++i) {
      const int row = thread * 2 + (i & 1) + 8 * (i / 2);
      B[row][group] = halves(b[lane][i / 2])[static_cast<std::size_t>(i % 2)];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, thread = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? group : group + 8;
      const int col = thread * 2 + (i & 1);
      for (int k = 0; k < 32; ++k) d[lane][i] += A[row][k] * B[k][col];
    }
  }
}

// ldmatrix.sync.aligned.m8n8.x4.b16 (PTX ISA 9.7.14.5.15): threads 8j..8j+7 give the
// row addresses of matrix j; thread t receives, in register j, elements
// (t % 4) * 2 and + 1 of row t / 4 of matrix j.
void emulate_ldmatrix_x4(const std::vector<std::uint8_t>& smem, const int (&address)[32], std::uint32_t (&out)[32][4]) {
  for (int t = 0; t < 32; ++t) {
    for (int j = 0; j < 4; ++j) {
      const int row_address = address[8 * j + t / 4];
      const int byte = row_address + (t % 4) * 4;
      out[t][j] = static_cast<std::uint32_t>(smem[at(byte)]) | static_cast<std::uint32_t>(smem[at(byte + 1)]) << 8 |
                  static_cast<std::uint32_t>(smem[at(byte + 2)]) << 16 | static_cast<std::uint32_t>(smem[at(byte + 3)]) << 24;
    }
  }
}

// The device's dequant for one lane: registers of fp16 weights from the blob words,
// using the scale records of rows gid (lo registers 0, 2) and gid + 8 (hi 1, 3).
void dequant_registers(QuantFormat format, const std::uint32_t* words, std::uint32_t record_lo, std::uint32_t record_hi,
                       bool min_offset, std::uint32_t (&a)[4]) {
  std::uint32_t regs[4];
  if (format == QuantFormat::Dense8) {
    std::uint32_t part0[2], part1[2];
    extract8(words[0], part0);
    extract8(words[1], part1);
    regs[0] = part0[0];
    regs[1] = part0[1];
    regs[2] = part1[0];
    regs[3] = part1[1];
  } else {
    extract4(words[0], regs);
  }
  for (int r = 0; r < 4; ++r) {
    const std::uint32_t record = (r & 1) ? record_hi : record_lo;
    const std::uint16_t s = static_cast<std::uint16_t>(record & 0xffffu);
    const std::uint16_t zm = static_cast<std::uint16_t>(record >> 16);
    const double z = min_offset ? 0.0 : f16emu::to_double(zm);
    const std::uint16_t c = min_offset ? zm : std::uint16_t{0};
    std::uint32_t out = 0;
    for (int h = 0; h < 2; ++h) {
      const auto v = static_cast<std::uint16_t>(h ? regs[r] >> 16 : regs[r] & 0xffffu);
      std::uint16_t t;
      if (format != QuantFormat::Dense8 && extract4_is_hi(r)) {
        t = f16emu::fma(v, kF16_OneSixteenth, f16emu::from_double(-(64.0 + z)));
      } else {
        t = f16emu::sub(v, f16emu::from_double(1024.0 + z));
      }
      out |= static_cast<std::uint32_t>(f16emu::fma(t, s, c)) << (16 * h);
    }
    a[r] = out;
  }
}

// The device's K-quant dequant for one lane and tile t: kquant_fragment on the
// lane's blob words, each value pair rounded to fp16 as __floats2half2_rn does.
template <QuantFormat F>
void kquant_registers(const std::uint32_t* blob, int lane, int t, const std::uint32_t (&super)[2],
                      const std::uint32_t (&sub)[2], std::uint32_t (&a)[4]) {
  std::uint32_t words[words_per_lane(F)];
  for (int w = 0; w < words_per_lane(F); ++w) words[w] = blob[kquant_word_index(F, lane, w)];
  float values[8];
  kquant_fragment<F>(words, t, kquant_row(F, super[0], sub[0], t), kquant_row(F, super[1], sub[1], t), values);
  for (int r = 0; r < 4; ++r) {
    a[r] = static_cast<std::uint32_t>(f32_to_f16(values[2 * r])) | static_cast<std::uint32_t>(f32_to_f16(values[2 * r + 1])) << 16;
  }
}

void dequant_kquant_registers(QuantFormat format, const std::uint32_t* blob, int lane, int t,
                              const std::uint32_t (&super)[2], const std::uint32_t (&sub)[2], std::uint32_t (&a)[4]) {
  if (format == QuantFormat::Q4K) return kquant_registers<QuantFormat::Q4K>(blob, lane, t, super, sub, a);
  if (format == QuantFormat::Q5K) return kquant_registers<QuantFormat::Q5K>(blob, lane, t, super, sub, a);
  if (format == QuantFormat::Q50) return kquant_registers<QuantFormat::Q50>(blob, lane, t, super, sub, a);
  if (format == QuantFormat::Q51) return kquant_registers<QuantFormat::Q51>(blob, lane, t, super, sub, a);
  kquant_registers<QuantFormat::Q6K>(blob, lane, t, super, sub, a);
}

// One warp, one 16-row tile, every chunk, `m_tiles` token tiles: the kernel's
// consumer loop on the emulated instructions, against a float64 loop over the
// decoded fp16 weights and fp16 activations.
void check_warp_emulation(const QuantizedMatrix& m, int tokens) {
  SCOPED_TRACE(m.name);
  const RepackedQuant l = repack_quantized(m);
  const QuantLayoutDims& d = l.dims;
  const int m_tiles = (tokens + 7) / 8;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Activations in packed order, fp16, padding columns 0 (as the prepare kernel writes them).
  std::vector<std::uint16_t> x(at(std::int64_t{tokens} * d.k_pad), 0);
  for (int t = 0; t < tokens; ++t) {
    for (std::int64_t j = 0; j < d.k_pad; ++j) {
      if (l.column_source[at(j)] >= 0) x[at(t * d.k_pad + j)] = f32_to_f16(normal(rng));
    }
  }
  for (std::int64_t tile = 0; tile < d.n_tiles(); tile += std::max<std::int64_t>(1, d.n_tiles() / 3)) {
    double acc[8][32][4] = {};
    for (std::int64_t chunk = 0; chunk < d.k_chunks(); ++chunk) {
      // The x stage as cp.async leaves it: swizzled, zero rows past the tokens.
      std::vector<std::uint8_t> stage(at(std::int64_t{m_tiles} * 8 * kXRowBytes), 0);
      for (int row = 0; row < m_tiles * 8; ++row) {
        for (int piece = 0; piece < 8; ++piece) {
          for (int e = 0; e < 8; ++e) {
            const std::uint16_t value = row < tokens ? x[at(row * d.k_pad + chunk * kChunkK + piece * 8 + e)] : 0;
            const int byte = x_stage_offset(row, piece) + 2 * e;
            stage[at(byte)] = static_cast<std::uint8_t>(value & 0xffu);
            stage[at(byte + 1)] = static_cast<std::uint8_t>(value >> 8);
          }
        }
      }
      const std::uint32_t* blob = l.weights.data() + at((tile * d.k_chunks() + chunk) * d.blob_words());
      for (int pair = 0; pair < 2; ++pair) {
        for (int mt = 0; mt < m_tiles; ++mt) {
          int address[32];
          for (int lane = 0; lane < 32; ++lane) address[lane] = b_fragment_offset(lane, mt, pair);
          std::uint32_t b[32][4];
          emulate_ldmatrix_x4(stage, address, b);
          if (d.format == QuantFormat::Sparse4) {
            const std::int64_t packed_col = chunk * kChunkK + pair * kSparseUnitK;
            std::uint32_t a[32][4];
            std::uint32_t e[32];
            for (int lane = 0; lane < 32; ++lane) {
              const int gid = lane >> 2;
              const std::uint32_t lo = repacked_scale_record(l, tile * 16 + gid, packed_col);
              const std::uint32_t hi = repacked_scale_record(l, tile * 16 + gid + 8, packed_col);
              const std::uint32_t word = blob[sparse_code_index(lane, pair)];
              dequant_registers(d.format, &word, lo, hi, d.min_offset, a[lane]);
              // The kernel's metadata for unit `pair`: unit 0 as stored, unit 1 from lane ^ 2.
              e[lane] = blob[sparse_meta_index(pair == 0 ? lane : lane ^ 2)];
            }
            double out[32][4] = {};
            emulate_mma_sp_16832(a, b, e, out);
            for (int lane = 0; lane < 32; ++lane) {
              for (int i = 0; i < 4; ++i) acc[mt][lane][i] += out[lane][i];
            }
          } else {
            for (int half = 0; half < 2; ++half) {
              const int t = 2 * pair + half;
              const std::int64_t packed_col = chunk * kChunkK + t * kTileK;
              std::uint32_t a[32][4];
              std::uint32_t bb[32][2];
              for (int lane = 0; lane < 32; ++lane) {
                const int gid = lane >> 2;
                const std::uint32_t lo = repacked_scale_record(l, tile * 16 + gid, packed_col);
                const std::uint32_t hi = repacked_scale_record(l, tile * 16 + gid + 8, packed_col);
                bb[lane][0] = b[lane][2 * half];
                bb[lane][1] = b[lane][2 * half + 1];
                if (is_kquant(d.format)) {
                  const std::uint32_t super[2] = {lo, hi};
                  const bool has_sub = kquant_has_sub_scales(d.format);
                  const std::uint32_t sub[2] = {has_sub ? l.sub_scales[at(chunk * d.n_pad + tile * 16 + gid)] : 0u,
                                                has_sub ? l.sub_scales[at(chunk * d.n_pad + tile * 16 + gid + 8)] : 0u};
                  dequant_kquant_registers(d.format, blob, lane, t, super, sub, a[lane]);
                  continue;
                }
                std::uint32_t words[2];
                if (d.format == QuantFormat::Dense8) {
                  words[0] = blob[dense_word_index(lane, 2 * t)];
                  words[1] = blob[dense_word_index(lane, 2 * t + 1)];
                } else {
                  words[0] = blob[dense_word_index(lane, t)];
                }
                dequant_registers(d.format, words, lo, hi, d.min_offset, a[lane]);
              }
              double out[32][4] = {};
              emulate_mma_16816(a, bb, out);
              for (int lane = 0; lane < 32; ++lane) {
                for (int i = 0; i < 4; ++i) acc[mt][lane][i] += out[lane][i];
              }
            }
          }
        }
      }
    }
    // D fragment: c0,c1 row gid, c2,c3 row gid + 8; tokens 2 tig + (i & 1).
    for (int mt = 0; mt < m_tiles; ++mt) {
      for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
          const std::int64_t n = tile * 16 + (lane >> 2) + (i >= 2 ? 8 : 0);
          const int token = mt * 8 + 2 * (lane & 3) + (i & 1);
          if (n >= m.rows || token >= tokens) continue;
          double want = 0;
          for (std::int64_t j = 0; j < d.k_pad; ++j) {
            want += f16emu::to_double(repacked_weight_f16(l, n, j)) * f16emu::to_double(x[at(token * d.k_pad + j)]);
          }
          ASSERT_NEAR(acc[mt][lane][i], want, 1e-9 * (1 + std::abs(want))) << "row " << n << " token " << token;
        }
      }
    }
  }
}

TEST(CudaWarpEmulation, DenseAndSparseFragmentsComputeTheProduct) {
  std::mt19937 rng(8);
  using Offset = QuantizedMatrix::Offset;
  check_warp_emulation(random_quantized(rng, {40, 192, 4, 64}), 5);
  check_warp_emulation(random_quantized(rng, {40, 200, 4, 32, /*act_order=*/true}), 16);
  check_warp_emulation(random_quantized(rng, {24, 128, 4, 32, false, false, Offset::Min}), 3);
  check_warp_emulation(random_quantized(rng, {40, 192, 8, 64}), 9);
  check_warp_emulation(random_quantized(rng, {33, 256, 4, 128, false, false, Offset::ZeroPoint, DType::F16, true}), 8);
  check_warp_emulation(random_quantized(rng, {16, 100, 4, -1, false, false, Offset::ZeroPoint, DType::F16, true}), 1);
}

TEST(CudaWarpEmulation, KquantFragmentsComputeTheProduct) {
  std::mt19937 rng(9);
  check_warp_emulation(cuda_testing::random_blocks(rng, BlockFormat::Q4_K, 40, 512), 5);
  check_warp_emulation(cuda_testing::random_blocks(rng, BlockFormat::Q5_K, 33, 256, 6, 9), 16);
  check_warp_emulation(cuda_testing::random_blocks(rng, BlockFormat::Q6_K, 24, 768), 9);
  check_warp_emulation(cuda_testing::random_blocks(rng, BlockFormat::Q5_0, 20, 96), 3);   // ends mid-chunk
  check_warp_emulation(cuda_testing::random_blocks(rng, BlockFormat::Q5_1, 17, 320), 12);
}

// ---------------------------------------------------------------------------------
// Launch planning (host logic of the GEMM launcher).

TEST(CudaQuantGemmPlan, SplitsKToFillTheDeviceAndNeverLeavesASplitEmpty) {
  for (const std::int64_t n : {128, 4096, 11008, 28672}) {
    for (const std::int64_t k : {64, 640, 4096, 11008, 28672}) {
      QuantLayoutDims d;
      d.rows = n;
      d.cols = k;
      d.n_pad = (n + 127) / 128 * 128;
      d.k_pad = (k + 63) / 64 * 64;
      for (const std::int64_t m : {1, 7, 8, 9, 16, 17, 33, 64, 65, 128, 1000}) {
        for (const std::int64_t workspace : {std::int64_t{0}, std::int64_t{1} << 26}) {
          const QuantGemmPlan p = plan_quant_gemm(m, d, 132, 2, workspace);
          SCOPED_TRACE(::testing::Message() << n << "x" << k << " M " << m << " workspace " << workspace);
          EXPECT_TRUE(p.m_tiles == 1 || p.m_tiles == 2 || p.m_tiles == 4 || p.m_tiles == 8);
          EXPECT_GE(p.m_tiles * 8 * p.m_blocks, m);
          EXPECT_LT(p.m_tiles * 8 * (p.m_blocks - 1), m);
          EXPECT_EQ(p.n_blocks, d.n_blocks());
          EXPECT_GE(p.splits, 1);
          EXPECT_GE(p.chunks_per_split * p.splits, d.k_chunks());
          EXPECT_LT(p.chunks_per_split * (p.splits - 1), d.k_chunks()) << "an empty split";
          EXPECT_LE(p.workspace_floats, workspace);
          if (p.splits > 1) {
            EXPECT_EQ(p.workspace_floats, p.splits * m * d.n_pad);
            EXPECT_EQ(p.counters, p.n_blocks * p.m_blocks);
          }
          if (m <= 8) {
            EXPECT_EQ(p.m_tiles, 1);
          }
          if (m > 32) {
            EXPECT_EQ(p.m_tiles, 8);
          }
        }
      }
    }
  }
  // Decode on a 4096x4096 layer: split K so every SM gets work.
  QuantLayoutDims d;
  d.rows = d.n_pad = 4096;
  d.cols = d.k_pad = 4096;
  const QuantGemmPlan p = plan_quant_gemm(1, d, 132, 2, std::int64_t{1} << 26);
  EXPECT_GE(p.n_blocks * p.splits, 132);
}

TEST(CudaAttentionPlan, CoversEveryQueryAndPositionOnce) {
  for (const auto& [heads, kv_heads] : {std::pair<std::int64_t, std::int64_t>{32, 8}, {8, 8}, {28, 4}, {20, 1}, {64, 2}}) {
    for (const std::int64_t rows : {1, 3, 37, 512}) {
      for (const std::int64_t max_position : {0, 31, 32, 255, 256, 257, 4095, 100000}) {
        for (const int sm_count : {1, 132, 100000}) {
          const AttentionDims dims{heads, kv_heads, 128, 0};
          const AttentionPlan p = plan_attention(rows, dims, max_position, sm_count);
          SCOPED_TRACE(::testing::Message() << heads << "/" << kv_heads << " rows " << rows << " max position "
                                            << max_position << " sm " << sm_count);
          const std::int64_t group = heads / kv_heads;
          EXPECT_LE(p.rows_per_block * p.heads_per_block, kAttentionMaxQueries);
          EXPECT_GE(std::int64_t{p.heads_per_block} * p.head_slabs, group);
          EXPECT_LT(std::int64_t{p.heads_per_block} * (p.head_slabs - 1), group);
          EXPECT_GE(p.row_blocks * p.rows_per_block, rows);
          EXPECT_EQ(p.part_len % kAttentionTile, 0);
          EXPECT_GE(p.parts * p.part_len, max_position + 1);
          EXPECT_LT((p.parts - 1) * p.part_len, max_position + 1) << "an empty position range";
          EXPECT_EQ(p.workspace_floats, p.parts > 1 ? p.parts * rows * heads * (128 + 2) : 0);
          if (sm_count == 1 || max_position < 256) {
            EXPECT_EQ(p.parts, 1);
          }
        }
      }
    }
  }
  EXPECT_THROW(plan_attention(1, {6, 4, 64, 0}, 10, 1), Error);
}

}  // namespace
}  // namespace nibble::kernels::cuda
