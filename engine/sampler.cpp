#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace nibble::engine {

void SamplingParams::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) fail("temperature must be >= 0 (got {})", temperature);
  if (top_k < 0) fail("top_k must be >= 0 (got {})", top_k);
  if (!(top_p > 0 && top_p <= 1)) fail("top_p must be in (0, 1] (got {})", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail("min_p must be in [0, 1] (got {})", min_p);
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty)) {
    fail("repetition_penalty must be > 0 (got {})", repetition_penalty);
  }
  if (!(std::abs(presence_penalty) <= 2)) fail("presence_penalty must be in [-2, 2] (got {})", presence_penalty);
  if (!(std::abs(frequency_penalty) <= 2)) fail("frequency_penalty must be in [-2, 2] (got {})", frequency_penalty);
}

TokenId argmax(std::span<const float> logits) {
  return static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplingParams& params, std::span<const TokenId> prompt)
    : params_(params), seen_(prompt.begin(), prompt.end()), rng_(params.seed) {
  params_.validate();
  std::sort(seen_.begin(), seen_.end());
  seen_.erase(std::unique(seen_.begin(), seen_.end()), seen_.end());
}

void Sampler::apply_penalties(std::span<float> logits) const {
  const auto vocab = static_cast<TokenId>(logits.size());
  if (params_.repetition_penalty != 1.0) {
    const auto penalty = static_cast<float>(params_.repetition_penalty);
    for (const TokenId id : seen_) {
      if (id < 0 || id >= vocab) continue;
      float& logit = logits[static_cast<std::size_t>(id)];
      logit = logit > 0 ? logit / penalty : logit * penalty;
    }
  }
  if (params_.presence_penalty != 0.0 || params_.frequency_penalty != 0.0) {
    for (const auto& [id, count] : output_counts_) {
      if (id < 0 || id >= vocab) continue;
      logits[static_cast<std::size_t>(id)] -= static_cast<float>(params_.frequency_penalty * static_cast<double>(count) +
                                                                 params_.presence_penalty);
    }
  }
}

TokenId Sampler::draw(std::span<const float> logits) {
  // Candidates sorted by logit, cut by top-k, then softmax over the survivors,
  // then top-p and min-p cuts on the probabilities, then one draw.
  candidates_.clear();
  candidates_.reserve(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) candidates_.emplace_back(logits[i], static_cast<TokenId>(i));
  const auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < keep) {
    keep = static_cast<std::size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep), candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);

  const float inv_temperature = static_cast<float>(1.0 / params_.temperature);
  const float max_logit = candidates_.front().first;
  double total = 0;
  std::vector<double> probs(keep);
  for (std::size_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(static_cast<double>((candidates_[i].first - max_logit) * inv_temperature));
    total += probs[i];
  }
  for (auto& p : probs) p /= total;

  if (params_.top_p < 1.0) {
    double cumulative = 0;
    std::size_t cut = 0;
    while (cut < keep) {
      cumulative += probs[cut++];
      if (cumulative >= params_.top_p) break;
    }
    keep = std::max<std::size_t>(cut, 1);
  }
  if (params_.min_p > 0) {
    const double threshold = params_.min_p * probs.front();
    std::size_t cut = 1;
    while (cut < keep && probs[cut] >= threshold) ++cut;
    keep = cut;
  }
  double kept_mass = 0;
  for (std::size_t i = 0; i < keep; ++i) kept_mass += probs[i];
  std::uniform_real_distribution<double> uniform(0.0, kept_mass);
  const double target = uniform(rng_);
  double cumulative = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (target < cumulative) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

TokenId Sampler::sample(std::span<float> logits) {
  apply_penalties(logits);
  const TokenId token = params_.temperature == 0.0 ? argmax(logits) : draw(logits);
  ++output_counts_[token];
  const auto at = std::lower_bound(seen_.begin(), seen_.end(), token);
  if (at == seen_.end() || *at != token) seen_.insert(at, token);
  return token;
}

}  // namespace nibble::engine
