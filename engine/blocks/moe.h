#pragma once
// A sparse mixture-of-experts MLP (Mixtral, Qwen MoE): a router scores every
// expert for each token, each token runs its top-k experts (gated MLPs like
// GatedMlp) and their outputs are summed with the routing weights; a shared
// expert, when the model has one, runs on every token (Qwen2-MoE scales it by
// sigmoid(shared_expert_gate(x)); DeepSeek's shared experts, one MLP of their
// summed width, are added as they are). DeepSeek-V3's router adds its
// e_score_correction_bias to the scores for the choice (MoeRouter).
//
// A step's tokens are grouped by expert: each expert with tokens runs its linear
// layers once over exactly its rows (gathered into one contiguous block, so the
// backend's quantized kernels are reused as they are), experts with none cost
// nothing, and the outputs are scatter-added back with their weights. The
// routing itself (MoeRouter) runs on the host over the downloaded router logits.
//
// Under expert parallelism (MoeConfig::expert_parallel_size) the block binds and
// runs only its rank's experts; it still routes every token over every expert,
// exactly as the other ranks do, and the layer's all-reduce adds the other ranks'
// experts' shares (DecoderModel; docs/parallel.md).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/blocks/linear.h"
#include "engine/blocks/mlp.h"
#include "engine/blocks/moe_router.h"
#include "engine/step_context.h"
#include "engine/weight_binder.h"
#include "loader/architecture.h"

namespace nibble::engine {

class MoeBlock {
 public:
  MoeBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer);

  // `input` [rows, hidden] -> `out` [rows, hidden] (may alias `input`).
  void forward(const StepContext& step, Workspace& ws, const float* input, float* out) const;
  // Module `module`'s matrix (router, an expert's, the shared expert's), or nullptr.
  Linear* find(const std::string& module);
  std::int64_t stacked_width() const;
  // Every routed expert the router scores (this rank may hold only some: first_expert_ on).
  std::int64_t experts() const { return static_cast<std::int64_t>(rows_of_.size()); }
  // How many of the last forward()'s tokens each expert ran (load imbalance).
  std::span<const std::int64_t> last_tokens_per_expert() const { return tokens_per_expert_; }
  // The same summed over every forward() since load.
  std::span<const std::int64_t> tokens_per_expert_total() const { return tokens_total_; }

 private:
  std::int64_t hidden_;
  MoeRouter router_;
  Linear gate_;  // the router's linear layer [experts, hidden]
  std::vector<GatedMlp> experts_;  // the held experts: experts_[i] is expert first_expert_ + i
  std::int64_t first_expert_ = 0;
  std::optional<GatedMlp> shared_;
  std::optional<Linear> shared_gate_;

  // Host scratch reused every step (one step runs at a time).
  mutable std::vector<float> logits_, weights_, shared_weights_;
  mutable std::vector<std::int32_t> choices_, all_rows_;
  mutable std::vector<std::vector<std::int32_t>> rows_of_;
  mutable std::vector<std::vector<float>> weights_of_;
  mutable std::vector<std::int64_t> tokens_per_expert_, tokens_total_;
};

}  // namespace nibble::engine
