#include "loader/model_config.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/whole_number.h"
#include "loader/architecture.h"

namespace nibble {
namespace {

using json = nlohmann::json;

template <typename T>
T read(const json& value, const char* key) {
  if constexpr (std::is_same_v<T, std::int64_t>) {
    // nlohmann converts 1e30 or 2^64-1 to int64 without a word (undefined
    // behaviour for the first); only whole numbers that fit are sizes.
    if (value.is_number_unsigned() && value.get<std::uint64_t>() > std::uint64_t{1} << 62) {
      fail("config.json: field '{}' is out of range ({})", key, value.dump());
    }
    if (value.is_number_float()) {
      const auto whole = whole_int64(value.get<double>());
      if (!whole || *whole > std::int64_t{1} << 62 || *whole < -(std::int64_t{1} << 62)) {
        fail("config.json: field '{}' must be an integer ({})", key, value.get<double>());
      }
      return *whole;
    }
  }
  try {
    return value.get<T>();
  } catch (const json::exception&) {
    fail("config.json: field '{}' has the wrong type ({})", key, value.dump());
  }
}

template <typename T>
T required(const json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) fail("config.json: missing required field '{}'", key);
  return read<T>(config[key], key);
}

template <typename T>
T optional_or(const json& config, const char* key, T fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  return read<T>(config[key], key);
}

std::vector<std::int32_t> token_id_list(const json& value, const char* key) {
  std::vector<std::int32_t> ids;
  if (value.is_null()) return ids;
  if (value.is_number_integer()) {
    ids.push_back(value.get<std::int32_t>());
  } else if (value.is_array()) {
    for (const auto& id : value) {
      if (!id.is_number_integer()) fail("'{}' holds a non-integer token id", key);
      ids.push_back(id.get<std::int32_t>());
    }
  } else {
    fail("'{}' must be a token id or a list of them", key);
  }
  return ids;
}

std::vector<double> number_list(const json& value, const char* key) {
  if (!value.is_array()) fail("config.json: rope_scaling {} must be a list of numbers", key);
  std::vector<double> out;
  for (const auto& x : value) {
    if (!x.is_number()) fail("config.json: rope_scaling {} must be a list of numbers", key);
    out.push_back(x.get<double>());
  }
  return out;
}

// LongRoPE as transformers' _compute_longrope_parameters reads it: Phi-3 keeps the
// pretraining context at the top level (winning over rope_scaling's copy), the
// factor defaults to max / original and the attention factor to the paper's.
void parse_longrope(const json& value, const json& config, std::int64_t max_position_embeddings, RopeScaling& scaling) {
  scaling.kind = RopeScaling::Kind::LongRope;
  scaling.short_factor = number_list(value.value("short_factor", json()), "short_factor");
  scaling.long_factor = number_list(value.value("long_factor", json()), "long_factor");
  scaling.original_max_position_embeddings =
      config.contains("original_max_position_embeddings") && !config["original_max_position_embeddings"].is_null()
          ? required<std::int64_t>(config, "original_max_position_embeddings")
          : optional_or<std::int64_t>(value, "original_max_position_embeddings", max_position_embeddings);
  if (scaling.original_max_position_embeddings <= 0) {
    fail("config.json: original_max_position_embeddings must be positive");
  }
  const double factor = value.contains("factor") && !value["factor"].is_null()
                            ? required<double>(value, "factor")
                            : static_cast<double>(max_position_embeddings) /
                                  static_cast<double>(scaling.original_max_position_embeddings);
  scaling.factor = 1.0;  // LongRoPE scales by its factor lists; `factor` only sets the attention factor
  scaling.attention_factor =
      value.contains("attention_factor") && !value["attention_factor"].is_null()
          ? required<double>(value, "attention_factor")
      : factor <= 1.0 ? 1.0
                      : std::sqrt(1 + std::log(factor) /
                                          std::log(static_cast<double>(scaling.original_max_position_embeddings)));
}

// YaRN as transformers' _compute_yarn_parameters reads it: the factor defaults to
// max / original, beta_fast / beta_slow to 32 / 1 (also when 0 or null), and the
// attention factor, unless given, is mscale(factor, mscale) / mscale(factor,
// mscale_all_dim) when both are set, else mscale(factor, 1).
void parse_yarn(const json& value, std::int64_t max_position_embeddings, RopeScaling& scaling) {
  scaling.kind = RopeScaling::Kind::Yarn;
  scaling.original_max_position_embeddings = required<std::int64_t>(value, "original_max_position_embeddings");
  if (scaling.original_max_position_embeddings <= 0) {
    fail("config.json: rope_scaling original_max_position_embeddings must be positive");
  }
  if (!value.contains("factor") || value["factor"].is_null()) {
    scaling.factor = static_cast<double>(max_position_embeddings) /
                     static_cast<double>(scaling.original_max_position_embeddings);
  }
  const auto nonzero_or = [&](const char* key, double fallback) {
    const double x = optional_or<double>(value, key, 0.0);
    return x != 0.0 ? x : fallback;
  };
  scaling.beta_fast = nonzero_or("beta_fast", 32.0);
  scaling.beta_slow = nonzero_or("beta_slow", 1.0);
  scaling.mscale = optional_or<double>(value, "mscale", 0.0);
  scaling.mscale_all_dim = optional_or<double>(value, "mscale_all_dim", 0.0);
  scaling.truncate = optional_or<bool>(value, "truncate", true);
  if (value.contains("attention_factor") && !value["attention_factor"].is_null()) {
    scaling.attention_factor = required<double>(value, "attention_factor");
  } else if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0) {
    scaling.attention_factor =
        yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim);
  } else {
    scaling.attention_factor = yarn_mscale(scaling.factor, 1.0);
  }
}

RopeScaling parse_rope_scaling(const json& value, const json& config, std::int64_t max_position_embeddings) {
  RopeScaling scaling;
  if (value.is_null()) return scaling;
  if (!value.is_object()) fail("config.json: rope_scaling must be an object");
  const auto type = value.contains("rope_type") ? value["rope_type"] : value.value("type", json("default"));
  if (!type.is_string()) fail("config.json: rope_scaling needs a rope_type");
  const auto name = type.get<std::string>();
  scaling.factor = optional_or<double>(value, "factor", 1.0);
  if (name == "default") {
    scaling.kind = RopeScaling::Kind::None;
  } else if (name == "linear") {
    scaling.kind = RopeScaling::Kind::Linear;
  } else if (name == "llama3") {
    scaling.kind = RopeScaling::Kind::Llama3;
    scaling.low_freq_factor = required<double>(value, "low_freq_factor");
    scaling.high_freq_factor = required<double>(value, "high_freq_factor");
    scaling.original_max_position_embeddings = required<std::int64_t>(value, "original_max_position_embeddings");
  } else if (name == "longrope" || name == "su") {  // "su": the name in Phi-3's first configs
    parse_longrope(value, config, max_position_embeddings, scaling);
  } else if (name == "yarn") {
    parse_yarn(value, max_position_embeddings, scaling);
  } else {
    fail("config.json: rope_scaling type '{}' is not supported (supported: default, linear, llama3, longrope, yarn)",
         name);
  }
  if (scaling.factor <= 0) fail("config.json: rope_scaling factor must be positive");
  return scaling;
}

json rope_scaling_json(const RopeScaling& scaling) {
  switch (scaling.kind) {
    case RopeScaling::Kind::None:
      break;
    case RopeScaling::Kind::Linear:
      return {{"rope_type", "linear"}, {"factor", scaling.factor}};
    case RopeScaling::Kind::Llama3:
      return {{"rope_type", "llama3"},
              {"factor", scaling.factor},
              {"low_freq_factor", scaling.low_freq_factor},
              {"high_freq_factor", scaling.high_freq_factor},
              {"original_max_position_embeddings", scaling.original_max_position_embeddings}};
    case RopeScaling::Kind::Yarn:
      return {{"rope_type", "yarn"},
              {"factor", scaling.factor},
              {"original_max_position_embeddings", scaling.original_max_position_embeddings},
              {"beta_fast", scaling.beta_fast},
              {"beta_slow", scaling.beta_slow},
              {"mscale", scaling.mscale},
              {"mscale_all_dim", scaling.mscale_all_dim},
              {"attention_factor", scaling.attention_factor},
              {"truncate", scaling.truncate}};
    case RopeScaling::Kind::LongRope:
      return {{"rope_type", "longrope"},
              {"short_factor", scaling.short_factor},
              {"long_factor", scaling.long_factor},
              {"attention_factor", scaling.attention_factor},
              {"original_max_position_embeddings", scaling.original_max_position_embeddings}};
  }
  return {{"rope_type", "default"}};
}

// DeepSeek-V2/V3's MoE settings. A layer is sparse from first_k_dense_replace on,
// every moe_layer_freq-th (DeepSeek's own modeling code; transformers assumes 1).
// The shared experts are one gated MLP n_shared_experts x moe_intermediate_size
// wide, added without a gate. V3 scores by sigmoid with a correction bias
// (noaux_tc), V2 by softmax, group-limited only with topk_method group_limited_greedy.
void parse_deepseek_moe(const json& config, ModelConfig& out) {
  MoeConfig& moe = out.moe;
  const bool v3 = out.model_type == "deepseek_v3";
  moe.num_experts = optional_or<std::int64_t>(config, "n_routed_experts", 0);
  if (moe.num_experts == 0) return;  // a dense DeepSeek
  moe.experts_per_token = required<std::int64_t>(config, "num_experts_per_tok");
  moe.expert_intermediate_size = required<std::int64_t>(config, "moe_intermediate_size");
  const std::int64_t shared = optional_or<std::int64_t>(config, "n_shared_experts", 0);
  if (shared < 0 || shared > 64) fail("config.json: n_shared_experts must be between 0 and 64 (got {})", shared);
  moe.shared_expert_intermediate_size = shared * moe.expert_intermediate_size;
  moe.shared_expert_gate = false;
  moe.norm_topk_prob = optional_or<bool>(config, "norm_topk_prob", v3);
  moe.routed_scaling_factor = optional_or<double>(config, "routed_scaling_factor", v3 ? 2.5 : 1.0);
  const auto scoring = optional_or<std::string>(config, "scoring_func", v3 ? "sigmoid" : "softmax");
  if (scoring == "sigmoid") {
    moe.scoring = MoeConfig::Scoring::Sigmoid;
  } else if (scoring == "softmax") {
    moe.scoring = MoeConfig::Scoring::Softmax;
  } else {
    fail("config.json: scoring_func '{}' is not supported (softmax, sigmoid)", scoring);
  }
  const auto method = optional_or<std::string>(config, "topk_method", v3 ? "noaux_tc" : "greedy");
  if (method == "greedy") {
    moe.n_group = moe.topk_group = 1;
  } else if (method == "group_limited_greedy" || method == "noaux_tc") {
    moe.n_group = optional_or<std::int64_t>(config, "n_group", 1);
    moe.topk_group = optional_or<std::int64_t>(config, "topk_group", 1);
  } else {
    fail("config.json: topk_method '{}' is not supported (greedy, group_limited_greedy, noaux_tc)", method);
  }
  // The router rule MoeRouter applies follows the scoring: a sigmoid group is scored
  // by its two best experts (noaux_tc), a softmax group by its best (V2).
  if ((method == "noaux_tc") != (moe.scoring == MoeConfig::Scoring::Sigmoid)) {
    fail("config.json: topk_method '{}' with scoring_func '{}' is not a DeepSeek routing nibble runs", method, scoring);
  }
  const std::int64_t first_dense = optional_or<std::int64_t>(config, "first_k_dense_replace", 0);
  const std::int64_t every = optional_or<std::int64_t>(config, "moe_layer_freq", 1);
  if (first_dense < 0) fail("config.json: first_k_dense_replace must not be negative (got {})", first_dense);
  if (every <= 0) fail("config.json: moe_layer_freq must be positive (got {})", every);
  if (out.num_layers <= 0 || out.num_layers > (std::int64_t{1} << 12)) return;  // validate() names the field
  for (std::int64_t i = 0; i < out.num_layers; ++i) moe.sparse_layers.push_back(i >= first_dense && i % every == 0);
}

// Multi-head latent attention's sizes. The query/key head is qk_nope + qk_rope
// wide (head_dim), only its last qk_rope features rotate (rotary_dim), and every
// head reads the one latent, so num_kv_heads is the head count (what tensor
// parallelism would split). A null q_lora_rank means a plain q_proj.
void parse_mla(const json& config, ModelConfig& out) {
  MlaConfig mla;
  const bool has_q_rank = config.contains("q_lora_rank") && !config["q_lora_rank"].is_null();
  mla.q_lora_rank = has_q_rank ? required<std::int64_t>(config, "q_lora_rank") : 0;
  if (has_q_rank && mla.q_lora_rank <= 0) fail("config.json: q_lora_rank must be positive or null (got {})", mla.q_lora_rank);
  mla.kv_lora_rank = required<std::int64_t>(config, "kv_lora_rank");
  mla.qk_nope_head_dim = required<std::int64_t>(config, "qk_nope_head_dim");
  mla.qk_rope_head_dim = required<std::int64_t>(config, "qk_rope_head_dim");
  mla.v_head_dim = required<std::int64_t>(config, "v_head_dim");
  mla.rope_interleave = out.model_type == "deepseek_v2" || optional_or<bool>(config, "rope_interleave", true);
  out.head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim;
  out.rotary_dim = mla.qk_rope_head_dim;
  out.num_kv_heads = out.num_heads;
  out.mla = mla;
  out.extra_predict_layers = optional_or<std::int64_t>(config, "num_nextn_predict_layers", 0);
  if (out.attention_bias) fail("config.json: attention_bias is not supported with latent attention ({})", out.architecture);
}

// Mixture-of-experts fields, for architectures whose table has a router.
void parse_moe(const json& config, const Architecture& arch, ModelConfig& out) {
  if (!arch.has(TensorRole::Router)) return;
  if (arch.latent_attention) {
    parse_deepseek_moe(config, out);
    return;
  }
  MoeConfig& moe = out.moe;
  // Mixtral says num_local_experts, Qwen MoE num_experts (transformers 5 writes
  // Qwen3-MoE's as num_local_experts too).
  moe.num_experts = config.contains("num_experts") && !config["num_experts"].is_null()
                        ? required<std::int64_t>(config, "num_experts")
                        : required<std::int64_t>(config, "num_local_experts");
  moe.experts_per_token = required<std::int64_t>(config, "num_experts_per_tok");
  moe.expert_intermediate_size = optional_or<std::int64_t>(config, "moe_intermediate_size", out.intermediate_size);
  if (arch.has(TensorRole::SharedGate)) {
    moe.shared_expert_intermediate_size = required<std::int64_t>(config, "shared_expert_intermediate_size");
    moe.shared_expert_gate = arch.has(TensorRole::SharedExpertGate);
  }
  moe.norm_topk_prob = optional_or<bool>(config, "norm_topk_prob", arch.norm_topk_prob_default);
  // Qwen MoE: layer i is sparse unless listed in mlp_only_layers, and only every
  // decoder_sparse_step-th layer is (transformers' Qwen2MoeDecoderLayer).
  const auto dense_layers = optional_or<std::vector<std::int64_t>>(config, "mlp_only_layers", {});
  const std::int64_t step = optional_or<std::int64_t>(config, "decoder_sparse_step", 1);
  if (step <= 0) fail("config.json: decoder_sparse_step must be positive (got {})", step);
  if (dense_layers.empty() && step == 1) return;
  if (out.num_layers <= 0 || out.num_layers > (std::int64_t{1} << 12)) return;  // validate() names the field
  for (std::int64_t i = 0; i < out.num_layers; ++i) {
    moe.sparse_layers.push_back(std::ranges::find(dense_layers, i) == dense_layers.end() && (i + 1) % step == 0);
  }
  for (const std::int64_t layer : dense_layers) {
    if (layer < 0 || layer >= out.num_layers) fail("config.json: mlp_only_layers names layer {} of {}", layer, out.num_layers);
  }
}

}  // namespace

double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

std::int64_t ModelConfig::widest_ffn() const {
  return std::max({intermediate_size, moe.enabled() ? moe.expert_intermediate_size : 0,
                   moe.shared_expert_intermediate_size});
}

void ModelConfig::validate() const {
  // Ranges far beyond any real model (the largest have ~256K vocabularies, 16K
  // hidden sizes, 128 layers, 10M positions) yet small enough that every size the
  // engine and the KV-cache planner compute from them fits 64 bits. A broken or
  // hostile file then fails here, by name, instead of wrapping around later.
  const auto in_range = [](std::int64_t value, std::int64_t high, const char* name) {
    if (value <= 0 || value > high) fail("model config: {} must be between 1 and {} (got {})", name, high, value);
  };
  in_range(vocab_size, std::int64_t{1} << 24, "vocab_size");
  in_range(hidden_size, std::int64_t{1} << 20, "hidden_size");
  in_range(intermediate_size, std::int64_t{1} << 22, "intermediate_size");
  in_range(num_layers, std::int64_t{1} << 12, "num_hidden_layers");
  in_range(num_heads, std::int64_t{1} << 12, "num_attention_heads");
  in_range(num_kv_heads, std::int64_t{1} << 12, "num_key_value_heads");
  in_range(head_dim, std::int64_t{1} << 12, "head_dim");
  in_range(max_position_embeddings, kMaxContextLength, "max_position_embeddings");
  if (num_heads % num_kv_heads != 0) {
    fail("model config: num_attention_heads {} is not a multiple of num_key_value_heads {}", num_heads, num_kv_heads);
  }
  if (head_dim % 2 != 0) fail("model config: head_dim {} must be even for RoPE", head_dim);
  // Weights and the KV cache of one position, in float32, below 2^46 and 2^36 bytes:
  // bounds no machine reaches, so anything above is a corrupt file.
  const double q = static_cast<double>(q_dim()), kv = static_cast<double>(kv_dim());
  const double h = static_cast<double>(hidden_size), f = static_cast<double>(intermediate_size);
  const double experts_ffn = moe.enabled() ? static_cast<double>(moe.num_experts) *
                                                  static_cast<double>(moe.expert_intermediate_size) +
                                              static_cast<double>(moe.shared_expert_intermediate_size)
                                        : 0.0;
  const double parameters = 2 * static_cast<double>(vocab_size) * h +
                            static_cast<double>(num_layers) * (h * (2 * q + 2 * kv) + 3 * h * (f + experts_ffn));
  if (parameters * 4 > 0x1p46) fail("model config: the sizes imply {:.3g} parameters, beyond any real model", parameters);
  if (2 * static_cast<double>(num_layers) * kv * 4 > 0x1p36) {
    fail("model config: {} layers x {} KV features is beyond any real model", num_layers, kv_dim());
  }
  if (!(rms_norm_eps > 0 && rms_norm_eps < 1)) fail("model config: rms_norm_eps must be in (0, 1) (got {})", rms_norm_eps);
  if (!(rope_theta >= 1 && rope_theta <= 1e12)) {
    fail("model config: rope_theta must be between 1 and 1e12 (got {})", rope_theta);
  }
  const RopeScaling& scaling = rope_scaling;
  if (!(scaling.factor > 0 && scaling.factor <= 1e6)) {
    fail("model config: rope_scaling factor must be in (0, 1e6] (got {})", scaling.factor);
  }
  if (scaling.kind == RopeScaling::Kind::Llama3) {
    in_range(scaling.original_max_position_embeddings, kMaxContextLength,
             "rope_scaling original_max_position_embeddings");
    if (!(std::isfinite(scaling.low_freq_factor) && std::isfinite(scaling.high_freq_factor) &&
          scaling.low_freq_factor > 0 && scaling.high_freq_factor > scaling.low_freq_factor)) {
      fail("model config: rope_scaling needs 0 < low_freq_factor < high_freq_factor (got {}, {})",
           scaling.low_freq_factor, scaling.high_freq_factor);
    }
  }
  if (scaling.kind == RopeScaling::Kind::Yarn) {
    in_range(scaling.original_max_position_embeddings, kMaxContextLength,
             "rope_scaling original_max_position_embeddings");
    const auto finite = [](double x) { return std::isfinite(x); };
    if (!(finite(scaling.beta_fast) && finite(scaling.beta_slow) && scaling.beta_fast > 0 && scaling.beta_slow > 0 &&
          finite(scaling.mscale) && finite(scaling.mscale_all_dim) && finite(scaling.attention_factor) &&
          scaling.attention_factor > 0)) {
      fail("model config: yarn needs positive beta_fast, beta_slow and attention factor and finite mscales");
    }
  }
  if (mla) {
    // Each a field of its own, so a broken file is named by the field.
    in_range(mla->kv_lora_rank, std::int64_t{1} << 14, "kv_lora_rank");
    in_range(mla->qk_nope_head_dim, std::int64_t{1} << 12, "qk_nope_head_dim");
    in_range(mla->qk_rope_head_dim, std::int64_t{1} << 12, "qk_rope_head_dim");
    in_range(mla->v_head_dim, std::int64_t{1} << 12, "v_head_dim");
    if (mla->q_lora_rank != 0) in_range(mla->q_lora_rank, std::int64_t{1} << 16, "q_lora_rank");
    if (mla->qk_rope_head_dim % 2 != 0) fail("model config: qk_rope_head_dim {} must be even for RoPE", mla->qk_rope_head_dim);
    if (extra_predict_layers < 0 || extra_predict_layers > 64) {
      fail("model config: num_nextn_predict_layers must be between 0 and 64 (got {})", extra_predict_layers);
    }
  }
  if (rotary_dim && (*rotary_dim <= 0 || *rotary_dim > head_dim || *rotary_dim % 2 != 0)) {
    fail("model config: the rotary width {} must be even and within head_dim {}", *rotary_dim, head_dim);
  }
  if (scaling.kind == RopeScaling::Kind::LongRope) {
    in_range(scaling.original_max_position_embeddings, kMaxContextLength,
             "rope_scaling original_max_position_embeddings");
    const auto frequencies = static_cast<std::size_t>(rope_dim() / 2);
    if (scaling.short_factor.size() != frequencies || scaling.long_factor.size() != frequencies) {
      fail("model config: longrope needs {} short and long factors (rotary width {} / 2), got {} and {}", frequencies,
           rope_dim(), scaling.short_factor.size(), scaling.long_factor.size());
    }
    const auto positive = [](double x) { return std::isfinite(x) && x > 0; };
    if (!std::ranges::all_of(scaling.short_factor, positive) || !std::ranges::all_of(scaling.long_factor, positive) ||
        !positive(scaling.attention_factor)) {
      fail("model config: longrope factors must be finite and positive");
    }
  }
  if (sliding_window) in_range(*sliding_window, kMaxContextLength, "sliding_window");
  if (!sliding_layers.empty() && static_cast<std::int64_t>(sliding_layers.size()) != num_layers) {
    fail("model config: {} layer types for {} layers", sliding_layers.size(), num_layers);
  }
  if (local_rope_theta && !(*local_rope_theta >= 1 && *local_rope_theta <= 1e12)) {
    fail("model config: the sliding layers' rope_theta must be between 1 and 1e12 (got {})", *local_rope_theta);
  }
  if (!(local_rope_scaling.factor > 0 && local_rope_scaling.factor <= 1e6)) {
    fail("model config: the sliding layers' rope_scaling factor must be in (0, 1e6] (got {})", local_rope_scaling.factor);
  }
  if (query_pre_attn_scalar && !(*query_pre_attn_scalar > 0 && *query_pre_attn_scalar <= 1e9)) {
    fail("model config: query_pre_attn_scalar must be in (0, 1e9] (got {})", *query_pre_attn_scalar);
  }
  for (const double cap : {attn_logit_softcapping, final_logit_softcapping}) {
    if (!(cap >= 0 && cap <= 1e9)) fail("model config: a soft-capping value must be in [0, 1e9] (got {})", cap);
  }
  if (moe.enabled()) {
    in_range(moe.num_experts, std::int64_t{1} << 12, "num_experts");
    if (moe.experts_per_token <= 0 || moe.experts_per_token > moe.num_experts) {
      fail("model config: num_experts_per_tok must be between 1 and num_experts {} (got {})", moe.num_experts,
           moe.experts_per_token);
    }
    in_range(moe.expert_intermediate_size, std::int64_t{1} << 22, "moe_intermediate_size");
    if (moe.shared_expert_intermediate_size < 0 || moe.shared_expert_intermediate_size > (std::int64_t{1} << 22)) {
      fail("model config: shared_expert_intermediate_size must be between 0 and {} (got {})", std::int64_t{1} << 22,
           moe.shared_expert_intermediate_size);
    }
    if (moe.n_group <= 0 || moe.num_experts % moe.n_group != 0 || moe.topk_group <= 0 || moe.topk_group > moe.n_group ||
        moe.experts_per_token > moe.topk_group * (moe.num_experts / moe.n_group)) {
      fail("model config: {} experts in n_group {} with topk_group {} cannot give {} experts per token",
           moe.num_experts, moe.n_group, moe.topk_group, moe.experts_per_token);
    }
    if (!(moe.routed_scaling_factor > 0 && moe.routed_scaling_factor <= 1e6)) {
      fail("model config: routed_scaling_factor must be in (0, 1e6] (got {})", moe.routed_scaling_factor);
    }
    if (!moe.sparse_layers.empty() && static_cast<std::int64_t>(moe.sparse_layers.size()) != num_layers) {
      fail("model config: {} sparse-layer flags for {} layers", moe.sparse_layers.size(), num_layers);
    }
  }
}

std::optional<std::array<std::int64_t, 2>> linear_module_shape(const ModelConfig& config, const std::string& module) {
  using Shape = std::array<std::int64_t, 2>;
  const Architecture* arch = find_hf_architecture(config.architecture);
  if (arch == nullptr) return std::nullopt;
  const auto ref = arch->parse_module(module);
  if (!ref) return std::nullopt;
  const std::int64_t d = config.hidden_size;
  switch (ref->role) {
    case TensorRole::TokenEmbedding:
    case TensorRole::LmHead:
      return Shape{config.vocab_size, d};
    case TensorRole::Query:
      return Shape{config.q_dim(), d};
    case TensorRole::Key:
    case TensorRole::Value:
      return Shape{config.kv_dim(), d};
    case TensorRole::AttentionOutput:
      return Shape{d, config.attention_output_dim()};
    case TensorRole::QueryA:
      if (!config.mla) return std::nullopt;
      return Shape{config.mla->q_lora_rank, d};
    case TensorRole::QueryB:
      if (!config.mla) return std::nullopt;
      return Shape{config.q_dim(), config.mla->q_lora_rank};
    case TensorRole::KvA:
      if (!config.mla) return std::nullopt;
      return Shape{config.mla->latent_width(), d};
    case TensorRole::KvB:
      if (!config.mla) return std::nullopt;
      return Shape{config.num_heads * (config.mla->qk_nope_head_dim + config.mla->v_head_dim), config.mla->kv_lora_rank};
    case TensorRole::Gate:
    case TensorRole::Up:
      return Shape{config.intermediate_size, d};
    case TensorRole::Down:
      return Shape{d, config.intermediate_size};
    case TensorRole::QueryKeyValue:
      return Shape{config.q_dim() + 2 * config.kv_dim(), d};
    case TensorRole::GateUp:
      return Shape{2 * config.intermediate_size, d};
    case TensorRole::Router:
      return Shape{config.moe.num_experts, d};
    case TensorRole::ExpertGate:
    case TensorRole::ExpertUp:
      return Shape{config.moe.expert_intermediate_size, d};
    case TensorRole::ExpertDown:
      return Shape{d, config.moe.expert_intermediate_size};
    case TensorRole::SharedGate:
    case TensorRole::SharedUp:
      return Shape{config.moe.shared_expert_intermediate_size, d};
    case TensorRole::SharedDown:
      return Shape{d, config.moe.shared_expert_intermediate_size};
    case TensorRole::SharedExpertGate:
      return Shape{1, d};
    default:
      return std::nullopt;  // norms are vectors, not linear modules
  }
}

ModelConfig parse_hf_config(const json& config) {
  if (!config.is_object()) fail("config.json: not a JSON object");
  ModelConfig out;
  const auto architectures = optional_or<std::vector<std::string>>(config, "architectures", {});
  const Architecture* arch = nullptr;
  for (const auto& name : architectures) {
    if (const Architecture* known = find_hf_architecture(name)) arch = known;
  }
  if (arch == nullptr && architectures.empty()) arch = find_model_type(optional_or<std::string>(config, "model_type", ""));
  if (arch == nullptr) {
    std::string listed;
    for (const auto& name : architectures) listed += (listed.empty() ? "" : ", ") + name;
    fail("config.json: unsupported architecture '{}' (supported: {})",
         listed.empty() ? optional_or<std::string>(config, "model_type", "<none>") : listed,
         supported_hf_architectures());
  }
  out.architecture = std::string(arch->hf_architecture);
  out.model_type = std::string(arch->model_type);
  out.vocab_size = required<std::int64_t>(config, "vocab_size");
  out.hidden_size = required<std::int64_t>(config, "hidden_size");
  out.intermediate_size = required<std::int64_t>(config, "intermediate_size");
  out.num_layers = required<std::int64_t>(config, "num_hidden_layers");
  out.num_heads = required<std::int64_t>(config, "num_attention_heads");
  out.num_kv_heads = optional_or<std::int64_t>(config, "num_key_value_heads", out.num_heads);
  out.head_dim = optional_or<std::int64_t>(config, "head_dim", out.num_heads > 0 ? out.hidden_size / out.num_heads : 0);
  out.max_position_embeddings = optional_or<std::int64_t>(config, "max_position_embeddings", 2048);
  out.rms_norm_eps = optional_or<double>(config, "rms_norm_eps", 1e-6);
  const bool gemma2 = out.model_type == "gemma2", gemma3 = out.model_type == "gemma3_text";
  // transformers 5 writes rope settings (theta included) under rope_parameters,
  // for Gemma 3 one entry per layer type; earlier versions use top-level
  // rope_theta and rope_scaling (and Gemma 3's rope_local_base_freq).
  json rope_parameters = config.value("rope_parameters", json());
  if (!rope_parameters.is_null() && !rope_parameters.is_object()) fail("config.json: rope_parameters must be an object");
  json local_rope_parameters;
  if (rope_parameters.contains("full_attention") || rope_parameters.contains("sliding_attention")) {
    local_rope_parameters = rope_parameters.value("sliding_attention", json());
    rope_parameters = rope_parameters.value("full_attention", json());
    if (!(rope_parameters.is_null() || rope_parameters.is_object()) ||
        !(local_rope_parameters.is_null() || local_rope_parameters.is_object())) {
      fail("config.json: rope_parameters' per-layer-type entries must be objects");
    }
  }
  // transformers' defaults where a config leaves the bases out (Gemma 3: 1M global, 10K local).
  const double default_theta = gemma3 ? 1'000'000.0 : 10000.0;
  out.rope_theta = rope_parameters.contains("rope_theta") ? required<double>(rope_parameters, "rope_theta")
                                                          : optional_or<double>(config, "rope_theta", default_theta);
  out.rope_scaling = parse_rope_scaling(config.contains("rope_scaling") && !config["rope_scaling"].is_null()
                                            ? config["rope_scaling"]
                                            : rope_parameters,
                                        config, out.max_position_embeddings);
  // Partial rotary embeddings: top level in older configs, in rope_parameters in
  // transformers 5; the rotated width is int(head_dim * factor), as transformers takes it.
  const double partial_rotary_factor =
      rope_parameters.contains("partial_rotary_factor")
          ? required<double>(rope_parameters, "partial_rotary_factor")
          : optional_or<double>(config, "partial_rotary_factor", 1.0);
  if (!(partial_rotary_factor > 0 && partial_rotary_factor <= 1)) {
    fail("config.json: partial_rotary_factor must be in (0, 1] (got {})", partial_rotary_factor);
  }
  if (partial_rotary_factor < 1) {
    out.rotary_dim = static_cast<std::int64_t>(static_cast<double>(out.head_dim) * partial_rotary_factor);
  }
  if (local_rope_parameters.is_object()) {
    out.local_rope_theta = local_rope_parameters.contains("rope_theta")
                               ? required<double>(local_rope_parameters, "rope_theta")
                               : optional_or<double>(config, "rope_local_base_freq", 10000.0);
    out.local_rope_scaling = parse_rope_scaling(local_rope_parameters, config, out.max_position_embeddings);
  } else if (gemma3) {
    out.local_rope_theta = optional_or<double>(config, "rope_local_base_freq", 10000.0);
  }
  out.tie_word_embeddings = optional_or<bool>(config, "tie_word_embeddings", false);
  out.attention_bias = optional_or<bool>(config, "attention_bias", arch->attention_bias);
  if (config.contains("sliding_window") && !config["sliding_window"].is_null()) {
    const bool enabled = !arch->sliding_window_needs_flag || optional_or<bool>(config, "use_sliding_window", false);
    if (enabled) out.sliding_window = required<std::int64_t>(config, "sliding_window");
  }
  if ((gemma2 || gemma3) && !out.sliding_window) {
    out.sliding_window = optional_or<std::int64_t>(config, "sliding_window", 4096);  // transformers' default
  }
  // Per-layer attention kinds (transformers 5 writes them; Gemma's older configs
  // imply them: every other layer local in Gemma 2, five local to one global in
  // Gemma 3 by sliding_window_pattern).
  auto layer_types = optional_or<std::vector<std::string>>(config, "layer_types", {});
  if (layer_types.empty() && (gemma2 || gemma3)) {
    const std::int64_t pattern =
        gemma2 ? 2
               : optional_or<std::int64_t>(config, "sliding_window_pattern",
                                           optional_or<std::int64_t>(config, "_sliding_window_pattern", 6));
    if (pattern <= 0) fail("config.json: sliding_window_pattern must be positive");
    for (std::int64_t i = 0; i < out.num_layers; ++i) {
      layer_types.emplace_back((i + 1) % pattern != 0 ? "sliding_attention" : "full_attention");
    }
  }
  if (!layer_types.empty()) {
    if (static_cast<std::int64_t>(layer_types.size()) != out.num_layers) {
      fail("config.json: layer_types lists {} layers, num_hidden_layers is {}", layer_types.size(), out.num_layers);
    }
    for (const auto& kind : layer_types) {
      const bool sliding = kind == "sliding_attention";
      if (kind != "full_attention" && !sliding) fail("config.json: layer type '{}' is not supported", kind);
      if (sliding && !out.sliding_window) fail("config.json: layer_types has sliding layers but no sliding_window");
      out.sliding_layers.push_back(sliding);
    }
  }
  if (gemma2 || gemma3) {
    out.query_pre_attn_scalar = optional_or<double>(config, "query_pre_attn_scalar", 256.0);
    // Gemma 2's defaults are 50 / 30; an explicit null switches capping off.
    const auto cap = [&](const char* key, double fallback) {
      if (!config.contains(key)) return fallback;
      return config[key].is_null() ? 0.0 : read<double>(config[key], key);
    };
    out.attn_logit_softcapping = cap("attn_logit_softcapping", gemma2 ? 50.0 : 0.0);
    out.final_logit_softcapping = cap("final_logit_softcapping", gemma2 ? 30.0 : 0.0);
  }
  const auto activation = optional_or<std::string>(config, "hidden_activation", optional_or<std::string>(config, "hidden_act", ""));
  // Gemma runs GELU's tanh approximation only; a config asking for exact GELU is another model.
  if (arch->activation == MlpActivation::GeluTanh && !activation.empty() && activation != "gelu_pytorch_tanh" &&
      activation != "gelu_tanh") {
    fail("config.json: activation '{}' is not what {} runs", activation, arch->hf_architecture);
  }
  if (config.contains("bos_token_id") && config["bos_token_id"].is_number_integer()) {
    out.bos_token_id = config["bos_token_id"].get<std::int32_t>();
  }
  out.eos_token_ids = token_id_list(config.value("eos_token_id", json()), "eos_token_id");
  out.torch_dtype = optional_or<std::string>(config, "torch_dtype", optional_or<std::string>(config, "dtype", "float32"));
  if (optional_or<bool>(config, "mlp_bias", false)) fail("config.json: mlp_bias is not supported");
  if (arch->latent_attention) parse_mla(config, out);
  parse_moe(config, *arch, out);
  out.validate();
  return out;
}

json to_hf_config(const ModelConfig& config) {
  json out = {
      {"architectures", {config.architecture}},
      {"model_type", config.model_type},
      {"vocab_size", config.vocab_size},
      {"hidden_size", config.hidden_size},
      {"intermediate_size", config.intermediate_size},
      {"num_hidden_layers", config.num_layers},
      {"num_attention_heads", config.num_heads},
      {"num_key_value_heads", config.num_kv_heads},
      {"head_dim", config.head_dim},
      {"max_position_embeddings", config.max_position_embeddings},
      {"rms_norm_eps", config.rms_norm_eps},
      {"rope_theta", config.rope_theta},
      {"tie_word_embeddings", config.tie_word_embeddings},
      {"attention_bias", config.attention_bias},
      {"hidden_act", architecture_of(config.architecture).activation == MlpActivation::GeluTanh ? "gelu_pytorch_tanh"
                                                                                                   : "silu"},
      {"torch_dtype", config.torch_dtype.empty() ? "float32" : config.torch_dtype},
  };
  if (config.bos_token_id) out["bos_token_id"] = *config.bos_token_id;
  if (config.eos_token_ids.size() == 1) out["eos_token_id"] = config.eos_token_ids.front();
  if (config.eos_token_ids.size() > 1) out["eos_token_id"] = config.eos_token_ids;
  if (config.sliding_window) {
    out["sliding_window"] = *config.sliding_window;
    out["use_sliding_window"] = true;  // Qwen2/Qwen3 ignore the window without it
  }
  if (!config.sliding_layers.empty()) {
    json kinds = json::array();
    for (const bool sliding : config.sliding_layers) kinds.push_back(sliding ? "sliding_attention" : "full_attention");
    out["layer_types"] = kinds;
  }
  if (config.rotary_dim) {
    // A factor that int(head_dim * factor) maps back to exactly this width.
    const auto head_dim = static_cast<double>(config.head_dim);
    double factor = static_cast<double>(*config.rotary_dim) / head_dim;
    while (static_cast<std::int64_t>(head_dim * factor) < *config.rotary_dim) factor = std::nextafter(factor, 2.0);
    out["partial_rotary_factor"] = factor;
  }
  if (config.local_rope_theta) {
    json global = rope_scaling_json(config.rope_scaling), local = rope_scaling_json(config.local_rope_scaling);
    global["rope_theta"] = config.rope_theta;
    local["rope_theta"] = *config.local_rope_theta;
    out["rope_parameters"] = {{"full_attention", global}, {"sliding_attention", local}};
  }
  if (config.query_pre_attn_scalar) out["query_pre_attn_scalar"] = *config.query_pre_attn_scalar;
  // Written even when 0 (as null): Gemma 2's defaults are not "none".
  const auto cap = [](double value) { return value > 0 ? json(value) : json(nullptr); };
  if (config.model_type == "gemma2" || config.model_type == "gemma3_text") {
    out["attn_logit_softcapping"] = cap(config.attn_logit_softcapping);
    out["final_logit_softcapping"] = cap(config.final_logit_softcapping);
  }
  if (config.rope_scaling.kind != RopeScaling::Kind::None) out["rope_scaling"] = rope_scaling_json(config.rope_scaling);
  if (config.mla) {
    const MlaConfig& mla = *config.mla;
    out["q_lora_rank"] = mla.q_lora_rank > 0 ? json(mla.q_lora_rank) : json(nullptr);
    out["kv_lora_rank"] = mla.kv_lora_rank;
    out["qk_nope_head_dim"] = mla.qk_nope_head_dim;
    out["qk_rope_head_dim"] = mla.qk_rope_head_dim;
    out["v_head_dim"] = mla.v_head_dim;
    out["rope_interleave"] = mla.rope_interleave;
    out["num_nextn_predict_layers"] = config.extra_predict_layers;
    out.erase("head_dim");
  }
  if (config.mla && config.moe.enabled()) {
    // DeepSeek's names. The sparse layers as first_k_dense_replace and every
    // moe_layer_freq-th layer after it, the only patterns DeepSeek configs express.
    const MoeConfig& moe = config.moe;
    const bool sigmoid = moe.scoring == MoeConfig::Scoring::Sigmoid;
    out["n_routed_experts"] = moe.num_experts;
    out["num_experts_per_tok"] = moe.experts_per_token;
    out["moe_intermediate_size"] = moe.expert_intermediate_size;
    out["n_shared_experts"] = moe.shared_expert_intermediate_size / moe.expert_intermediate_size;
    out["norm_topk_prob"] = moe.norm_topk_prob;
    out["routed_scaling_factor"] = moe.routed_scaling_factor;
    out["scoring_func"] = sigmoid ? "sigmoid" : "softmax";
    out["topk_method"] = sigmoid ? "noaux_tc" : moe.n_group > 1 ? "group_limited_greedy" : "greedy";
    out["n_group"] = moe.n_group;
    out["topk_group"] = moe.topk_group;
    const auto& sparse = moe.sparse_layers;
    const auto next_sparse = [&](std::size_t from) {
      while (from < sparse.size() && !sparse[from]) ++from;
      return from;
    };
    const std::size_t first = sparse.empty() ? 0 : next_sparse(0);
    const std::size_t second = first < sparse.size() ? next_sparse(first + 1) : sparse.size();
    const std::size_t every = second < sparse.size() ? second - first : 1;
    out["first_k_dense_replace"] = first;
    out["moe_layer_freq"] = every;
  } else if (config.moe.enabled()) {
    const MoeConfig& moe = config.moe;
    out[config.model_type == "mixtral" ? "num_local_experts" : "num_experts"] = moe.num_experts;
    out["num_experts_per_tok"] = moe.experts_per_token;
    out["moe_intermediate_size"] = moe.expert_intermediate_size;
    out["norm_topk_prob"] = moe.norm_topk_prob;
    if (moe.shared_expert_intermediate_size > 0) {
      out["shared_expert_intermediate_size"] = moe.shared_expert_intermediate_size;
    }
    if (!moe.sparse_layers.empty()) {
      json dense = json::array();
      for (std::size_t i = 0; i < moe.sparse_layers.size(); ++i) {
        if (!moe.sparse_layers[i]) dense.push_back(i);
      }
      out["mlp_only_layers"] = dense;
    }
  }
  if (config.rope_scaling.kind == RopeScaling::Kind::LongRope) {
    out["original_max_position_embeddings"] = config.rope_scaling.original_max_position_embeddings;
  }
  return out;
}

GenerationDefaults parse_generation_config(const json& config) {
  GenerationDefaults out;
  if (!config.is_object()) fail("generation_config.json: not a JSON object");
  const auto number = [&](const char* key) -> std::optional<double> {
    if (!config.contains(key) || config[key].is_null()) return std::nullopt;
    if (!config[key].is_number()) fail("generation_config.json: '{}' must be a number", key);
    return config[key].get<double>();
  };
  const auto integer = [&](const char* key) -> std::optional<std::int64_t> {
    if (!config.contains(key) || config[key].is_null()) return std::nullopt;
    if (!config[key].is_number_integer()) fail("generation_config.json: '{}' must be an integer", key);
    return config[key].get<std::int64_t>();
  };
  out.temperature = number("temperature");
  out.top_p = number("top_p");
  out.top_k = integer("top_k");
  out.repetition_penalty = number("repetition_penalty");
  out.max_new_tokens = integer("max_new_tokens");
  if (config.contains("do_sample") && config["do_sample"].is_boolean()) out.do_sample = config["do_sample"].get<bool>();
  out.eos_token_ids = token_id_list(config.value("eos_token_id", json()), "eos_token_id");
  return out;
}

}  // namespace nibble
