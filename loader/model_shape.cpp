#include "loader/model_shape.h"

#include <algorithm>
#include <array>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "loader/json_file.h"

namespace nibble {
namespace {

using json = nlohmann::json;

// Reads the integer and boolean fields of one config.json, with errors that name
// the architecture and the field.
class ConfigFields {
 public:
  ConfigFields(const json& config, std::string architecture)
      : config_(config), architecture_(std::move(architecture)) {}

  // A count that must be at least `minimum`; `fallback` when the field is absent or null.
  std::int64_t count(const char* key, std::optional<std::int64_t> fallback = std::nullopt,
                     std::int64_t minimum = 1) const {
    const std::optional<std::int64_t> value = optional_count(key);
    if (!value && !fallback) fail("{} config: missing required field '{}'", architecture_, key);
    const std::int64_t result = value ? *value : *fallback;
    if (result < minimum) fail("{} config: '{}' must be at least {} (got {})", architecture_, key, minimum, result);
    return result;
  }

  std::optional<std::int64_t> optional_count(const char* key) const {
    if (!config_.contains(key) || config_[key].is_null()) return std::nullopt;
    if (!config_[key].is_number_integer()) {
      fail("{} config: field '{}' must be an integer (got {})", architecture_, key, config_[key].dump());
    }
    return config_[key].get<std::int64_t>();
  }

  bool flag(const char* key, bool fallback) const {
    if (!config_.contains(key) || config_[key].is_null()) return fallback;
    if (!config_[key].is_boolean()) {
      fail("{} config: field '{}' must be true or false (got {})", architecture_, key, config_[key].dump());
    }
    return config_[key].get<bool>();
  }

  const std::string& architecture() const { return architecture_; }

 private:
  const json& config_;
  std::string architecture_;
};

// What every architecture states the same way; the rest each reader fills.
struct Dimensions {
  std::string architecture;
  std::int64_t layers, hidden, vocab, heads, kv_heads, max_positions;
  AttentionKind attention = AttentionKind::Grouped;
};

ModelShape shape_with(const Dimensions& d) {
  return {.architecture = d.architecture, .num_layers = d.layers, .hidden_size = d.hidden, .vocab_size = d.vocab,
          .num_attention_heads = d.heads, .num_kv_heads = d.kv_heads, .max_position_embeddings = d.max_positions,
          .attention_kind = d.attention, .parameters = {}, .mtp_parameters = 0, .tp_replicated_parameters = 0,
          .tp_split_widths = {}, .routed_experts = 0, .expert_width = 0, .kv_elements_per_token = 0, .attention_width = 0, .mlp_width = 0};
}

// The Llama family (Llama, Mistral, Qwen2) in the terms both config.json and the
// engine's ModelConfig give it.
struct LlamaDims {
  std::string architecture;
  std::int64_t num_layers, hidden, intermediate, heads, kv_heads, head_dim, vocab, max_positions;
  bool tied_embeddings, qkv_bias;
};

ModelShape llama_family_shape(const LlamaDims& d) {
  if (d.heads % d.kv_heads != 0) {
    fail("{} config: num_attention_heads {} is not a multiple of num_key_value_heads {}", d.architecture, d.heads,
         d.kv_heads);
  }
  const std::int64_t q_dim = d.heads * d.head_dim;
  const std::int64_t kv_dim = d.kv_heads * d.head_dim;
  ModelShape shape = shape_with({.architecture = d.architecture, .layers = d.num_layers, .hidden = d.hidden,
                                 .vocab = d.vocab, .heads = d.heads, .kv_heads = d.kv_heads,
                                 .max_positions = d.max_positions});
  ParameterGroups& p = shape.parameters;
  p.embedding = d.vocab * d.hidden;
  p.lm_head = d.tied_embeddings ? 0 : d.vocab * d.hidden;
  p.attention = d.num_layers * (2 * d.hidden * q_dim + 2 * d.hidden * kv_dim);  // q, o + k, v
  p.dense_mlp = d.num_layers * 3 * d.hidden * d.intermediate;                   // gate, up, down
  const std::int64_t qkv_biases = d.qkv_bias ? q_dim + 2 * kv_dim : 0;
  p.norms_and_biases = d.num_layers * (2 * d.hidden + qkv_biases) + d.hidden;  // 2 RMSNorms a layer + final
  shape.kv_elements_per_token = d.num_layers * 2 * kv_dim;
  shape.attention_width = q_dim + 2 * kv_dim;
  shape.mlp_width = d.intermediate;
  shape.tp_split_widths = {d.intermediate};
  return shape;
}

ModelShape llama_family_from_json(const ConfigFields& f, bool qkv_bias_default) {
  const std::int64_t heads = f.count("num_attention_heads");
  const std::int64_t hidden = f.count("hidden_size");
  return llama_family_shape({.architecture = f.architecture(),
                             .num_layers = f.count("num_hidden_layers"),
                             .hidden = hidden,
                             .intermediate = f.count("intermediate_size"),
                             .heads = heads,
                             .kv_heads = f.count("num_key_value_heads", heads),
                             .head_dim = f.count("head_dim", hidden / heads),
                             .vocab = f.count("vocab_size"),
                             .max_positions = f.count("max_position_embeddings", 2048),
                             .tied_embeddings = f.flag("tie_word_embeddings", false),
                             .qkv_bias = f.flag("attention_bias", qkv_bias_default)});
}

// OPT (GPT-3-shaped): learned positions with an offset of 2, pre-LayerNorm (weight
// and bias), biases on every linear layer, fc1/fc2 without a gate, lm_head tied by
// default, and project_in/out when word_embed_proj_dim differs from hidden_size.
ModelShape opt_from_json(const ConfigFields& f) {
  const std::int64_t layers = f.count("num_hidden_layers");
  const std::int64_t hidden = f.count("hidden_size");
  const std::int64_t ffn = f.count("ffn_dim");
  const std::int64_t vocab = f.count("vocab_size");
  const std::int64_t projection = f.count("word_embed_proj_dim", hidden);
  const std::int64_t positions = f.count("max_position_embeddings", 2048);
  const std::int64_t heads = f.count("num_attention_heads");
  if (hidden % heads != 0) fail("OPTForCausalLM config: hidden_size {} is not a multiple of {} heads", hidden, heads);
  ModelShape shape = shape_with({.architecture = f.architecture(), .layers = layers, .hidden = hidden, .vocab = vocab,
                                 .heads = heads, .kv_heads = heads, .max_positions = positions});
  ParameterGroups& p = shape.parameters;
  const std::int64_t projections = projection == hidden ? 0 : 2 * projection * hidden;
  p.embedding = vocab * projection + (positions + 2) * hidden + projections;
  p.lm_head = f.flag("tie_word_embeddings", true) ? 0 : vocab * projection;
  p.attention = layers * 4 * hidden * hidden;
  p.dense_mlp = layers * 2 * hidden * ffn;
  const std::int64_t biases = f.flag("enable_bias", true) ? 4 * hidden + ffn + hidden : 0;
  const std::int64_t layer_norm = f.flag("layer_norm_elementwise_affine", true) ? 2 * hidden : 0;
  const bool final_norm = f.flag("do_layer_norm_before", true) && !f.flag("_remove_final_layer_norm", false);
  p.norms_and_biases = layers * (biases + 2 * layer_norm) + (final_norm ? layer_norm : 0);
  shape.kv_elements_per_token = layers * 2 * hidden;
  shape.attention_width = 3 * hidden;
  shape.mlp_width = ffn;
  shape.tp_split_widths = {ffn};
  return shape;
}

// DeepSeek-V2/V3: MLA attention (low-rank q, compressed kv latent plus a shared rope key)
// and MoE feed-forward layers after the first `first_k_dense_replace` dense ones.
ModelShape deepseek_from_json(const ConfigFields& f) {
  const std::int64_t layers = f.count("num_hidden_layers");
  const std::int64_t hidden = f.count("hidden_size");
  const std::int64_t vocab = f.count("vocab_size");
  const std::int64_t heads = f.count("num_attention_heads");
  const std::int64_t dense_intermediate = f.count("intermediate_size");
  const std::int64_t routed = f.count("n_routed_experts", 0, 0);
  const std::int64_t expert_intermediate = routed > 0 ? f.count("moe_intermediate_size") : 0;
  const std::int64_t shared = f.count("n_shared_experts", 0, 0);
  const std::int64_t active = routed > 0 ? f.count("num_experts_per_tok") : 0;
  const std::int64_t first_dense = f.count("first_k_dense_replace", 0, 0);
  const std::int64_t moe_every = f.count("moe_layer_freq", 1);
  const std::int64_t kv_rank = f.count("kv_lora_rank");
  const std::optional<std::int64_t> q_rank = f.optional_count("q_lora_rank");  // null: a plain q_proj (V2-Lite)
  if (q_rank && *q_rank < 1) fail("{} config: 'q_lora_rank' must be positive or null", f.architecture());
  const std::int64_t qk_nope = f.count("qk_nope_head_dim");
  const std::int64_t qk_rope = f.count("qk_rope_head_dim");
  const std::int64_t v_dim = f.count("v_head_dim");
  const std::int64_t mtp_layers = f.count("num_nextn_predict_layers", 0, 0);

  const std::int64_t q_width = heads * (qk_nope + qk_rope);
  const std::int64_t attention = (q_rank ? hidden * *q_rank + *q_rank * q_width : hidden * q_width) +
                                 hidden * (kv_rank + qk_rope) +         // kv_a_proj_with_mqa
                                 kv_rank * heads * (qk_nope + v_dim) +  // kv_b_proj
                                 heads * v_dim * hidden;                // o_proj
  const std::int64_t layer_norms = 2 * hidden + kv_rank + q_rank.value_or(0);
  const std::int64_t expert = 3 * hidden * expert_intermediate;
  // Decoder layer `index` (MTP layers continue the numbering, as in the checkpoint).
  const auto add_layer = [&](std::int64_t index, ParameterGroups& p) {
    p.attention += attention;
    p.norms_and_biases += layer_norms;
    if (routed > 0 && index >= first_dense && index % moe_every == 0) {
      p.experts += (routed + shared) * expert;
      // The router, and V3's score-correction bias.
      p.norms_and_biases += routed * hidden + (f.architecture() == "DeepseekV3ForCausalLM" ? routed : 0);
    } else {
      p.dense_mlp += 3 * hidden * dense_intermediate;
    }
  };

  // MLA: every head reads the one latent, so TP splits the attention heads alone.
  ModelShape shape = shape_with({.architecture = f.architecture(), .layers = layers, .hidden = hidden, .vocab = vocab,
                                 .heads = heads, .kv_heads = heads,
                                 .max_positions = f.count("max_position_embeddings", 4096),
                                 .attention = AttentionKind::LatentMla});
  ParameterGroups& p = shape.parameters;
  p.embedding = vocab * hidden;
  p.lm_head = f.flag("tie_word_embeddings", false) ? 0 : vocab * hidden;
  for (std::int64_t layer = 0; layer < layers; ++layer) add_layer(layer, p);
  p.norms_and_biases += hidden;  // final norm
  ParameterGroups mtp;
  for (std::int64_t layer = layers; layer < layers + mtp_layers; ++layer) {
    add_layer(layer, mtp);
    // enorm, hnorm, shared_head.norm; eh_proj; the checkpoint's own embedding and head
    mtp.norms_and_biases += 3 * hidden;
    mtp.attention += 2 * hidden * hidden;
    mtp.embedding += 2 * vocab * hidden;
  }
  shape.mtp_parameters = mtp.total();
  shape.tp_replicated_parameters = layers * ((q_rank ? hidden * *q_rank : 0) + hidden * (kv_rank + qk_rope));
  // The one cached latent row a token and layer (MlaConfig::latent_width(), what the engine's cache holds).
  shape.kv_elements_per_token = layers * (kv_rank + qk_rope);
  shape.attention_width = q_width + kv_rank + qk_rope + heads * (qk_nope + v_dim);
  shape.mlp_width = std::max(dense_intermediate, (active + shared) * expert_intermediate);
  if (routed == 0 || first_dense > 0 || moe_every > 1) shape.tp_split_widths.push_back(dense_intermediate);
  if (routed > 0 && shared > 0) shape.tp_split_widths.push_back(shared * expert_intermediate);
  if (routed > 0) {
    shape.routed_experts = routed;
    shape.expert_width = expert_intermediate;
  }
  return shape;
}

enum class Family { Llama, Qwen2, Opt, Deepseek, EngineMoe };

struct Supported {
  std::string_view architecture;
  std::string_view model_type;
  Family family;
};

constexpr std::array kSupported{
    Supported{"LlamaForCausalLM", "llama", Family::Llama},
    Supported{"MistralForCausalLM", "mistral", Family::Llama},
    Supported{"Qwen2ForCausalLM", "qwen2", Family::Qwen2},
    // Qwen3's per-head q/k norms (2 x head_dim a layer) are left out of the norm count.
    Supported{"Qwen3ForCausalLM", "qwen3", Family::Llama},
    Supported{"Phi3ForCausalLM", "phi3", Family::Llama},  // fused qkv/gate_up: the same parameters
    Supported{"OPTForCausalLM", "opt", Family::Opt},
    Supported{"DeepseekV3ForCausalLM", "deepseek_v3", Family::Deepseek},
    Supported{"DeepseekV2ForCausalLM", "deepseek_v2", Family::Deepseek},
    // The MoE families the engine runs: sized from the engine's own config parser.
    Supported{"MixtralForCausalLM", "mixtral", Family::EngineMoe},
    Supported{"Qwen2MoeForCausalLM", "qwen2_moe", Family::EngineMoe},
    Supported{"Qwen3MoeForCausalLM", "qwen3_moe", Family::EngineMoe},
};

// The first of config.json's `architectures` we know, else its `model_type`.
const Supported& find_architecture(const json& config) {
  std::string named;
  if (config.contains("architectures") && config["architectures"].is_array()) {
    for (const auto& name : config["architectures"]) {
      if (!name.is_string()) continue;
      for (const auto& known : kSupported) {
        if (known.architecture == name.get<std::string>()) return known;
      }
      named += (named.empty() ? "" : ", ") + name.get<std::string>();
    }
  }
  const std::string model_type = config.contains("model_type") && config["model_type"].is_string()
                                     ? config["model_type"].get<std::string>()
                                     : "";
  for (const auto& known : kSupported) {
    if (named.empty() && known.model_type == model_type) return known;
  }
  std::string supported;
  for (const auto& known : kSupported) supported += (supported.empty() ? "" : ", ") + std::string(known.architecture);
  fail("architecture '{}' is not supported by the memory planner (supported: {})",
       named.empty() ? (model_type.empty() ? "<none>" : model_type) : named, supported);
}

}  // namespace

ModelShape model_shape_from_hf_config(const json& config) {
  if (!config.is_object()) fail("config.json is not a JSON object");
  const Supported& arch = find_architecture(config);
  const ConfigFields fields(config, std::string(arch.architecture));
  switch (arch.family) {
    case Family::Llama: return llama_family_from_json(fields, false);
    case Family::Qwen2: return llama_family_from_json(fields, true);
    case Family::Opt: return opt_from_json(fields);
    case Family::Deepseek: return deepseek_from_json(fields);
    case Family::EngineMoe: return model_shape_from_config(parse_hf_config(config));
  }
  fail("unreachable architecture family");
}

ModelShape read_model_shape(const std::filesystem::path& path) {
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  const json config = read_json_file(file);
  try {
    return model_shape_from_hf_config(config);
  } catch (const Error& e) {
    fail("{}: {}", file.string(), e.what());
  }
}

ModelShape model_shape_from_config(const ModelConfig& config) {
  // DeepSeek: sized from its config.json fields, which the config writes back exactly.
  if (config.mla) return model_shape_from_hf_config(to_hf_config(config));
  ModelShape shape = llama_family_shape({.architecture = config.architecture,
                             .num_layers = config.num_layers,
                             .hidden = config.hidden_size,
                             .intermediate = config.intermediate_size,
                             .heads = config.num_heads,
                             .kv_heads = config.num_kv_heads,
                             .head_dim = config.head_dim,
                             .vocab = config.vocab_size,
                             .max_positions = config.max_position_embeddings,
                             .tied_embeddings = config.tie_word_embeddings,
                             .qkv_bias = config.attention_bias});
  const MoeConfig& moe = config.moe;
  if (!moe.enabled()) return shape;
  // Sparse layers trade the dense MLP for the routed and shared experts, a router
  // [experts, hidden] and (Qwen2-MoE) the shared expert's gate [1, hidden].
  ParameterGroups& p = shape.parameters;
  const std::int64_t h = config.hidden_size;
  const std::int64_t per_layer_experts = 3 * h * (moe.num_experts * moe.expert_intermediate_size +
                                                  moe.shared_expert_intermediate_size);
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (!moe.sparse_layer(layer)) continue;
    p.dense_mlp -= 3 * h * config.intermediate_size;
    p.experts += per_layer_experts;
    p.norms_and_biases += moe.num_experts * h + (moe.shared_expert_gate ? h : 0);
  }
  shape.mlp_width = std::max(config.intermediate_size, moe.experts_per_token * moe.expert_intermediate_size +
                                                           moe.shared_expert_intermediate_size);
  shape.routed_experts = moe.num_experts;
  shape.expert_width = moe.expert_intermediate_size;
  shape.tp_split_widths.clear();
  if (moe.shared_expert_intermediate_size > 0) shape.tp_split_widths.push_back(moe.shared_expert_intermediate_size);
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (moe.sparse_layer(layer)) continue;
    shape.tp_split_widths.push_back(config.intermediate_size);
    break;
  }
  return shape;
}

}  // namespace nibble
