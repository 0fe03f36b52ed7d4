#include "engine/token_picker.h"

#include <algorithm>
#include <cmath>

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
    : sampler_(setup.sampling, setup.prompt), logit_bias_(setup.logit_bias), top_logprobs_(setup.top_logprobs) {}

TokenStep TokenPicker::pick(std::span<float> logits) {
  if (top_logprobs_ >= 0) model_logits_.assign(logits.begin(), logits.end());  // before bias and sampling
  for (const auto& [id, bias] : logit_bias_) logits[static_cast<std::size_t>(id)] += bias;
  const TokenId token = sampler_.sample(logits);
  if (top_logprobs_ < 0) {
    TokenStep step;
    step.token = token;
    return step;
  }
  return score_token(model_logits_, token, top_logprobs_);
}

}  // namespace nibble::engine
