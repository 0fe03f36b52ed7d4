#pragma once
// One request, generated to the end: chunked prefill of the prompt, then decode
// steps until a stop token, the token budget, or the caller says stop. The
// batching scheduler later drives the same model over many sequences at once.
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <utility>
#include <vector>

#include "engine/llama_model.h"
#include "engine/sampler.h"
#include "engine/token_picker.h"

namespace nibble::engine {

enum class FinishReason { Stop, Length, Cancelled };

struct GenerationRequest {
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  std::int64_t max_new_tokens = 128;
  std::vector<TokenId> stop_tokens;  // end-of-sequence ids; generation ends after emitting one
  std::int64_t prefill_chunk = 512;  // prompt tokens per forward pass
  std::map<TokenId, float> logit_bias;  // added to the logits before sampling (OpenAI logit_bias)
  int top_logprobs = -1;  // -1: no log-probabilities; N >= 0: the token's and the N most likely
  // The same for the prompt's tokens (OpenAI's echo with logprobs): each token
  // after the first, scored by the logits of the position before it.
  int prompt_logprobs = -1;
};

struct GenerationResult {
  std::vector<TokenId> tokens;
  FinishReason finish = FinishReason::Length;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// on_token sees every generated token as soon as it is sampled; returning false
// cancels. With prompt_logprobs >= 0 (even with max_new_tokens 0), on_prompt receives the prompt's tokens
// 1..n-1 with theirs after the prefill, before the first token. Throws
// nibble::Error when the prompt does not fit the context.
GenerationResult generate(LlamaModel& model, const GenerationRequest& request,
                          const std::function<bool(const TokenStep&)>& on_token = {},
                          const std::function<void(const std::vector<TokenStep>&)>& on_prompt = {});

}  // namespace nibble::engine
