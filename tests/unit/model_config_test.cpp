#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

#include "loader/model_config.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble {
namespace {

using json = nlohmann::json;
using testing::expect_error;

json llama_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": false,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
}

TEST(ModelConfig, ParsesLlama31WithLlama3RopeScalingAndGqa) {
  const ModelConfig c = parse_hf_config(llama_config());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  // Round trip through the writer used by converters.
  const ModelConfig again = parse_hf_config(to_hf_config(c));
  EXPECT_EQ(again.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_EQ(again.eos_token_ids, c.eos_token_ids);
  EXPECT_EQ(again.head_dim, c.head_dim);
}

TEST(ModelConfig, Qwen2HasQkvBiasAndOptionalSlidingWindow) {
  json config = llama_config();
  config["architectures"] = {"Qwen2ForCausalLM"};
  config["model_type"] = "qwen2";
  config.erase("rope_scaling");
  config["sliding_window"] = 4096;
  config["use_sliding_window"] = false;
  config["tie_word_embeddings"] = true;
  const ModelConfig c = parse_hf_config(config);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::None);
}

// Phi-3-mini-128k-instruct's config.json as published (transformers 4.40 era):
// rope type "su", the pretraining context at the top level, no factor.
json phi3_128k_config() {
  json config = json::parse(R"({
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": false})");
  json short_factor = json::array(), long_factor = json::array();
  for (int i = 0; i < 48; ++i) {
    short_factor.push_back(1.0 + 0.01 * i);
    long_factor.push_back(1.0 + 0.5 * i);
  }
  config["rope_scaling"] = {{"type", "su"}, {"short_factor", short_factor}, {"long_factor", long_factor}};
  return config;
}

TEST(ModelConfig, Phi3LongRopeAsTransformersReadsIt) {
  const ModelConfig c = parse_hf_config(phi3_128k_config());
  EXPECT_EQ(c.architecture, "Phi3ForCausalLM");
  const RopeScaling& rope = c.rope_scaling;
  ASSERT_EQ(rope.kind, RopeScaling::Kind::LongRope);
  EXPECT_EQ(rope.original_max_position_embeddings, 4096);
  ASSERT_EQ(rope.long_factor.size(), 48u);
  EXPECT_DOUBLE_EQ(rope.long_factor[2], 2.0);
  // transformers: factor = 131072 / 4096 = 32, attention factor sqrt(1 + ln 32 / ln 4096).
  EXPECT_NEAR(rope.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)), 1e-12);
  EXPECT_EQ(c.sliding_window, 262144);
  EXPECT_FALSE(c.rotary_dim);

  // An explicit attention_factor wins; the round trip keeps everything.
  json explicit_factor = phi3_128k_config();
  explicit_factor["rope_scaling"]["attention_factor"] = 1.25;
  explicit_factor["partial_rotary_factor"] = 0.75;
  explicit_factor["rope_scaling"]["short_factor"] = json(std::vector<double>(36, 1.0));
  explicit_factor["rope_scaling"]["long_factor"] = json(std::vector<double>(36, 2.0));
  const ModelConfig e = parse_hf_config(explicit_factor);
  EXPECT_DOUBLE_EQ(e.rope_scaling.attention_factor, 1.25);
  EXPECT_EQ(e.rotary_dim, 72);
  const ModelConfig again = parse_hf_config(to_hf_config(e));
  EXPECT_EQ(again.rope_scaling.kind, RopeScaling::Kind::LongRope);
  EXPECT_EQ(again.rope_scaling.long_factor, e.rope_scaling.long_factor);
  EXPECT_DOUBLE_EQ(again.rope_scaling.attention_factor, 1.25);
  EXPECT_EQ(again.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(again.rotary_dim, 72);

  // The 4k models have no rope scaling.
  json short_context = phi3_128k_config();
  short_context.erase("rope_scaling");
  short_context["max_position_embeddings"] = 4096;
  EXPECT_EQ(parse_hf_config(short_context).rope_scaling.kind, RopeScaling::Kind::None);
}

TEST(ModelConfig, LongRopeFactorListsMustFitTheRotaryWidth) {
  json config = phi3_128k_config();
  config["rope_scaling"]["long_factor"].erase(0);
  expect_error([&] { parse_hf_config(config); }, {"longrope needs 48 short and long factors", "47"});
  config = phi3_128k_config();
  config["rope_scaling"]["short_factor"][3] = 0.0;
  expect_error([&] { parse_hf_config(config); }, {"longrope factors must be finite and positive"});
  config = phi3_128k_config();
  config["rope_scaling"]["type"] = "dynamic";
  expect_error([&] { parse_hf_config(config); }, {"'dynamic' is not supported"});
}

TEST(ModelConfig, Qwen3HasAnExplicitHeadDimAndAFlaggedSlidingWindow) {
  json config = llama_config();
  config["architectures"] = {"Qwen3ForCausalLM"};
  config.erase("rope_scaling");
  config["head_dim"] = 256;  // unlike hidden / heads = 128
  config["sliding_window"] = 4096;
  config["use_sliding_window"] = false;
  ModelConfig c = parse_hf_config(config);
  EXPECT_EQ(c.model_type, "qwen3");
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.q_dim(), 32 * 256);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.sliding_window);
  config["use_sliding_window"] = true;
  c = parse_hf_config(config);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(parse_hf_config(to_hf_config(c)).sliding_window, 4096) << "the writer keeps the flag";
}

TEST(ModelConfig, MistralUsesItsSlidingWindow) {
  json config = llama_config();
  config["architectures"] = {"MistralForCausalLM"};
  config.erase("rope_scaling");
  config["sliding_window"] = 4096;
  const ModelConfig c = parse_hf_config(config);
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.sliding_window, 4096);
}

// google/gemma-2-2b's config.json as transformers 4 wrote it: no layer_types, top-level rope_theta.
json gemma2_config() {
  return json::parse(R"({
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 256000,
    "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0, "sliding_window": 4096, "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": [1, 107],
    "torch_dtype": "float32"})");
}

TEST(ModelConfig, Gemma2AlternatesLocalAndGlobalLayersAndSoftCaps) {
  const ModelConfig c = parse_hf_config(gemma2_config());
  EXPECT_EQ(c.model_type, "gemma2");
  EXPECT_EQ(c.sliding_window, 4096);
  ASSERT_EQ(c.sliding_layers.size(), 26u);
  for (std::int64_t i = 0; i < 26; ++i) EXPECT_EQ(c.sliding_layer(i), i % 2 == 0) << "layer " << i;
  EXPECT_EQ(c.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(c.attn_logit_softcapping, 50.0);
  EXPECT_EQ(c.final_logit_softcapping, 30.0);
  EXPECT_FALSE(c.local_rope_theta.has_value());
  const ModelConfig again = parse_hf_config(to_hf_config(c));
  EXPECT_EQ(again.sliding_layers, c.sliding_layers);
  EXPECT_EQ(again.final_logit_softcapping, 30.0);

  // Left out, the soft-caps take transformers' defaults; null switches them off.
  json config = gemma2_config();
  config.erase("attn_logit_softcapping");
  config["final_logit_softcapping"] = nullptr;
  const ModelConfig defaults = parse_hf_config(config);
  EXPECT_EQ(defaults.attn_logit_softcapping, 50.0);
  EXPECT_EQ(defaults.final_logit_softcapping, 0.0);
  EXPECT_EQ(parse_hf_config(to_hf_config(defaults)).final_logit_softcapping, 0.0);

  config["hidden_activation"] = "gelu";  // exact GELU is not what Gemma runs
  expect_error([&] { parse_hf_config(config); }, {"activation 'gelu'"});
}

TEST(ModelConfig, Gemma3ReadsItsLayerPatternAndTwoRopeBases) {
  // google/gemma-3-270m's config.json in transformers 4's words.
  json config = gemma2_config();
  config["architectures"] = {"Gemma3ForCausalLM"};
  config["model_type"] = "gemma3_text";
  config["num_hidden_layers"] = 18;
  config["sliding_window"] = 512;
  config["_sliding_window_pattern"] = 6;
  config["rope_theta"] = 1000000.0;
  config["rope_local_base_freq"] = 10000.0;
  config["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  config["attn_logit_softcapping"] = nullptr;
  config["final_logit_softcapping"] = nullptr;
  const ModelConfig c = parse_hf_config(config);
  ASSERT_EQ(c.sliding_layers.size(), 18u);
  for (std::int64_t i = 0; i < 18; ++i) EXPECT_EQ(c.sliding_layer(i), (i + 1) % 6 != 0) << "layer " << i;
  EXPECT_EQ(c.rope_theta, 1000000.0);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Linear);  // the global layers'
  EXPECT_EQ(c.local_rope_theta, 10000.0);
  EXPECT_EQ(c.local_rope_scaling.kind, RopeScaling::Kind::None);
  EXPECT_EQ(c.attn_logit_softcapping, 0.0);
  const ModelConfig again = parse_hf_config(to_hf_config(c));
  EXPECT_EQ(again.local_rope_theta, 10000.0);
  EXPECT_EQ(again.rope_scaling.kind, RopeScaling::Kind::Linear);
  EXPECT_EQ(again.local_rope_scaling.kind, RopeScaling::Kind::None);
  EXPECT_EQ(again.sliding_layers, c.sliding_layers);

  // transformers 5: explicit layer_types and per-layer-type rope_parameters.
  config.erase("rope_scaling");
  config.erase("rope_theta");
  config.erase("rope_local_base_freq");
  config["num_hidden_layers"] = 3;
  config["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  config["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 500000.0}}},
                               {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 20000.0}}}};
  const ModelConfig v5 = parse_hf_config(config);
  EXPECT_EQ(v5.sliding_layers, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(v5.rope_theta, 500000.0);
  EXPECT_EQ(v5.local_rope_theta, 20000.0);

  config["layer_types"] = {"sliding_attention", "full_attention"};
  expect_error([&] { parse_hf_config(config); }, {"layer_types lists 2 layers"});
}

TEST(ModelConfig, RejectsUnknownArchitecturesAndBadFields) {
  json config = llama_config();
  config["architectures"] = {"GPTNeoXForCausalLM"};
  expect_error([&] { parse_hf_config(config); }, {"unsupported architecture", "GPTNeoXForCausalLM"});

  config = llama_config();
  config.erase("hidden_size");
  expect_error([&] { parse_hf_config(config); }, {"hidden_size"});

  config = llama_config();
  config["num_hidden_layers"] = "thirty-two";
  expect_error([&] { parse_hf_config(config); }, {"num_hidden_layers", "wrong type"});

  config = llama_config();
  config["num_key_value_heads"] = 5;
  expect_error([&] { parse_hf_config(config); }, {"multiple"});

  config = llama_config();
  config["rope_scaling"]["rope_type"] = "dynamic";
  expect_error([&] { parse_hf_config(config); }, {"dynamic"});
}

// Values no real model has, which used to pass and then overflow sizes computed
// from them (2^62 positions made the automatic KV cache 0 bytes).
TEST(ModelConfig, RejectsAbsurdSizesAndConstantsByName) {
  const std::int64_t huge = std::int64_t{1} << 62;
  const std::vector<std::pair<std::string, json>> cases = {
      {"max_position_embeddings", huge},
      {"max_position_embeddings", 0},
      {"num_hidden_layers", huge},
      {"num_attention_heads", 1 << 20},
      {"hidden_size", huge},
      {"intermediate_size", -1},
      {"vocab_size", huge},
      {"head_dim", 1 << 20},
      {"rope_theta", 1e300},
      {"rope_theta", 0.5},
      {"rms_norm_eps", 2.0},
      {"sliding_window", huge},
      {"max_position_embeddings", 1e30},
      {"num_hidden_layers", std::numeric_limits<std::uint64_t>::max()},
  };
  for (const auto& [field, value] : cases) {
    SCOPED_TRACE(field + " = " + value.dump());
    json config = llama_config();
    config[field] = value;
    if (field == "num_attention_heads") config["num_key_value_heads"] = 1 << 20;
    if (field == "sliding_window") config["architectures"] = {"MistralForCausalLM"};
    expect_error([&] { parse_hf_config(config); }, {field});
  }
  // In range one by one, yet together beyond any real model.
  json config = llama_config();
  config["hidden_size"] = 1 << 20;
  config["intermediate_size"] = 1 << 22;
  config["num_hidden_layers"] = 1 << 12;
  config["head_dim"] = 128;
  expect_error([&] { parse_hf_config(config); }, {"parameters"});
  // The largest real shapes still load.
  config = llama_config();
  config["max_position_embeddings"] = 10'485'760;  // Llama 4 Scout
  config["vocab_size"] = 262'144;
  EXPECT_NO_THROW(parse_hf_config(config));
}

TEST(ModelConfig, GenerationConfigDefaults) {
  const auto defaults = parse_generation_config(
      json::parse(R"({"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 2]})"));
  EXPECT_EQ(defaults.do_sample, true);
  EXPECT_DOUBLE_EQ(*defaults.temperature, 0.6);
  EXPECT_FALSE(defaults.top_k.has_value());
  EXPECT_EQ(defaults.eos_token_ids, (std::vector<std::int32_t>{1, 2}));
  expect_error([] { parse_generation_config(json::parse(R"({"top_k": 0.5})")); }, {"top_k"});
}

TEST(ModelSource, MalformedFoldersGiveClearErrors) {
  testing::TempDir dir;
  expect_error([&] { open_model(dir / "nope"); }, {"does not exist"});
  expect_error([&] { open_model(dir.path()); }, {"no config.json"});
  testing::write_file(dir / "config.json", "{\"architectures\": [\"Llama");
  expect_error([&] { open_model(dir.path()); }, {"config.json", "JSON"});
  json config = llama_config();
  config["architectures"] = {"FalconForCausalLM"};
  testing::write_file(dir / "config.json", config.dump());
  expect_error([&] { open_model(dir.path()); }, {"FalconForCausalLM"});
  testing::write_file(dir / "config.json", llama_config().dump());
  expect_error([&] { open_model(dir.path()); }, {"no model.safetensors"});
}

}  // namespace
}  // namespace nibble
