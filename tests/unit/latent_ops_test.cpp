// The CPU backend's ops for multi-head latent attention against plain references:
// rope over adjacent pairs (and over a head's tail, as the MLA block calls it),
// head_linear over strided head slices, copy_columns, and attention whose values
// are a narrower prefix of the one cached row (a pool with values_in_keys), in
// every KV format and on every ISA.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/reference.h"

namespace nibble::kernels {
namespace {

using testing::IsaGuard;
using testing::random_floats;
using testing::relative_error;
using testing::supported_isas;

std::vector<float> frequencies(std::int64_t half) {
  std::vector<float> inv_freq(static_cast<std::size_t>(half));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(2 * half));
  }
  return inv_freq;
}

TEST(LatentOps, AdjacentPairRopeMatchesTheReferenceAndTurnsPairTwoIAndTwoIPlusOne) {
  std::mt19937 rng(3);
  CpuBackend backend(1);
  const std::int64_t rows = 3, heads = 2, head_dim = 16;
  const auto inv_freq = frequencies(8);
  const std::vector<std::int32_t> positions{0, 5, 300};
  auto x = random_floats(rng, rows * heads * head_dim);
  auto expected = x;
  const auto original = x;
  backend.rope(x.data(), rows, heads, head_dim, positions, inv_freq, 0.9f, RopePairs::Adjacent);
  reference::rope(expected, rows, heads, head_dim, positions, inv_freq, 0.9f, RopePairs::Adjacent);
  EXPECT_LT(relative_error(x, expected), 1e-6);
  // Row 1, head 0, pair 1 = features 2 and 3, by frequency 1.
  const double angle = 5.0f * inv_freq[1];
  const auto at = static_cast<std::size_t>(head_dim * heads + 2);
  const double a = original[at], b = original[at + 1];
  EXPECT_NEAR(x[at], 0.9 * (a * std::cos(angle) - b * std::sin(angle)), 1e-5);
  EXPECT_NEAR(x[at + 1], 0.9 * (b * std::cos(angle) + a * std::sin(angle)), 1e-5);
}

TEST(LatentOps, RopeStartedAtAHeadsTailRotatesOnlyThatTail) {
  // How the MLA block rotates q_rope: each head [nope 6 | rope 4], rope started at offset 6.
  std::mt19937 rng(4);
  CpuBackend backend(1);
  const std::int64_t rows = 2, heads = 3, nope = 6, rope = 4, head = nope + rope;
  const auto inv_freq = frequencies(rope / 2);
  const std::vector<std::int32_t> positions{7, 8};
  auto x = random_floats(rng, rows * heads * head);
  const auto original = x;
  backend.rope(x.data() + nope, rows, heads, head, positions, inv_freq, 1.0f, RopePairs::Adjacent);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      std::vector<float> tail(original.begin() + (r * heads + h) * head + nope,
                              original.begin() + (r * heads + h + 1) * head);
      reference::rope(tail, 1, 1, rope, std::span(positions).subspan(static_cast<std::size_t>(r), 1), inv_freq, 1.0f,
                      RopePairs::Adjacent);
      for (std::int64_t i = 0; i < head; ++i) {
        const auto at = static_cast<std::size_t>((r * heads + h) * head + i);
        if (i < nope) {
          ASSERT_EQ(x[at], original[at]) << "q_nope feature " << i << " moved";
        } else {
          EXPECT_NEAR(x[at], tail[static_cast<std::size_t>(i - nope)], 1e-6);
        }
      }
    }
  }
}

TEST(LatentOps, HeadLinearMultipliesEachHeadsSliceByItsOwnMatrix) {
  std::mt19937 rng(5);
  CpuBackend backend(2);
  // x [rows, heads * 7], each head's first 5 features the input; y [rows, heads * 9],
  // each head's first 4 features the output, the rest left alone.
  const std::int64_t rows = 3, heads = 4, in = 5, out = 4, x_head = 7, y_head = 9;
  const auto x = random_floats(rng, rows * heads * x_head);
  const auto w = random_floats(rng, heads * out * in);
  std::vector<float> y(static_cast<std::size_t>(rows * heads * y_head), -7.0f);
  backend.head_linear(x.data(), {heads * x_head, x_head}, rows, heads, Matrix{DType::F32, heads * out, in, w.data()},
                      y.data(), {heads * y_head, y_head});
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t j = 0; j < y_head; ++j) {
        const float got = y[static_cast<std::size_t>(r * heads * y_head + h * y_head + j)];
        if (j >= out) {
          ASSERT_EQ(got, -7.0f) << "a column outside the head's slice was written";
          continue;
        }
        double sum = 0;
        for (std::int64_t i = 0; i < in; ++i) {
          sum += static_cast<double>(x[static_cast<std::size_t>(r * heads * x_head + h * x_head + i)]) *
                 w[static_cast<std::size_t>((h * out + j) * in + i)];
        }
        EXPECT_NEAR(got, sum, 1e-5) << r << " " << h << " " << j;
      }
    }
  }
  EXPECT_THROW(backend.head_linear(x.data(), {heads * x_head, x_head}, rows, heads,
                                   Matrix{DType::F16, heads * out, in, w.data()}, y.data(), {heads * y_head, y_head}),
               std::exception);
}

TEST(LatentOps, CopyColumnsWritesIntoAWiderRowAndKeepsTheRest) {
  CpuBackend backend(1);
  const std::vector<float> x{1, 2, 3, 4, 5, 6};  // [2, 3]
  std::vector<float> out(8, 0.0f);                // [2, 4]
  backend.copy_columns(x.data(), 2, 3, 1, 2, out.data(), 4, 1);
  EXPECT_EQ(out, (std::vector<float>{0, 2, 3, 0, 0, 5, 6, 0}));
  std::vector<float> sliced(2);
  backend.slice_columns(x.data(), 2, 3, 2, 1, sliced.data());
  EXPECT_EQ(sliced, (std::vector<float>{3, 6}));
}

// All heads over one cached latent row per position: keys the whole row, values
// its first value_dim features, through the pool, kv_store and the view a cache
// with values_in_keys hands out, as the MLA block uses them.
TEST(LatentOps, AttentionOverALatentPoolMatchesTheReferenceInEveryFormatAndIsa) {
  IsaGuard guard;
  std::mt19937 rng(6);
  CpuBackend backend(2);
  for (const auto& [latent, value_dim] : {std::pair<std::int64_t, std::int64_t>{24, 16}, {576, 512}, {13, 9}}) {
    AttentionShape shape{4, 1, latent, std::nullopt};
    shape.value_dim = value_dim;
    shape.scale = 0.3f;
    const std::int64_t length = 21, block_size = 4;
    for (const auto format : {KvFormat::Float32, KvFormat::Float16, KvFormat::Int8}) {
      KvPool pool = backend.allocate_kv({2, 1, latent, 8, static_cast<std::int32_t>(block_size), format, true});
      EXPECT_TRUE(pool.values.empty());
      EXPECT_TRUE(pool.value_scales.empty());
      EXPECT_EQ(pool.bytes(), kv_bytes_per_token(2, 1, latent, format, true) * 8 * block_size);
      const std::vector<std::int32_t> blocks{5, 0, 7, 2, 3, 6};
      const auto rows_in = random_floats(rng, length * latent);
      backend.kv_store(pool, 1, blocks, 0, length, rows_in.data(), nullptr);
      const KvLayerView view = pool.layer(1, blocks);
      const std::vector<std::int32_t> positions{0, 9, 19, 20};
      const auto rows = static_cast<std::int64_t>(positions.size());
      const auto q = random_floats(rng, rows * shape.heads * latent, 2.0f);
      for (const auto isa : supported_isas()) {
        cpu::set_active_isa(isa);
        std::vector<float> out(static_cast<std::size_t>(rows * shape.heads * value_dim), NAN);
        backend.attention(q.data(), rows, positions, view, shape, out.data());
        EXPECT_LT(relative_error(out, reference::attention(q, rows, positions, view, shape)), 1e-5)
            << cpu::isa_name(isa) << " format " << static_cast<int>(format) << " latent " << latent;
      }
    }
  }
}

}  // namespace
}  // namespace nibble::kernels
