// Block-quantized weights (K-quants, IQ4, ternary, Q5_0/Q5_1, Q8_K) against gguf-py:
// tests/gguf/make_block_cases.py writes fresh random blocks, gguf-py's dequantization
// and a float64 matmul into a temp dir before this runs (fixture block_cases). Every
// type is checked on every ISA this CPU has, on an odd number of output rows and
// 1..64 activation rows; a llama mixing all twelve types loads and runs, and IQ2 is refused.
#include <gtest/gtest.h>

#include <bit>
#include <filesystem>
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

  QuantizedMatrix m;
  m.name = info.name;
  m.rows = n;
  m.cols = k;
  m.block_format = format;
  m.blocks.assign(w.data.begin(), w.data.end());
  m.stored_bytes = w.data.size();
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
