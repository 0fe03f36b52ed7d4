// nibble against an independent implementation on a real Gemma 3 file: Hugging
// Face transformers' logits, greedy tokens and prompt token ids for Gemma 3 270M
// (GGUF Q4_K_M, scripts/get-gemma3-270m), recorded by
// tests/reference/make_gemma3_reference.py, which CTest runs first
// (NIBBLE_GEMMA3_REFERENCE_DIR).
#include <gtest/gtest.h>

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "scheduler/generate.h"
#include "transformers_reference.h"
#include "tokenizer/tokenizer.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kReferenceDir = NIBBLE_GEMMA3_REFERENCE_DIR;
const std::filesystem::path kModel = std::filesystem::path(NIBBLE_MODEL_CACHE) / "gemma-3-270m-q4_k_m.gguf";
constexpr std::size_t kGreedyTokens = 32;

class Gemma3Reference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(kModel)) << kModel << " is missing: run scripts/get-gemma3-270m";
    ref_ = new testing::TransformersReference(kModel, kReferenceDir / "gemma3_reference.json",
                                              kReferenceDir / "gemma3_last_logits.f32");
    reference_ = &ref_->reference;
    model_ = &ref_->model;
  }
  static void TearDownTestSuite() { delete ref_; }

  static testing::TransformersReference* ref_;
  static const nlohmann::json* reference_;
  static Model* model_;
};
testing::TransformersReference* Gemma3Reference::ref_ = nullptr;
const nlohmann::json* Gemma3Reference::reference_ = nullptr;
Model* Gemma3Reference::model_ = nullptr;

TEST_F(Gemma3Reference, ConfigIsGemma3WithInterleavedLocalLayers) {
  const ModelConfig& config = model_->config();
  EXPECT_EQ(config.architecture, "Gemma3ForCausalLM");
  EXPECT_EQ(config.sliding_window, 512);
  ASSERT_EQ(config.sliding_layers.size(), 18u);
  for (std::size_t i = 0; i < 18; ++i) EXPECT_EQ(config.sliding_layers[i], (i + 1) % 6 != 0) << "layer " << i;
  EXPECT_EQ(config.local_rope_theta, 10000.0);
  EXPECT_EQ(config.rope_theta, 1000000.0);
  EXPECT_EQ(config.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(config.final_logit_softcapping, 0.0);
  // <eos> from the file, <end_of_turn> found by its text.
  EXPECT_EQ(config.eos_token_ids, (std::vector<std::int32_t>{1, 106}));
}

TEST_F(Gemma3Reference, PromptsTokenizeAsTransformersDoes) {
  const auto tokenizer = load_tokenizer(kModel);
  for (const auto& reference_case : (*reference_)["cases"]) {
    const auto prompt = reference_case["prompt"].get<std::string>();
    EXPECT_EQ(tokenizer->encode(prompt, true), reference_case["prompt_ids"].get<std::vector<TokenId>>())
        << "prompt: " << prompt;
  }
}

TEST_F(Gemma3Reference, LastPositionLogitsMatchTransformers) {
  EXPECT_EQ((*reference_)["model_sha256"], "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
  testing::expect_last_position_logits(*ref_, *model_, 1e-3);
}

// Every Q4_K/Q5_0/Q6_K/Q8_0 layer runs packed (the tied Q8_0 embedding included).
TEST_F(Gemma3Reference, QuantizedLayersStayPacked) {
  const auto& memory = model_->weight_memory();
  EXPECT_EQ(memory.quantized_layers, 18 * 7 + 1);
  EXPECT_LE(static_cast<double>(memory.quantized_resident), 1.15 * static_cast<double>(memory.quantized_file));
  for (const auto& [kind, count] : model_->linear_kinds()) {
    EXPECT_EQ(kind.find("dense"), std::string::npos) << kind << " x" << count;
  }
}

// Identical greedy tokens, or, where they part, transformers' own top two were
// closer than 1e-3: float32 summation order alone may then pick either.
TEST_F(Gemma3Reference, ThirtyTwoGreedyTokensMatchTransformers) {
  std::size_t identical = 0;
  for (const auto& reference_case : (*reference_)["cases"]) {
    scheduler::SequenceRequest request;
    request.prompt = reference_case["prompt_ids"].get<std::vector<TokenId>>();
    request.sampling.temperature = 0;
    request.max_tokens = kGreedyTokens;
    const auto expected = reference_case["greedy_ids"].get<std::vector<TokenId>>();
    const auto gaps = reference_case["top2_gaps"].get<std::vector<double>>();
    ASSERT_EQ(expected.size(), kGreedyTokens);
    const auto actual = scheduler::generate(*model_, request).tokens;
    ASSERT_EQ(actual.size(), kGreedyTokens) << "prompt: " << reference_case["prompt"];
    const auto diverged = std::mismatch(actual.begin(), actual.end(), expected.begin()).first - actual.begin();
    if (diverged == static_cast<std::ptrdiff_t>(kGreedyTokens)) {
      ++identical;
      continue;
    }
    EXPECT_LT(gaps[static_cast<std::size_t>(diverged)], 1e-3)
        << "token " << diverged << " differs (" << actual[static_cast<std::size_t>(diverged)] << " vs "
        << expected[static_cast<std::size_t>(diverged)] << ") with a top-2 gap of "
        << gaps[static_cast<std::size_t>(diverged)] << "; prompt: " << reference_case["prompt"];
  }
  RecordProperty("prompts_with_identical_greedy_tokens", std::to_string(identical));
}

}  // namespace
}  // namespace nibble::engine
