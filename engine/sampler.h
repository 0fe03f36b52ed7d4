#pragma once
// Turns logits into the next token. Same parameters and seed -> same tokens.
#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/token.h"

namespace nibble::engine {

struct SamplingParams {
  double temperature = 1.0;  // 0 means greedy
  std::int64_t top_k = 0;    // 0 = off
  double top_p = 1.0;        // 1 = off
  double min_p = 0.0;        // 0 = off
  double repetition_penalty = 1.0;  // HF-style, over prompt and output tokens
  double presence_penalty = 0.0;    // OpenAI-style, over output tokens
  double frequency_penalty = 0.0;   // OpenAI-style, over output tokens
  std::uint64_t seed = 0;

  // Throws nibble::Error naming the first parameter out of range.
  void validate() const;
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, std::span<const TokenId> prompt);

  // Picks the next token from `logits` (modified in place by penalties and
  // temperature) and records it as generated.
  TokenId sample(std::span<float> logits);

 private:
  void apply_penalties(std::span<float> logits) const;
  TokenId draw(std::span<const float> logits);

  SamplingParams params_;
  std::vector<TokenId> seen_;                       // prompt + output, for repetition_penalty
  std::unordered_map<TokenId, std::int64_t> output_counts_;  // for presence/frequency
  std::mt19937_64 rng_;
  std::vector<std::pair<float, TokenId>> candidates_;
};

// Index of the largest logit (the first one on ties, like torch.argmax).
TokenId argmax(std::span<const float> logits);

}  // namespace nibble::engine
