#pragma once
// Turns one row of logits into a choice's next token, and scores given tokens
// against a row (prompt log-probabilities). The model runner keeps one picker per
// choice; nothing else samples.
#include <map>
#include <span>
#include <vector>

#include "engine/sampler.h"
#include "engine/step_plan.h"

namespace nibble::engine {

// The model's own log-probabilities first (when wanted), then logit bias,
// penalties, temperature and the sampling filters.
class TokenPicker {
 public:
  explicit TokenPicker(const SamplerSetup& setup);
  TokenStep pick(std::span<float> logits);

 private:
  Sampler sampler_;
  std::map<TokenId, float> logit_bias_;
  int top_logprobs_;
  std::vector<float> model_logits_;
};

// `token`'s log-probability under `logits` (log-softmax), and the `top` most likely.
TokenStep score_token(std::span<const float> logits, TokenId token, int top);

}  // namespace nibble::engine
