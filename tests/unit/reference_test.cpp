// nibble against an independent implementation: Hugging Face transformers' logits
// and greedy tokens for the bundled SmolLM2-135M-Instruct GGUF, recorded by
// tests/reference/make_smollm2_reference.py.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "scheduler/generate.h"
#include "engine/decoder_model.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "transformers_reference.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kReferenceDir = std::filesystem::path(NIBBLE_SOURCE_DIR) / "tests/reference";
const std::filesystem::path kModel = std::filesystem::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";

class SmolLM2Reference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(kModel)) << kModel << " is missing: run scripts/get-model";
    ref_ = new testing::TransformersReference(kModel, kReferenceDir / "smollm2_reference.json",
                                              kReferenceDir / "smollm2_last_logits.f32");
    reference_ = &ref_->reference;
    model_ = &ref_->model;
  }
  static void TearDownTestSuite() { delete ref_; }

  static testing::TransformersReference* ref_;
  static const nlohmann::json* reference_;
  static Model* model_;
};
testing::TransformersReference* SmolLM2Reference::ref_ = nullptr;
const nlohmann::json* SmolLM2Reference::reference_ = nullptr;
Model* SmolLM2Reference::model_ = nullptr;

TEST_F(SmolLM2Reference, LastPositionLogitsMatchTransformers) {
  testing::expect_last_position_logits(*ref_, *model_, 1e-4);
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
  for (const auto& reference_case : (*reference_)["cases"]) {
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
