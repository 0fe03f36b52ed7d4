#include "engine/token_picker.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nibble::engine {

TokenStep score_token(std::span<const float> logits, TokenId token, int top) {
  TokenStep step;
  step.token = token;
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l - max_logit));
  const auto log_prob = [&](TokenId id) {
    return static_cast<float>(static_cast<double>(logits[static_cast<std::size_t>(id)] - max_logit) - std::log(sum));
  };
  step.logprob = log_prob(step.token);
  if (top <= 0) return step;
  std::vector<TokenId> ids(logits.size());
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<TokenId>(i);
  const auto count = std::min<std::size_t>(static_cast<std::size_t>(top), ids.size());
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count), ids.end(), [&](TokenId a, TokenId b) {
    const float la = logits[static_cast<std::size_t>(a)], lb = logits[static_cast<std::size_t>(b)];
    return la != lb ? la > lb : a < b;
  });
  for (std::size_t i = 0; i < count; ++i) step.top.emplace_back(ids[i], log_prob(ids[i]));
  return step;
}

TokenPicker::TokenPicker(const SamplerSetup& setup)
    : sampler_(setup.sampling, setup.prompt),
      logit_bias_(setup.logit_bias),
      top_logprobs_(setup.top_logprobs),
      constraint_(setup.constraint ? setup.constraint->start() : nullptr) {}

TokenStep TokenPicker::pick(std::span<float> logits) {
  if (top_logprobs_ >= 0) model_logits_.assign(logits.begin(), logits.end());  // before bias and sampling
  for (const auto& [id, bias] : logit_bias_) logits[static_cast<std::size_t>(id)] += bias;
  if (constraint_) {
    constraint_->allowed(mask_);
    if (!mask_.any()) {
      throw ConstraintDeadEnd(
          "the output constraint allows no next token (the grammar cannot be continued with this model's "
          "vocabulary, or it is complete and no end-of-sequence token may follow)");
    }
    // Whole words of the mask at a time: most are all-allowed or all-refused.
    constexpr float kRefused = -std::numeric_limits<float>::infinity();
    const std::size_t vocab = logits.size();
    for (std::size_t w = 0; w * 64 < vocab; ++w) {
      const std::uint64_t bits = w < mask_.words.size() ? mask_.words[w] : 0;
      if (bits == ~std::uint64_t{0}) continue;
      const std::size_t end = std::min(vocab, w * 64 + 64);
      for (std::size_t i = w * 64; i < end; ++i) {
        if (((bits >> (i - w * 64)) & 1U) == 0) logits[i] = kRefused;
      }
    }
  }
  const TokenId token = sampler_.sample(logits);
  if (constraint_) constraint_->accept(token);
  if (top_logprobs_ < 0) {
    TokenStep step;
    step.token = token;
    return step;
  }
  return score_token(model_logits_, token, top_logprobs_);
}

}  // namespace nibble::engine
