// FP8 e4m3 weights with block scales (QuantizedMatrix::code_dtype F8_E4M3): the
// scalar decoder against the format's definition for all 256 codes, and the CPU
// kernels on every ISA this machine has against a float64 matmul of the
// dequantized weights, on shapes whose last scale block is partial.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "common/fp8.h"
#include "common/quantized_matrix.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quant_layout.h"
#include "test_util.h"

namespace nibble {
namespace {

// e4m3fn from its definition: (-1)^s * 2^(e-7) * (1 + m/8), subnormal 2^-6 * m/8.
double e4m3_definition(int code) {
  const int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
  if (exponent == 15 && mantissa == 7) return NAN;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0, -6) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return sign != 0 ? -magnitude : magnitude;
}

bool is_nan_code(std::uint8_t code) { return (code & 0x7f) == 0x7f; }

TEST(Fp8Decode, EveryCodeMatchesTheDefinition) {
  for (int code = 0; code < 256; ++code) {
    const double expected = e4m3_definition(code);
    const float actual = e4m3_to_f32(static_cast<std::uint8_t>(code));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual)) << code;
    } else {
      EXPECT_EQ(static_cast<double>(actual), expected) << code;
      EXPECT_EQ(std::signbit(actual), code >= 128) << code;
    }
  }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), 0x1p-9f);
}

// A [rows, cols] FP8 matrix with scale blocks of block_rows x block_cols (0: the
// whole extent) and codes from `code_of(n, k)`.
template <typename CodeOf>
QuantizedMatrix fp8_matrix(std::int64_t rows, std::int64_t cols, std::int64_t block_rows, std::int64_t block_cols,
                           std::mt19937& rng, CodeOf code_of) {
  QuantizedMatrix m;
  m.name = "fp8";
  m.rows = rows;
  m.cols = cols;
  m.bits = 8;
  m.code_dtype = DType::F8_E4M3;
  m.scale_dtype = DType::F32;
  const std::int64_t bc = block_cols > 0 ? block_cols : cols, br = block_rows > 0 ? block_rows : rows;
  m.groups = (cols + bc - 1) / bc;
  m.group_of_col = contiguous_groups(cols, bc);
  std::uniform_real_distribution<float> scale(0.5e-3f, 2e-3f);
  std::vector<float> grid(static_cast<std::size_t>((rows + br - 1) / br * m.groups));
  for (auto& s : grid) s = scale(rng);
  for (std::int64_t n = 0; n < rows; ++n) {
    for (std::int64_t g = 0; g < m.groups; ++g) m.scales.push_back(grid[static_cast<std::size_t>(n / br * m.groups + g)]);
    for (std::int64_t k = 0; k < cols; ++k) m.codes.push_back(code_of(n, k));
  }
  m.stored_bytes = static_cast<std::uint64_t>(rows * cols) + grid.size() * 4;
  return m;
}

std::uint8_t random_finite_code(std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  for (;;) {
    const auto code = static_cast<std::uint8_t>(byte(rng));
    if (!is_nan_code(code)) return code;
  }
}

TEST(Fp8Kernels, WidenEveryFiniteCodeExactlyOnEveryIsa) {
  // Row n holds every finite code, rotated by n; x = identity, so y = W^T exactly.
  std::vector<std::uint8_t> finite;
  for (int code = 0; code < 256; ++code) {
    if (!is_nan_code(static_cast<std::uint8_t>(code))) finite.push_back(static_cast<std::uint8_t>(code));
  }
  const auto k = static_cast<std::int64_t>(finite.size());
  std::mt19937 rng(1);
  QuantizedMatrix m = fp8_matrix(3, k, 0, 0, rng, [&](std::int64_t n, std::int64_t col) {
    return finite[static_cast<std::size_t>((col + n * 37) % k)];
  });
  std::fill(m.scales.begin(), m.scales.end(), 1.0f);
  kernels::CpuBackend backend(2);
  const auto weights = backend.prepare_linear(m);
  std::vector<float> x(static_cast<std::size_t>(k * k), 0.0f);
  for (std::int64_t i = 0; i < k; ++i) x[static_cast<std::size_t>(i * k + i)] = 1.0f;
  testing::IsaGuard guard;
  for (const auto isa : testing::supported_isas()) {
    kernels::cpu::set_active_isa(isa);
    std::vector<float> y(static_cast<std::size_t>(k * 3), NAN);
    backend.linear(x.data(), k, *weights, nullptr, y.data());
    for (std::int64_t i = 0; i < k; ++i) {
      for (std::int64_t n = 0; n < 3; ++n) {
        const auto code = finite[static_cast<std::size_t>((i + n * 37) % k)];
        ASSERT_EQ(y[static_cast<std::size_t>(i * 3 + n)], static_cast<float>(e4m3_definition(code)))
            << "isa " << kernels::cpu::isa_name(isa) << " code " << int(code);
      }
    }
  }
}

TEST(Fp8Kernels, NanCodesDecodeAsNanOnEveryIsa) {
  std::mt19937 rng(2);
  for (const std::uint8_t nan_code : {std::uint8_t{0x7f}, std::uint8_t{0xff}}) {
    // 40 columns: the NaN sits in a full vector for column 3, in the ragged tail for 37.
    for (const std::int64_t column : {3, 37}) {
      const QuantizedMatrix m = fp8_matrix(2, 40, 0, 0, rng, [&](std::int64_t n, std::int64_t k) {
        return n == 1 && k == column ? nan_code : std::uint8_t{0x38};
      });
      kernels::CpuBackend backend(1);
      const auto weights = backend.prepare_linear(m);
      const std::vector<float> x(40, 1.0f);
      testing::IsaGuard guard;
      for (const auto isa : testing::supported_isas()) {
        kernels::cpu::set_active_isa(isa);
        std::vector<float> y(2, 0.0f);
        backend.linear(x.data(), 1, *weights, nullptr, y.data());
        EXPECT_TRUE(std::isfinite(y[0])) << kernels::cpu::isa_name(isa);
        EXPECT_TRUE(std::isnan(y[1])) << kernels::cpu::isa_name(isa) << " column " << column;
      }
    }
  }
}

struct Shape {
  std::int64_t n, k, block_rows, block_cols;
};

class Fp8Gemm : public ::testing::TestWithParam<Shape> {};

TEST_P(Fp8Gemm, MatchesAFloat64MatmulOnEveryIsa) {
  const Shape shape = GetParam();
  std::mt19937 rng(static_cast<unsigned>(shape.n * 7919 + shape.k * 31 + shape.block_cols));
  const QuantizedMatrix m =
      fp8_matrix(shape.n, shape.k, shape.block_rows, shape.block_cols, rng, [&](auto, auto) { return random_finite_code(rng); });
  kernels::CpuBackend backend(3);
  const auto weights = backend.prepare_linear(m);
  // One byte per weight, a float per block of the scale grid (random scales: no two
  // blocks equal) and a scale-row index per row.
  const std::int64_t block_rows = shape.block_rows > 0 ? shape.block_rows : shape.n;
  const std::int64_t grid_rows = (shape.n + block_rows - 1) / block_rows;
  EXPECT_EQ(weights->resident_bytes(),
            static_cast<std::uint64_t>(shape.n * shape.k + grid_rows * m.groups * 4 + shape.n * 4));
  EXPECT_NE(weights->describe().find("fp8"), std::string::npos) << weights->describe();
  std::vector<float> row(static_cast<std::size_t>(shape.k));
  weights->dequantize_row(shape.n - 1, row.data());
  for (std::int64_t k = 0; k < shape.k; ++k) ASSERT_EQ(row[static_cast<std::size_t>(k)], m.value(shape.n - 1, k));

  const std::int64_t max_rows = 17;
  const auto x = testing::random_floats(rng, static_cast<std::size_t>(max_rows * shape.k));
  std::vector<float> bias = testing::random_floats(rng, static_cast<std::size_t>(shape.n));
  std::vector<float> y_ref(static_cast<std::size_t>(max_rows * shape.n));
  double scale = 0;
  for (std::int64_t r = 0; r < max_rows; ++r) {
    for (std::int64_t n = 0; n < shape.n; ++n) {
      double sum = bias[static_cast<std::size_t>(n)], magnitude = std::abs(sum);
      for (std::int64_t k = 0; k < shape.k; ++k) {
        const std::int64_t g = k / (shape.block_cols > 0 ? shape.block_cols : shape.k);
        const double w = static_cast<double>(m.scales[static_cast<std::size_t>(n * m.groups + g)]) *
                         e4m3_definition(m.codes[static_cast<std::size_t>(n * shape.k + k)]);
        const double term = static_cast<double>(x[static_cast<std::size_t>(r * shape.k + k)]) * w;
        sum += term;
        magnitude += std::abs(term);
      }
      y_ref[static_cast<std::size_t>(r * shape.n + n)] = static_cast<float>(sum);
      scale = std::max(scale, magnitude);
    }
  }
  testing::IsaGuard guard;
  for (const auto isa : testing::supported_isas()) {
    kernels::cpu::set_active_isa(isa);
    for (const std::int64_t rows : {1, 2, 3, 4, 5, 17}) {
      std::vector<float> y(static_cast<std::size_t>(rows * shape.n), NAN);
      backend.linear(x.data(), rows, *weights, bias.data(), y.data());
      EXPECT_LE(testing::error_relative_to(y, std::span(y_ref).first(y.size()), scale), 1e-6)
          << "isa " << kernels::cpu::isa_name(isa) << " rows " << rows;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Fp8Gemm,
    ::testing::Values(Shape{1, 1, 128, 128}, Shape{7, 33, 128, 128}, Shape{130, 200, 128, 128},
                      Shape{257, 300, 128, 128}, Shape{40, 1120, 128, 128}, Shape{45, 100, 32, 32},
                      Shape{33, 2100, 0, 0} /* per tensor */, Shape{19, 515, 1, 0} /* per channel */,
                      Shape{16, 256, 1, 48} /* groups not a multiple of the vector width */),
    [](const ::testing::TestParamInfo<Shape>& p) {
      return std::to_string(p.param.n) + "x" + std::to_string(p.param.k) + "_b" + std::to_string(p.param.block_rows) +
             "x" + std::to_string(p.param.block_cols);
    });

TEST(Fp8Matrix, SlicesAndStacksKeepEveryValue) {
  std::mt19937 rng(3);
  const QuantizedMatrix a = fp8_matrix(20, 300, 128, 128, rng, [&](auto, auto) { return random_finite_code(rng); });
  const QuantizedMatrix b = fp8_matrix(9, 300, 128, 128, rng, [&](auto, auto) { return random_finite_code(rng); });
  const std::vector<QuantizedMatrix> parts = {a, b};
  const auto stacked = stack_rows(parts, "ab");
  ASSERT_TRUE(stacked.has_value());
  EXPECT_EQ(stacked->code_dtype, DType::F8_E4M3);
  EXPECT_EQ(stacked->value(25, 299), b.value(5, 299));
  const QuantizedMatrix rows = slice_rows(*stacked, 18, 4);
  EXPECT_EQ(rows.value(1, 7), a.value(19, 7));
  EXPECT_EQ(rows.value(3, 7), b.value(1, 7));  // stacked row 21
  const QuantizedMatrix cols = slice_cols(a, 100, 150);  // crosses a block boundary mid-way
  cols.validate();
  for (std::int64_t k = 0; k < 150; ++k) ASSERT_EQ(cols.value(11, k), a.value(11, 100 + k));
  kernels::CpuBackend backend(1);
  const auto weights = backend.prepare_linear(cols);
  std::vector<float> row(150);
  weights->dequantize_row(11, row.data());
  for (std::int64_t k = 0; k < 150; ++k) ASSERT_EQ(row[static_cast<std::size_t>(k)], a.value(11, 100 + k));
  // An integer matrix does not stack with an FP8 one.
  QuantizedMatrix integer = a;
  integer.code_dtype = DType::U8;
  const std::vector<QuantizedMatrix> mixed = {a, integer};
  EXPECT_FALSE(stack_rows(mixed, "mixed").has_value());
}

TEST(Fp8Matrix, ValidateRefusesInconsistentFp8) {
  std::mt19937 rng(4);
  const QuantizedMatrix good = fp8_matrix(4, 64, 128, 32, rng, [&](auto, auto) { return random_finite_code(rng); });
  QuantizedMatrix bits = good;
  bits.bits = 4;
  testing::expect_error([&] { bits.validate(); }, {"fp8", "FP8 codes with bits 4"});
  QuantizedMatrix zeros = good;
  zeros.zeros.assign(static_cast<std::size_t>(4 * good.groups), 0);
  testing::expect_error([&] { zeros.validate(); }, {"zero points"});
  QuantizedMatrix shuffled = good;
  std::swap(shuffled.group_of_col[0], shuffled.group_of_col[40]);
  testing::expect_error([&] { shuffled.validate(); }, {"contiguous"});
  QuantizedMatrix e5m2 = good;
  e5m2.code_dtype = DType::F8_E5M2;
  testing::expect_error([&] { e5m2.validate(); }, {"F8_E5M2", "not supported"});
  testing::expect_error([&] { (void)kernels::cpu::pack_quantized(good); }, {"F8_E4M3", "own layout"});
}

}  // namespace
}  // namespace nibble
