#pragma once
// One request generated to its end on the calling thread, through the same
// policy, plan and runner as the batch scheduler (a batch of one): chunked prefill
// of the prompt, then decode steps until a stop token, the token budget, the
// context, or the caller says stop. For `nibble generate`, tools and tests.
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/model.h"
#include "engine/paged_kv_cache.h"
#include "engine/step_plan.h"
#include "scheduler/scheduler.h"

namespace nibble::scheduler {

struct GenerateOptions {
  std::int64_t prefill_chunk = 512;  // prompt tokens per forward pass (64 at most when scoring the prompt)
  engine::KvDtype kv_dtype = engine::KvDtype::Float32;
  // Sees each plan before it runs (tensor parallelism: rank 0 sends it to the
  // other ranks, whose caches must hold at least cache_blocks_for(context)).
  std::function<void(const engine::StepPlan&)> before_step;
};

// Blocks of kGenerateBlockSize positions that any one generation within
// `context` positions can use: what the other ranks of a tensor-parallel
// generate allocate without knowing the request.
inline constexpr std::int32_t kGenerateBlockSize = 16;
std::int32_t cache_blocks_for(std::int64_t context);

struct GenerationResult {
  std::vector<TokenId> tokens;
  FinishReason finish = FinishReason::Length;  // Stop, Length, Cancelled or Timeout (past the request's deadline)
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// on_token sees every generated token as soon as it is picked; returning false
// cancels. With prompt_logprobs >= 0 (even with max_tokens 0), on_prompt receives
// the prompt's tokens 1..n-1 with theirs after the prefill, before the first token.
// Throws nibble::Error when the request cannot run (an empty prompt, one that does
// not fit the context, a logit_bias outside the vocabulary) or the model fails.
GenerationResult generate(engine::Model& model, const SequenceRequest& request,
                          const std::function<bool(const engine::TokenStep&)>& on_token = {},
                          const std::function<void(const std::vector<engine::TokenStep>&)>& on_prompt = {},
                          const GenerateOptions& options = {});

}  // namespace nibble::scheduler
