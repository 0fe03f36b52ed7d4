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
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "scheduler/generate.h"
#include "test_util.h"
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
    reference_ = nlohmann::json::parse(testing::read_file(kReferenceDir / "gemma3_reference.json"));
    logits_ = testing::read_f32_file(kReferenceDir / "gemma3_last_logits.f32");
    source_ = new ModelSource(open_model(kModel));
    backend_ = new kernels::CpuBackend(0);
    model_ = new DecoderModel(*source_, *backend_);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete source_;
  }

  static nlohmann::json reference_;
  static std::vector<float> logits_;
  static ModelSource* source_;
  static kernels::CpuBackend* backend_;
  static Model* model_;
};
nlohmann::json Gemma3Reference::reference_;
std::vector<float> Gemma3Reference::logits_;
ModelSource* Gemma3Reference::source_ = nullptr;
kernels::CpuBackend* Gemma3Reference::backend_ = nullptr;
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
  for (const auto& reference_case : reference_["cases"]) {
    const auto prompt = reference_case["prompt"].get<std::string>();
    EXPECT_EQ(tokenizer->encode(prompt, true), reference_case["prompt_ids"].get<std::vector<TokenId>>())
        << "prompt: " << prompt;
  }
}

TEST_F(Gemma3Reference, LastPositionLogitsMatchTransformers) {
  EXPECT_EQ(reference_["model_sha256"], "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
  const auto vocab = static_cast<std::size_t>(model_->vocab_size());
  ASSERT_EQ(reference_["vocab_size"].get<std::size_t>(), vocab);
  const auto& cases = reference_["cases"];
  ASSERT_GE(cases.size(), 5u);
  ASSERT_EQ(logits_.size(), cases.size() * vocab);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto ids = cases[i]["prompt_ids"].get<std::vector<TokenId>>();
    SequenceCache cache(*model_, static_cast<std::int64_t>(ids.size()));
    std::vector<float> logits(vocab);
    model_->forward(ids, 0, cache, Logits::LastRow, logits);
    const std::span<const float> expected(logits_.data() + i * vocab, vocab);
    const double error = testing::relative_error(logits, expected);
    EXPECT_LE(error, 1e-3) << "prompt " << i << ": " << cases[i]["prompt"];
    RecordProperty("relative_error_" + std::to_string(i), fmt::format("{:.2e}", error));
  }
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
  for (const auto& reference_case : reference_["cases"]) {
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
