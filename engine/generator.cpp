#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace nibble::engine {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

GenerationResult generate(LlamaModel& model, const GenerationRequest& request,
                          const std::function<bool(TokenId)>& on_token) {
  const auto& config = model.config();
  const auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  if (prompt_length == 0) fail("the prompt is empty");
  if (prompt_length >= config.max_position_embeddings) {
    fail("the prompt has {} tokens but the model's context is {}", prompt_length, config.max_position_embeddings);
  }
  if (request.max_new_tokens < 0) fail("max_new_tokens must be >= 0");
  if (request.prefill_chunk <= 0) fail("prefill_chunk must be positive");
  const std::int64_t budget = std::min(request.max_new_tokens, config.max_position_embeddings - prompt_length);

  GenerationResult result;
  if (budget == 0) return result;
  KvCache cache(config, prompt_length + budget);
  Sampler sampler(request.sampling, request.prompt);
  std::vector<float> logits(static_cast<std::size_t>(model.vocab_size()));

  const auto prefill_start = std::chrono::steady_clock::now();
  for (std::int64_t start = 0; start < prompt_length; start += request.prefill_chunk) {
    const std::int64_t rows = std::min(request.prefill_chunk, prompt_length - start);
    model.forward(std::span(request.prompt).subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(rows)),
                  start, cache, Logits::LastRow, logits);
  }
  result.prefill_seconds = seconds_since(prefill_start);

  const auto decode_start = std::chrono::steady_clock::now();
  std::int64_t position = prompt_length;
  while (true) {
    const TokenId token = sampler.sample(logits);
    result.tokens.push_back(token);
    if (on_token && !on_token(token)) {
      result.finish = FinishReason::Cancelled;
      break;
    }
    if (std::find(request.stop_tokens.begin(), request.stop_tokens.end(), token) != request.stop_tokens.end()) {
      result.finish = FinishReason::Stop;
      break;
    }
    if (static_cast<std::int64_t>(result.tokens.size()) >= budget) {
      result.finish = FinishReason::Length;
      break;
    }
    model.forward(std::span(&token, 1), position++, cache, Logits::LastRow, logits);
  }
  result.decode_seconds = seconds_since(decode_start);
  return result;
}

}  // namespace nibble::engine
