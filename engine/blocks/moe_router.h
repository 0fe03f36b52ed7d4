#pragma once
// The routing decision of a mixture-of-experts layer, on the host: each token's
// router logits -> the experts it runs and the weights their outputs are summed
// with. Table-driven by MoeConfig so each family is a setting, not a branch in
// the block:
//   Mixtral, Qwen MoE:  softmax over all experts -> top-k -> (renormalize)
//   DeepSeek-V3:        sigmoid per expert; + e_score_correction_bias for the
//                       choice only; experts in n_group groups, a group scored by
//                       its two best experts, only the topk_group best groups
//                       eligible -> top-k -> (renormalize) -> x routed_scaling_factor
//   DeepSeek-V2:        softmax; a group scored by its best expert (group-limited greedy)
// The logits are few (tokens x experts), so routing on the host costs a small
// download per layer and keeps the device side to gathers and scatter-adds.
#include <cstdint>
#include <span>
#include <vector>

#include "loader/model_config.h"

namespace nibble::engine {

class MoeRouter {
 public:
  // `correction_bias`: one value per expert added to the scores for choosing only
  // (DeepSeek-V3's e_score_correction_bias); empty: none.
  explicit MoeRouter(const MoeConfig& config, std::vector<float> correction_bias = {});

  // logits [rows, experts] -> experts [rows, k] and weights [rows, k], each row's
  // experts distinct and in descending order of their choice scores (ties: the
  // lower index first, as a stable sort).
  void route(std::span<const float> logits, std::int64_t rows, std::span<std::int32_t> experts,
             std::span<float> weights) const;

  std::int64_t experts() const { return config_.num_experts; }
  std::int64_t top_k() const { return config_.experts_per_token; }

 private:
  MoeConfig config_;
  std::vector<float> correction_bias_;
  // Per-row scratch (route() is called from one thread per model).
  mutable std::vector<float> scores_, choice_;
  mutable std::vector<std::int32_t> order_;
  mutable std::vector<char> eligible_;
};

}  // namespace nibble::engine
