#pragma once
// The hyper-parameters of a Llama-family decoder, filled from a Hugging Face
// config.json or from GGUF metadata, and the generation defaults that ship with it.
#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace nibble {

struct RopeScaling {
  enum class Kind { None, Linear, Llama3, LongRope, Yarn };
  Kind kind = Kind::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  std::int64_t original_max_position_embeddings = 8192;  // llama3, longrope
  // LongRoPE (Phi-3 128k, Phi-3.5; "su" in older configs): each frequency is divided
  // by its short factor while a sequence fits original_max_position_embeddings and
  // by its long factor once it is longer; cos and sin are multiplied by
  // attention_factor (transformers' default: sqrt(1 + ln(max / original) / ln(original))).
  std::vector<double> short_factor, long_factor;  // one per rotated frequency
  double attention_factor = 1.0;
  // YaRN (DeepSeek-V2/V3): frequencies between the beta_fast and beta_slow rotation
  // counts over original_max_position_embeddings blend from unscaled to divided by
  // `factor`; cos and sin are multiplied by attention_factor (from mscale /
  // mscale_all_dim unless given), and MLA's softmax scale by mscale(factor,
  // mscale_all_dim)^2, as transformers computes them.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0: unset
  double mscale_all_dim = 0.0;  // 0: unset
  bool truncate = true;         // the correction range rounded outwards to whole dimensions
};

// 0.1 * m * ln(scale) + 1 for scale > 1, else 1: YaRN's magnitude correction
// (transformers' yarn_get_mscale / get_mscale).
double yarn_mscale(double scale, double m);

// Multi-head latent attention (DeepSeek-V2/V3): queries through an optional
// low-rank q_a/q_b pair, keys and values through one shared latent per token:
// kv_lora_rank compressed features plus qk_rope_head_dim rotary key features that
// every head shares. The KV cache holds only that latent.
struct MlaConfig {
  std::int64_t q_lora_rank = 0;  // 0: a plain q_proj (q_lora_rank null, DeepSeek-V2-Lite)
  std::int64_t kv_lora_rank = 0;
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  // The rotary features turn in adjacent pairs (DeepSeek's layout: V2 always, V3
  // unless rope_interleave is false) rather than rotate-half.
  bool rope_interleave = true;

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // One cached row per token and layer: [c_kv ; k_rope] (576 for DeepSeek-V3).
  std::int64_t latent_width() const { return kv_lora_rank + qk_rope_head_dim; }
};

// A mixture-of-experts layer's routing: how each token picks experts and weighs
// their outputs (engine/blocks/moe_router.h computes it).
struct MoeConfig {
  // How router logits become scores: Mixtral and Qwen take a softmax over every
  // expert; DeepSeek-V3 a sigmoid per expert, with e_score_correction_bias added
  // for the choice only.
  enum class Scoring : std::uint8_t { Softmax, Sigmoid };
  std::int64_t num_experts = 0;         // 0: a dense model
  std::int64_t experts_per_token = 0;   // top-k
  std::int64_t expert_intermediate_size = 0;
  std::int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool shared_expert_gate = false;  // sigmoid(shared_expert_gate(x)) scales the shared expert (Qwen2-MoE)
  bool norm_topk_prob = false;      // the chosen experts' weights renormalized to sum to one
  Scoring scoring = Scoring::Softmax;
  // Group-limited choice (DeepSeek): experts in n_group groups, only the topk_group
  // best groups (each scored by its two best experts) may be chosen. 1 / 1: none.
  std::int64_t n_group = 1;
  std::int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;  // multiplies the routed experts' weights
  // Per layer, whether its MLP is a MoE block (Qwen's mlp_only_layers and
  // decoder_sparse_step; DeepSeek's first_k_dense_replace); empty: every layer.
  std::vector<bool> sparse_layers;

  // Expert parallelism (loader/tensor_shard.h): this model holds and runs only the
  // routed experts [first_held_expert(), + held_experts()), the rank's contiguous
  // num_experts / expert_parallel_size of them. The router still scores all
  // num_experts, so every rank routes every token alike. 1 / 0: every expert.
  std::int64_t expert_parallel_size = 1;
  std::int64_t expert_parallel_rank = 0;

  bool enabled() const { return num_experts > 0; }
  std::int64_t held_experts() const { return num_experts / expert_parallel_size; }
  std::int64_t first_held_expert() const { return expert_parallel_rank * held_experts(); }
  bool holds_expert(std::int64_t expert) const {
    return expert >= first_held_expert() && expert < first_held_expert() + held_experts();
  }
  bool sparse_layer(std::int64_t layer) const {
    return enabled() && (sparse_layers.empty() || sparse_layers[static_cast<std::size_t>(layer)]);
  }
};

// The longest context a config may declare (2^30 positions; the longest real ones
// have about 10M). Larger values are corrupt files, and would overflow KV sizing.
inline constexpr std::int64_t kMaxContextLength = std::int64_t{1} << 30;

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", ... (loader/architecture.h)
  std::string model_type;    // "llama", "mistral", "qwen2"
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  // Partial rotary embeddings (Phi-4-mini's partial_rotary_factor): only the first
  // rotary_dim features of each head rotate. Unset: all of them.
  std::optional<std::int64_t> rotary_dim;
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  std::optional<std::int64_t> sliding_window;
  // Per layer, whether it attends through sliding_window (Gemma's interleaved
  // local/global layers); empty: every layer does when sliding_window is set.
  std::vector<bool> sliding_layers;
  // The sliding layers' own rope base and scaling, where they differ from the
  // others' (Gemma 3's rope_local_base_freq, unscaled); unset: the same rope.
  std::optional<double> local_rope_theta;
  RopeScaling local_rope_scaling;
  // Attention scores are scaled by query_pre_attn_scalar^-1/2 (Gemma) instead of
  // head_dim^-1/2.
  std::optional<double> query_pre_attn_scalar;
  // > 0: tanh soft-capping of attention scores / final logits (Gemma 2).
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;
  std::optional<std::int32_t> bos_token_id;
  std::vector<std::int32_t> eos_token_ids;
  std::string torch_dtype;
  MoeConfig moe;  // num_experts 0: every layer has a dense MLP
  // Set for DeepSeek-V2/V3: attention is MLA. head_dim is then the query/key head
  // width (qk_nope + qk_rope), rotary_dim qk_rope and num_kv_heads num_heads.
  std::optional<MlaConfig> mla;
  // Decoder layers past num_layers the checkpoint also holds (DeepSeek-V3's
  // multi-token-prediction module, num_nextn_predict_layers): not run, not loaded.
  std::int64_t extra_predict_layers = 0;

  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }
  std::int64_t rope_dim() const { return rotary_dim.value_or(head_dim); }
  // The width of one layer's attention output before o_proj (MLA: heads x v_head_dim).
  std::int64_t attention_output_dim() const { return mla ? num_heads * mla->v_head_dim : q_dim(); }
  // The widest gated-MLP intermediate any layer runs (dense, routed or shared expert).
  std::int64_t widest_ffn() const;
  // Whether layer `layer` attends through the sliding window.
  bool sliding_layer(std::int64_t layer) const {
    return sliding_window && (sliding_layers.empty() || sliding_layers[static_cast<std::size_t>(layer)]);
  }
  // Checks internal consistency (sizes in range, heads divide evenly, products
  // that fit 64 bits, finite rope and norm constants); throws nibble::Error.
  void validate() const;
};

// [rows (output features), cols (input features)] of the weight of module `module`
// ("model.layers.3.mlp.up_proj", "lm_head", "model.embed_tokens") as the config
// implies it; nullopt for names it does not know. Quantized readers check stored
// shapes against it so a mis-shaped tensor is reported by name, not mis-read.
std::optional<std::array<std::int64_t, 2>> linear_module_shape(const ModelConfig& config, const std::string& module);

// Throws nibble::Error for unsupported architectures and missing or mistyped fields.
ModelConfig parse_hf_config(const nlohmann::json& config);
nlohmann::json to_hf_config(const ModelConfig& config);

// Defaults for sampling from generation_config.json (absent fields stay unset).
struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<std::int64_t> top_k;
  std::optional<double> repetition_penalty;
  std::optional<std::int64_t> max_new_tokens;
  std::optional<bool> do_sample;
  std::vector<std::int32_t> eos_token_ids;
};
GenerationDefaults parse_generation_config(const nlohmann::json& config);

}  // namespace nibble
