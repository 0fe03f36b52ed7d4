// Quantized weights times int8-rounded activations (kernels/cpu/int8_activations.h)
// against a float64 reference that rounds the activations its own way: per row,
// per quantization group in packed order, blocks of 32 positions, scale amax/127,
// round to nearest even. Fresh random inputs every run; every bit width the path
// takes, group sizes, offsets, scale precisions, act-order, ragged shapes, 1..64 rows.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "common/quantized_matrix.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quant_layout.h"
#include "random_quantized.h"

namespace nibble::kernels {
namespace {

using testing::QuantCase;
using testing::random_floats;
using testing::random_quantized;
using testing::relative_error;

// x rounded as the int8 path must round it, back in input order, and how far each
// value may have moved (half a rounding step).
struct RoundedRow {
  std::vector<double> values;
  std::vector<double> half_step;
};

RoundedRow rounded_row(const cpu::QuantLayout& layout, const float* x) {
  RoundedRow out{std::vector<double>(static_cast<std::size_t>(layout.cols), 0.0),
                 std::vector<double>(static_cast<std::size_t>(layout.cols), 0.0)};
  const auto column = [&](std::int64_t p) {
    return layout.gather.empty() ? static_cast<std::int32_t>(p) : layout.gather[static_cast<std::size_t>(p)];
  };
  for (std::int64_t g = 0; g < layout.groups; ++g) {
    const std::int64_t end = layout.group_unit_begin[static_cast<std::size_t>(g) + 1] * layout.codes_per_unit;
    for (std::int64_t p0 = layout.group_unit_begin[static_cast<std::size_t>(g)] * layout.codes_per_unit; p0 < end;
         p0 += 32) {
      const std::int64_t p1 = std::min(end, p0 + 32);
      float amax = 0.0f;
      for (std::int64_t p = p0; p < p1; ++p) {
        if (column(p) >= 0) amax = std::max(amax, std::abs(x[column(p)]));
      }
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      const float scale = amax / 127.0f;
      for (std::int64_t p = p0; p < p1; ++p) {
        if (column(p) < 0) continue;
        const auto k = static_cast<std::size_t>(column(p));
        out.values[k] = static_cast<double>(std::nearbyint(x[column(p)] * inverse)) * scale;
        out.half_step[k] = 0.5 * static_cast<double>(scale);
      }
    }
  }
  return out;
}

// The exact result on rounded activations, and per output the most that rounding
// can move it from the float result: sum |w| x half a step.
struct Reference {
  std::vector<float> y;
  std::vector<double> rounding_bound;
};

Reference reference(const QuantizedMatrix& m, const cpu::QuantLayout& layout, std::span<const float> x,
                    std::int64_t rows, const float* bias) {
  Reference out{std::vector<float>(static_cast<std::size_t>(rows * m.rows)),
                std::vector<double>(static_cast<std::size_t>(rows * m.rows))};
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto xr = rounded_row(layout, x.data() + r * m.cols);
    for (std::int64_t n = 0; n < m.rows; ++n) {
      double sum = bias != nullptr ? bias[n] : 0.0;
      double bound = 0.0;
      for (std::int64_t k = 0; k < m.cols; ++k) {
        sum += xr.values[static_cast<std::size_t>(k)] * m.value(n, k);
        bound += xr.half_step[static_cast<std::size_t>(k)] * std::abs(m.value(n, k));
      }
      out.y[static_cast<std::size_t>(r * m.rows + n)] = static_cast<float>(sum);
      out.rounding_bound[static_cast<std::size_t>(r * m.rows + n)] = bound;
    }
  }
  return out;
}

double tolerance(std::int64_t cols) { return 3e-6 * std::sqrt(static_cast<double>(cols)) + 2e-6; }

constexpr std::int64_t kRows[] = {1, 2, 3, 5, 6, 7, 13, 16, 33, 64};

class Int8Activations : public ::testing::Test {
 protected:
  // Without AVX-512 VNNI the option must fall back to the float path, exactly.
  void SetUp() override { fallback_only = !int8.int8_activations(); }

  void check(const QuantCase& c, std::span<const std::int64_t> batch_rows = kRows) {
    const QuantizedMatrix m = random_quantized(rng, c);
    const cpu::QuantLayout layout = cpu::pack_quantized(m);
    const auto weights = int8.prepare_linear(m);
    const auto bias = random_floats(rng, static_cast<std::size_t>(c.rows));
    for (const std::int64_t rows : batch_rows) {
      const auto x = random_floats(rng, static_cast<std::size_t>(rows * c.cols));
      const float* b = rows % 2 == 1 ? bias.data() : nullptr;
      std::vector<float> y(static_cast<std::size_t>(rows * c.rows), NAN);
      int8.linear(x.data(), rows, *weights, b, y.data());
      std::vector<float> float_y(y.size(), NAN);
      floats.linear(x.data(), rows, *weights, b, float_y.data());
      if (fallback_only || c.bits == 3) {
        ASSERT_EQ(y, float_y) << describe(c) << " rows=" << rows << ": without integer kernels nothing may change";
        continue;
      }
      const Reference expected = reference(m, layout, x, rows, b);
      ASSERT_LT(relative_error(y, expected.y), tolerance(c.cols))
          << describe(c) << " rows=" << rows << " (" << weights->describe() << ")";
      // Rounding moves the result from the float one by no more than its bound (and does move it).
      double float_magnitude = 0;
      for (const float v : float_y) float_magnitude = std::max(float_magnitude, std::abs(static_cast<double>(v)));
      for (std::size_t i = 0; i < y.size(); ++i) {
        const double drift = std::abs(static_cast<double>(y[i]) - float_y[i]);
        ASSERT_LE(drift, expected.rounding_bound[i] + 2 * tolerance(c.cols) * float_magnitude)
            << describe(c) << " rows=" << rows << " output " << i;
        max_drift = std::max(max_drift, drift);
      }
    }
  }

  std::mt19937 rng{std::random_device{}()};
  CpuBackend int8{CpuBackendOptions{2, true}};
  CpuBackend floats{CpuBackendOptions{2, false}};
  bool fallback_only = false;
  double max_drift = 0;
};

TEST_F(Int8Activations, EveryBitWidthGroupSizeAndOffsetMatchesTheReference) {
  for (const int bits : {2, 3, 4, 8}) {
    for (const std::int64_t group : {-1, 32, 64, 128}) {
      for (const bool symmetric : {false, true}) check({67, 256, bits, group, false, symmetric});
    }
    check({33, 128, bits, 32, false, false, QuantizedMatrix::Offset::Min});
  }
  if (!fallback_only) {
    EXPECT_GT(max_drift, 0.0) << "the int8 path gave the float results: was it taken?";
  }
}

TEST_F(Int8Activations, ActOrderScalePrecisionsAndRaggedShapesMatchTheReference) {
  for (const int bits : {2, 4, 8}) {
    for (const std::int64_t group : {32, 128}) check({40, 384, bits, group, true});
  }
  for (const auto dtype : {DType::F16, DType::BF16, DType::F32}) {
    check({48, 192, 4, 64, false, false, QuantizedMatrix::Offset::ZeroPoint, dtype});
    check({48, 192, 4, 32, false, false, QuantizedMatrix::Offset::Min, dtype});
  }
  // Groups that are not whole activation blocks, K not a multiple of a tile or a block.
  const std::vector<std::array<std::int64_t, 3>> shapes{{1, 8, -1}, {5, 40, 32}, {31, 200, 64}, {33, 100, 16},
                                                        {97, 72, 24}, {130, 520, 128}};
  for (const auto& [n, k, group] : shapes) {
    for (const int bits : {4, 8}) check({n, k, bits, group});
  }
}

TEST_F(Int8Activations, ARowsResultDoesNotDependOnTheRowsBesideIt) {
  const QuantizedMatrix m = random_quantized(rng, {96, 320, 4, 64});
  const auto weights = int8.prepare_linear(m);
  constexpr std::int64_t kBatch = 16;
  auto x = random_floats(rng, static_cast<std::size_t>(kBatch * m.cols));
  // Rows of very different magnitudes: a shared scale would show.
  for (std::int64_t k = 0; k < m.cols; ++k) x[static_cast<std::size_t>(3 * m.cols + k)] *= 1000.0f;
  std::vector<float> batched(static_cast<std::size_t>(kBatch * m.rows));
  int8.linear(x.data(), kBatch, *weights, nullptr, batched.data());
  for (std::int64_t r = 0; r < kBatch; ++r) {
    std::vector<float> alone(static_cast<std::size_t>(m.rows));
    int8.linear(x.data() + r * m.cols, 1, *weights, nullptr, alone.data());
    for (std::int64_t n = 0; n < m.rows; ++n) {
      ASSERT_EQ(alone[static_cast<std::size_t>(n)], batched[static_cast<std::size_t>(r * m.rows + n)])
          << "row " << r << " column " << n;
    }
  }
}

TEST_F(Int8Activations, NanAndInfinityInTheInputAreNotHidden) {
  const auto weights = int8.prepare_linear(random_quantized(rng, {40, 128, 4, 32}));
  for (const float bad : {NAN, INFINITY}) {
    for (const std::int64_t rows : {1, 9}) {
      auto x = random_floats(rng, static_cast<std::size_t>(rows * 128));
      x[77] = bad;
      std::vector<float> y(static_cast<std::size_t>(rows * 40), 0.0f);
      int8.linear(x.data(), rows, *weights, nullptr, y.data());
      EXPECT_FALSE(std::isfinite(y[0])) << bad << " rows=" << rows;
      EXPECT_TRUE(std::isfinite(y[40 * (rows - 1)]) || rows == 1) << "another row was poisoned";
    }
  }
}

TEST_F(Int8Activations, TheBackendSaysWhetherItRunsThem) {
  EXPECT_EQ(int8.int8_activations(), CpuBackend::int8_activations_supported());
  EXPECT_FALSE(floats.int8_activations());
  EXPECT_EQ(int8.name().find("int8") != std::string::npos, int8.int8_activations()) << int8.name();
}

}  // namespace
}  // namespace nibble::kernels
