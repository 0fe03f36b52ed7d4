// The compression algorithms of quant/ (group quantizer, Hessian, the GPTQ /
// SparseGPT sweep, magnitude and Wanda pruning) against hand-checked cases and a
// plain float64 reference of the sequential OBS update written here, independently
// of the library's Cholesky / lazy-block formulation.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/cpu_backend.h"
#include "quant/bit_allocation.h"
#include "quant/group_quantizer.h"
#include "quant/hessian.h"
#include "quant/obs_sweep.h"
#include "test_util.h"

namespace nibble::quant {
namespace {

using Index = std::int64_t;
using nibble::testing::expect_error;

std::size_t at(Index i) { return static_cast<std::size_t>(i); }

std::vector<float> normal_floats(std::mt19937& rng, Index n, float stddev = 1.0f) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(at(n));
  for (auto& v : values) v = normal(rng);
  return values;
}

// Calibration inputs X [samples, dim] with correlated columns of uneven size:
// X = Z A diag(s), Z and A Gaussian, s log-normal, like real activations (a few
// large channels, everything mixed).
std::vector<float> correlated_inputs(std::mt19937& rng, Index samples, Index dim) {
  const std::vector<float> z = normal_floats(rng, samples * dim);
  std::vector<float> a = normal_floats(rng, dim * dim, 1.0f / std::sqrt(static_cast<float>(dim)));
  for (Index i = 0; i < dim; ++i) a[at(i * dim + i)] += 1.0f;
  std::lognormal_distribution<float> channel_scale(0.0f, 0.7f);
  std::vector<float> scale(at(dim));
  for (auto& s : scale) s = channel_scale(rng);
  std::vector<float> x(at(samples * dim), 0.0f);
  for (Index n = 0; n < samples; ++n) {
    for (Index k = 0; k < dim; ++k) {
      const float zk = z[at(n * dim + k)];
      for (Index j = 0; j < dim; ++j) x[at(n * dim + j)] += zk * a[at(k * dim + j)];
    }
    for (Index j = 0; j < dim; ++j) x[at(n * dim + j)] *= scale[at(j)];
  }
  return x;
}

// H = 2/n sum x x^T with a plain float64 loop.
std::vector<double> plain_hessian(std::span<const float> x, Index samples, Index dim) {
  std::vector<double> h(at(dim * dim), 0.0);
  for (Index n = 0; n < samples; ++n) {
    for (Index a = 0; a < dim; ++a) {
      const double xa = x[at(n * dim + a)];
      for (Index b = 0; b < dim; ++b) h[at(a * dim + b)] += xa * x[at(n * dim + b)];
    }
  }
  for (auto& v : h) v *= 2.0 / static_cast<double>(samples);
  return h;
}

Hessian hessian_from(const std::vector<double>& values, Index dim) {
  Hessian h(dim);
  h.values() = values;
  return h;
}

Hessian correlated_hessian(std::mt19937& rng, Index dim) {
  const Index samples = 4 * dim;
  return hessian_from(plain_hessian(correlated_inputs(rng, samples, dim), samples, dim), dim);
}

// tr((W - Q) H (W - Q)^T): the layer's output error on the calibration inputs.
double proxy_loss(std::span<const float> w, std::span<const float> q, Index rows, Index cols, const Hessian& hessian) {
  const std::vector<double>& h = hessian.values();
  double loss = 0.0;
  std::vector<double> delta(at(cols));
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c) delta[at(c)] = static_cast<double>(w[at(r * cols + c)]) - q[at(r * cols + c)];
    for (Index a = 0; a < cols; ++a) {
      double row_sum = 0.0;
      for (Index b = 0; b < cols; ++b) row_sum += h[at(a * cols + b)] * delta[at(b)];
      loss += delta[at(a)] * row_sum;
    }
  }
  return loss;
}

// ||a - b|| / ||b|| over all entries; infinity when anything is not finite.
double relative_difference(std::span<const float> a, std::span<const double> b) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff / norm);
}

Index zeros_in(std::span<const float> values) {
  return static_cast<Index>(std::count(values.begin(), values.end(), 0.0f));
}

void expect_n_of_m(std::span<const float> w, Index rows, Index cols, Index n, Index m) {
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; c += m) {
      ASSERT_GE(zeros_in(w.subspan(at(r * cols + c), at(m))), n) << "row " << r << " columns " << c;
    }
  }
}

bool is_fp16(float value) { return f16_to_f32(f32_to_f16(value)) == value; }

SweepOptions gptq_options(int bits, Index group_size, bool act_order = false, bool static_groups = false) {
  SweepOptions options;
  options.quantize = QuantSpec{bits, group_size, false};
  options.act_order = act_order;
  options.static_groups = static_groups;
  return options;
}

// ---------------------------------------------------------------------------
// fit_group and quantize_code

TEST(GroupQuantizer, AsymmetricHandChecked) {
  const QuantSpec spec{4, 3, false};
  const std::vector<float> values{-1.0f, 0.5f, 2.0f};
  const GroupParams p = fit_group(values, spec);
  // scale = (2 - -1) / 15 = 0.2 -> fp16 0.199951171875; zero = round(1 / scale) = 5.
  EXPECT_EQ(p.scale, 0.199951171875f);
  EXPECT_EQ(p.zero, 5);
  EXPECT_EQ(quantize_code(-1.0f, p, 15), 0);
  EXPECT_EQ(quantize_code(0.5f, p, 15), 8);  // 0.5 / scale = 2.5006 -> 3, + 5
  EXPECT_EQ(quantize_code(2.0f, p, 15), 15);
  EXPECT_EQ(quantize_code(0.0f, p, 15), p.zero);
  EXPECT_EQ(dequantize_code(p.zero, p), 0.0f);
  EXPECT_EQ(quantize_code(100.0f, p, 15), 15);  // far outside: clamped
  EXPECT_EQ(quantize_code(-100.0f, p, 15), 0);
}

TEST(GroupQuantizer, SymmetricHandChecked) {
  const QuantSpec spec{4, 3, true};
  const std::vector<float> values{-1.0f, 0.5f, 2.0f};
  const GroupParams p = fit_group(values, spec);
  // scale = 2 * max(1, 2) / 15 = 0.2667 -> fp16 0.266601562; zero = 8.
  EXPECT_EQ(p.scale, 0.2666015625f);
  EXPECT_EQ(p.zero, 8);
  EXPECT_EQ(quantize_code(2.0f, p, 15), 15);   // 7.5018 -> 8, + 8 = 16 -> clamped
  EXPECT_EQ(quantize_code(-1.0f, p, 15), 4);   // -3.75 -> -4, + 8
  EXPECT_EQ(quantize_code(-2.0f, p, 15), 0);   // the negative end is reachable
  for (const int bits : {2, 3, 4, 8}) {
    const GroupParams sym = fit_group(values, QuantSpec{bits, 3, true});
    EXPECT_EQ(sym.zero, 1 << (bits - 1)) << bits << " bits";
  }
}

TEST(GroupQuantizer, AllZeroSingleValueAndNegativeOnlyGroups) {
  for (const bool sym : {false, true}) {
    const QuantSpec spec{4, 4, sym};
    const std::vector<float> zeros(4, 0.0f);
    const GroupParams p = fit_group(zeros, spec);
    // GPTQ's range [-1, 1] for an all-zero group: scale 2/15 in fp16, 0 exactly representable.
    EXPECT_EQ(p.scale, f16_to_f32(f32_to_f16(2.0f / 15.0f)));
    EXPECT_EQ(p.zero, 8);  // asym: round(1 / 0.13330078) = round(7.502) = 8
    EXPECT_EQ(dequantize_code(quantize_code(0.0f, p, 15), p), 0.0f);
  }
  {
    const GroupParams p = fit_group(std::vector<float>{3.0f}, QuantSpec{4, 1, false});
    EXPECT_EQ(p.scale, 0.199951171875f);  // range [0, 3]
    EXPECT_EQ(p.zero, 0);
    EXPECT_EQ(quantize_code(3.0f, p, 15), 15);
    EXPECT_NEAR(dequantize_code(15, p), 3.0f, p.scale / 2);
  }
  {
    const GroupParams p = fit_group(std::vector<float>{-2.0f, -1.0f}, QuantSpec{4, 2, false});
    EXPECT_EQ(p.scale, f16_to_f32(f32_to_f16(2.0f / 15.0f)));  // range [-2, 0]
    EXPECT_EQ(p.zero, 15);
    EXPECT_EQ(quantize_code(-2.0f, p, 15), 0);
    EXPECT_EQ(quantize_code(0.0f, p, 15), 15);
    const GroupParams s = fit_group(std::vector<float>{-2.0f, -1.0f}, QuantSpec{4, 2, true});
    EXPECT_EQ(s.scale, f16_to_f32(f32_to_f16(4.0f / 15.0f)));
    EXPECT_EQ(quantize_code(-2.0f, s, 15), 0);
  }
}

TEST(GroupQuantizer, RandomGroupsStayInRangeWithinHalfAStep) {
  std::mt19937 rng(11);
  for (const int bits : {2, 3, 4, 8}) {
    for (const bool sym : {false, true}) {
      const QuantSpec spec{bits, 32, sym};
      const int maxq = spec.maxq();
      for (int trial = 0; trial < 50; ++trial) {
        std::vector<float> values = normal_floats(rng, 32, 0.05f);
        if (trial % 3 == 1) for (auto& v : values) v = std::abs(v);  // one-sided groups
        if (trial % 3 == 2) for (auto& v : values) v = -std::abs(v);
        const GroupParams p = fit_group(values, spec);
        ASSERT_TRUE(is_fp16(p.scale));
        ASSERT_GT(p.scale, 0.0f);
        ASSERT_GE(p.zero, 0);
        ASSERT_LE(p.zero, maxq);
        const float low = dequantize_code(0, p), high = dequantize_code(maxq, p);
        for (const float w : values) {
          const int code = quantize_code(w, p, maxq);
          ASSERT_GE(code, 0);
          ASSERT_LE(code, maxq);
          if (w >= low && w <= high) {
            ASSERT_LE(std::abs(w - dequantize_code(code, p)), p.scale * 0.5f * (1.0f + 1e-5f))
                << bits << " bits, sym " << sym << ", w " << w;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Hessian

TEST(Hessian, RunningMeanOverBatchesMatchesOnePlainSum) {
  std::mt19937 rng(5);
  const Index dim = 48, first = 37, second = 91;
  const std::vector<float> x = correlated_inputs(rng, first + second, dim);
  kernels::CpuBackend backend(2);
  Hessian two_batches(dim), one_batch(dim);
  two_batches.add(std::span<const float>(x).first(at(first * dim)), first, backend);
  two_batches.add(std::span<const float>(x).subspan(at(first * dim)), second, backend);
  one_batch.add(x, first + second, backend);
  EXPECT_EQ(two_batches.samples(), first + second);
  const std::vector<double> expected = plain_hessian(x, first + second, dim);
  double max_diff = 0.0, max_batches = 0.0, max_ref = 0.0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    ASSERT_TRUE(std::isfinite(two_batches.values()[i]) && std::isfinite(one_batch.values()[i]));
    max_diff = std::max(max_diff, std::abs(two_batches.values()[i] - expected[i]));
    max_batches = std::max(max_batches, std::abs(two_batches.values()[i] - one_batch.values()[i]));
    max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  EXPECT_LT(max_diff / max_ref, 1e-5);
  EXPECT_LT(max_batches / max_ref, 1e-5);
  const std::vector<double> norms = two_batches.column_norms();
  for (Index j = 0; j < dim; ++j) {
    double sum = 0.0;
    for (Index n = 0; n < first + second; ++n) sum += static_cast<double>(x[at(n * dim + j)]) * x[at(n * dim + j)];
    EXPECT_NEAR(norms[at(j)], std::sqrt(sum), 1e-5 * std::sqrt(sum));
  }
}

TEST(Hessian, LongBatchesAreSummedInChunks) {
  std::mt19937 rng(6);
  const Index dim = 8, samples = 5000;  // more rows than one float32 product takes
  const std::vector<float> x = normal_floats(rng, samples * dim);
  kernels::CpuBackend backend(2);
  Hessian hessian(dim);
  hessian.add(x, samples, backend);
  const std::vector<double> expected = plain_hessian(x, samples, dim);
  const double scale = *std::max_element(expected.begin(), expected.end());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(hessian.values()[i], expected[i], 1e-5 * scale) << i;
}

TEST(Hessian, RejectsBadBatches) {
  kernels::CpuBackend backend(1);
  Hessian h(4);
  std::vector<float> x(8, 1.0f);
  expect_error([&] { h.add(x, 3, backend); }, {"8 values", "3 rows"});
  x[5] = NAN;
  expect_error([&] { h.add(x, 2, backend); }, {"row 1 column 1"});
  EXPECT_EQ(h.samples(), 0);
  EXPECT_EQ(h.values(), std::vector<double>(16, 0.0));
}

// ---------------------------------------------------------------------------
// The reference: GPTQ / SparseGPT as the sequential OBS update in float64, with the
// full inverse of the not-yet-fixed block of H downdated column by column.

struct Reference {
  std::vector<double> weights;  // input-column order
  std::vector<int> codes;       // input-column order, when quantizing
  double loss = 0.0;
};

std::vector<double> invert(std::vector<double> a, Index n) {  // Gauss-Jordan, partial pivoting
  std::vector<double> inv(at(n * n), 0.0);
  for (Index i = 0; i < n; ++i) inv[at(i * n + i)] = 1.0;
  for (Index col = 0; col < n; ++col) {
    Index pivot = col;
    for (Index r = col + 1; r < n; ++r) {
      if (std::abs(a[at(r * n + col)]) > std::abs(a[at(pivot * n + col)])) pivot = r;
    }
    for (Index c = 0; c < n; ++c) {
      std::swap(a[at(col * n + c)], a[at(pivot * n + c)]);
      std::swap(inv[at(col * n + c)], inv[at(pivot * n + c)]);
    }
    const double d = a[at(col * n + col)];
    for (Index c = 0; c < n; ++c) {
      a[at(col * n + c)] /= d;
      inv[at(col * n + c)] /= d;
    }
    for (Index r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = a[at(r * n + col)];
      if (f == 0.0) continue;
      for (Index c = 0; c < n; ++c) {
        a[at(r * n + c)] -= f * a[at(col * n + c)];
        inv[at(r * n + c)] -= f * inv[at(col * n + c)];
      }
    }
  }
  return inv;
}

// Marks the `count` lowest scores of `scores` (ties: lower index), by a full sort.
void prune_lowest(const std::vector<double>& scores, Index count, std::vector<bool>& pruned, Index offset) {
  std::vector<Index> order(scores.size());
  std::iota(order.begin(), order.end(), Index{0});
  std::sort(order.begin(), order.end(), [&](Index a, Index b) {
    return scores[at(a)] < scores[at(b)] || (scores[at(a)] == scores[at(b)] && a < b);
  });
  for (Index i = 0; i < count && i < static_cast<Index>(order.size()); ++i) pruned[at(offset + order[at(i)])] = true;
}

Reference reference_sweep(std::span<const float> weights, Index rows, Index cols, std::vector<double> h,
                          const SweepOptions& options) {
  // Dead columns, order, damping: as GPTQ.
  std::vector<double> w0(weights.begin(), weights.end());
  for (Index j = 0; j < cols; ++j) {
    if (h[at(j * cols + j)] != 0.0) continue;
    h[at(j * cols + j)] = 1.0;
    for (Index r = 0; r < rows; ++r) w0[at(r * cols + j)] = 0.0;
  }
  std::vector<Index> order(at(cols));
  std::iota(order.begin(), order.end(), Index{0});
  if (options.act_order) {
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index b) { return h[at(a * cols + a)] > h[at(b * cols + b)]; });
  }
  if (options.group_aware_order) {
    // GAR, spelled out: repeatedly take the full group holding the largest remaining
    // diagonal entry, emit its columns from the largest entry down; the tail last.
    const Index size = options.quantize->group_size, full = cols / size;
    std::vector<bool> taken(at(full), false);
    order.clear();
    for (Index n = 0; n < full; ++n) {
      Index best = -1;
      for (Index g = 0; g < full; ++g) {
        if (taken[at(g)]) continue;
        double top = -INFINITY;
        for (Index c = g * size; c < (g + 1) * size; ++c) top = std::max(top, h[at(c * cols + c)]);
        double best_top = -INFINITY;
        if (best >= 0) {
          for (Index c = best * size; c < (best + 1) * size; ++c) best_top = std::max(best_top, h[at(c * cols + c)]);
        }
        if (best < 0 || top > best_top) best = g;
      }
      taken[at(best)] = true;
      std::vector<Index> columns(at(size));
      std::iota(columns.begin(), columns.end(), best * size);
      std::stable_sort(columns.begin(), columns.end(),
                       [&](Index a, Index b) { return h[at(a * cols + a)] > h[at(b * cols + b)]; });
      order.insert(order.end(), columns.begin(), columns.end());
    }
    for (Index c = full * size; c < cols; ++c) order.push_back(c);
  }
  double mean_diagonal = 0.0;
  for (Index j = 0; j < cols; ++j) mean_diagonal += h[at(j * cols + j)] / static_cast<double>(cols);
  std::vector<double> hp(at(cols * cols));
  for (Index a = 0; a < cols; ++a) {
    for (Index b = 0; b < cols; ++b) hp[at(a * cols + b)] = h[at(order[at(a)] * cols + order[at(b)])];
    hp[at(a * cols + a)] += options.damp * mean_diagonal;
  }
  std::vector<double> hinv = invert(hp, cols);
  // [H_F^-1]_cc at the moment column c is fixed (H_F: columns c.. of the sweep): the
  // downdates do not depend on W, so a dry run records them for SparseGPT's scores.
  std::vector<double> diagonal_when_fixed(at(cols));
  {
    std::vector<double> dry = hinv;
    for (Index j = 0; j < cols; ++j) {
      diagonal_when_fixed[at(j)] = dry[at(j * cols + j)];
      for (Index a = j + 1; a < cols; ++a) {
        for (Index b = j + 1; b < cols; ++b) {
          dry[at(a * cols + b)] -= dry[at(a * cols + j)] * dry[at(j * cols + b)] / dry[at(j * cols + j)];
        }
      }
    }
  }

  std::vector<double> w(at(rows * cols));
  std::vector<bool> pruned(at(rows * cols), false);
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < cols; ++i) {
      w[at(r * cols + i)] = w0[at(r * cols + order[at(i)])];
      if (options.preserve_zeros && weights[at(r * cols + order[at(i)])] == 0.0f) pruned[at(r * cols + i)] = true;
    }
  }
  const std::optional<QuantSpec>& spec = options.quantize;
  // Groups of group_size columns, the last one shorter where it does not divide cols.
  const Index group_size = spec ? (spec->group_size > 0 ? spec->group_size : cols) : cols;
  const Index groups = (cols + group_size - 1) / group_size;
  std::vector<GroupParams> params(at(rows * groups));
  if (spec && options.static_groups) {
    for (Index r = 0; r < rows; ++r) {
      for (Index g = 0; g < groups; ++g) {
        std::vector<float> group;
        for (Index c = g * group_size; c < std::min((g + 1) * group_size, cols); ++c) {
          group.push_back(static_cast<float>(w0[at(r * cols + c)]));
        }
        params[at(r * groups + g)] = fit_group(group, *spec);
      }
    }
  }
  const SparsitySpec& sparsity = options.sparsity;

  Reference ref;
  std::vector<double> fixed(at(rows * cols));
  std::vector<int> codes(at(rows * cols), -1);
  for (Index j = 0; j < cols; ++j) {
    for (Index r = 0; r < rows; ++r) {
      // Masks chosen when their first column is reached, on the current weights.
      const auto choose = [&](Index begin, Index end, Index count) {
        std::vector<double> scores;
        for (Index c = begin; c < end; ++c) {
          const double v = w[at(r * cols + c)];
          scores.push_back(pruned[at(r * cols + c)] ? -INFINITY : v * v / diagonal_when_fixed[at(c)]);
        }
        prune_lowest(scores, count, pruned, r * cols + begin);
      };
      if (sparsity.kind == SparsitySpec::Kind::Unstructured && j % options.block_size == 0) {
        const Index end = std::min(j + options.block_size, cols);
        choose(j, end, std::llround(sparsity.fraction * static_cast<double>(end)) -
                           std::llround(sparsity.fraction * static_cast<double>(j)));
      }
      if (sparsity.kind == SparsitySpec::Kind::NofM && j % sparsity.m == 0) choose(j, j + sparsity.m, sparsity.n);
      const bool plain_groups = options.static_groups || options.group_aware_order;
      const Index group = spec ? (plain_groups ? order[at(j)] / group_size : j / group_size) : 0;
      GroupParams& p = params[at(r * groups + group)];
      if (spec && !options.static_groups && j % group_size == 0) {
        std::vector<float> values;
        for (Index c = j; c < std::min(j + group_size, cols); ++c) {
          values.push_back(pruned[at(r * cols + c)] ? 0.0f : static_cast<float>(w[at(r * cols + c)]));
        }
        p = fit_group(values, *spec);
      }
      const double v = w[at(r * cols + j)];
      double q = v;
      if (spec) {
        const int code = pruned[at(r * cols + j)] ? p.zero : quantize_code(static_cast<float>(v), p, spec->maxq());
        codes[at(r * cols + j)] = code;
        q = dequantize_code(code, p);
      } else if (pruned[at(r * cols + j)]) {
        q = 0.0;
      }
      fixed[at(r * cols + j)] = q;
      const double d = hinv[at(j * cols + j)];
      ref.loss += (v - q) * (v - q) / d;
      for (Index c = j + 1; c < cols; ++c) w[at(r * cols + c)] -= (v - q) / d * hinv[at(j * cols + c)];
    }
    const double d = hinv[at(j * cols + j)];
    for (Index a = j + 1; a < cols; ++a) {
      for (Index b = j + 1; b < cols; ++b) hinv[at(a * cols + b)] -= hinv[at(a * cols + j)] * hinv[at(j * cols + b)] / d;
    }
  }
  ref.weights.resize(at(rows * cols));
  ref.codes.resize(at(rows * cols));
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < cols; ++i) {
      ref.weights[at(r * cols + order[at(i)])] = fixed[at(r * cols + i)];
      ref.codes[at(r * cols + order[at(i)])] = codes[at(r * cols + i)];
    }
  }
  return ref;
}

// A quantized result's own consistency: weights are exactly the matrix's values.
void expect_weights_match_codes(const SweepResult& result) {
  ASSERT_TRUE(result.quantized.has_value());
  const QuantizedMatrix& m = *result.quantized;
  m.validate();
  for (Index n = 0; n < m.rows; ++n) {
    for (Index k = 0; k < m.cols; ++k) {
      ASSERT_EQ(result.weights[at(n * m.cols + k)], m.value(n, k)) << "row " << n << " column " << k;
    }
  }
  for (const float s : m.scales) ASSERT_TRUE(is_fp16(s));
}

// Shapes and options the sweep is compared under: 37 rows x 96 columns with lazy
// blocks of 40 (not dividing 96, and cutting groups of 32 and 64 in two); groups of
// 64 leave a last group of 32.
struct ReferenceCase {
  int bits;
  Index group_size;
  bool act_order, static_groups;
  bool group_aware = false;
};

class AgainstReference : public ::testing::TestWithParam<ReferenceCase> {};

TEST_P(AgainstReference, GptqMatchesTheSequentialObsUpdate) {
  const ReferenceCase c = GetParam();
  const Index rows = 37, cols = 96;
  std::mt19937 rng(static_cast<unsigned>(1000 + c.bits * 100 + c.group_size + c.act_order * 7 + c.static_groups * 13 +
                                         c.group_aware * 29));
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  SweepOptions options = gptq_options(c.bits, c.group_size, c.act_order, c.static_groups);
  options.group_aware_order = c.group_aware;
  options.block_size = 40;
  const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
  const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
  expect_weights_match_codes(result);

  // The two orders of arithmetic (float64 with full inverse vs float32 lazy updates
  // through Cholesky factors) differ by ~1e-6 relative. A weight that lands that close
  // to a rounding boundary gets the neighbouring code, and its row's later columns
  // then see a slightly different error; so a few codes may differ, never many, and
  // the weights stay close in norm.
  Index same = 0;
  for (std::size_t i = 0; i < ref.codes.size(); ++i) same += result.quantized->codes[i] == ref.codes[i] ? 1 : 0;
  EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(rows * cols));
  EXPECT_LT(relative_difference(result.weights, ref.weights), 2e-2);
  EXPECT_NEAR(result.loss, ref.loss, 2e-2 * ref.loss);
  if (c.act_order && !c.static_groups && c.group_size > 0) {
    // Groups follow the act-order sweep: not monotone in the column index.
    EXPECT_FALSE(std::is_sorted(result.quantized->group_of_col.begin(), result.quantized->group_of_col.end()));
  } else {
    EXPECT_EQ(result.quantized->group_of_col, contiguous_groups(cols, c.group_size));
  }
}

INSTANTIATE_TEST_SUITE_P(Configurations, AgainstReference,
                         ::testing::Values(ReferenceCase{4, -1, false, false}, ReferenceCase{4, 32, false, false},
                                           ReferenceCase{3, 64, false, false}, ReferenceCase{3, 32, true, false},
                                           ReferenceCase{4, 64, true, false}, ReferenceCase{4, -1, true, false},
                                           ReferenceCase{4, 32, true, true}, ReferenceCase{3, 32, false, true},
                                           ReferenceCase{4, 64, true, true}, ReferenceCase{3, -1, false, false},
                                           ReferenceCase{4, 32, false, false, true}, ReferenceCase{3, 64, false, false, true}));

TEST(AgainstReference, PruningOnlySweepMatchesTheSequentialObsUpdate) {
  const Index rows = 37, cols = 96;
  for (const SparsitySpec sparsity : {SparsitySpec::n_of_m(2, 4), SparsitySpec::unstructured(0.5)}) {
    std::mt19937 rng(77);
    const Hessian hessian = correlated_hessian(rng, cols);
    const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
    SweepOptions options;
    options.sparsity = sparsity;
    options.block_size = 40;
    const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
    const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
    Index same_mask = 0;
    for (std::size_t i = 0; i < ref.weights.size(); ++i) same_mask += (result.weights[i] == 0.0f) == (ref.weights[i] == 0.0) ? 1 : 0;
    EXPECT_GE(static_cast<double>(same_mask), 0.995 * static_cast<double>(rows * cols));
    EXPECT_LT(relative_difference(result.weights, ref.weights), 2e-2);
    EXPECT_NEAR(result.loss, ref.loss, 2e-2 * ref.loss);
    EXPECT_FALSE(result.quantized.has_value());
  }
}

TEST(AgainstReference, LargerOddShapeWithDefaultBlocks) {
  // 300 columns: several factorization panels and GEMM tiles with ragged edges,
  // lazy blocks of 128 and groups of 128 with a last group of 44.
  const Index rows = 20, cols = 300;
  std::mt19937 rng(79);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  for (const bool act_order : {false, true}) {
    const SweepOptions options = gptq_options(4, 128, act_order);
    const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
    const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
    Index same = 0;
    for (std::size_t i = 0; i < ref.codes.size(); ++i) same += result.quantized->codes[i] == ref.codes[i] ? 1 : 0;
    EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(rows * cols));
    EXPECT_LT(relative_difference(result.weights, ref.weights), 2e-2);
    EXPECT_NEAR(result.loss, ref.loss, 2e-2 * ref.loss);
    EXPECT_EQ(result.quantized->groups, 3);
  }
}

TEST(AgainstReference, PreservedZerosCountTowardsTheSparsity) {
  const Index rows = 37, cols = 96;
  std::mt19937 rng(80);
  const Hessian hessian = correlated_hessian(rng, cols);
  std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  for (std::size_t i = 0; i < w.size(); i += 7) w[i] = 0.0f;
  for (const SparsitySpec sparsity : {SparsitySpec::n_of_m(2, 4), SparsitySpec::unstructured(0.5)}) {
    SweepOptions options = gptq_options(4, 32);
    options.sparsity = sparsity;
    options.preserve_zeros = true;
    options.block_size = 40;
    const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
    const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
    Index same = 0;
    for (std::size_t i = 0; i < ref.codes.size(); ++i) same += result.quantized->codes[i] == ref.codes[i] ? 1 : 0;
    EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(rows * cols));
    for (std::size_t i = 0; i < w.size(); i += 7) EXPECT_EQ(result.weights[i], 0.0f);
    if (sparsity.kind == SparsitySpec::Kind::NofM) {
      expect_n_of_m(result.weights, rows, cols, 2, 4);
    } else {
      // Each row loses its share; preserved zeros beyond a block's share stay zero too.
      for (Index r = 0; r < rows; ++r) {
        EXPECT_GE(zeros_in(std::span<const float>(result.weights).subspan(at(r * cols), at(cols))), 48);
      }
    }
  }
}

TEST(AgainstReference, JointPruningAndQuantizationMatchesTheSequentialObsUpdate) {
  const Index rows = 37, cols = 96;
  std::mt19937 rng(78);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  SweepOptions options = gptq_options(4, 32);
  options.sparsity = SparsitySpec::n_of_m(2, 4);
  options.block_size = 40;
  const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
  const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
  Index same = 0;
  for (std::size_t i = 0; i < ref.codes.size(); ++i) same += result.quantized->codes[i] == ref.codes[i] ? 1 : 0;
  EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(rows * cols));
  EXPECT_LT(relative_difference(result.weights, ref.weights), 2e-2);
}

// ---------------------------------------------------------------------------
// The scale search (ScaleChoice::Search)

// Groups of several kinds, as weights come: Gaussian, uniform, heavy-tailed, one
// outlier, one-sided, with pruned zeros, already on a (foreign) 4-bit grid, constant.
std::vector<float> random_group(std::mt19937& rng, int kind, Index size) {
  std::vector<float> v = normal_floats(rng, size, 0.02f);
  std::uniform_real_distribution<float> uniform(-0.05f, 0.05f);
  switch (kind % 8) {
    case 1:
      for (auto& x : v) x = uniform(rng);
      break;
    case 2:  // Student-t-like: a Gaussian over a random small spread
      for (auto& x : v) x /= std::max(0.05f, std::abs(uniform(rng)) * 20.0f);
      break;
    case 3:
      v[at(static_cast<Index>(rng() % static_cast<unsigned>(size)))] *= 12.0f;
      break;
    case 4:
      for (auto& x : v) x = std::abs(x) + 0.01f;
      break;
    case 5:
      for (Index i = 0; i < size; i += 2) v[at(i)] = 0.0f;
      break;
    case 6: {  // Q4_1-like: an affine 4-bit grid not aligned with 0
      const float step = 0.004f, min = -0.031f;
      for (auto& x : v) x = min + step * static_cast<float>(rng() % 16);
      break;
    }
    case 7:
      for (auto& x : v) x = -0.0125f;
      break;
    default:
      break;
  }
  return v;
}

TEST(ScaleSearch, NeverIncreasesTheWeightedGroupErrorOverMinMax) {
  std::mt19937 rng(17);
  for (const int bits : {2, 3, 4, 8}) {
    for (const bool sym : {false, true}) {
      for (const int min_zero : {0, 1}) {
        if (sym && min_zero == 1) continue;
        QuantSpec minmax{bits, 32, sym, min_zero};
        QuantSpec search = minmax;
        search.scales = ScaleChoice::Search;
        const int maxq = minmax.maxq();
        // Totals over the weighted [1] and unweighted [0] trials.
        std::array<double, 2> total_minmax{}, total_search{};
        double plain_minmax = 0, plain_search = 0;  // unweighted symmetric trials, plain squared error
        for (int trial = 0; trial < 400; ++trial) {
          const Index size = trial % 5 == 0 ? 17 : 32;  // short last groups too
          const std::vector<float> values = random_group(rng, trial, size);
          std::vector<float> importance;
          if (trial % 2 == 1) {  // log-normal activation moments, some columns dead
            std::lognormal_distribution<float> moments(0.0f, 1.5f);
            for (Index i = 0; i < size; ++i) importance.push_back(i % 7 == 3 ? 0.0f : moments(rng));
          }
          const GroupParams base = fit_group(values, minmax, importance);
          const GroupParams best = fit_group(values, search, importance);
          ASSERT_TRUE(is_fp16(best.scale));
          // Symmetric scales may be negative (the mirrored grid), never zero.
          if (sym) {
            ASSERT_NE(best.scale, 0.0f);
          } else {
            ASSERT_GT(best.scale, 0.0f);
          }
          if (sym) {
            ASSERT_EQ(best.zero, 1 << (bits - 1));
          } else {
            ASSERT_GE(best.zero, min_zero);
            ASSERT_LE(best.zero, maxq);
          }
          // Pruned weights stay exactly representable.
          ASSERT_EQ(dequantize_code(quantize_code(0.0f, best, maxq), best), 0.0f);
          // The error the search minimizes: symmetric groups given no importance
          // weigh each weight's error by |w|.
          const std::vector<float> objective = sym && importance.empty() ? magnitude_importance(values) : importance;
          const double e_minmax = group_error(values, base, maxq, objective);
          const double e_search = group_error(values, best, maxq, objective);
          if (sym && importance.empty() && trial % 8 != 7) {
            plain_minmax += group_error(values, base, maxq);
            plain_search += group_error(values, best, maxq);
          }
          ASSERT_LE(e_search, e_minmax) << bits << " bits, sym " << sym << ", trial " << trial;
          if (trial % 8 != 7) {  // constant groups are exact either way
            total_minmax[at(trial % 2)] += e_minmax;
            total_search[at(trial % 2)] += e_search;
          }
        }
        // And it is a real improvement, not a tie. Weighted (clipping and least
        // squares): measured 0.39-0.76 x min-max's total error at 2-4 bits,
        // 0.71-0.77 x at 8. Unweighted: 0.85-0.96 x asymmetric; symmetric 0.25-0.46 x
        // on its |w|-weighted error, and on the plain squared error too in total
        // (0.52-0.92 x), though not group by group.
        EXPECT_LT(total_search[1], 0.95 * total_minmax[1]) << bits << " bits, sym " << sym << ", min_zero " << min_zero;
        EXPECT_LT(total_search[0], 0.975 * total_minmax[0]) << bits << " bits, sym " << sym << ", min_zero " << min_zero;
        if (sym) {
          EXPECT_LT(plain_search, 0.95 * plain_minmax) << bits << " bits";
        }
      }
    }
  }
}

TEST(ScaleSearch, SymmetricGridUsesTheFullCodeRange) {
  // Codes -8..7 of step 0.25 with the extreme at -8: the full-range grid holds the
  // group exactly; min-max's 2 * 2 / 15 step cannot.
  std::vector<float> values;
  for (int c = -8; c <= 7; ++c) values.push_back(0.25f * static_cast<float>(c));
  QuantSpec spec{4, 16, true};
  const GroupParams minmax = fit_group(values, spec);
  spec.scales = ScaleChoice::Search;
  const GroupParams best = fit_group(values, spec);
  EXPECT_GT(group_error(values, minmax, 15), 0.0);
  EXPECT_EQ(best.scale, 0.25f);
  EXPECT_EQ(group_error(values, best, 15), 0.0);
  EXPECT_EQ(quantize_code(-2.0f, best, 15), 0);

  // The mirror image, extreme +2 on the long side: a positive scale either clips it
  // or wastes a step; the negative scale -0.25 (Q4_0's extreme / -8) is exact.
  for (auto& v : values) v = -v;
  const GroupParams mirrored = fit_group(values, spec);
  EXPECT_EQ(mirrored.scale, -0.25f);
  EXPECT_EQ(mirrored.zero, 8);
  EXPECT_EQ(group_error(values, mirrored, 15), 0.0);
  EXPECT_EQ(quantize_code(2.0f, mirrored, 15), 0);
  EXPECT_EQ(dequantize_code(0, mirrored), 2.0f);
}

TEST(ScaleSearch, ImportanceSteersTheErrorToUnimportantColumns) {
  // Searched with the activations' weights, a group's weighted error is no larger
  // than when searched blind, and clearly smaller over many groups.
  std::mt19937 rng(29);
  std::lognormal_distribution<float> moments(0.0f, 2.0f);
  for (const bool sym : {false, true}) {
    QuantSpec spec{4, 32, sym};
    spec.scales = ScaleChoice::Search;
    double weighted = 0.0, blind = 0.0;
    for (int trial = 0; trial < 300; ++trial) {
      const std::vector<float> values = random_group(rng, trial % 4, 32);
      std::vector<float> importance(32);
      for (auto& h : importance) h = moments(rng);
      weighted += group_error(values, fit_group(values, spec, importance), 15, importance);
      blind += group_error(values, fit_group(values, spec), 15, importance);
    }
    EXPECT_LT(weighted, 0.9 * blind) << "sym " << sym;  // measured 0.49 (asym), 0.62 (sym)
  }
}

TEST(ScaleSearch, RoundToNearestUsesColumnImportanceAndChecksIt) {
  const Index rows = 8, cols = 64;
  std::mt19937 rng(31);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  std::vector<double> importance(at(cols));
  std::lognormal_distribution<double> moments(0.0, 2.0);
  for (auto& h : importance) h = moments(rng);
  QuantSpec spec{4, 32, true};
  spec.scales = ScaleChoice::Search;
  const SweepResult weighted = round_to_nearest(w, rows, cols, spec, importance);
  // Each group is fit_group's choice with the columns' importance (any positive
  // multiple of it: the search's result does not depend on the scale).
  std::vector<float> group_importance(32);
  for (Index r = 0; r < rows; ++r) {
    for (Index g = 0; g < 2; ++g) {
      for (Index k = 0; k < 32; ++k) group_importance[at(k)] = static_cast<float>(importance[at(g * 32 + k)]);
      const GroupParams p =
          fit_group(std::span<const float>(w).subspan(at(r * cols + g * 32), 32), spec, group_importance);
      EXPECT_EQ(weighted.quantized->scales[at(r * 2 + g)], p.scale);
    }
  }
  expect_weights_match_codes(weighted);
  expect_error([&] { round_to_nearest(w, rows, cols, spec, std::vector<double>(10, 1.0)); }, {"10 column importances"});
  importance[3] = -1.0;
  expect_error([&] { round_to_nearest(w, rows, cols, spec, importance); }, {"importance"});
  const std::vector<float> three(3, 0.1f);
  expect_error([&] { fit_group(three, spec, std::vector<float>{1.0f}); }, {"1 importance weights"});
}

TEST(ScaleSearch, GptqWithTheSearchBeatsGptqWithMinMaxAndRtn) {
  const Index rows = 64, cols = 128;
  std::mt19937 rng(23);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  for (const int bits : {3, 4}) {
    SweepOptions options = gptq_options(bits, 32);
    const SweepResult minmax = obs_sweep(w, rows, cols, hessian, options);
    options.quantize->scales = ScaleChoice::Search;
    const SweepResult search = obs_sweep(w, rows, cols, hessian, options);
    const SweepResult rtn = round_to_nearest(w, rows, cols, *options.quantize);
    const double search_loss = proxy_loss(w, search.weights, rows, cols, hessian);
    EXPECT_LT(search_loss, proxy_loss(w, minmax.weights, rows, cols, hessian)) << bits << " bits";
    EXPECT_LT(search_loss, proxy_loss(w, rtn.weights, rows, cols, hessian)) << bits << " bits";
    expect_weights_match_codes(search);
  }
}

// ---------------------------------------------------------------------------
// --target-bpw: the greedy bit allocation over real block errors

// Modules of uneven size and sensitivity: heavy-tailed weights, log-normal column
// importance scaled per module, rows of 256-blocks (K-quants) and of 32-blocks.
std::vector<ModuleCosts> random_module_costs(std::mt19937& rng, int count) {
  std::vector<ModuleCosts> modules;
  std::lognormal_distribution<float> moments(0.0f, 1.0f), sensitivity(0.0f, 1.5f);
  std::student_t_distribution<float> tails(4.0f);
  for (int m = 0; m < count; ++m) {
    const Index rows = 16 * (1 + m % 3), cols = m % 2 == 0 ? 256 : 96;
    std::vector<float> w(at(rows * cols)), importance(at(cols));
    for (auto& v : w) v = 0.02f * tails(rng);
    const float scale = sensitivity(rng);
    for (auto& h : importance) h = scale * moments(rng);
    modules.push_back(block_costs(fmt::format("m{}", m), w, rows, cols, importance, 8));
  }
  return modules;
}

TEST(BitAllocation, AchievesTheTargetWithinASmallSlackAndLowersTheErrorAsItRises) {
  std::mt19937 rng(41);
  const std::vector<ModuleCosts> modules = random_module_costs(rng, 60);
  for (const auto& m : modules) {
    ASSERT_EQ(m.options.size(), candidate_types(m.cols).size());
    // More bits, less error, for every module's ladder (Q4_1 vs Q5_0 aside: both 5-ish bits).
    EXPECT_LT(m.options.back().error, m.options.front().error) << m.module;
  }
  double previous_error = 0;
  for (const double target : {4.5, 4.75, 5.0, 5.5, 6.0, 7.0, 8.5}) {
    const Allocation a = allocate_bits(modules, target);
    EXPECT_LE(a.bits_per_weight, target + 1e-9) << target;
    // 60 modules: one step of the smallest module is under 0.05 bits of the average.
    EXPECT_GE(a.bits_per_weight, target - 0.05) << target;
    if (target > 4.5) {
      EXPECT_LT(a.error, previous_error) << target;
    }
    previous_error = a.error;
    double recomputed = 0;
    for (const auto& m : modules) {
      const GgmlType type = a.types.at(m.module);
      const auto option = std::find_if(m.options.begin(), m.options.end(), [&](const TypeCost& c) { return c.type == type; });
      ASSERT_NE(option, m.options.end());
      recomputed += option->error;
    }
    EXPECT_DOUBLE_EQ(recomputed, a.error);
  }
}

TEST(BitAllocation, AtTheCheapestTypesBitsItKeepsThemAndBelowItRefuses) {
  std::mt19937 rng(43);
  const std::vector<ModuleCosts> modules = random_module_costs(rng, 10);
  // Q4_K and Q4_0 are both 4.5 bits per weight.
  const Allocation a = allocate_bits(modules, type_bits_per_weight(GgmlType::Q4_K));
  for (const auto& m : modules) EXPECT_EQ(a.types.at(m.module), m.cols % 256 == 0 ? GgmlType::Q4_K : GgmlType::Q4_0);
  EXPECT_DOUBLE_EQ(a.bits_per_weight, 4.5);
  expect_error([&] { allocate_bits(modules, 4.4); }, {"--target-bpw 4.4", "4.5000"});
}

TEST(BitAllocation, SpendsTheBitsWhereTheyBuyTheMostError) {
  // Two equal modules, one 100 x more sensitive: with room for one upgrade only, it
  // goes to the sensitive one.
  std::mt19937 rng(47);
  std::vector<float> w(at(64 * 256));
  for (auto& v : w) v = normal_floats(rng, 1, 0.02f)[0];
  const std::vector<float> low(256, 1.0f), high(256, 100.0f);
  const std::vector<ModuleCosts> modules = {block_costs("quiet", w, 64, 256, low),
                                            block_costs("loud", w, 64, 256, high)};
  // Q4_K -> Q5_K on one of two equal modules: 5.0 bits on average.
  const Allocation a = allocate_bits(modules, 5.0);
  EXPECT_EQ(a.types.at("loud"), GgmlType::Q5_K);
  EXPECT_EQ(a.types.at("quiet"), GgmlType::Q4_K);
}

// ---------------------------------------------------------------------------
// GPTQ properties

TEST(Gptq, IdentityHessianGivesRoundToNearest) {
  const Index rows = 24, cols = 256;
  std::mt19937 rng(3);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.03f);
  std::vector<double> identity(at(cols * cols), 0.0);
  for (Index j = 0; j < cols; ++j) identity[at(j * cols + j)] = 1.0;
  const Hessian hessian = hessian_from(identity, cols);
  for (const int bits : {2, 3, 4, 8}) {
    for (const Index group_size : {Index{-1}, Index{32}, Index{128}, Index{96}}) {  // 96: a last group of 64
      for (const bool sym : {false, true}) {
       for (const ScaleChoice scales : {ScaleChoice::MinMax, ScaleChoice::Search}) {
        SweepOptions options = gptq_options(bits, group_size);
        options.quantize->sym = sym;
        options.quantize->scales = scales;  // equal H_jj weigh every column alike: RTN's search
        const SweepResult gptq = obs_sweep(w, rows, cols, hessian, options);
        // RTN with the same (uniform) column importance: the search clips and refines
        // only with importance, which GPTQ always passes.
        const SweepResult rtn = round_to_nearest(w, rows, cols, *options.quantize, std::vector<double>(at(cols), 1.0));
        ASSERT_EQ(gptq.quantized->codes, rtn.quantized->codes) << bits << " bits, group " << group_size;
        ASSERT_EQ(gptq.quantized->scales, rtn.quantized->scales);
        ASSERT_EQ(gptq.quantized->zeros, rtn.quantized->zeros);
        ASSERT_EQ(gptq.weights, rtn.weights);
        expect_weights_match_codes(rtn);
       }
      }
    }
  }
}

TEST(RoundToNearest, FitsEveryGroupOnItsOwnColumnsTheLastOneShorter) {
  const Index rows = 3, cols = 40;
  std::mt19937 rng(4);
  const std::vector<float> w = normal_floats(rng, rows * cols);
  const QuantSpec spec{3, 16, false};  // groups of 16, 16 and 8
  const SweepResult rtn = round_to_nearest(w, rows, cols, spec);
  const QuantizedMatrix& m = *rtn.quantized;
  ASSERT_EQ(m.groups, 3);
  EXPECT_EQ(m.group_of_col, contiguous_groups(cols, 16));
  for (Index r = 0; r < rows; ++r) {
    for (Index g = 0; g < 3; ++g) {
      const Index first = g * 16, size = std::min<Index>(16, cols - first);
      const GroupParams p = fit_group(std::span<const float>(w).subspan(at(r * cols + first), at(size)), spec);
      EXPECT_EQ(m.scales[at(r * 3 + g)], p.scale);
      EXPECT_EQ(m.zeros[at(r * 3 + g)], p.zero);
      for (Index k = first; k < first + size; ++k) {
        EXPECT_EQ(m.codes[at(r * cols + k)], quantize_code(w[at(r * cols + k)], p, spec.maxq()));
      }
    }
  }
  expect_weights_match_codes(rtn);
  double loss = 0.0;
  for (std::size_t i = 0; i < w.size(); ++i) loss += (static_cast<double>(w[i]) - rtn.weights[i]) * (w[i] - rtn.weights[i]);
  EXPECT_NEAR(rtn.loss, loss, 1e-9 * loss);
}

TEST(Gptq, BeatsRoundToNearestOnTheProxyLoss) {
  const Index rows = 64, cols = 128;
  std::mt19937 rng(21);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  for (const int bits : {2, 3, 4}) {
    for (const bool act_order : {false, true}) {
      const SweepOptions options = gptq_options(bits, 32, act_order);
      const SweepResult gptq = obs_sweep(w, rows, cols, hessian, options);
      const SweepResult rtn = round_to_nearest(w, rows, cols, *options.quantize);
      const double gptq_loss = proxy_loss(w, gptq.weights, rows, cols, hessian);
      const double rtn_loss = proxy_loss(w, rtn.weights, rows, cols, hessian);
      ASSERT_TRUE(std::isfinite(gptq_loss) && std::isfinite(rtn_loss));
      // Measured: 0.91 x RTN at 2 bits in column order (large late columns hurt,
      // which act_order fixes), 0.3-0.6 x elsewhere.
      EXPECT_LT(gptq_loss, (bits == 2 && !act_order ? 0.97 : 0.7) * rtn_loss) << bits << " bits, act_order " << act_order;
      expect_weights_match_codes(gptq);
    }
  }
}

TEST(Gptq, LossIsTheProxyLossOfTheDampedHessian) {
  const Index rows = 16, cols = 64;
  std::mt19937 rng(8);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  const SweepOptions options = gptq_options(3, 16, true);
  const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
  std::vector<double> damped = hessian.values();
  double mean = 0.0;
  for (Index j = 0; j < cols; ++j) mean += damped[at(j * cols + j)] / static_cast<double>(cols);
  for (Index j = 0; j < cols; ++j) damped[at(j * cols + j)] += options.damp * mean;
  const double expected = proxy_loss(w, result.weights, rows, cols, hessian_from(damped, cols));
  EXPECT_NEAR(result.loss, expected, 1e-3 * expected);
}

TEST(Gptq, DeadColumnsAreZeroed) {
  const Index rows = 8, cols = 64;
  std::mt19937 rng(9);
  std::vector<double> h = correlated_hessian(rng, cols).values();
  for (const Index dead : {Index{5}, Index{40}}) {
    for (Index j = 0; j < cols; ++j) h[at(dead * cols + j)] = h[at(j * cols + dead)] = 0.0;
  }
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  const SweepResult result = obs_sweep(w, rows, cols, hessian_from(h, cols), gptq_options(4, 32, true));
  for (Index r = 0; r < rows; ++r) {
    for (const Index dead : {Index{5}, Index{40}}) EXPECT_EQ(result.weights[at(r * cols + dead)], 0.0f);
  }
  EXPECT_LT(zeros_in(result.weights), rows * cols / 4);
  for (const float v : result.weights) ASSERT_TRUE(std::isfinite(v));
}

TEST(Gptq, ActOrderGroupsFollowTheSweepOrder) {
  const Index rows = 4, cols = 64;
  std::mt19937 rng(10);
  std::vector<double> h = correlated_hessian(rng, cols).values();
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  const SweepResult result = obs_sweep(w, rows, cols, hessian_from(h, cols), gptq_options(4, 16, true));
  std::vector<Index> order(at(cols));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return h[at(a * cols + a)] > h[at(b * cols + b)]; });
  for (Index i = 0; i < cols; ++i) EXPECT_EQ(result.quantized->group_of_col[at(order[at(i)])], i / 16);
  const SweepResult static_result =
      obs_sweep(w, rows, cols, hessian_from(h, cols), gptq_options(4, 16, true, true));
  EXPECT_EQ(static_result.quantized->group_of_col, contiguous_groups(cols, 16));
  // Static groups are fit before the sweep: on the original weights, exactly RTN's scales.
  EXPECT_EQ(static_result.quantized->scales, round_to_nearest(w, rows, cols, *gptq_options(4, 16).quantize).quantized->scales);
}

// ---------------------------------------------------------------------------
// Pruning

void expect_row_sparsity(std::span<const float> w, Index rows, Index cols, Index removed) {
  for (Index r = 0; r < rows; ++r) ASSERT_EQ(zeros_in(w.subspan(at(r * cols), at(cols))), removed) << "row " << r;
}

TEST(Pruning, SparseGptBeatsWandaAndMagnitude) {
  const Index rows = 48, cols = 128, samples = 512;
  std::mt19937 rng(31);
  const std::vector<float> x = correlated_inputs(rng, samples, cols);
  kernels::CpuBackend backend(2);
  Hessian hessian(cols);
  hessian.add(x, samples, backend);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  for (const SparsitySpec sparsity : {SparsitySpec::n_of_m(2, 4), SparsitySpec::unstructured(0.5)}) {
    SweepOptions options;
    options.sparsity = sparsity;
    options.backend = &backend;
    const SweepResult sparse_gpt = obs_sweep(w, rows, cols, hessian, options);
    const std::vector<float> wanda = prune_wanda(w, rows, cols, hessian.column_norms(), sparsity);
    const std::vector<float> magnitude = prune_magnitude(w, rows, cols, sparsity);
    const double sparse_gpt_loss = proxy_loss(w, sparse_gpt.weights, rows, cols, hessian);
    const double wanda_loss = proxy_loss(w, wanda, rows, cols, hessian);
    const double magnitude_loss = proxy_loss(w, magnitude, rows, cols, hessian);
    ASSERT_TRUE(std::isfinite(sparse_gpt_loss) && std::isfinite(wanda_loss) && std::isfinite(magnitude_loss));
    // Measured: SparseGPT 0.64 (2:4) and 0.81 (50%) x Wanda, 0.25 x magnitude.
    EXPECT_LT(sparse_gpt_loss, 0.9 * wanda_loss);
    EXPECT_LT(sparse_gpt_loss, 0.5 * magnitude_loss);
    EXPECT_LT(wanda_loss, magnitude_loss);  // the channel scales vary, and Wanda sees them
    if (sparsity.kind == SparsitySpec::Kind::NofM) {
      for (const auto* pruned : {&sparse_gpt.weights, &wanda, &magnitude}) expect_n_of_m(*pruned, rows, cols, 2, 4);
    } else {
      for (const auto* pruned : {&sparse_gpt.weights, &wanda, &magnitude}) expect_row_sparsity(*pruned, rows, cols, 64);
    }
  }
}

TEST(Pruning, UnstructuredSharesAreExactPerRow) {
  const Index rows = 9, cols = 100;  // 0.37 * 100 = 37 per row; blocks of 24 get 9 or 8 each
  std::mt19937 rng(32);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols);
  const SparsitySpec sparsity = SparsitySpec::unstructured(0.37);
  EXPECT_EQ(sparsity.removed_in(0, cols), 37);
  expect_row_sparsity(prune_magnitude(w, rows, cols, sparsity), rows, cols, 37);
  expect_row_sparsity(prune_wanda(w, rows, cols, hessian.column_norms(), sparsity), rows, cols, 37);
  SweepOptions options;
  options.sparsity = sparsity;
  options.block_size = 24;
  expect_row_sparsity(obs_sweep(w, rows, cols, hessian, options).weights, rows, cols, 37);
}

TEST(Pruning, MagnitudeRemovesTheSmallestAndBreaksTiesByIndex) {
  const std::vector<float> w{0.5f, -0.1f, 0.1f, 2.0f, /* row 2 */ 1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<float> two_four = prune_magnitude(w, 2, 4, SparsitySpec::n_of_m(2, 4));
  EXPECT_EQ(two_four, (std::vector<float>{0.5f, 0.0f, 0.0f, 2.0f, 0.0f, 0.0f, 1.0f, 1.0f}));
  const std::vector<float> quarter = prune_magnitude(w, 2, 4, SparsitySpec::unstructured(0.25));
  EXPECT_EQ(quarter, (std::vector<float>{0.5f, 0.0f, 0.1f, 2.0f, 0.0f, 1.0f, 1.0f, 1.0f}));
  // Wanda weighs by the activation norm.
  const std::vector<double> norms{1.0, 100.0, 1.0, 1.0};
  const std::vector<float> wanda = prune_wanda(w, 2, 4, norms, SparsitySpec::n_of_m(2, 4));
  EXPECT_EQ(wanda, (std::vector<float>{0.0f, -0.1f, 0.0f, 2.0f, 0.0f, 1.0f, 0.0f, 1.0f}));
}

TEST(Pruning, WandaWithEqualNormsIsMagnitude) {
  const Index rows = 16, cols = 64;
  std::mt19937 rng(33);
  std::vector<float> w = normal_floats(rng, rows * cols);
  w[5] = w[6];  // a tie
  const std::vector<double> norms(at(cols), 3.5);
  for (const SparsitySpec sparsity : {SparsitySpec::n_of_m(2, 4), SparsitySpec::unstructured(0.6)}) {
    EXPECT_EQ(prune_wanda(w, rows, cols, norms, sparsity), prune_magnitude(w, rows, cols, sparsity));
  }
}

TEST(Pruning, JointSparseGptAndFourBitKeepsTwoFour) {
  const Index rows = 32, cols = 128;
  std::mt19937 rng(34);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = normal_floats(rng, rows * cols, 0.02f);
  SweepOptions options = gptq_options(4, 32);
  options.sparsity = SparsitySpec::n_of_m(2, 4);
  const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
  expect_weights_match_codes(result);
  const QuantizedMatrix& m = *result.quantized;
  EXPECT_TRUE(m.sparse_2_4);
  EXPECT_TRUE(m.follows_2_4());
  expect_n_of_m(result.weights, rows, cols, 2, 4);
  for (Index r = 0; r < rows; ++r) {
    for (Index k = 0; k < cols; ++k) {
      if (result.weights[at(r * cols + k)] == 0.0f) {
        EXPECT_EQ(m.codes[at(r * cols + k)], m.zeros[at(r * m.groups + m.group(k))]);
      }
    }
  }
  // Better than pruning by magnitude and quantizing with RTN.
  const SweepResult rtn =
      round_to_nearest(prune_magnitude(w, rows, cols, options.sparsity), rows, cols, *options.quantize);
  EXPECT_LT(proxy_loss(w, result.weights, rows, cols, hessian), proxy_loss(w, rtn.weights, rows, cols, hessian));
}

TEST(Pruning, PreserveZerosKeepsThemAndQuantizesTheRest) {
  const Index rows = 16, cols = 64;
  std::mt19937 rng(35);
  const Hessian hessian = correlated_hessian(rng, cols);
  const std::vector<float> w = prune_wanda(normal_floats(rng, rows * cols, 0.02f), rows, cols, hessian.column_norms(),
                                           SparsitySpec::unstructured(0.5));
  SweepOptions options = gptq_options(4, 32, false);
  options.preserve_zeros = true;
  options.block_size = 24;
  const SweepResult result = obs_sweep(w, rows, cols, hessian, options);
  expect_weights_match_codes(result);
  Index survivors = 0, survivors_zeroed = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (w[i] == 0.0f) {
      EXPECT_EQ(result.weights[i], 0.0f);
    } else {
      ++survivors;
      survivors_zeroed += result.weights[i] == 0.0f ? 1 : 0;
    }
  }
  // The survivors are quantized, not pruned: only those within half a step of 0 become 0.
  EXPECT_LT(survivors_zeroed, survivors / 5);
  // Zeros are fixed like pruned weights, with whatever the sweep added to them spread
  // on as error (quantization errors are under half a step, so few would move anyway).
  const Reference ref = reference_sweep(w, rows, cols, hessian.values(), options);
  Index same = 0;
  for (std::size_t i = 0; i < ref.codes.size(); ++i) same += result.quantized->codes[i] == ref.codes[i] ? 1 : 0;
  EXPECT_GE(static_cast<double>(same), 0.995 * static_cast<double>(rows * cols));
}

// ---------------------------------------------------------------------------
// Bad inputs

TEST(BadInputs, AreRejectedWithClearMessages) {
  const Index rows = 4, cols = 48;
  std::mt19937 rng(40);
  const Hessian hessian = correlated_hessian(rng, cols);
  std::vector<float> w = normal_floats(rng, rows * cols);
  expect_error([&] { obs_sweep(w, rows, cols, hessian, gptq_options(5, 16)); }, {"5-bit"});
  expect_error([&] { round_to_nearest(w, rows, cols, QuantSpec{1, 16, false}); }, {"1-bit"});
  expect_error([&] { fit_group(w, QuantSpec{6, 16, false}); }, {"6-bit"});
  expect_error([&] { obs_sweep(w, rows, cols, hessian, gptq_options(4, 0)); }, {"group size 0"});
  expect_error([&] { round_to_nearest(w, rows, cols, QuantSpec{4, -2, false}); }, {"group size -2"});
  {
    SweepOptions options;
    options.sparsity = SparsitySpec::n_of_m(3, 5);
    expect_error([&] { obs_sweep(w, rows, cols, hessian, options); }, {"3:5", "48"});
    expect_error([&] { prune_magnitude(w, rows, cols, options.sparsity); }, {"3:5", "48"});
  }
  expect_error([] { SparsitySpec::n_of_m(4, 4); }, {"4:4"});
  expect_error([] { SparsitySpec::unstructured(1.5); }, {"1.5"});
  {
    SweepOptions options = gptq_options(4, 16, true);
    options.sparsity = SparsitySpec::n_of_m(2, 4);
    expect_error([&] { obs_sweep(w, rows, cols, hessian, options); }, {"act_order", "pruning"});
  }
  expect_error([&] { obs_sweep(w, rows, cols + 4, hessian, gptq_options(4, 16)); }, {"do not form"});
  expect_error([&] { obs_sweep(w, rows * 2, cols / 2, hessian, gptq_options(4, 8)); }, {"Hessian of dimension 48"});
  expect_error([&] { prune_wanda(w, rows, cols, std::vector<double>(7, 1.0), SparsitySpec::n_of_m(2, 4)); },
               {"7 norms", "48 columns"});
  {
    std::vector<float> bad = w;
    bad[at(2 * cols + 5)] = NAN;
    expect_error([&] { obs_sweep(bad, rows, cols, hessian, gptq_options(4, 16)); }, {"row 2 column 5"});
    expect_error([&] { round_to_nearest(bad, rows, cols, QuantSpec{4, 16, false}); }, {"row 2 column 5"});
    expect_error([&] { prune_magnitude(bad, rows, cols, SparsitySpec::n_of_m(2, 4)); }, {"row 2 column 5"});
  }
  {
    std::vector<double> h = hessian.values();
    h[at(3 * cols + 7)] = INFINITY;
    expect_error([&] { obs_sweep(w, rows, cols, hessian_from(h, cols), gptq_options(4, 16)); }, {"Hessian", "(3, 7)"});
  }
  {
    // Indefinite even after 1% damping: H = [[1, 2], [2, 1]] blocks.
    std::vector<double> h(at(cols * cols), 0.0);
    for (Index j = 0; j < cols; j += 2) {
      h[at(j * cols + j)] = h[at((j + 1) * cols + j + 1)] = 1.0;
      h[at(j * cols + j + 1)] = h[at((j + 1) * cols + j)] = 2.0;
    }
    expect_error([&] { obs_sweep(w, rows, cols, hessian_from(h, cols), gptq_options(4, 16)); }, {"not positive definite"});
  }
}

}  // namespace
}  // namespace nibble::quant
