// Block-quantized weights (K-quants, IQ4, ternary, Q5_0/Q5_1, Q8_K) against gguf-py:
// tests/gguf/make_block_cases.py writes fresh random blocks, gguf-py's dequantization
// and a float64 matmul into a temp dir before this runs (fixture block_cases). Every
// type is checked on every ISA this CPU has, on an odd number of output rows and
// 1..64 activation rows; a llama mixing all twelve types loads and runs, and IQ2 is refused.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <random>
#include <algorithm>
#include <string>
#include <vector>

#include "common/block_format.h"
#include "common/quantized_matrix.h"
#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/gguf.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble {
namespace {

const std::filesystem::path kCases = NIBBLE_BLOCK_CASES;

std::vector<float> floats(const GgufFile& file, const std::string& name) {
  const GgufTensor* tensor = file.find_tensor(name);
  if (tensor == nullptr) ADD_FAILURE() << file.path() << " has no tensor " << name;
  std::vector<float> out(tensor == nullptr ? 0 : static_cast<std::size_t>(tensor->numel()));
  if (tensor != nullptr) dequantize_to_f32(*tensor, out);
  return out;
}

// The largest |x|·|w| sum over all outputs: the size float32 rounding error scales with.
double magnitude(const std::vector<float>& x, const std::vector<float>& w, std::int64_t rows, std::int64_t n,
                 std::int64_t k) {
  double largest = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        sum += std::abs(static_cast<double>(x[static_cast<std::size_t>(r * k + i)]) * w[static_cast<std::size_t>(j * k + i)]);
      }
      largest = std::max(largest, sum);
    }
  }
  return largest;
}

// The case file's block tensor as the loader hands it to a backend: kept packed.
QuantizedMatrix block_matrix(BlockFormat format, const GgufTensor& w) {
  QuantizedMatrix m;
  m.name = block_format_info(format).name;
  m.rows = w.shape[0];
  m.cols = w.shape[1];
  m.block_format = format;
  m.blocks.assign(w.data.begin(), w.data.end());
  m.stored_bytes = w.data.size();
  return m;
}

class BlockKernels : public ::testing::TestWithParam<int> {};

TEST_P(BlockKernels, MatchGgufPyDequantizationAndAFloat64MatmulOnEveryIsa) {
  const auto format = static_cast<BlockFormat>(GetParam());
  const BlockFormatInfo& info = block_format_info(format);
  const GgufFile file(kCases / "kernels" / (std::string(info.name) + ".gguf"));
  const GgufTensor& w = *file.find_tensor("w");
  ASSERT_EQ(block_format_of(w.type), format);
  const std::int64_t n = w.shape[0], k = w.shape[1];
  const auto w_ref = floats(file, "w_ref");
  const auto x = floats(file, "x");
  const auto y_ref = floats(file, "y");
  const std::int64_t max_rows = static_cast<std::int64_t>(x.size()) / k;
  ASSERT_EQ(max_rows, 64);

  // The loader's widening decode rounds as gguf-py does: bit for bit.
  const auto widened = floats(file, "w");
  ASSERT_EQ(widened.size(), w_ref.size());
  for (std::size_t i = 0; i < widened.size(); ++i) {
    ASSERT_EQ(std::bit_cast<std::uint32_t>(widened[i]), std::bit_cast<std::uint32_t>(w_ref[i]))
        << info.name << " element " << i << ": " << widened[i] << " vs " << w_ref[i];
  }

  const QuantizedMatrix m = block_matrix(format, w);
  kernels::CpuBackend backend(2);
  const auto weights = backend.prepare_linear(m);
  // Kept packed: the blocks are the resident bytes, nothing widened beside them.
  EXPECT_EQ(weights->resident_bytes(), w.data.size());
  std::vector<float> row(static_cast<std::size_t>(k));
  weights->dequantize_row(n - 1, row.data());
  EXPECT_LE(testing::relative_error(row, std::span(w_ref).subspan(static_cast<std::size_t>((n - 1) * k), row.size())),
            1e-6);

  const double scale = magnitude(x, w_ref, max_rows, n, k);
  testing::IsaGuard guard;
  for (const auto isa : testing::supported_isas()) {
    kernels::cpu::set_active_isa(isa);
    for (const std::int64_t rows : {1, 2, 3, 4, 5, 8, 17, 64}) {
      std::vector<float> y(static_cast<std::size_t>(rows * n), NAN);
      backend.linear(x.data(), rows, *weights, nullptr, y.data());
      const double error =
          testing::error_relative_to(y, std::span(y_ref).first(static_cast<std::size_t>(rows * n)), scale);
      EXPECT_LE(error, 1e-6) << info.name << " isa " << kernels::cpu::isa_name(isa) << " rows " << rows;
    }
  }
}

// x rounded as the int8 path rounds it: per row, blocks of 32 inputs, amax / 127,
// to nearest even.
std::vector<double> int8_rounded(const std::vector<float>& x, std::int64_t k) {
  std::vector<double> out(x.size());
  for (std::size_t b0 = 0; b0 < x.size(); b0 += 32) {
    const std::size_t b1 = std::min<std::size_t>(b0 + 32, (b0 / static_cast<std::size_t>(k) + 1) * static_cast<std::size_t>(k));
    float amax = 0.0f;
    for (std::size_t i = b0; i < b1; ++i) amax = std::max(amax, std::abs(x[i]));
    const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (std::size_t i = b0; i < b1; ++i) out[i] = std::nearbyint(x[i] * inverse) * static_cast<double>(amax / 127.0f);
  }
  return out;
}

// x ([rows][k]) rounded as the int8 path rounds it, times w ([n][k]) in float64.
std::vector<float> int8_reference(const std::vector<float>& x, const std::vector<float>& w, std::int64_t rows,
                                  std::int64_t n, std::int64_t k) {
  const std::vector<double> xq = int8_rounded(x, k);
  std::vector<float> out(static_cast<std::size_t>(rows * n));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (std::int64_t i = 0; i < k; ++i) sum += xq[static_cast<std::size_t>(r * k + i)] * w[static_cast<std::size_t>(j * k + i)];
      out[static_cast<std::size_t>(r * n + j)] = static_cast<float>(sum);
    }
  }
  return out;
}

TEST_P(BlockKernels, UnpackedCodesStepsAndOffsetsAreTheDecodedWeights) {
  const auto format = static_cast<BlockFormat>(GetParam());
  const BlockFormatInfo& info = block_format_info(format);
  const GgufFile file(kCases / "kernels" / (std::string(info.name) + ".gguf"));
  const GgufTensor& w = *file.find_tensor("w");
  const auto lanes = static_cast<std::size_t>(info.elements / 4);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(info.elements));
  std::vector<float> step(lanes), offset(lanes), decoded(static_cast<std::size_t>(info.elements));
  int nonzero_codes = 0;
  for (std::size_t at = 0; at < w.data.size(); at += static_cast<std::size_t>(info.bytes)) {
    unpack_block(format, w.data.data() + at, codes.data(), step.data(), offset.data());
    decode_block(format, w.data.data() + at, decoded.data());
    for (std::size_t e = 0; e < codes.size(); ++e) {
      const double s = step[e / 4], o = offset[e / 4];
      const double value = s * codes[e] - o;
      ASSERT_LE(std::abs(value - decoded[e]), 1e-6 * (std::abs(s * codes[e]) + std::abs(o)) + 1e-30)
          << info.name << " block " << at / static_cast<std::size_t>(info.bytes) << " element " << e << ": " << s
          << " * " << int{codes[e]} << " - " << o << " vs " << decoded[e];
      nonzero_codes += codes[e] != 0 ? 1 : 0;
    }
    // The int8 kernels apply steps and offsets once per 16-weight sub-block
    // (kernels/cpu/block_vnni.cpp): every type's must be constant over aligned runs of 16.
    for (std::size_t lane = 0; lane < lanes; ++lane) {
      ASSERT_EQ(step[lane], step[lane - lane % 4]) << info.name << " lane " << lane;
      ASSERT_EQ(offset[lane], offset[lane - lane % 4]) << info.name << " lane " << lane;
    }
  }
  EXPECT_GT(nonzero_codes, 0);
}

// The int8-activation path (AVX-512 VNNI): the exact product of gguf-py's weights
// with the activations rounded to int8, for every type; batched rows equal each row
// alone; NaN in a row poisons that row only.
TEST_P(BlockKernels, Int8ActivationsMatchGgufPyWeightsTimesRoundedInputs) {
  kernels::CpuBackend int8(kernels::CpuBackendOptions{2, true});
  if (!int8.int8_activations()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const auto format = static_cast<BlockFormat>(GetParam());
  const BlockFormatInfo& info = block_format_info(format);
  const GgufFile file(kCases / "kernels" / (std::string(info.name) + ".gguf"));
  const GgufTensor& w = *file.find_tensor("w");
  const std::int64_t n = w.shape[0], k = w.shape[1];
  const auto w_ref = floats(file, "w_ref");
  const auto x = floats(file, "x");
  const std::int64_t max_rows = static_cast<std::int64_t>(x.size()) / k;
  const QuantizedMatrix m = block_matrix(format, w);
  const auto weights = int8.prepare_linear(m);

  const std::vector<float> expected = int8_reference(x, w_ref, max_rows, n, k);
  const double scale = magnitude(x, w_ref, max_rows, n, k);
  std::vector<float> all(static_cast<std::size_t>(max_rows * n), NAN);
  int8.linear(x.data(), max_rows, *weights, nullptr, all.data());
  for (const std::int64_t rows : {1, 2, 3, 4, 5, 8, 17, 64}) {
    std::vector<float> y(static_cast<std::size_t>(rows * n), NAN);
    int8.linear(x.data(), rows, *weights, nullptr, y.data());
    EXPECT_LE(testing::error_relative_to(y, std::span(expected).first(y.size()), scale), 2e-6)
        << info.name << " rows " << rows;
    // A row's result does not depend on the rows beside it, nor on whether it is
    // alone (the single-row register path ends each tile as the batched path does).
    for (std::size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], all[i]) << info.name << " rows " << rows << " output " << i;
  }
  // And differs from the float path's (the rounding is real).
  kernels::CpuBackend floats_backend(kernels::CpuBackendOptions{2, false});
  std::vector<float> float_y(all.size());
  floats_backend.linear(x.data(), max_rows, *weights, nullptr, float_y.data());
  EXPECT_NE(float_y, all) << info.name;

  auto poisoned = x;
  poisoned[static_cast<std::size_t>(k + 7)] = NAN;
  std::vector<float> y(static_cast<std::size_t>(3 * n), 0.0f);
  int8.linear(poisoned.data(), 3, *weights, nullptr, y.data());
  EXPECT_FALSE(std::isnan(y[0])) << info.name;
  EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(n)])) << info.name;
  EXPECT_FALSE(std::isnan(y[static_cast<std::size_t>(2 * n)])) << info.name;
}

// Rows longer than the kernels' 1024-input chunks (and, for 32-weight blocks, not
// whole 64-input vectors), on fresh random blocks checked against decode_block.
TEST_P(BlockKernels, Int8ActivationsOnLongRowsMatchTheDecodedWeights) {
  kernels::CpuBackend int8(kernels::CpuBackendOptions{2, true});
  if (!int8.int8_activations()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const auto format = static_cast<BlockFormat>(GetParam());
  const BlockFormatInfo& info = block_format_info(format);
  std::mt19937 rng{std::random_device{}()};
  const std::int64_t n = 19, k = info.elements == 32 ? 2080 : 2304;
  QuantizedMatrix m;
  m.name = info.name;
  m.rows = n;
  m.cols = k;
  m.block_format = format;
  m.blocks.resize(static_cast<std::size_t>(n * k / info.elements * info.bytes));
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (std::size_t b = 0; b * static_cast<std::size_t>(info.bytes) < m.blocks.size(); ++b) {
    std::byte* block = m.blocks.data() + b * static_cast<std::size_t>(info.bytes);
    float* values = w.data() + b * static_cast<std::size_t>(info.elements);
    // Random bytes, redrawn until the block's scales are finite and modest.
    for (bool ok = false; !ok;) {
      for (int i = 0; i < info.bytes; ++i) block[i] = static_cast<std::byte>(rng());
      decode_block(format, block, values);
      ok = std::all_of(values, values + info.elements, [](float v) { return std::isfinite(v) && std::abs(v) < 1e4f; });
    }
  }
  m.stored_bytes = m.blocks.size();
  const auto weights = int8.prepare_linear(m);
  constexpr std::int64_t kMaxRows = 9;
  const auto x = testing::random_floats(rng, static_cast<std::size_t>(kMaxRows * k));
  const std::vector<float> expected = int8_reference(x, w, kMaxRows, n, k);
  const double scale = magnitude(x, w, kMaxRows, n, k);
  for (const std::int64_t rows : {1, 4, 9}) {
    std::vector<float> y(static_cast<std::size_t>(rows * n), NAN);
    int8.linear(x.data(), rows, *weights, nullptr, y.data());
    EXPECT_LE(testing::error_relative_to(y, std::span(expected).first(y.size()), scale), 2e-6)
        << info.name << " rows " << rows;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, BlockKernels, ::testing::Range(0, kBlockFormatCount),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return std::string(block_format_info(static_cast<BlockFormat>(p.param)).name);
                         });

TEST(BlockLoader, AMixedTypeLlamaLoadsPackedAndMatchesItsWidenedSelf) {
  const ModelSource source = open_model(kCases / "mixed_llama.gguf");
  kernels::CpuBackend backend(2);
  engine::DecoderModel packed(source, backend);
  engine::ModelOptions widen;
  widen.expand_quantized = true;
  engine::DecoderModel expanded(source, backend, widen);

  // Every projection stays in its file type, and the packed bytes are the file's.
  const auto& kinds = packed.linear_kinds();
  for (int f = 0; f < kBlockFormatCount; ++f) {
    const std::string kind = std::string(block_format_info(static_cast<BlockFormat>(f)).name) + " blocks";
    EXPECT_TRUE(kinds.contains(kind)) << kind;
  }
  const engine::WeightMemory& memory = packed.weight_memory();
  EXPECT_GT(memory.quantized_file, 0u);
  EXPECT_EQ(memory.quantized_resident, memory.quantized_file);

  const std::vector<TokenId> prompt = {1, 5, 9, 14, 3, 30, 7};
  const auto vocab = static_cast<std::size_t>(packed.vocab_size());
  std::vector<float> a(prompt.size() * vocab), b(prompt.size() * vocab);
  engine::SequenceCache cache_a(packed, 32), cache_b(expanded, 32);
  packed.forward(prompt, 0, cache_a, engine::Logits::AllRows, a);
  expanded.forward(prompt, 0, cache_b, engine::Logits::AllRows, b);
  EXPECT_LE(testing::relative_error(a, b), 1e-4);
}

TEST(BlockLoader, RefusesOtherIqTypesNamingThem) {
  testing::expect_error([] { GgufFile file(kCases / "iq2.gguf"); }, {"blk.0.attn_k.weight", "IQ2_XXS", "not support"});
}

}  // namespace
}  // namespace nibble
