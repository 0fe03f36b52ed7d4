#pragma once
// Turns one row of logits into a choice's next token, and scores given tokens
// against a row (prompt log-probabilities). The model runner keeps one picker per
// choice; nothing else samples.
#include <map>
#include <memory>
#include <stdexcept>
#include <span>
#include <vector>

#include "engine/sampler.h"
#include "engine/step_plan.h"
#include "engine/token_constraint.h"

namespace nibble::engine {

// The model's own log-probabilities first (when wanted), then logit bias, the
// output constraint's mask (disallowed tokens to -inf), penalties, temperature
// and the sampling filters.
class TokenPicker {
 public:
  explicit TokenPicker(const SamplerSetup& setup);
  // Throws ConstraintDeadEnd when the constraint allows no token.
  TokenStep pick(std::span<float> logits);

 private:
  Sampler sampler_;
  std::map<TokenId, float> logit_bias_;
  int top_logprobs_;
  std::vector<float> model_logits_;
  std::unique_ptr<ConstraintState> constraint_;
  TokenMask mask_;
};

// The output constraint left no token to pick (a grammar the vocabulary cannot
// continue, or that is complete where no end-of-sequence token may follow).
class ConstraintDeadEnd : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// `token`'s log-probability under `logits` (log-softmax), and the `top` most likely.
TokenStep score_token(std::span<const float> logits, TokenId token, int top);

}  // namespace nibble::engine
