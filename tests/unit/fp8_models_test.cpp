// Tiny random Llama and Qwen3 models with FP8 e4m3 weights in both checkpoint
// families (DeepSeek-style `weight_scale_inv` blocks, compressed-tensors
// float-quantized), made at test time by tests/reference/make_tiny_fp8_models.py,
// against its float64 dequantize-then-run transformers reference: logits at every
// position within 1e-4 relative, and 32 greedy tokens identical on 5 prompts. The
// weights must stay FP8 in memory: one byte per weight plus the scales.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <ostream>

#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "engine/model_stats.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kModels = NIBBLE_FP8_MODELS;

struct Variant {
  const char* name;
  std::int64_t min_cols;  // the model's smallest input width (hidden or intermediate size)
  const char* quantization;  // what `nibble inspect` says about the config
};

void PrintTo(const Variant& variant, std::ostream* out) { *out << variant.name; }

class Fp8Models : public ::testing::TestWithParam<Variant> {};

TEST_P(Fp8Models, MatchTheFloat64DequantizedReference) {
  const Variant variant = GetParam();
  const std::filesystem::path folder = kModels / variant.name;
  const nlohmann::json reference = nlohmann::json::parse(testing::read_file(folder / "reference.json"));
  const std::vector<float> expected = testing::read_f32_file(folder / "logits.f32");
  const ModelSource source = open_model(folder);
  ASSERT_TRUE(source.quantization.has_value());
  EXPECT_NE(source.quantization->describe().find(variant.quantization), std::string::npos)
      << source.quantization->describe();
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);

  // Every decoder linear layer runs on the FP8 kernel; only the embedding table and
  // lm_head (the same matrix when tied) stay dense.
  std::int64_t fp8_layers = 0, dense_layers = 0;
  for (const auto& [kind, count] : model.linear_kinds()) {
    if (kind.starts_with("fp8 e4m3")) {
      fp8_layers += count;
    } else {
      EXPECT_TRUE(kind.starts_with("dense")) << kind;
      dense_layers += count;
    }
  }
  EXPECT_GT(fp8_layers, 0);
  EXPECT_LE(dense_layers, 2);
  const WeightMemory& memory = model.weight_memory();
  EXPECT_EQ(memory.quantized_layers, 2 * 7);
  // The file's bytes (one per weight, the scale grid) plus a 4-byte scale-row index
  // per output row, scales widened to float32 (BF16 in the file: 2 more bytes a row).
  EXPECT_GE(memory.quantized_resident, memory.quantized_file);
  EXPECT_LE(static_cast<double>(memory.quantized_resident),
            static_cast<double>(memory.quantized_file) * (1.0 + 6.0 / static_cast<double>(variant.min_cols)));

  // `nibble inspect` / `nibble plan` (as stored): each FP8 module once, at one byte
  // per weight plus its scales.
  const ModelStats stats = compute_model_stats(source);
  EXPECT_EQ(stats.parameters, reference["parameters"].get<std::int64_t>());
  EXPECT_EQ(stats.bytes_by_type.at("fp8 e4m3 + scales"), reference["fp8_bytes"].get<std::uint64_t>());

  const auto tokens = reference["tokens"].get<std::vector<TokenId>>();
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  ASSERT_EQ(expected.size(), tokens.size() * vocab);
  std::vector<float> logits(expected.size());
  SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
  model.forward(tokens, 0, cache, Logits::AllRows, logits);
  const double error = testing::relative_error(logits, expected);
  EXPECT_LE(error, 1e-4);
  ::testing::Test::RecordProperty("relative_error", std::to_string(error));

  const auto& cases = reference["cases"];
  ASSERT_EQ(cases.size(), 5u);
  for (const auto& c : cases) {
    std::vector<TokenId> ids = c["prompt_ids"].get<std::vector<TokenId>>();
    const auto want = c["greedy_ids"].get<std::vector<TokenId>>();
    ASSERT_EQ(want.size(), 32u);
    SequenceCache sequence(model, static_cast<std::int64_t>(ids.size() + want.size()));
    std::vector<float> last(vocab);
    model.forward(ids, 0, sequence, Logits::LastRow, last);
    std::vector<TokenId> got;
    for (std::size_t step = 0; step < want.size(); ++step) {
      const auto next = static_cast<TokenId>(std::max_element(last.begin(), last.end()) - last.begin());
      got.push_back(next);
      ids.push_back(next);
      model.forward(std::span(ids).last(1), static_cast<std::int64_t>(ids.size() - 1), sequence, Logits::LastRow, last);
    }
    EXPECT_EQ(got, want) << "prompt " << c["prompt_ids"].dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, Fp8Models,
                         ::testing::Values(Variant{"llama_fp8_block128", 160, "fp8 e4m3, block 128x128"},
                                           Variant{"qwen3_fp8_block32", 96, "fp8 e4m3, block 32x32"},
                                           Variant{"llama_ct_fp8_channel", 96, "float-quantized fp8 e4m3, per channel"},
                                           Variant{"llama_ct_fp8_block", 160, "float-quantized fp8 e4m3, block 64x64"}),
                         [](const ::testing::TestParamInfo<Variant>& p) { return std::string(p.param.name); });

// A config that the files contradict, or a checkpoint the loader cannot honour,
// is refused with a message naming the tensor (copies of a generated model, edited).
TEST(Fp8ModelErrors, BadScaleGridsAndConfigsAreRefusedByName) {
  const std::filesystem::path good = kModels / "llama_fp8_block128";
  const testing::TempDir temp;
  const std::filesystem::path bad = temp.path();
  std::filesystem::copy(good, bad, std::filesystem::copy_options::recursive);
  auto config = nlohmann::json::parse(testing::read_file(good / "config.json"));

  // Blocks of 64 imply a [4, 3] grid for q_proj [160, 160]; the file has [2, 2].
  config["quantization_config"]["weight_block_size"] = {64, 64};
  testing::write_file(bad / "config.json", config.dump());
  {
    const ModelSource source = open_model(bad);
    kernels::CpuBackend backend(1);
    testing::expect_error([&] { DecoderModel model(source, backend); },
                          {"weight_scale_inv", "expected [", "per 64x64 block"});
  }
  config["quantization_config"]["weight_block_size"] = {128, 128};
  config["quantization_config"]["fmt"] = "e5m2";
  testing::write_file(bad / "config.json", config.dump());
  testing::expect_error([&] { (void)open_model(bad); }, {"fmt 'e5m2'", "only e4m3"});
  config["quantization_config"].erase("fmt");
  config["quantization_config"]["weight_block_size"] = {128};
  testing::write_file(bad / "config.json", config.dump());
  testing::expect_error([&] { (void)open_model(bad); }, {"weight_block_size", "two positive integers"});
}

}  // namespace
}  // namespace nibble::engine
