#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/error.h"

namespace nibble::engine {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

GenerationResult generate(LlamaModel& model, const GenerationRequest& request,
                          const std::function<bool(const TokenStep&)>& on_token,
                          const std::function<void(const std::vector<TokenStep>&)>& on_prompt) {
  const auto& config = model.config();
  const auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  if (prompt_length == 0) fail("the prompt is empty");
  if (prompt_length >= config.max_position_embeddings) {
    fail("the prompt has {} tokens but the model's context is {}", prompt_length, config.max_position_embeddings);
  }
  if (request.max_new_tokens < 0) fail("max_new_tokens must be >= 0");
  if (request.prefill_chunk <= 0) fail("prefill_chunk must be positive");
  for (const auto& [id, bias] : request.logit_bias) {
    if (id < 0 || id >= model.vocab_size()) fail("logit_bias names token {}, outside the vocabulary", id);
    if (!std::isfinite(bias)) fail("logit_bias for token {} is not finite", id);
  }
  const std::int64_t budget = std::min(request.max_new_tokens, config.max_position_embeddings - prompt_length);

  GenerationResult result;
  if (budget == 0 && request.prompt_logprobs < 0) return result;
  KvCache cache(config, prompt_length + budget);
  SamplerSetup setup;
  setup.sampling = request.sampling;
  setup.logit_bias = request.logit_bias;
  setup.top_logprobs = request.top_logprobs;
  setup.prompt = request.prompt;
  TokenPicker picker(setup);
  std::vector<float> logits(static_cast<std::size_t>(model.vocab_size()));

  const auto prefill_start = std::chrono::steady_clock::now();
  if (request.prompt_logprobs < 0) {
    for (std::int64_t start = 0; start < prompt_length; start += request.prefill_chunk) {
      const std::int64_t rows = std::min(request.prefill_chunk, prompt_length - start);
      model.forward(std::span(request.prompt).subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(rows)),
                    start, cache, Logits::LastRow, logits);
    }
  } else {
    // Every row's logits are needed; smaller chunks bound the buffer (rows x vocab).
    const std::int64_t chunk = std::min<std::int64_t>(request.prefill_chunk, 64);
    const auto vocab = static_cast<std::size_t>(model.vocab_size());
    std::vector<float> rows_logits(static_cast<std::size_t>(chunk) * vocab);
    std::vector<TokenStep> prompt_steps;
    for (std::int64_t start = 0; start < prompt_length; start += chunk) {
      const std::int64_t rows = std::min(chunk, prompt_length - start);
      const auto out = std::span(rows_logits).first(static_cast<std::size_t>(rows) * vocab);
      model.forward(std::span(request.prompt).subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(rows)),
                    start, cache, Logits::AllRows, out);
      for (std::int64_t r = 0; r < rows; ++r) {
        const auto row = out.subspan(static_cast<std::size_t>(r) * vocab, vocab);
        const std::int64_t next = start + r + 1;
        if (next < prompt_length) {
          prompt_steps.push_back(score_token(row, request.prompt[static_cast<std::size_t>(next)], request.prompt_logprobs));
        } else {
          std::copy(row.begin(), row.end(), logits.begin());
        }
      }
    }
    if (on_prompt) on_prompt(prompt_steps);
  }
  result.prefill_seconds = seconds_since(prefill_start);
  if (budget == 0) return result;  // only the prompt was asked about

  const auto decode_start = std::chrono::steady_clock::now();
  std::int64_t position = prompt_length;
  while (true) {
    const TokenStep step = picker.pick(logits);
    const TokenId token = step.token;
    result.tokens.push_back(token);
    if (on_token && !on_token(step)) {
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
