#include "scheduler/generate.h"

#include <algorithm>
#include <optional>

#include "common/error.h"
#include "engine/model_runner.h"
#include "scheduler/step_scheduler.h"

namespace nibble::scheduler {

GenerationResult generate(engine::Model& model, const SequenceRequest& request,
                          const std::function<bool(const engine::TokenStep&)>& on_token,
                          const std::function<void(const std::vector<engine::TokenStep>&)>& on_prompt,
                          const GenerateOptions& options) {
  if (request.max_tokens < 0) fail("max_tokens must be >= 0");
  if (options.prefill_chunk <= 0) fail("prefill_chunk must be positive");
  StepSchedulerOptions policy_options;
  policy_options.max_num_seqs = 1;
  // Scoring the prompt needs every row's logits; smaller chunks bound that buffer (rows x vocab).
  policy_options.max_num_batched_tokens =
      request.prompt_logprobs >= 0 ? std::min<std::int64_t>(options.prefill_chunk, 64) : options.prefill_chunk;
  const std::int64_t context = model.config().max_position_embeddings;
  policy_options.context_length = context;
  // Room for every position the sequence can reach, and one more: it never waits or is preempted.
  const auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  const std::int64_t positions = std::min(prompt_length + std::min(request.max_tokens, context), context) + 1;
  policy_options.block_size = kGenerateBlockSize;
  policy_options.num_blocks = static_cast<std::int32_t>((positions + kGenerateBlockSize - 1) / kGenerateBlockSize);

  StepScheduler policy(policy_options);
  engine::ModelRunner runner(model, policy_options.num_blocks, policy_options.block_size, options.kv_dtype,
                             options.before_step);
  constexpr ChoiceId kChoice = 1;
  policy.add(request, {{kChoice, request.sampling.seed}}, Clock::now());

  GenerationResult result;
  std::optional<SequenceEnd> end;
  bool cancelled = false;
  while (!end) {
    if (cancelled) policy.end_choice(kChoice, FinishReason::Cancelled);
    const engine::StepPlan plan = policy.schedule(Clock::now());
    if (!plan.sequences.empty()) {
      // Not commit(execute(plan), Clock::now()): argument order is unspecified and
      // GCC reads the clock first, which dated every step's end to its start (the
      // prompt's time landed in decode_seconds, prefill_seconds read ~16 us).
      const engine::StepOutput output = runner.execute(plan);
      policy.commit(output, Clock::now());
    }
    auto events = policy.take_events();
    if (plan.sequences.empty() && events.empty()) fail("internal error: a lone sequence was not scheduled");
    for (auto& event : events) {
      if (auto* scores = std::get_if<PromptLogprobs>(&event.what)) {
        if (on_prompt) on_prompt(scores->steps);
      } else if (auto* step = std::get_if<engine::TokenStep>(&event.what)) {
        result.tokens.push_back(step->token);
        if (on_token && !on_token(*step)) cancelled = true;
      } else if (auto* ended = std::get_if<SequenceEnd>(&event.what)) {
        end = std::move(*ended);
      }
    }
  }
  if (end->reason == FinishReason::Error || end->reason == FinishReason::ConstraintDeadEnd) fail("{}", end->error);
  result.finish = end->reason;
  result.prefill_seconds = end->prefill_seconds;
  result.decode_seconds = end->decode_seconds;
  return result;
}

std::int32_t cache_blocks_for(std::int64_t context) {
  return static_cast<std::int32_t>((context + 1 + kGenerateBlockSize - 1) / kGenerateBlockSize);
}

}  // namespace nibble::scheduler
