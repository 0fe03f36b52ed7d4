#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/half.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kv_kernels.h"
#include "kernels/reference.h"

namespace nibble::kernels {
namespace {

using testing::error_relative_to;
using testing::IsaGuard;
using testing::random_floats;
using testing::supported_isas;
using testing::relative_error;

struct StoredMatrix {
  std::vector<float> f32;
  std::vector<std::uint16_t> half;
  Matrix view;
};

StoredMatrix make_matrix(std::mt19937& rng, DType dtype, std::int64_t rows, std::int64_t cols) {
  StoredMatrix m;
  m.f32 = random_floats(rng, static_cast<std::size_t>(rows * cols));
  if (dtype == DType::F32) {
    m.view = {dtype, rows, cols, m.f32.data()};
    return m;
  }
  for (const float v : m.f32) m.half.push_back(dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v));
  m.view = {dtype, rows, cols, m.half.data()};
  return m;
}

TEST(CpuLinear, EveryIsaAndDtypeMatchesTheFloat64Reference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  const std::vector<std::array<std::int64_t, 2>> shapes{{1, 1}, {7, 3}, {33, 17}, {64, 64}, {100, 257}, {48, 576}};
  for (const auto isa : supported_isas()) {
    cpu::set_active_isa(isa);
    for (const auto dtype : {DType::F32, DType::F16, DType::BF16}) {
      for (const auto& [n, k] : shapes) {
        for (const std::int64_t rows : {1, 2, 3, 4, 5, 9, 16}) {
          const StoredMatrix w = make_matrix(rng, dtype, n, k);
          const auto x = random_floats(rng, static_cast<std::size_t>(rows * k));
          const auto bias = random_floats(rng, static_cast<std::size_t>(n));
          const bool with_bias = rows % 2 == 1;
          std::vector<float> y(static_cast<std::size_t>(rows * n), NAN);
          backend.linear(x.data(), rows, w.view, with_bias ? bias.data() : nullptr, y.data());
          const auto expected = reference::linear(x, rows, w.view, with_bias ? bias.data() : nullptr);
          // Relative to the largest sum of |x * w| (+ |bias|): with n = k = 1, x * w + bias
          // may cancel to almost nothing, and max |expected| then measures nothing.
          double magnitude = 0;
          for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t i = 0; i < n; ++i) {
              double sum = with_bias ? std::abs(bias[static_cast<std::size_t>(i)]) : 0.0;
              for (std::int64_t c = 0; c < k; ++c) {
                sum += std::abs(static_cast<double>(x[static_cast<std::size_t>(r * k + c)]) *
                                w.f32[static_cast<std::size_t>(i * k + c)]);
              }
              magnitude = std::max(magnitude, sum);
            }
          }
          ASSERT_LT(error_relative_to(y, expected, magnitude), 2e-6 * std::sqrt(static_cast<double>(k)) + 1e-6)
              << cpu::isa_name(isa) << " " << dtype_name(dtype) << " n=" << n << " k=" << k << " rows=" << rows;
        }
      }
    }
  }
}

TEST(CpuLinear, NanInTheInputIsNotHidden) {
  std::mt19937 rng(1);
  CpuBackend backend(1);
  const StoredMatrix w = make_matrix(rng, DType::F32, 8, 16);
  auto x = random_floats(rng, 16);
  x[3] = NAN;
  std::vector<float> y(8);
  backend.linear(x.data(), 1, w.view, nullptr, y.data());
  EXPECT_EQ(relative_error(y, reference::linear(random_floats(rng, 16), 1, w.view, nullptr)), INFINITY);
}

TEST(CpuOps, RmsNormSwigluAndEmbeddingMatchTheReference) {
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  const std::int64_t rows = 5, dim = 96;
  const auto x = random_floats(rng, rows * dim, 3.0f);
  const auto weight = random_floats(rng, dim);
  std::vector<float> y(x.size());
  backend.rms_norm(x.data(), rows, dim, weight.data(), 1e-5f, y.data());
  EXPECT_LT(relative_error(y, reference::rms_norm(x, rows, dim, weight, 1e-5f)), 1e-6);

  const auto gate = random_floats(rng, 1000, 4.0f);
  const auto up = random_floats(rng, 1000);
  std::vector<float> act(1000);
  backend.swiglu(gate.data(), up.data(), 1000, act.data());
  EXPECT_LT(relative_error(act, reference::swiglu(gate, up)), 1e-6);

  for (const auto dtype : {DType::F32, DType::F16, DType::BF16}) {
    const StoredMatrix table = make_matrix(rng, dtype, 50, 12);
    const std::vector<std::int32_t> ids{3, 0, 49, 3};
    std::vector<float> out(ids.size() * 12);
    backend.embedding(table.view, ids, out.data());
    for (std::size_t r = 0; r < ids.size(); ++r) {
      for (std::int64_t i = 0; i < 12; ++i) {
        const float original = table.f32[static_cast<std::size_t>(ids[r] * 12 + i)];
        const float stored = dtype == DType::F32   ? original
                             : dtype == DType::F16 ? f16_to_f32(f32_to_f16(original))
                                                   : bf16_to_f32(f32_to_bf16(original));
        ASSERT_EQ(out[r * 12 + static_cast<std::size_t>(i)], stored);
      }
    }
    const std::vector<std::int32_t> bad{50};
    EXPECT_THROW(backend.embedding(table.view, bad, out.data()), Error);
  }
}

// A gated activation (out = act(gate) * up) on the active ISA against its float64
// reference, at lengths that leave every tail of the 8- and 16-wide vectors, the
// gates starting with `extremes`, run in place as the MLP runs it: every value
// finite and within allowed(expected, gate, up) of the reference. A NaN gate gives
// NaN, never a plausible number.
template <typename Reference, typename Op, typename Allowed>
void check_gated(std::mt19937& rng, float spread, const std::vector<float>& extremes, Reference reference, Op op,
                 Allowed allowed) {
  const std::string_view isa = cpu::isa_name(cpu::active_isa());
  for (const std::int64_t n : {1, 7, 8, 15, 16, 17, 1000, 40000}) {
    auto gate = random_floats(rng, static_cast<std::size_t>(n), spread);
    std::copy_n(extremes.begin(), std::min<std::size_t>(extremes.size(), gate.size()), gate.begin());
    const auto up = random_floats(rng, static_cast<std::size_t>(n));
    const auto expected = reference(gate, up);
    const auto input = gate;
    op(gate.data(), up.data(), n, gate.data());
    for (std::size_t i = 0; i < gate.size(); ++i) {
      ASSERT_TRUE(std::isfinite(gate[i])) << isa << " n " << n << " at " << i;
      ASSERT_LE(std::abs(gate[i] - expected[i]), allowed(expected[i], input[i], up[i]))
          << isa << " n " << n << " at " << i << ": gate " << input[i] << " gives " << gate[i] << " vs "
          << expected[i];
    }
  }
  std::vector<float> gate{NAN, 1.0f}, up{1.0f, 1.0f}, out(2);
  op(gate.data(), up.data(), 2, out.data());
  EXPECT_TRUE(std::isnan(out[0])) << isa;
}

TEST(CpuOps, RmsNormAndSwigluMatchTheReferenceOnEveryIsaAndLength) {
  // Lengths leave every tail of the 8- and 16-wide vectors; 40 rows of 576 split
  // over tasks; both ops run in place as the model calls them.
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const auto isa : supported_isas()) {
    cpu::set_active_isa(isa);
    for (const auto& [rows, dim] : std::vector<std::array<std::int64_t, 2>>{{1, 1}, {3, 7}, {2, 17}, {5, 64}, {40, 576}}) {
      auto x = random_floats(rng, rows * dim, 3.0f);
      const auto weight = random_floats(rng, dim);
      const auto expected = reference::rms_norm(x, rows, dim, weight, 1e-5f);
      backend.rms_norm(x.data(), rows, dim, weight.data(), 1e-5f, x.data());
      EXPECT_LT(relative_error(x, expected), 1e-6) << cpu::isa_name(isa) << " " << rows << "x" << dim;
    }
    // Saturating gates: e^-g overflows or vanishes; silu must still be -0 or g. Each
    // value on its own, so small ones near a saturated gate count too.
    check_gated(
        rng, 8.0f, {-1000.0f, -100.0f, -88.5f, 88.5f, 100.0f, 1000.0f, 0.0f}, reference::swiglu,
        [&](const float* g, const float* u, std::int64_t n, float* out) { backend.swiglu(g, u, n, out); },
        [](float expected, float, float) { return 1e-6 * std::abs(expected) + 1e-30; });
  }
}

// Mixture of experts: an expert's rows gathered out of the step and its outputs
// added back with their routing weights; rows no id names are left alone.
TEST(CpuOps, GatherAndScatterAddRowsMatchTheReference) {
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(1);
  const std::int64_t rows = 9, width = 37;
  const auto x = random_floats(rng, static_cast<std::size_t>(rows * width));
  const std::vector<std::int32_t> ids{7, 0, 3, 8};
  std::vector<float> gathered(ids.size() * width);
  backend.gather_rows(x.data(), width, ids, gathered.data());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    for (std::int64_t c = 0; c < width; ++c) {
      ASSERT_EQ(gathered[i * width + static_cast<std::size_t>(c)], x[static_cast<std::size_t>(ids[i] * width + c)]);
    }
  }
  const std::vector<float> weights{0.25f, -1.5f, 0.7f, 2.0f};
  const auto y = random_floats(rng, static_cast<std::size_t>(rows * width));
  std::vector<float> got = y;
  backend.scatter_add_rows(gathered.data(), width, ids, weights, got.data());
  EXPECT_LT(relative_error(got, reference::scatter_add_rows(gathered, width, ids, weights, y)), 1e-6);
  for (const std::int64_t untouched : {1, 2, 4, 5, 6}) {
    for (std::int64_t c = 0; c < width; ++c) {
      ASSERT_EQ(got[static_cast<std::size_t>(untouched * width + c)], y[static_cast<std::size_t>(untouched * width + c)]);
    }
  }
  backend.fill_zero(got.data(), static_cast<std::int64_t>(got.size()));
  EXPECT_TRUE(std::ranges::all_of(got, [](float v) { return v == 0.0f; }));
}

TEST(CpuOps, RopeMatchesTheReference) {
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(1);
  const std::int64_t rows = 4, heads = 3, head_dim = 64;
  std::vector<float> inv_freq(head_dim / 2);
  for (std::size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / head_dim);
  std::vector<std::int32_t> positions{0, 1, 17, 4000};
  // The backend keeps the last call's angles: repeated, moved (same buffer) and
  // re-based positions, other frequencies and another scale (LongRoPE's attention
  // factor) must each rotate by their own; then fewer frequencies than head_dim / 2
  // (partial rotary) must rotate the head's first features and leave the rest alone.
  float scale = 1.0f;
  for (int call = 0; call < 7; ++call) {
    if (call == 2) positions[2] = 18;
    if (call == 3) {
      for (auto& f : inv_freq) f *= 0.5f;
    }
    if (call == 4) positions = {5, 6, 7, 8};
    if (call == 5) scale = 1.19f;
    if (call == 6) inv_freq.resize(24);
    auto x = random_floats(rng, rows * heads * head_dim);
    auto expected = x;
    backend.rope(x.data(), rows, heads, head_dim, positions, inv_freq, scale);
    reference::rope(expected, rows, heads, head_dim, positions, inv_freq, scale);
    EXPECT_LT(relative_error(x, expected), 1e-5) << "call " << call;
    if (call == 6) {
      for (std::int64_t r = 0; r < rows * heads; ++r) {
        for (std::int64_t i = 48; i < head_dim; ++i) {
          const auto at = static_cast<std::size_t>(r * head_dim + i);
          ASSERT_EQ(x[at], expected[at]) << "feature " << i << " is past the rotary width";
        }
      }
    }
  }
}

TEST(CpuOps, PagedAttentionReadsTheSequencesBlocksWhereverTheyAre) {
  // The same 23 positions stored contiguously and scattered over shuffled 4-token
  // blocks of a larger pool must attend identically.
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  const AttentionShape shape{4, 2, 8, std::nullopt};
  const std::int64_t length = 23, block_size = 4, kv_dim = shape.kv_heads * shape.head_dim;
  const auto keys = random_floats(rng, length * kv_dim);
  const auto values = random_floats(rng, length * kv_dim);
  std::vector<std::int32_t> blocks(16);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  blocks.resize(static_cast<std::size_t>((length + block_size - 1) / block_size));
  std::vector<float> pool_keys(static_cast<std::size_t>(16 * block_size * kv_dim), NAN);
  std::vector<float> pool_values(pool_keys.size(), NAN);  // unwritten slots poison any wrong read
  for (std::int64_t t = 0; t < length; ++t) {
    const auto slot = static_cast<std::size_t>((blocks[static_cast<std::size_t>(t / block_size)] * block_size + t % block_size) * kv_dim);
    std::copy_n(keys.begin() + t * kv_dim, kv_dim, pool_keys.begin() + static_cast<std::ptrdiff_t>(slot));
    std::copy_n(values.begin() + t * kv_dim, kv_dim, pool_values.begin() + static_cast<std::ptrdiff_t>(slot));
  }
  const auto contiguous = KvLayerView::floats(keys.data(), values.data(), kv_dim);
  const auto paged = KvLayerView::floats(pool_keys.data(), pool_values.data(), kv_dim, blocks, block_size);
  const std::vector<std::int32_t> positions{3, 4, 21, 22};
  const auto rows = static_cast<std::int64_t>(positions.size());
  const auto q = random_floats(rng, rows * shape.heads * shape.head_dim, 2.0f);
  std::vector<float> from_blocks(q.size()), from_contiguous(q.size());
  backend.attention(q.data(), rows, positions, paged, shape, from_blocks.data());
  backend.attention(q.data(), rows, positions, contiguous, shape, from_contiguous.data());
  EXPECT_EQ(from_blocks, from_contiguous);
  EXPECT_LT(relative_error(from_blocks, reference::attention(q, rows, positions, paged, shape)), 1e-5);
}

TEST(CpuOps, Int8KvAttentionMatchesTheReferenceOnTheSameCodes) {
  // Random codes and scales: the kernel must attend over codes x scale exactly as the
  // float64 reference does (how close int8 rows stay to float is the engine test's job).
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  const AttentionShape shape{6, 2, 16, std::nullopt};
  const std::int64_t length = 19, kv_dim = shape.kv_heads * shape.head_dim;
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<std::int8_t> key_codes(static_cast<std::size_t>(length * kv_dim)), value_codes(key_codes.size());
  for (auto& c : key_codes) c = static_cast<std::int8_t>(code(rng));
  for (auto& c : value_codes) c = static_cast<std::int8_t>(code(rng));
  const auto key_scales = random_floats(rng, length * shape.kv_heads, 0.02f);
  const auto value_scales = random_floats(rng, length * shape.kv_heads, 0.02f);
  const auto kv = KvLayerView::int8(key_codes.data(), value_codes.data(), key_scales.data(), value_scales.data(), kv_dim);
  const std::vector<std::int32_t> positions{0, 7, 17, 18};
  const auto rows = static_cast<std::int64_t>(positions.size());
  const auto q = random_floats(rng, rows * shape.heads * shape.head_dim, 2.0f);
  std::vector<float> out(q.size());
  backend.attention(q.data(), rows, positions, kv, shape, out.data());
  EXPECT_LT(relative_error(out, reference::attention(q, rows, positions, kv, shape)), 1e-5);
}

// Keys and values of `length` positions in each KV format, scattered over shuffled
// blocks of a pool whose unwritten slots are NaN, so a wrong read shows.
struct KvPool {
  static constexpr std::int64_t kBlockSize = 5;
  std::vector<std::int32_t> blocks;
  std::vector<float> keys, values;             // float32: the f16-rounded values, widened
  std::vector<std::uint16_t> keys_f16, values_f16;
  std::vector<std::int8_t> key_codes, value_codes;
  std::vector<float> key_scales, value_scales;
  std::int64_t stride = 0;

  KvPool(std::mt19937& rng, std::int64_t length, std::int64_t kv_heads, std::int64_t head_dim)
      : stride(kv_heads * head_dim) {
    const std::int64_t used = (length + kBlockSize - 1) / kBlockSize, pool_blocks = used + 3;
    blocks.resize(static_cast<std::size_t>(pool_blocks));
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    blocks.resize(static_cast<std::size_t>(used));
    const auto elements = static_cast<std::size_t>(pool_blocks * kBlockSize * stride);
    keys.assign(elements, NAN);
    values.assign(elements, NAN);
    keys_f16.assign(elements, 0x7e00);  // NaN
    values_f16.assign(elements, 0x7e00);
    key_codes.assign(elements, 0);
    value_codes.assign(elements, 0);
    key_scales.assign(static_cast<std::size_t>(pool_blocks * kBlockSize * kv_heads), NAN);
    value_scales.assign(key_scales.size(), NAN);
    std::uniform_int_distribution<int> code(-127, 127);
    for (std::int64_t t = 0; t < length; ++t) {
      const std::int64_t row = blocks[static_cast<std::size_t>(t / kBlockSize)] * kBlockSize + t % kBlockSize;
      for (std::int64_t i = 0; i < stride; ++i) {
        const auto at = static_cast<std::size_t>(row * stride + i);
        keys_f16[at] = f32_to_f16(random_floats(rng, 1)[0]);
        values_f16[at] = f32_to_f16(random_floats(rng, 1)[0]);
        keys[at] = f16_to_f32(keys_f16[at]);
        values[at] = f16_to_f32(values_f16[at]);
        key_codes[at] = static_cast<std::int8_t>(code(rng));
        value_codes[at] = static_cast<std::int8_t>(code(rng));
      }
      for (std::int64_t g = 0; g < kv_heads; ++g) {
        key_scales[static_cast<std::size_t>(row * kv_heads + g)] = std::abs(random_floats(rng, 1, 0.02f)[0]);
        value_scales[static_cast<std::size_t>(row * kv_heads + g)] = std::abs(random_floats(rng, 1, 0.02f)[0]);
      }
    }
  }
  KvLayerView view(KvFormat format) const {
    switch (format) {
      case KvFormat::Float32:
        return KvLayerView::floats(keys.data(), values.data(), stride, blocks, kBlockSize);
      case KvFormat::Float16:
        return KvLayerView::f16(keys_f16.data(), values_f16.data(), stride, blocks, kBlockSize);
      case KvFormat::Int8:
        break;
    }
    return KvLayerView::int8(key_codes.data(), value_codes.data(), key_scales.data(), value_scales.data(), stride,
                             blocks, kBlockSize);
  }
};

TEST(CpuOps, EveryKvFormatAttendsLikeTheFloat64ReferenceOnEveryIsa) {
  // head_dim 12 leaves a ragged tail for the 8-wide AVX2 loads, 8, 12, 24, 72 and 136
  // for the 16-wide AVX-512 ones; 72 and 136 need more than one pass of the 8-vector
  // value accumulators.
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const std::int64_t head_dim : {8, 12, 24, 64, 72, 136}) {
    for (const auto window : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{6}}) {
      const AttentionShape shape{6, 2, head_dim, window};
      const std::int64_t length = 29;
      const KvPool pool(rng, length, shape.kv_heads, head_dim);
      const std::vector<std::int32_t> positions{0, 4, 5, 17, 27, 28};  // decode rows and a prefill chunk
      const auto rows = static_cast<std::int64_t>(positions.size());
      const auto q = random_floats(rng, rows * shape.heads * head_dim, 2.0f);
      for (const auto isa : supported_isas()) {
        cpu::set_active_isa(isa);
        std::vector<float> f32_out;
        for (const auto format : {KvFormat::Float32, KvFormat::Float16, KvFormat::Int8}) {
          const auto kv = pool.view(format);
          std::vector<float> out(q.size(), NAN);
          backend.attention(q.data(), rows, positions, kv, shape, out.data());
          EXPECT_LT(relative_error(out, reference::attention(q, rows, positions, kv, shape)), 1e-5)
              << cpu::isa_name(isa) << " format " << static_cast<int>(format) << " head_dim " << head_dim;
          if (format == KvFormat::Float32) f32_out = out;
          // fp16 widens exactly, so over the same values the fp16 rows must give the
          // float32 rows' result bit for bit: the conversion is the only difference.
          if (format == KvFormat::Float16) {
            EXPECT_EQ(out, f32_out) << cpu::isa_name(isa) << " head_dim " << head_dim;
          }
        }
      }
    }
  }
}

TEST(CpuOps, ScaledAndSoftCappedAttentionMatchesTheReferenceOnEveryIsa) {
  // Gemma's attention: scores scaled by query_pre_attn_scalar^-1/2 (here not the
  // head size) and, in Gemma 2, capped by cap * tanh(score / cap) before the
  // softmax. Large queries put raw scores well past the cap, so capping changes
  // the weights (checked against the uncapped result).
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  AttentionShape shape{4, 2, 16, std::optional<std::int64_t>{6}};
  shape.scale = 1.0f / std::sqrt(24.0f);
  const std::int64_t length = 21;
  const KvPool pool(rng, length, shape.kv_heads, shape.head_dim);
  const std::vector<std::int32_t> positions{0, 3, 12, 20};
  const auto rows = static_cast<std::int64_t>(positions.size());
  const auto q = random_floats(rng, rows * shape.heads * shape.head_dim, 8.0f);
  for (const float cap : {0.0f, 2.0f}) {
    shape.logit_softcap = cap;
    for (const auto isa : supported_isas()) {
      cpu::set_active_isa(isa);
      for (const auto format : {KvFormat::Float32, KvFormat::Float16, KvFormat::Int8}) {
        const auto kv = pool.view(format);
        std::vector<float> out(q.size(), NAN);
        backend.attention(q.data(), rows, positions, kv, shape, out.data());
        const auto expected = reference::attention(q, rows, positions, kv, shape);
        EXPECT_LT(relative_error(out, expected), 1e-5)
            << cpu::isa_name(isa) << " format " << static_cast<int>(format) << " cap " << cap;
        if (cap > 0) {
          AttentionShape uncapped = shape;
          uncapped.logit_softcap = 0;
          EXPECT_GT(relative_error(reference::attention(q, rows, positions, kv, uncapped), expected), 1e-2);
        }
      }
    }
  }
}

TEST(CpuOps, GegluSoftCapAndScaleMatchTheReference) {
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const auto isa : supported_isas()) {
    cpu::set_active_isa(isa);
    // For negative gates the result is about g e^(2u): float32's rounding of u costs
    // |2u| ulps of it (in PyTorch's float32 formula too), so the error is bounded by
    // the size of gate * up, not of the small result.
    check_gated(
        rng, 6.0f, {-1000.0f, -20.0f, -3.0f, 0.0f, 20.0f, 1000.0f, -1e20f}, reference::geglu_tanh,
        [&](const float* g, const float* u, std::int64_t n, float* out) { backend.geglu_tanh(g, u, n, out); },
        [](float expected, float gate, float up) { return 1e-6 * (std::abs(expected) + std::abs(gate * up)); });
  }
  for (const std::int64_t n : {1, 17, 40000}) {
    auto x = random_floats(rng, static_cast<std::size_t>(n), 100.0f);
    const auto capped = reference::soft_cap(x, 30.0f);
    backend.soft_cap(x.data(), n, 30.0f);
    EXPECT_LT(relative_error(x, capped), 1e-6);
    for (const float value : x) ASSERT_LE(std::abs(value), 30.0f);

    const auto before = x;
    backend.scale(x.data(), n, 25.25f);
    for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], before[i] * 25.25f);
  }
}

TEST(CpuOps, ABatchOfSequencesAttendsAsEachDoesAlone) {
  // One attention_batch call over sequences with their own pools, lengths and row
  // counts (decode rows, a prefill chunk) must give each sequence exactly what its
  // own attention() call gives, in every KV format: the batch only changes how the
  // work is spread over threads. 1 and 2 rows exercise the split by head.
  IsaGuard guard;
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  const AttentionShape shape{6, 2, 24, std::nullopt};
  const std::int64_t q_width = shape.heads * shape.head_dim;
  const std::vector<std::vector<std::int32_t>> positions{{12}, {0}, {30, 31, 32, 33, 34}, {7, 8}, {19}};
  std::vector<KvPool> pools;
  std::vector<std::vector<float>> queries;
  for (const auto& rows : positions) {
    pools.emplace_back(rng, rows.back() + 1, shape.kv_heads, shape.head_dim);
    queries.push_back(random_floats(rng, rows.size() * q_width, 2.0f));
  }
  for (const auto isa : supported_isas()) {
    cpu::set_active_isa(isa);
    for (const auto format : {KvFormat::Float32, KvFormat::Float16, KvFormat::Int8}) {
      for (std::size_t count : {std::size_t{1}, std::size_t{2}, positions.size()}) {
        std::vector<std::vector<float>> batched(count), alone(count);
        std::vector<AttentionSegment> segments;
        for (std::size_t s = 0; s < count; ++s) {
          const auto rows = static_cast<std::int64_t>(positions[s].size());
          batched[s].assign(static_cast<std::size_t>(rows * q_width), NAN);
          alone[s].assign(batched[s].size(), NAN);
          segments.push_back({queries[s].data(), rows, positions[s], pools[s].view(format), batched[s].data()});
          backend.attention(queries[s].data(), rows, positions[s], pools[s].view(format), shape, alone[s].data());
        }
        backend.attention_batch(segments, shape);
        for (std::size_t s = 0; s < count; ++s) {
          EXPECT_EQ(batched[s], alone[s]) << cpu::isa_name(isa) << " format " << static_cast<int>(format)
                                          << " segment " << s << " of " << count;
          const auto rows = static_cast<std::int64_t>(positions[s].size());
          EXPECT_LT(relative_error(batched[s], reference::attention(queries[s], rows, positions[s],
                                                                    pools[s].view(format), shape)),
                    1e-5);
        }
      }
    }
  }
  // One call reads one KV format; a mixed batch is a caller's bug, refused.
  std::vector<float> out(static_cast<std::size_t>(q_width), NAN), out2(out.size(), NAN);
  const std::vector<AttentionSegment> mixed{
      {queries[0].data(), 1, positions[0], pools[0].view(KvFormat::Float32), out.data()},
      {queries[4].data(), 1, positions[4], pools[4].view(KvFormat::Float16), out2.data()}};
  EXPECT_THROW(backend.attention_batch(mixed, shape), Error);
}

TEST(CpuOps, Fp16StoresRoundLikeTheScalarConversionOnEveryIsa) {
  // Ties, subnormals, the largest finite half, overflow and infinities, then random
  // values of every magnitude, in lengths that leave every possible tail.
  std::vector<float> x{0.0f, -0.0f, 1.0f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f, 65504.0f, 65519.0f, 65520.0f, -1e6f,
                       0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-15f + 0x1p-25f, 6e-8f, -3e-5f, INFINITY, -INFINITY};
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> exponent(-30.0f, 17.0f);
  for (int i = 0; i < 2000; ++i) x.push_back(std::exp2(exponent(rng)) * (i % 2 == 0 ? 1.0f : -1.0f));
  x.push_back(NAN);
  for (const auto isa : supported_isas()) {
    const auto to_f16 = cpu::kv_kernel_table(isa).to_f16;
    for (const std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{17}, std::size_t{33}, x.size()}) {
      const std::size_t start = x.size() - n;  // the NaN last, every time
      std::vector<std::uint16_t> out(n, 0x1234);
      to_f16(x.data() + start, static_cast<std::int64_t>(n), out.data());
      for (std::size_t i = 0; i + 1 < n; ++i) {
        ASSERT_EQ(out[i], f32_to_f16(x[start + i])) << cpu::isa_name(isa) << " x = " << x[start + i];
      }
      EXPECT_TRUE(std::isnan(f16_to_f32(out[n - 1]))) << cpu::isa_name(isa);
    }
  }
}

TEST(CpuOps, CausalGqaAttentionMatchesTheReference) {
  std::mt19937 rng(std::random_device{}());
  CpuBackend backend(2);
  for (const auto window : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{5}}) {
    const AttentionShape shape{8, 2, 16, window};
    const std::int64_t length = 23, kv_dim = shape.kv_heads * shape.head_dim;
    const auto keys = random_floats(rng, length * kv_dim);
    const auto values = random_floats(rng, length * kv_dim);
    const auto kv = KvLayerView::floats(keys.data(), values.data(), kv_dim);
    // A prefill chunk of the last 6 positions plus a lone decode row.
    const std::vector<std::int32_t> positions{17, 18, 19, 20, 21, 22};
    const auto rows = static_cast<std::int64_t>(positions.size());
    const auto q = random_floats(rng, rows * shape.heads * shape.head_dim, 2.0f);
    std::vector<float> out(q.size());
    backend.attention(q.data(), rows, positions, kv, shape, out.data());
    EXPECT_LT(relative_error(out, reference::attention(q, rows, positions, kv, shape)), 1e-5);

    const std::vector<std::int32_t> first{0};
    std::vector<float> one(static_cast<std::size_t>(shape.heads * shape.head_dim));
    backend.attention(q.data(), 1, first, kv, shape, one.data());
    // Attending to a single position returns its value vector for each head.
    for (std::int64_t h = 0; h < shape.heads; ++h) {
      for (std::int64_t i = 0; i < shape.head_dim; ++i) {
        ASSERT_FLOAT_EQ(one[static_cast<std::size_t>(h * shape.head_dim + i)],
                        values[static_cast<std::size_t>((h / 4) * shape.head_dim + i)]);
      }
    }
  }
}

}  // namespace
}  // namespace nibble::kernels
