#include "loader/gguf_mla.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"

namespace nibble {
namespace {

// YaRN as llama.cpp's deepseek2 converter writes it, read back into transformers'
// terms. The converter stores 0.1 * mscale_all_dim as yarn_log_multiplier and drops
// mscale; llama.cpp then runs every deepseek2 file as if mscale == mscale_all_dim
// (its cos/sin factor is 1 and its softmax scale mscale(factor, mscale_all_dim)^2,
// as transformers computes for the published configs, where the two are equal), so
// that is the model the file describes. An explicit attention factor
// (rope.scaling.yarn_attn_factor, transformers' attention_factor) is kept.
RopeScaling deepseek_yarn(const GgufFile& gguf, const std::string& prefix) {
  const std::string where = gguf.path().string();
  const std::string type = gguf.find_string(prefix + "rope.scaling.type").value_or("none");
  if (type == "none") return {};
  if (type != "yarn") fail("{}: deepseek2 rope scaling type '{}' is not supported (none, yarn)", where, type);
  RopeScaling scaling;
  scaling.kind = RopeScaling::Kind::Yarn;
  scaling.factor = gguf.get_float(prefix + "rope.scaling.factor");
  if (!(scaling.factor > 0)) fail("{}: {}rope.scaling.factor must be positive", where, prefix);
  scaling.original_max_position_embeddings = gguf.get_int(prefix + "rope.scaling.original_context_length");
  if (scaling.original_max_position_embeddings <= 0) {
    fail("{}: {}rope.scaling.original_context_length must be positive", where, prefix);
  }
  scaling.beta_fast = gguf.find_float(prefix + "rope.scaling.yarn_beta_fast").value_or(32.0);
  scaling.beta_slow = gguf.find_float(prefix + "rope.scaling.yarn_beta_slow").value_or(1.0);
  const double log_multiplier = gguf.find_float(prefix + "rope.scaling.yarn_log_multiplier").value_or(0.0);
  scaling.mscale_all_dim = log_multiplier / 0.1;
  scaling.mscale = scaling.mscale_all_dim;
  if (const auto factor = gguf.find_float(prefix + "rope.scaling.yarn_attn_factor")) {
    scaling.attention_factor = *factor;
  } else if (scaling.mscale != 0.0) {
    scaling.attention_factor = yarn_mscale(scaling.factor, scaling.mscale) /
                               yarn_mscale(scaling.factor, scaling.mscale_all_dim);
  } else {
    scaling.attention_factor = yarn_mscale(scaling.factor, 1.0);
  }
  return scaling;
}

// Routed and shared experts. llama.cpp's deepseek2 keys say it all: experts,
// top-k, the expert width, shared experts as a count of expert widths, whether
// top-k weights are renormalized (expert_weights_norm, default no) and scaled
// (expert_weights_scale, default 1), the gating (expert_gating_func: 1 softmax, the
// default llama.cpp assumes for files without it, 2 sigmoid), expert groups, and
// leading_dense_block_count dense layers before the sparse ones (llama.cpp has no
// moe_layer_freq: every later layer is sparse).
void deepseek_moe(const GgufFile& gguf, const std::string& prefix, ModelConfig& config) {
  const std::string where = gguf.path().string();
  MoeConfig& moe = config.moe;
  if (!gguf.has(prefix + "expert_count")) return;  // a dense DeepSeek
  moe.num_experts = gguf.get_int(prefix + "expert_count");
  if (moe.num_experts <= 0) fail("{}: {}expert_count must be positive (got {})", where, prefix, moe.num_experts);
  moe.experts_per_token = gguf.get_int(prefix + "expert_used_count");
  moe.expert_intermediate_size = gguf.get_int(prefix + "expert_feed_forward_length");
  const std::int64_t shared = gguf.find_int(prefix + "expert_shared_count").value_or(0);
  if (shared < 0 || shared > 64) fail("{}: {}expert_shared_count must be between 0 and 64 (got {})", where, prefix, shared);
  moe.shared_expert_intermediate_size = shared * moe.expert_intermediate_size;
  moe.shared_expert_gate = false;
  const std::string norm_key = prefix + "expert_weights_norm";
  moe.norm_topk_prob = gguf.has(norm_key) && gguf.get_bool(norm_key);
  moe.routed_scaling_factor = gguf.find_float(prefix + "expert_weights_scale").value_or(1.0);
  const std::int64_t gating = gguf.find_int(prefix + "expert_gating_func").value_or(1);
  if (gating == 1) {
    moe.scoring = MoeConfig::Scoring::Softmax;
  } else if (gating == 2) {
    moe.scoring = MoeConfig::Scoring::Sigmoid;
  } else {
    fail("{}: {}expert_gating_func {} is not a DeepSeek gating (1 softmax, 2 sigmoid)", where, prefix, gating);
  }
  moe.n_group = gguf.find_int(prefix + "expert_group_count").value_or(1);
  moe.topk_group = gguf.find_int(prefix + "expert_group_used_count").value_or(1);
  const std::int64_t dense = gguf.find_int(prefix + "leading_dense_block_count").value_or(0);
  if (dense < 0 || dense > config.num_layers) {
    fail("{}: {}leading_dense_block_count {} is outside the model's {} layers", where, prefix, dense, config.num_layers);
  }
  if (config.num_layers <= 0 || config.num_layers > (std::int64_t{1} << 12)) return;  // validate() names the field
  moe.sparse_layers.clear();
  for (std::int64_t i = 0; i < config.num_layers; ++i) {
    moe.sparse_layers.push_back(i >= dense);
    const bool has_bias = gguf.find_tensor(fmt::format("blk.{}.exp_probs_b.bias", i)) != nullptr;
    // The engine reads the correction bias with sigmoid scoring only (V3's noaux_tc);
    // softmax plus a bias is no routing transformers runs.
    if (has_bias && moe.scoring != MoeConfig::Scoring::Sigmoid) {
      fail("{}: blk.{}.exp_probs_b.bias (a routing correction bias) needs sigmoid gating ({}expert_gating_func 2)", where,
           i, prefix);
    }
  }
}

}  // namespace

std::string deepseek_architecture_of(const GgufFile& gguf) {
  const std::string prefix = gguf.get_string("general.architecture") + ".";
  return gguf.find_int(prefix + "expert_gating_func").value_or(1) == 2 ? "DeepseekV3ForCausalLM"
                                                                        : "DeepseekV2ForCausalLM";
}

void deepseek_from_gguf(const GgufFile& gguf, const std::string& prefix, ModelConfig& config) {
  const std::string where = gguf.path().string();
  MlaConfig mla;
  // Absent or 0: a plain attn_q (DeepSeek-V2-Lite's q_lora_rank null).
  mla.q_lora_rank = gguf.find_int(prefix + "attention.q_lora_rank").value_or(0);
  if (mla.q_lora_rank < 0) fail("{}: {}attention.q_lora_rank must not be negative", where, prefix);
  const auto kv_rank = gguf.find_int(prefix + "attention.kv_lora_rank");
  if (!kv_rank || *kv_rank <= 0) {
    fail("{}: {}attention.kv_lora_rank must be present and positive for latent attention (got {})", where, prefix,
         kv_rank ? std::to_string(*kv_rank) : "none");
  }
  mla.kv_lora_rank = *kv_rank;
  mla.qk_rope_head_dim = gguf.get_int(prefix + "rope.dimension_count");
  // Current converters write the per-head sizes as key_length_mla / value_length_mla
  // (key_length / value_length then describe llama.cpp's one-latent view: rank +
  // rope and rank); older files (with a whole attn_kv_b) have only the latter, as
  // the per-head sizes.
  const bool mla_keys = gguf.has(prefix + "attention.key_length_mla");
  const std::int64_t key = gguf.get_int(prefix + (mla_keys ? "attention.key_length_mla" : "attention.key_length"));
  mla.v_head_dim = gguf.get_int(prefix + (mla_keys ? "attention.value_length_mla" : "attention.value_length"));
  mla.qk_nope_head_dim = key - mla.qk_rope_head_dim;
  if (mla.qk_rope_head_dim <= 0 || mla.qk_nope_head_dim <= 0 || mla.v_head_dim <= 0) {
    fail("{}: deepseek2 head sizes key {} (rope {}) and value {} must leave positive parts", where, key,
         mla.qk_rope_head_dim, mla.v_head_dim);
  }
  // llama.cpp rotates deepseek2's rope features in adjacent pairs and its converter
  // permutes no rows: DeepSeek's interleaved layout, as stored.
  mla.rope_interleave = true;
  config.head_dim = key;
  config.rotary_dim = mla.qk_rope_head_dim;
  // The file says one kv head (llama.cpp's view of the latent); nibble counts MLA's
  // query heads, as parse_hf_config does.
  config.num_kv_heads = config.num_heads;
  config.mla = mla;
  // llama.cpp's block_count includes the multi-token-prediction layers.
  config.extra_predict_layers = gguf.find_int(prefix + "nextn_predict_layers").value_or(0);
  if (config.extra_predict_layers < 0 || config.extra_predict_layers >= config.num_layers) {
    fail("{}: {}nextn_predict_layers {} leaves no decoder layers of {}", where, prefix, config.extra_predict_layers,
         config.num_layers);
  }
  config.num_layers -= config.extra_predict_layers;
  config.rope_scaling = deepseek_yarn(gguf, prefix);
  deepseek_moe(gguf, prefix, config);
}

std::vector<float> join_kv_b(const GgufTensor& k_b, const GgufTensor& v_b, const MlaConfig& mla, std::int64_t heads) {
  const std::int64_t nope = mla.qk_nope_head_dim, v = mla.v_head_dim, rank = mla.kv_lora_rank;
  const auto expect = [](const GgufTensor& tensor, std::vector<std::int64_t> shape) {
    if (tensor.shape != shape) {
      fail("tensor '{}' has shape [{}], expected [{}]", tensor.name, fmt::join(tensor.shape, ", "),
           fmt::join(shape, ", "));
    }
  };
  expect(k_b, {heads, rank, nope});
  expect(v_b, {heads, v, rank});
  std::vector<float> uk_t(static_cast<std::size_t>(k_b.numel())), uv(static_cast<std::size_t>(v_b.numel()));
  dequantize_to_f32(k_b, uk_t);
  dequantize_to_f32(v_b, uv);
  std::vector<float> out(static_cast<std::size_t>(heads * (nope + v) * rank));
  for (std::int64_t h = 0; h < heads; ++h) {
    float* head = out.data() + h * (nope + v) * rank;
    for (std::int64_t c = 0; c < rank; ++c) {
      for (std::int64_t i = 0; i < nope; ++i) head[i * rank + c] = uk_t[static_cast<std::size_t>((h * rank + c) * nope + i)];
    }
    std::copy_n(uv.begin() + h * v * rank, v * rank, head + nope * rank);
  }
  return out;
}

}  // namespace nibble
