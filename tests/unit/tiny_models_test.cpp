// Each architecture variant against transformers: tiny random models saved by
// transformers itself, or written as GGUF the way llama.cpp's converter writes them
// and read back by transformers (tests/reference/make_tiny_models.py), must give
// its logits at every position.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kTiny = std::filesystem::path(NIBBLE_SOURCE_DIR) / "tests/fixtures/tiny";

class TinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyModel, AllPositionLogitsMatchTransformers) {
  const auto folder = kTiny / GetParam();
  const auto tokens =
      nlohmann::json::parse(testing::read_file(folder / "tokens.json"))["tokens"].get<std::vector<TokenId>>();
  const std::vector<float> expected = testing::read_f32_file(folder / "logits.f32");

  // The GGUF variants are one file (written as llama.cpp's converter writes Gemma).
  const bool gguf = std::filesystem::exists(folder / "model.gguf");
  const ModelSource source = open_model(gguf ? folder / "model.gguf" : folder);
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  ASSERT_EQ(expected.size(), tokens.size() * vocab);

  // All positions in one pass, and again as a prefill chunk followed by decode steps.
  SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
  std::vector<float> logits(expected.size());
  model.forward(tokens, 0, cache, Logits::AllRows, logits);
  EXPECT_LE(testing::relative_error(logits, expected), 1e-5);

  SequenceCache stepped(model, static_cast<std::int64_t>(tokens.size()));
  const std::size_t chunk = 13;
  std::vector<float> last(vocab);
  model.forward(std::span(tokens).first(chunk), 0, stepped, Logits::LastRow, last);
  for (std::size_t i = chunk; i < tokens.size(); ++i) {
    model.forward(std::span(tokens).subspan(i, 1), static_cast<std::int64_t>(i), stepped, Logits::LastRow, last);
    ASSERT_LE(testing::relative_error(last, std::span<const float>(expected).subspan(i * vocab, vocab)), 1e-5)
        << "position " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, TinyModel,
                         ::testing::Values("llama_llama3_rope", "qwen2_bias_tied_bf16", "mistral_sliding_window_f16",
                                           "llama_linear_rope_sharded", "gemma2_softcap_sliding",
                                           "gemma3_qknorm_local_global", "gemma2_gguf", "gemma3_gguf"));

TEST(TinyModelConfigs, TransformersFiveRopeParametersAreRead) {
  const ModelSource llama3 = open_model(kTiny / "llama_llama3_rope");
  EXPECT_EQ(llama3.config.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_EQ(llama3.config.rope_scaling.original_max_position_embeddings, 16);
  const ModelSource qwen2 = open_model(kTiny / "qwen2_bias_tied_bf16");
  EXPECT_DOUBLE_EQ(qwen2.config.rope_theta, 1000000.0);
  EXPECT_TRUE(qwen2.config.attention_bias);
  EXPECT_TRUE(qwen2.config.tie_word_embeddings);
  const ModelSource mistral = open_model(kTiny / "mistral_sliding_window_f16");
  EXPECT_EQ(mistral.config.sliding_window, 8);
  const ModelSource gemma2 = open_model(kTiny / "gemma2_softcap_sliding");
  EXPECT_EQ(gemma2.config.sliding_layers, (std::vector<bool>{true, false}));
  EXPECT_EQ(gemma2.config.final_logit_softcapping, 2.0);
  const ModelSource gemma3 = open_model(kTiny / "gemma3_qknorm_local_global");
  EXPECT_EQ(gemma3.config.sliding_layers, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(gemma3.config.rope_scaling.kind, RopeScaling::Kind::Linear);
  EXPECT_EQ(gemma3.config.local_rope_theta, 10000.0);
  EXPECT_EQ(gemma3.config.query_pre_attn_scalar, 20.0);
}

// What a Gemma GGUF leaves to the reader is filled as llama.cpp fills it, and the
// norm weights come back as Hugging Face's w (the file holds w + 1).
TEST(TinyModelConfigs, GemmaGgufFilesReadAsLlamaCppReadsThem) {
  const ModelSource gemma2 = open_model(kTiny / "gemma2_gguf" / "model.gguf");
  EXPECT_EQ(gemma2.config.architecture, "Gemma2ForCausalLM");
  EXPECT_EQ(gemma2.config.sliding_layers, (std::vector<bool>{true, false}));
  EXPECT_EQ(gemma2.config.sliding_window, 8);
  EXPECT_EQ(gemma2.config.attn_logit_softcapping, 50.0);
  EXPECT_EQ(gemma2.config.final_logit_softcapping, 30.0);
  EXPECT_EQ(gemma2.config.query_pre_attn_scalar, 256.0);
  const ModelSource gemma3 = open_model(kTiny / "gemma3_gguf" / "model.gguf");
  EXPECT_EQ(gemma3.config.architecture, "Gemma3ForCausalLM");
  EXPECT_EQ(gemma3.config.sliding_layers, (std::vector<bool>{true, true}));
  EXPECT_EQ(gemma3.config.rope_theta, 1000000.0);
  EXPECT_EQ(gemma3.config.local_rope_theta, 10000.0);
  EXPECT_EQ(gemma3.config.attn_logit_softcapping, 0.0);
  const TensorView norm = gemma3.weights->load("model.layers.0.self_attn.q_norm.weight");
  ASSERT_EQ(norm.dtype, DType::F32);
  for (const float w : norm.as<float>()) EXPECT_TRUE(w >= -0.5f && w <= 0.5f) << w;  // drawn from [-0.5, 0.5]
}

}  // namespace
}  // namespace nibble::engine
