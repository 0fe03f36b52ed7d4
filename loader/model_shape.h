#pragma once
// The numbers a memory planner needs from a model: parameters split into groups
// that quantize differently, KV-cache elements per token and the widths that size
// one step's activations. Read from a Hugging Face config.json for architectures the
// engine does not run yet too (OPT, DeepSeek-V3), so `nibble plan` can size them.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "loader/model_config.h"

namespace nibble {

// Parameter counts by what a quantizer does with them: attention, dense MLP and
// experts are the linear layers GPTQ/AWQ/FP8 compress; embeddings, lm_head and the
// small tensors usually stay 16-bit.
struct ParameterGroups {
  std::int64_t embedding = 0;  // token embeddings, learned positions, OPT's project_in/out
  std::int64_t lm_head = 0;    // 0 when tied to the embedding
  std::int64_t attention = 0;  // q/k/v/o (MLA: the low-rank q and kv projections)
  std::int64_t dense_mlp = 0;  // feed-forward layers of dense (non-MoE) blocks
  std::int64_t experts = 0;    // every routed and shared expert, not only the active ones
  // Norms, linear biases and MoE routers: tiny tensors every format keeps in 16 bits.
  std::int64_t norms_and_biases = 0;

  std::int64_t total() const { return embedding + lm_head + attention + dense_mlp + experts + norms_and_biases; }
};

enum class AttentionKind {
  Grouped,      // MHA or GQA: K and V for each KV head; tensor parallelism splits the heads
  LatentMla,    // DeepSeek MLA: one compressed latent per token that every head (and TP rank) reads
};

struct ModelShape {
  std::string architecture;
  std::int64_t num_layers = 0;
  std::int64_t hidden_size = 0;
  std::int64_t vocab_size = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_kv_heads = 0;  // MLA: equal to num_attention_heads (what TP splits)
  std::int64_t max_position_embeddings = 0;
  AttentionKind attention_kind = AttentionKind::Grouped;
  ParameterGroups parameters;
  // DeepSeek-V3's multi-token-prediction module (num_nextn_predict_layers), including
  // the copies of embedding and head its checkpoint stores. Not in `parameters`: it
  // only serves speculative decoding, which nibble does not run, and the published
  // 671B excludes it (671B + 14B MTP = the 685B on the model card).
  std::int64_t mtp_parameters = 0;
  // Parameters every tensor-parallel rank holds whole besides norms_and_biases (which
  // include the MoE routers): MLA's q_a_proj and kv_a_proj_with_mqa, which produce
  // the one latent every head reads (loader/tensor_shard.h).
  std::int64_t tp_replicated_parameters = 0;
  // The MLP widths every rank of a stage's tensor x expert group splits, as serve
  // splits them (loader/tensor_shard.h): the dense intermediate where a layer is
  // dense and the shared expert's. The routed experts' width splits over the tensor
  // ranks alone (expert_width), their number over the expert groups.
  std::vector<std::int64_t> tp_split_widths;
  std::int64_t routed_experts = 0;  // 0: a dense model
  std::int64_t expert_width = 0;    // each routed expert's moe_intermediate_size
  // KV-cache elements per token over all layers: layers x 2 x kv_heads x head_dim for
  // MHA/GQA, layers x (kv_lora_rank + qk_rope_head_dim) for MLA's latent cache.
  std::int64_t kv_elements_per_token = 0;
  // Per-token activation widths of one layer, for sizing a step's workspace: the q, k
  // and v projection outputs together, and the gate/up width (dense intermediate, or
  // the active routed plus shared experts, whichever is wider).
  std::int64_t attention_width = 0;
  std::int64_t mlp_width = 0;
};

// Throws nibble::Error naming the architecture and the supported ones when it is
// unknown, and naming the field when one is missing, mistyped or not positive.
ModelShape model_shape_from_hf_config(const nlohmann::json& config);
// `path` is a config.json or a folder holding one.
ModelShape read_model_shape(const std::filesystem::path& path);
// The shape of a model the engine has loaded (any file format, GGUF included).
ModelShape model_shape_from_config(const ModelConfig& config);

}  // namespace nibble
