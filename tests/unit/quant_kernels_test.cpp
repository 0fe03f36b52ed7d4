// The quantized, 2:4-sparse and CSR kernels against a float64
// dequantize-then-matmul reference and against the scalar kernels, on fresh
// random inputs every run: all bit widths, group sizes, zero-point and minimum
// offsets, act-order permutations, scale precisions, ragged shapes, 1..64 rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/half.h"
#include "common/quantized_matrix.h"
#include "kernel_test_util.h"
#include "random_quantized.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"

namespace nibble::kernels {
namespace {

using testing::IsaGuard;
using testing::random_floats;
using testing::error_relative_to;
using testing::relative_error;
using testing::supported_isas;

using testing::QuantCase;
using testing::random_quantized;

struct Reference {
  std::vector<float> y;
  // The largest |bias| + sum |x * w| of any output: what a rounding error is
  // proportional to. (max |y| is not: a sum of few terms can cancel to nearly 0,
  // which made a 1x8 case fail now and then on fresh random inputs.)
  double magnitude = 0;
};

Reference reference_linear(const QuantizedMatrix& m, std::span<const float> x, std::int64_t rows, const float* bias) {
  std::vector<double> dequantized(static_cast<std::size_t>(m.rows * m.cols));
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t k = 0; k < m.cols; ++k) dequantized[static_cast<std::size_t>(n * m.cols + k)] = m.value(n, k);
  }
  Reference reference;
  reference.y.resize(static_cast<std::size_t>(rows * m.rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t n = 0; n < m.rows; ++n) {
      double sum = bias != nullptr ? bias[n] : 0.0;
      double magnitude = std::abs(sum);
      for (std::int64_t k = 0; k < m.cols; ++k) {
        const double term =
            static_cast<double>(x[static_cast<std::size_t>(r * m.cols + k)]) * dequantized[static_cast<std::size_t>(n * m.cols + k)];
        sum += term;
        magnitude += std::abs(term);
      }
      reference.y[static_cast<std::size_t>(r * m.rows + n)] = static_cast<float>(sum);
      reference.magnitude = std::max(reference.magnitude, magnitude);
    }
  }
  return reference;
}

// Accumulating in float32 over K inputs: error grows with sqrt(K) for random data.
// Relative to max |y| (outputs that cannot all cancel):
double tolerance(std::int64_t cols) { return 3e-6 * std::sqrt(static_cast<double>(cols)) + 2e-6; }
// Relative to the terms' magnitudes (the bound kernels_test uses too):
double tolerance_to_magnitude(std::int64_t cols) { return 2e-6 * std::sqrt(static_cast<double>(cols)) + 1e-6; }

void check_case(std::mt19937& rng, CpuBackend& backend, const QuantCase& c, std::span<const std::int64_t> batch_rows) {
  const QuantizedMatrix m = random_quantized(rng, c);
  const auto bias = random_floats(rng, static_cast<std::size_t>(c.rows));
  // Every ISA packs the same layout; prepare once per case.
  const auto weights = backend.prepare_linear(m);
  std::vector<float> row(static_cast<std::size_t>(c.cols));
  for (std::int64_t n = 0; n < c.rows; ++n) {
    weights->dequantize_row(n, row.data());
    for (std::int64_t k = 0; k < c.cols; ++k) {
      ASSERT_EQ(row[static_cast<std::size_t>(k)], m.value(n, k)) << describe(c) << " row " << n << " col " << k;
    }
  }
  for (const std::int64_t rows : batch_rows) {
    const auto x = random_floats(rng, static_cast<std::size_t>(rows * c.cols));
    const float* b = rows % 2 == 1 ? bias.data() : nullptr;
    const auto reference = reference_linear(m, x, rows, b);
    const auto& expected = reference.y;
    std::vector<float> scalar_y;
    for (const auto isa : supported_isas()) {
      cpu::set_active_isa(isa);
      std::vector<float> y(static_cast<std::size_t>(rows * c.rows), NAN);
      backend.linear(x.data(), rows, *weights, b, y.data());
      ASSERT_LT(error_relative_to(y, expected, reference.magnitude), tolerance_to_magnitude(c.cols))
          << describe(c) << " rows=" << rows << " isa=" << cpu::isa_name(isa) << " (" << weights->describe() << ")";
      if (isa == cpu::Isa::Scalar) {
        scalar_y = y;
      } else {
        ASSERT_LT(error_relative_to(y, scalar_y, reference.magnitude), tolerance_to_magnitude(c.cols))
            << describe(c) << " vs scalar, isa=" << cpu::isa_name(isa);
      }
    }
  }
}

constexpr std::int64_t kDecodeRows[] = {1, 2, 3, 4};
constexpr std::int64_t kBatchRows[] = {1, 3, 5, 16, 33, 64};

TEST(QuantKernels, EveryBitWidthGroupSizeAndOffsetMatchesTheReference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const int bits : {2, 3, 4, 8}) {
    for (const std::int64_t group : {-1, 32, 64, 128}) {
      for (const bool symmetric : {false, true}) {
        check_case(rng, backend, {67, 256, bits, group, false, symmetric}, kDecodeRows);
      }
    }
    check_case(rng, backend, {33, 128, bits, 32, false, false, QuantizedMatrix::Offset::Min}, kDecodeRows);
  }
}

TEST(QuantKernels, ActOrderPermutationsMatchTheReference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const int bits : {2, 3, 4, 8}) {
    for (const std::int64_t group : {32, 64, 128}) {
      check_case(rng, backend, {40, 384, bits, group, true}, kBatchRows);
    }
  }
}

TEST(QuantKernels, RaggedShapesAndBatchesMatchTheReference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  // N and K not multiples of any tile; groups that do not divide K; a group
  // smaller than one packed word.
  const std::vector<std::array<std::int64_t, 3>> shapes{{1, 8, -1}, {5, 40, 32}, {31, 200, 64}, {33, 100, 16},
                                                        {97, 72, 24}, {130, 520, 128}};
  for (const auto& [n, k, group] : shapes) {
    for (const int bits : {3, 4, 8}) check_case(rng, backend, {n, k, bits, group}, kBatchRows);
  }
}

TEST(QuantKernels, ScalePrecisionsAreKeptExactly) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const auto dtype : {DType::F16, DType::BF16, DType::F32}) {
    check_case(rng, backend, {48, 192, 4, 64, false, false, QuantizedMatrix::Offset::ZeroPoint, dtype}, kBatchRows);
    check_case(rng, backend, {48, 192, 4, 32, false, false, QuantizedMatrix::Offset::Min, dtype}, kBatchRows);
  }
}

TEST(QuantKernels, TwoFourSparseSkipsThePrunedHalfAndMatchesTheReference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const std::int64_t group : {-1, 32, 128}) {
    for (const bool symmetric : {false, true}) {
      QuantCase c{70, 256, 4, group, false, symmetric};
      c.sparse_2_4 = true;
      c.scale_dtype = symmetric ? DType::BF16 : DType::F16;
      const auto weights = backend.prepare_linear(random_quantized(rng, c));
      EXPECT_NE(weights->describe().find("2:4"), std::string::npos) << weights->describe();
      check_case(rng, backend, c, kBatchRows);
    }
  }
  // 2:4 matrices the sparse layout cannot hold (act-order) still compute correctly.
  QuantCase c{20, 128, 4, 32, false, false};
  c.sparse_2_4 = true;
  QuantizedMatrix m = random_quantized(rng, c);
  std::reverse(m.group_of_col.begin(), m.group_of_col.end());
  m.sparse_2_4 = false;
  EXPECT_EQ(backend.prepare_linear(m)->describe().find("2:4"), std::string::npos);
}

TEST(QuantKernels, ResidentBytesStayWithinTheFileSizeBudget) {
  CpuBackend backend(1);
  std::mt19937 rng(7);
  // File bytes of a GPTQ checkpoint: packed codes, fp16 scales, packed zeros, g_idx.
  for (const auto& [n, k, bits, group] : std::vector<std::array<std::int64_t, 4>>{
           {1024, 1024, 4, 128}, {1024, 1024, 4, 32}, {1024, 1024, 8, 128}, {1024, 1024, 2, 64}, {1024, 1024, 3, 128},
           {1024, 1024, 4, -1}}) {
    const QuantizedMatrix m = random_quantized(rng, {n, k, static_cast<int>(bits), group});
    const double file_bytes = static_cast<double>(n * k * bits / 8 + m.groups * n * 2 + m.groups * n * bits / 8 + k * 4);
    const auto weights = backend.prepare_linear(m);
    EXPECT_LE(static_cast<double>(weights->resident_bytes()), 1.15 * file_bytes) << m.name;
  }
  // GGUF Q4_0 blocks: 32 codes + one fp16 scale in 18 bytes.
  const QuantizedMatrix q4_0 = random_quantized(rng, {1024, 1024, 4, 32, false, true});
  EXPECT_LE(static_cast<double>(backend.prepare_linear(q4_0)->resident_bytes()), 1.15 * (1024.0 * 1024 / 32 * 18));
  // GGUF Q4_1 blocks: 32 codes, fp16 scale and minimum in 20 bytes.
  const QuantizedMatrix q4_1 = random_quantized(rng, {1024, 1024, 4, 32, false, false, QuantizedMatrix::Offset::Min});
  EXPECT_LE(static_cast<double>(backend.prepare_linear(q4_1)->resident_bytes()), 1.15 * (1024.0 * 1024 / 32 * 20));
}

TEST(QuantKernels, NanInTheInputIsNotHidden) {
  IsaGuard guard;
  std::mt19937 rng(3);
  CpuBackend backend(2);
  const auto weights = backend.prepare_linear(random_quantized(rng, {40, 128, 4, 32}));
  for (const auto isa : supported_isas()) {
    cpu::set_active_isa(isa);
    for (const std::int64_t rows : {1, 9}) {
      auto x = random_floats(rng, static_cast<std::size_t>(rows * 128));
      x[77] = NAN;
      std::vector<float> y(static_cast<std::size_t>(rows * 40), 0.0f);
      backend.linear(x.data(), rows, *weights, nullptr, y.data());
      EXPECT_TRUE(std::isnan(y[0])) << cpu::isa_name(isa) << " rows=" << rows;
    }
  }
}

TEST(QuantKernels, InconsistentMatricesAreRejected) {
  CpuBackend backend(1);
  std::mt19937 rng(5);
  QuantizedMatrix m = random_quantized(rng, {8, 64, 4, 32});
  m.codes[3] = 16;
  EXPECT_THROW(backend.prepare_linear(m), Error);
  m = random_quantized(rng, {8, 64, 4, 32});
  m.bits = 5;
  EXPECT_THROW(backend.prepare_linear(m), Error);
  m = random_quantized(rng, {8, 64, 4, 32});
  m.scales.pop_back();
  EXPECT_THROW(backend.prepare_linear(m), Error);
  m = random_quantized(rng, {8, 64, 4, 32});
  m.group_of_col[5] = 7;
  EXPECT_THROW(backend.prepare_linear(m), Error);
  m = random_quantized(rng, {8, 64, 4, 32});
  m.sparse_2_4 = true;  // random codes break the pattern
  EXPECT_THROW(backend.prepare_linear(m), Error);
}

TEST(QuantKernels, StackedRowsKeepEveryValueAndTheirFormatMustAgree) {
  std::mt19937 rng(std::random_device{}());
  for (const bool min_offset : {false, true}) {
    const auto offset = min_offset ? QuantizedMatrix::Offset::Min : QuantizedMatrix::Offset::ZeroPoint;
    std::vector<QuantizedMatrix> parts{random_quantized(rng, {48, 96, 4, 32, false, false, offset}),
                                       random_quantized(rng, {16, 96, 4, 32, false, false, offset}),
                                       random_quantized(rng, {5, 96, 4, 32, false, false, offset})};
    for (auto& part : parts) part.stored_bytes = 1000;
    const auto stacked = stack_rows(parts, "qkv");
    ASSERT_TRUE(stacked.has_value());
    stacked->validate();
    EXPECT_EQ(stacked->name, "qkv");
    EXPECT_EQ(stacked->rows, 48 + 16 + 5);
    EXPECT_EQ(stacked->stored_bytes, 3000u);
    std::int64_t row = 0;
    for (const auto& part : parts) {
      for (std::int64_t n = 0; n < part.rows; ++n, ++row) {
        for (std::int64_t k = 0; k < part.cols; ++k) ASSERT_EQ(stacked->value(row, k), part.value(n, k));
      }
    }
    // Anything but the row count differing keeps the parts apart.
    const std::vector<QuantCase> others{{16, 64, 4, 32, false, false, offset},  // columns
                                        {16, 96, 8, 32, false, false, offset},  // bits
                                        {16, 96, 4, 48, false, false, offset},  // groups
                                        {16, 96, 4, 32, true, false, offset},   // act-order group map
                                        {16, 96, 4, 32, false, false,
                                         min_offset ? QuantizedMatrix::Offset::ZeroPoint : QuantizedMatrix::Offset::Min},
                                        {16, 96, 4, 32, false, false, offset, DType::BF16}};  // scale precision
    for (const auto& other : others) {
      const std::vector<QuantizedMatrix> mixed{parts[0], random_quantized(rng, other)};
      EXPECT_FALSE(stack_rows(mixed, "mixed").has_value()) << describe(other);
    }
  }
  EXPECT_FALSE(stack_rows({}, "none").has_value());
}

TEST(QuantKernels, QuantizedEmbeddingRowsAreDequantized) {
  CpuBackend backend(1);
  std::mt19937 rng(11);
  const QuantizedMatrix m = random_quantized(rng, {50, 64, 4, 32, false, false, QuantizedMatrix::Offset::Min});
  const auto table = backend.prepare_linear(m);
  const std::vector<std::int32_t> ids{3, 49, 0, 3};
  std::vector<float> out(ids.size() * 64);
  backend.embedding(*table, ids, out.data());
  for (std::size_t r = 0; r < ids.size(); ++r) {
    for (std::int64_t k = 0; k < 64; ++k) EXPECT_EQ(out[r * 64 + static_cast<std::size_t>(k)], m.value(ids[r], k));
  }
  const std::vector<std::int32_t> bad{50};
  EXPECT_THROW(backend.embedding(*table, bad, out.data()), Error);
}

// Dense weights with most entries zeroed, stored in each dtype.
struct SparseDense {
  std::vector<float> f32;
  std::vector<std::uint16_t> half;
  Matrix view;
};

SparseDense random_sparse_dense(std::mt19937& rng, DType dtype, std::int64_t rows, std::int64_t cols, double density) {
  SparseDense m;
  m.f32 = random_floats(rng, static_cast<std::size_t>(rows * cols));
  std::bernoulli_distribution keep(density);
  for (auto& v : m.f32) v = keep(rng) ? v : 0.0f;
  if (dtype == DType::F32) {
    m.view = {dtype, rows, cols, m.f32.data()};
    return m;
  }
  for (const float v : m.f32) m.half.push_back(dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v));
  m.view = {dtype, rows, cols, m.half.data()};
  return m;
}

TEST(SparseKernels, CsrMatchesTheDenseKernelAtEveryDensity) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const auto dtype : {DType::F32, DType::F16, DType::BF16}) {
    for (const double density : {0.0, 0.05, 0.3, 0.9}) {
      const SparseDense w = random_sparse_dense(rng, dtype, 45, 203, density);
      const auto csr = backend.prepare_linear(w.view, SparseChoice::Sparse);
      ASSERT_NE(csr->describe().find("csr"), std::string::npos);
      for (const std::int64_t rows : {1, 2, 5, 16}) {
        const auto x = random_floats(rng, static_cast<std::size_t>(rows * 203));
        const auto bias = random_floats(rng, 45);
        std::vector<float> expected(static_cast<std::size_t>(rows * 45));
        cpu::set_active_isa(cpu::Isa::Scalar);
        backend.linear(x.data(), rows, w.view, bias.data(), expected.data());
        for (const auto isa : supported_isas()) {
          cpu::set_active_isa(isa);
          std::vector<float> y(expected.size(), NAN);
          backend.linear(x.data(), rows, *csr, bias.data(), y.data());
          ASSERT_LT(relative_error(y, expected), tolerance(203))
              << dtype_name(dtype) << " density " << density << " rows " << rows << " " << cpu::isa_name(isa);
        }
      }
    }
  }
}

TEST(SparseKernels, AutoPicksCsrOnlyForVerySparseWeights) {
  CpuBackend backend(1);
  std::mt19937 rng(2);
  const SparseDense sparse = random_sparse_dense(rng, DType::F16, 64, 256, 0.05);
  const SparseDense dense = random_sparse_dense(rng, DType::F16, 64, 256, 0.9);
  EXPECT_NE(backend.prepare_linear(sparse.view)->describe().find("csr"), std::string::npos);
  const auto kept = backend.prepare_linear(dense.view);
  EXPECT_EQ(kept->describe(), "dense F16");
  EXPECT_TRUE(kept->views_source());
  EXPECT_EQ(backend.prepare_linear(sparse.view, SparseChoice::Dense)->describe(), "dense F16");
}

}  // namespace
}  // namespace nibble::kernels
