#include "engine/blocks/moe_router.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <utility>

#include "common/error.h"

namespace nibble::engine {

MoeRouter::MoeRouter(const MoeConfig& config, std::vector<float> correction_bias)
    : config_(config), correction_bias_(std::move(correction_bias)) {
  if (!correction_bias_.empty() && static_cast<std::int64_t>(correction_bias_.size()) != config_.num_experts) {
    fail("router correction bias has {} values for {} experts", correction_bias_.size(), config_.num_experts);
  }
  if (config_.experts_per_token <= 0 || config_.experts_per_token > config_.num_experts) {
    fail("a router choosing {} of {} experts", config_.experts_per_token, config_.num_experts);
  }
  const auto n = static_cast<std::size_t>(config_.num_experts);
  scores_.resize(n);
  choice_.resize(n);
  order_.resize(n);
  eligible_.resize(n);
}

void MoeRouter::route(std::span<const float> logits, std::int64_t rows, std::span<std::int32_t> experts,
                      std::span<float> weights) const {
  const auto n = static_cast<std::size_t>(config_.num_experts);
  const auto k = static_cast<std::size_t>(config_.experts_per_token);
  const auto count = static_cast<std::size_t>(rows);
  if (logits.size() < count * n || experts.size() < count * k || weights.size() < count * k) {
    fail("internal error: router buffers too small for {} rows", rows);
  }
  const bool softmax = config_.scoring == MoeConfig::Scoring::Softmax;
  const auto groups = static_cast<std::size_t>(config_.n_group);
  const std::size_t per_group = n / groups;
  for (std::size_t r = 0; r < count; ++r) {
    const float* row = logits.data() + r * n;
    if (softmax) {
      // In float32, as transformers computes it.
      const float top = *std::max_element(row, row + n);
      float sum = 0;
      for (std::size_t e = 0; e < n; ++e) sum += scores_[e] = std::exp(row[e] - top);
      for (auto& score : scores_) score /= sum;
    } else {
      for (std::size_t e = 0; e < n; ++e) scores_[e] = 1.0f / (1.0f + std::exp(-row[e]));
    }
    for (std::size_t e = 0; e < n; ++e) choice_[e] = scores_[e] + (correction_bias_.empty() ? 0.0f : correction_bias_[e]);
    // Group-limited choice: only the best topk_group groups' experts are eligible.
    std::fill(eligible_.begin(), eligible_.end(), char{1});
    if (groups > 1) {
      std::vector<std::pair<float, std::size_t>> group_scores(groups);
      for (std::size_t g = 0; g < groups; ++g) {
        const float* first = choice_.data() + g * per_group;
        std::vector<float> members(first, first + per_group);
        std::ranges::sort(members, std::greater<>());
        // Sigmoid scoring (V3) sums a group's two best; softmax (V2) takes its best.
        const float score = softmax || per_group < 2 ? members[0] : members[0] + members[1];
        group_scores[g] = {score, g};
      }
      std::ranges::stable_sort(group_scores, [](const auto& a, const auto& b) { return a.first > b.first; });
      std::fill(eligible_.begin(), eligible_.end(), char{0});
      for (std::size_t i = 0; i < static_cast<std::size_t>(config_.topk_group); ++i) {
        const std::size_t g = group_scores[i].second;
        std::fill_n(eligible_.begin() + static_cast<std::ptrdiff_t>(g * per_group), per_group, char{1});
      }
    }
    std::iota(order_.begin(), order_.end(), 0);
    std::ranges::stable_sort(order_, [&](std::int32_t a, std::int32_t b) {
      const auto ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
      if (eligible_[ua] != eligible_[ub]) return eligible_[ua] > eligible_[ub];
      return choice_[ua] > choice_[ub];
    });
    float sum = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const auto e = static_cast<std::size_t>(order_[i]);
      experts[r * k + i] = order_[i];
      weights[r * k + i] = scores_[e];
      sum += scores_[e];
    }
    // Divided, then scaled, in transformers' order (DeepSeek-V3 adds 1e-20 to the sum).
    const float denominator = sum + (softmax ? 0.0f : 1e-20f);
    const auto factor = static_cast<float>(config_.routed_scaling_factor);
    for (std::size_t i = 0; i < k; ++i) {
      if (config_.norm_topk_prob) weights[r * k + i] /= denominator;
      if (factor != 1.0f) weights[r * k + i] *= factor;
    }
  }
}

}  // namespace nibble::engine
