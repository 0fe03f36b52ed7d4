#pragma once
// Multi-head latent attention (DeepSeek-V2/V3, MLA) over the paged KV cache.
//
// Queries: q_a_proj -> q_a_layernorm -> q_b_proj (or one q_proj), each head
// [q_nope ; q_rope]. Keys and values come from one latent per token:
// kv_a_proj_with_mqa -> [c_kv ; k_rope], c_kv through kv_a_layernorm, k_rope
// rotated and shared by every head. The cache keeps that latent row alone
// (kv_lora_rank + qk_rope values per token and layer: 576 for DeepSeek-V3).
//
// Attention runs in the absorbed form (DeepSeek-V2 paper, appendix; vLLM's MLA):
// with kv_b_proj's per-head rows W_UK (keys) and W_UV (values),
//   q_nope . (W_UK c)  =  (W_UK^T q_nope) . c,
// so each head's query becomes [W_UK^T q_nope ; q_rope] over the latent, all
// heads attend over the one cached row as a single shared key head whose values
// are its c_kv prefix, and W_UV maps each head's output back to v_head_dim
// before o_proj. Prefill runs the same form: one path, whose scores cost
// kv_lora_rank + qk_rope per position and head instead of qk_nope + qk_rope, and
// which never expands keys and values.
//
// W_UK^T and W_UV are kept as dense float32 per-head matrices built at load from
// kv_b_proj (dequantized when it is stored quantized), since the absorbed products
// need W_UK transposed: heads x (qk_nope + v_head) x kv_lora_rank x 4 bytes a
// layer (DeepSeek-V3: 32 MiB, 2 GiB over 61 layers; kv_b_proj itself is not kept).
#include <cstdint>
#include <optional>
#include <string>

#include "engine/blocks/linear.h"
#include "engine/blocks/norm.h"
#include "engine/rope.h"
#include "engine/step_context.h"
#include "engine/weight_binder.h"
#include "loader/architecture.h"

namespace nibble::engine {

// The attention's softmax scale as transformers computes it: qk_head_dim^-1/2,
// times mscale(factor, mscale_all_dim)^2 under YaRN with mscale_all_dim set.
float mla_softmax_scale(const ModelConfig& config);

class LatentAttentionBlock {
 public:
  LatentAttentionBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer);

  // `input` [rows, hidden] -> `out` [rows, hidden] (may alias `input`).
  void forward(const StepContext& step, Workspace& ws, const float* input, float* out) const;
  // Module `module`'s matrix, or nullptr when this block has no such module (kv_b_proj
  // runs as the absorbed per-head matrices, not as a linear layer).
  Linear* find(const std::string& module);
  std::int64_t stacked_width() const { return input_.stacked() ? input_.total_width() : 0; }

  // The workspace widths this block needs (Workspace::Widths' MLA fields, and
  // what its q, kv and attention-output buffers must hold).
  static Workspace::Widths widths(const ModelConfig& config, Workspace::Widths base);

 private:
  // Rotates the step's q_rope and k_rope features by their positions.
  void rotate(const StepContext& step, Workspace& ws) const;

  std::int64_t layer_;
  MlaConfig mla_;
  std::int64_t heads_;
  kernels::AttentionShape shape_;
  RopeTables rope_;
  kernels::RopePairs pairs_;
  LinearGroup input_;  // what reads the layer input: [q_a_proj or q_proj, kv_a_proj_with_mqa]
  RmsNorm q_a_norm_;   // empty without a low-rank query
  std::optional<Linear> q_b_;
  RmsNorm kv_a_norm_;
  kernels::Buffer w_uk_t_;  // [heads * kv_lora_rank, qk_nope]: W_UK^T of each head
  kernels::Buffer w_uv_;    // [heads * v_head, kv_lora_rank]: W_UV of each head
  Linear o_;
};

}  // namespace nibble::engine
