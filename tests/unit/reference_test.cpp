// nibble against an independent implementation: Hugging Face transformers' logits
// and greedy tokens for the bundled SmolLM2-135M-Instruct GGUF, recorded by
// tests/reference/make_smollm2_reference.py.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "scheduler/generate.h"
#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kReferenceDir = std::filesystem::path(NIBBLE_SOURCE_DIR) / "tests/reference";
const std::filesystem::path kModel = std::filesystem::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";

class SmolLM2Reference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(kModel)) << kModel << " is missing: run scripts/get-model";
    reference_ = nlohmann::json::parse(testing::read_file(kReferenceDir / "smollm2_reference.json"));
    logits_ = testing::read_f32_file(kReferenceDir / "smollm2_last_logits.f32");
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
nlohmann::json SmolLM2Reference::reference_;
std::vector<float> SmolLM2Reference::logits_;
ModelSource* SmolLM2Reference::source_ = nullptr;
kernels::CpuBackend* SmolLM2Reference::backend_ = nullptr;
Model* SmolLM2Reference::model_ = nullptr;

TEST_F(SmolLM2Reference, LastPositionLogitsMatchTransformers) {
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
    EXPECT_LE(error, 1e-4) << "prompt " << i << ": " << cases[i]["prompt"];
    RecordProperty("relative_error_" + std::to_string(i), std::to_string(error));
  }
}

// The GGUF's Q4_1 layers and Q8_0 embedding/lm_head run packed, never expanded,
// and stay within 1.15x of their size in the file.
TEST_F(SmolLM2Reference, QuantizedLayersStayPackedWithinTheMemoryBudget) {
  const auto& memory = model_->weight_memory();
  EXPECT_EQ(memory.quantized_layers, 30 * 7 + 1);  // seven linears per layer and the tied embedding/lm_head
  EXPECT_GT(memory.quantized_file, 90u << 20);
  EXPECT_LE(static_cast<double>(memory.quantized_resident), 1.15 * static_cast<double>(memory.quantized_file));
  for (const auto& [kind, count] : model_->linear_kinds()) {
    EXPECT_EQ(kind.find("dense"), std::string::npos) << kind << " x" << count;
  }
}

TEST_F(SmolLM2Reference, SixtyFourGreedyTokensMatchTransformers) {
  for (const auto& reference_case : reference_["cases"]) {
    scheduler::SequenceRequest request;
    request.prompt = reference_case["prompt_ids"].get<std::vector<TokenId>>();
    request.sampling.temperature = 0;
    request.max_tokens = 64;
    const auto expected = reference_case["greedy_ids"].get<std::vector<TokenId>>();
    ASSERT_EQ(expected.size(), 64u);
    EXPECT_EQ(scheduler::generate(*model_, request).tokens, expected) << "prompt: " << reference_case["prompt"];
  }
}

}  // namespace
}  // namespace nibble::engine
