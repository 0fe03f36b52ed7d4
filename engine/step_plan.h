#pragma once
// One step as plain data: what the scheduling policy decided (StepPlan) and what
// running it produced (StepOutput). Neither points into scheduler state nor names a
// model type, so a plan can be copied, logged, and later sent by rank 0 to the other
// ranks of a tensor- or pipeline-parallel group, which execute the same plan.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/token.h"
#include "engine/sampler.h"
#include "engine/token_constraint.h"

namespace nibble::engine {

using SequenceId = std::uint64_t;  // stable while the sequence runs (a preempted one keeps it)
using SamplerId = std::uint64_t;   // one per choice: a forked group has one per fork

// Copy-on-write: copy the K/V of the first `tokens` slots of block `src` into `dst`
// (every layer) before the step writes into `dst`.
struct BlockCopy {
  std::int32_t src = 0;
  std::int32_t dst = 0;
  std::int32_t tokens = 0;
  bool operator==(const BlockCopy&) const = default;
};

// How one choice picks its tokens; sent once, in the step of its first pick. The
// sampler then lives (with its RNG and penalty counts) until its id is freed, across
// preemptions of its sequence.
struct SamplerSetup {
  SamplerId id = 0;
  SamplingParams sampling;  // seed included: the choice's own
  std::map<TokenId, float> logit_bias;
  int top_logprobs = -1;        // -1: none; N >= 0: the token's log-probability and N alternatives
  std::vector<TokenId> prompt;  // what repetition_penalty counts besides the output
  // The output's grammar (JSON Schema, regex, ...), or none. The one field that is
  // not plain data: an immutable compiled object shared by the choices using it
  // (ranks that only run the forward never read it).
  std::shared_ptr<const TokenConstraint> constraint;
};

// One sequence's part of the step.
struct ScheduledSequence {
  SequenceId id = 0;
  std::vector<TokenId> tokens;         // computed this step, at positions start..
  std::int64_t start = 0;
  std::vector<std::int32_t> block_table;  // covers start + tokens.size() positions
  // Logits of every row (prompt log-probabilities) or only the last.
  bool all_rows = false;
  // With all_rows: row r scores score_targets[r] (the prompt's next token), with
  // score_top alternatives; rows past the end score nothing.
  std::vector<TokenId> score_targets;
  int score_top = 0;
  // Each picks a token from the last row, in order, from its own copy of the logits
  // (the first from the buffer itself, after the others). Empty while prefill chunks
  // remain; several when a group of choices forks after its prompt.
  std::vector<SamplerId> samplers;
};

struct StepPlan {
  std::vector<BlockCopy> copies;             // before the forward
  std::vector<SamplerSetup> new_samplers;    // before their first pick
  std::vector<SamplerId> finished_samplers;  // their state can go
  std::vector<ScheduledSequence> sequences;  // the forward's batch, in order

  std::int64_t num_tokens() const {
    std::int64_t n = 0;
    for (const auto& sequence : sequences) n += static_cast<std::int64_t>(sequence.tokens.size());
    return n;
  }
};

// One picked token as sinks see it. Log-probabilities are the model's own
// (log-softmax of its logits, before bias, penalties and temperature), as OpenAI and
// vLLM report them.
struct TokenStep {
  TokenId token = 0;
  float logprob = 0;                           // when top_logprobs >= 0
  std::vector<std::pair<TokenId, float>> top;  // the top_logprobs most likely, best first
};

struct SampledToken {
  SamplerId sampler = 0;
  TokenStep step;
  std::string error;  // not empty: this choice could not pick (its step is meaningless)
  bool dead_end = false;  // with error: because its output constraint allowed no token
};

struct PromptScores {
  SequenceId sequence = 0;
  std::vector<TokenStep> steps;  // for the rows of this step that scored a token, in order
};

struct StepOutput {
  std::vector<SampledToken> tokens;          // in plan order, each sequence's samplers in order
  std::vector<PromptScores> prompt_scores;   // sequences with all_rows and targets
};

}  // namespace nibble::engine
