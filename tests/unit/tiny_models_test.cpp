// Each architecture variant against transformers: tiny random models saved by
// transformers itself, or written as GGUF the way llama.cpp's converter writes them
// and read back by transformers (tests/reference/make_tiny_models.py), must give
// its logits at every position.
#include <cmath>
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

// The logits of `tokens` from `model`, all positions in one pass, must be `one_pass`;
// then a prefill chunk of 13 (all its rows) followed by decode steps must give
// `stepped`: the same logits, except where rope depends on the sequence length
// (LongRoPE), where transformers' own chunked run is the reference.
void expect_transformers_logits(DecoderModel& model, const std::vector<TokenId>& tokens,
                                std::span<const float> one_pass, std::span<const float> stepped) {
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  ASSERT_EQ(one_pass.size(), tokens.size() * vocab);
  ASSERT_EQ(stepped.size(), one_pass.size());

  SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
  std::vector<float> logits(one_pass.size());
  model.forward(tokens, 0, cache, Logits::AllRows, logits);
  EXPECT_LE(testing::relative_error(logits, one_pass), 1e-5);

  SequenceCache chunked(model, static_cast<std::int64_t>(tokens.size()));
  const std::size_t chunk = 13;  // make_tiny_models.py's STEPPED_PREFILL
  std::vector<float> prefill(chunk * vocab);
  model.forward(std::span(tokens).first(chunk), 0, chunked, Logits::AllRows, prefill);
  EXPECT_LE(testing::relative_error(prefill, stepped.first(chunk * vocab)), 1e-5);
  std::vector<float> last(vocab);
  for (std::size_t i = chunk; i < tokens.size(); ++i) {
    model.forward(std::span(tokens).subspan(i, 1), static_cast<std::int64_t>(i), chunked, Logits::LastRow, last);
    ASSERT_LE(testing::relative_error(last, stepped.subspan(i * vocab, vocab)), 1e-5) << "position " << i;
  }
}

std::vector<TokenId> tokens_of(const std::filesystem::path& folder) {
  return nlohmann::json::parse(testing::read_file(folder / "tokens.json"))["tokens"].get<std::vector<TokenId>>();
}

// stepped_logits.f32 where the fixture has one (LongRoPE), else the one-pass logits.
std::vector<float> stepped_reference(const std::filesystem::path& folder, const std::vector<float>& one_pass) {
  const auto path = folder / "stepped_logits.f32";
  return std::filesystem::exists(path) ? testing::read_f32_file(path) : one_pass;
}

class TinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyModel, AllPositionLogitsMatchTransformers) {
  const auto folder = kTiny / GetParam();
  const std::vector<float> expected = testing::read_f32_file(folder / "logits.f32");
  const ModelSource source = open_model(folder);
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  expect_transformers_logits(model, tokens_of(folder), expected, stepped_reference(folder, expected));
}

INSTANTIATE_TEST_SUITE_P(Architectures, TinyModel,
                         ::testing::Values("llama_llama3_rope", "qwen2_bias_tied_bf16", "mistral_sliding_window_f16",
                                           "llama_linear_rope_sharded", "qwen3_qk_norm_tied_bf16",
                                           "phi3_fused_sliding_f16", "phi3_longrope_partial_f16",
                                           "gemma2_softcap_sliding", "gemma3_qknorm_local_global"));

// The same models converted to GGUF as llama.cpp's converter writes them (fused
// Phi-3 tensors kept fused, some quantized): the same logits, or where quantized
// tensors changed the weights, transformers' logits over the dequantized weights.
class TinyGgufModel : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyGgufModel, AllPositionLogitsMatchTransformers) {
  const auto folder = kTiny / GetParam();
  const bool quantized = std::filesystem::exists(folder / "gguf_logits.f32");
  const std::vector<float> expected = testing::read_f32_file(folder / (quantized ? "gguf_logits.f32" : "logits.f32"));
  const ModelSource source = open_model(folder / "model.gguf");
  ASSERT_EQ(source.format, ModelFormat::Gguf);
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  expect_transformers_logits(model, tokens_of(folder), expected,
                             quantized ? expected : stepped_reference(folder, expected));
}

INSTANTIATE_TEST_SUITE_P(Architectures, TinyGgufModel,
                         ::testing::Values("qwen3_qk_norm_tied_bf16", "phi3_fused_sliding_f16",
                                           "phi3_longrope_partial_f16", "gemma2_gguf", "gemma3_gguf"));

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

// Qwen3 and Phi-3 settings as config.json and the converted GGUF state them.
TEST(TinyModelConfigs, Qwen3AndPhi3SettingsAreReadFromBothFormats) {
  for (const char* file : {"", "model.gguf"}) {
    SCOPED_TRACE(file);
    const ModelSource qwen3 = open_model(kTiny / "qwen3_qk_norm_tied_bf16" / file);
    EXPECT_EQ(qwen3.config.architecture, "Qwen3ForCausalLM");
    EXPECT_EQ(qwen3.config.head_dim, 16) << "head_dim is explicit, not hidden / heads";
    EXPECT_FALSE(qwen3.config.attention_bias);
    EXPECT_TRUE(qwen3.config.tie_word_embeddings);
    EXPECT_FALSE(qwen3.config.sliding_window) << "use_sliding_window is false";

    const ModelSource phi3 = open_model(kTiny / "phi3_longrope_partial_f16" / file);
    const RopeScaling& rope = phi3.config.rope_scaling;
    EXPECT_EQ(rope.kind, RopeScaling::Kind::LongRope);
    EXPECT_EQ(rope.original_max_position_embeddings, 16);
    // GGUF keeps the factors as float32 (rope_factors_short / _long).
    const std::vector<double> short_factor{1.0, 1.3, 1.9, 2.6, 3.5, 4.1}, long_factor{1.5, 2.7, 4.4, 7.9, 12.5, 19.0};
    ASSERT_EQ(rope.short_factor.size(), 6u);
    ASSERT_EQ(rope.long_factor.size(), 6u);
    for (std::size_t i = 0; i < 6; ++i) {
      EXPECT_FLOAT_EQ(static_cast<float>(rope.short_factor[i]), static_cast<float>(short_factor[i]));
      EXPECT_FLOAT_EQ(static_cast<float>(rope.long_factor[i]), static_cast<float>(long_factor[i]));
    }
    // transformers' default: sqrt(1 + ln(64 / 16) / ln(16)).
    EXPECT_NEAR(rope.attention_factor, std::sqrt(1.5), 1e-6);
    EXPECT_EQ(phi3.config.rotary_dim, 12) << "0.75 of a 16-wide head";
    EXPECT_EQ(open_model(kTiny / "phi3_fused_sliding_f16" / file).config.sliding_window, 12);
  }
}

// The fused tensors reach the engine as their parts: views of the file's rows for
// plain tensors, the quantized rows as they are stored (nothing widened) for GGUF.
TEST(TinyModelFusedTensors, PartsAreRowRangesOfTheFusedTensor) {
  const auto folder = kTiny / "phi3_fused_sliding_f16";
  const ModelSource hf = open_model(folder);
  const auto& weights = *hf.weights;
  const std::string attn = "model.layers.1.self_attn.";
  ASSERT_TRUE(weights.contains(attn + "q_proj.weight"));
  const TensorView q = weights.load(attn + "q_proj.weight");
  const TensorView k = weights.load(attn + "k_proj.weight");
  const TensorView v = weights.load(attn + "v_proj.weight");
  EXPECT_EQ(q.shape, (std::vector<std::int64_t>{32, 32}));
  EXPECT_EQ(k.shape, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(q.dtype, DType::F16);
  // Zero-copy: consecutive views of one mapped tensor.
  EXPECT_EQ(k.bytes.data(), q.bytes.data() + q.bytes.size());
  EXPECT_EQ(v.bytes.data(), k.bytes.data() + k.bytes.size());
  const TensorView up = weights.load("model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(up.bytes.data(), weights.load("model.layers.0.mlp.gate_proj.weight").bytes.data() + 64 * 32 * 2);
  bool listed = false;
  for (const auto& info : weights.list()) {
    EXPECT_EQ(info.name.find("qkv_proj"), std::string::npos) << info.name << " is listed as its parts";
    listed = listed || info.name == attn + "v_proj.weight";
  }
  EXPECT_TRUE(listed);

  // GGUF: attn_qkv is Q8_0 (unpacked codes), ffn_up Q5_0 (blocks kept packed).
  const ModelSource gguf = open_model(folder / "model.gguf");
  const auto k_rows = gguf.weights->load_quantized(attn + "k_proj");
  ASSERT_TRUE(k_rows);
  EXPECT_EQ(k_rows->rows, 16);
  EXPECT_EQ(k_rows->bits, 8);
  const auto up_rows = gguf.weights->load_quantized("model.layers.0.mlp.up_proj");
  ASSERT_TRUE(up_rows && up_rows->block_format);
  EXPECT_EQ(up_rows->rows, 64);
  EXPECT_EQ(up_rows->blocks.size(), up_rows->stored_bytes) << "the file's blocks, not a widened copy";
  // Each part dequantizes to the fused tensor's rows (the plain load() path).
  const TensorView fused_values = gguf.weights->load(attn + "k_proj.weight");
  std::vector<float> row(32);
  for (std::int64_t n = 0; n < 16; ++n) {
    k_rows->dequantize_row(n, row.data());
    for (std::int64_t c = 0; c < 32; ++c) {
      ASSERT_EQ(row[static_cast<std::size_t>(c)], fused_values.as<float>()[static_cast<std::size_t>(n * 32 + c)]);
    }
  }

  // The stacked q/k/v of a layer is one matrix again: bound quantized, nothing expanded.
  kernels::CpuBackend backend(1);
  DecoderModel model(gguf, backend);
  EXPECT_EQ(model.weight_memory().stacked_linears, 2 * 2) << "qkv and gate/up of both layers";
  EXPECT_EQ(model.weight_memory().quantized_layers, 2 * 5);
}

}  // namespace
}  // namespace nibble::engine
