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
  // softmax(logits / temperature), cut by top-k, top-p and min-p, then one draw.
  // Sorting the whole vocabulary (~50k entries) per token would cost milliseconds
  // on the scheduler's thread for every sampled sequence, so only the head of the
  // distribution that the cuts keep is ordered.
  const float inv_temperature = static_cast<float>(1.0 / params_.temperature);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  const auto weight = [&](float logit) { return std::exp(static_cast<double>((logit - max_logit) * inv_temperature)); };
  const bool cuts = params_.top_k > 0 || params_.top_p < 1.0 || params_.min_p > 0;
  if (!cuts) {
    // Every token stays: draw by cumulative weight in vocabulary order.
    double total = 0;
    for (const float l : logits) total += weight(l);
    std::uniform_real_distribution<double> uniform(0.0, total);
    const double target = uniform(rng_);
    double cumulative = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      cumulative += weight(logits[i]);
      if (target < cumulative) return static_cast<TokenId>(i);
    }
    return static_cast<TokenId>(logits.size() - 1);
  }

  candidates_.clear();
  candidates_.reserve(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) candidates_.emplace_back(logits[i], static_cast<TokenId>(i));
  const auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::size_t pool = candidates_.size();
  if (params_.top_k > 0) pool = std::min(pool, static_cast<std::size_t>(params_.top_k));
  // The softmax denominator over the pool: all tokens, or the top-k (found by nth_element, unordered).
  if (pool < candidates_.size()) {
    std::nth_element(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(pool - 1), candidates_.end(),
                     by_logit);
    candidates_.resize(pool);
  }
  double total = 0;
  for (const auto& candidate : candidates_) total += weight(candidate.first);

  // Order a growing head until the cuts are decided inside it.
  std::size_t sorted = 0;
  std::size_t keep = pool;
  double cumulative = 0;
  std::size_t scanned = 0;
  for (std::size_t head = std::min<std::size_t>(64, pool);; head = std::min(pool, head * 8)) {
    std::partial_sort(candidates_.begin() + static_cast<std::ptrdiff_t>(sorted),
                      candidates_.begin() + static_cast<std::ptrdiff_t>(head), candidates_.end(), by_logit);
    sorted = head;
    const double top = weight(candidates_.front().first) / total;
    bool decided = false;
    for (; scanned < sorted; ++scanned) {
      const double p = weight(candidates_[scanned].first) / total;
      if (params_.min_p > 0 && scanned > 0 && p < params_.min_p * top) {
        keep = scanned;
        decided = true;
        break;
      }
      cumulative += p;
      if (params_.top_p < 1.0 && cumulative >= params_.top_p) {
        keep = scanned + 1;
        decided = true;
        break;
      }
    }
    if (decided || sorted == pool) break;
  }
  keep = std::max<std::size_t>(std::min(keep, pool), 1);
  double kept_mass = 0;
  for (std::size_t i = 0; i < keep; ++i) kept_mass += weight(candidates_[i].first);
  std::uniform_real_distribution<double> uniform(0.0, kept_mass);
  const double target = uniform(rng_);
  double running = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    running += weight(candidates_[i].first);
    if (target < running) return candidates_[i].second;
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
