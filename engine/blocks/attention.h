#pragma once
// Causal self-attention with rotary positions over the paged KV cache: q/k/v
// projections (optionally with biases), optional RMSNorm of each q/k head
// (QK-norm), RoPE (possibly partial, possibly LongRoPE's per-length tables),
// store k/v, multi-head attention with grouped KV heads (GQA; MHA when they are
// equal) and an optional sliding window, output projection. What varies by
// layer comes from the config: the window (Gemma's local layers), the rope base
// and scaling of the layer's kind, the score scale and soft-cap.
#include <cstdint>
#include <optional>
#include <vector>

#include "engine/blocks/linear.h"
#include "engine/blocks/norm.h"
#include "engine/rope.h"
#include "engine/step_context.h"
#include "engine/weight_binder.h"
#include "loader/architecture.h"

namespace nibble::engine {

class AttentionBlock {
 public:
  AttentionBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer);

  // `input` [rows, hidden] -> `out` [rows, hidden] (may alias `input`).
  void forward(const StepContext& step, Workspace& ws, const float* input, float* out) const;
  // Module `module`'s matrix, or nullptr when this block has no such module.
  Linear* find(const std::string& module);
  std::int64_t stacked_width() const { return qkv_.stacked() ? qkv_.total_width() : 0; }

 private:
  // Rotates the step's q and k rows by their positions.
  void rotate(const StepContext& step, Workspace& ws) const;

  std::int64_t layer_;
  kernels::AttentionShape shape_;
  RopeTables rope_;
  LinearGroup qkv_;
  RmsNorm q_norm_, k_norm_;  // empty without QK-norm
  Linear o_;
};

}  // namespace nibble::engine
