#pragma once
// The continuous-batching policy without a model: requests and their KV blocks in,
// one StepPlan per step out, and the step's StepOutput (picked tokens, prompt
// scores) committed back. It decides admission (first come, first served), the
// token budget split between decodes and prefill chunks, max_num_seqs, preemption
// of the newest when blocks run out, prefix-cache reuse, forking a group after its
// prompt (copy-on-write), and every end (stop token, max_tokens, context, errors).
// What it decides reaches the request side as StepEvents, in order per choice.
//
// Single-threaded: BatchScheduler's step thread (or generate()) owns it. Tests drive
// it with chosen token ids instead of a model (tests/unit/step_scheduler_test.cpp).
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "engine/step_plan.h"
#include "scheduler/block_manager.h"
#include "scheduler/scheduler.h"

namespace nibble::scheduler {

using ChoiceId = engine::SamplerId;  // a choice samples with the sampler of the same id

struct StepSchedulerOptions {
  std::int64_t max_num_seqs = 64;             // sequences in one step at most
  std::int64_t max_num_batched_tokens = 512;  // tokens in one step at most (decodes + prefill chunks)
  std::int32_t num_blocks = 1024;             // KV-cache blocks in the pool
  std::int32_t block_size = 16;               // positions per block
  std::int64_t context_length = 0;            // the model's positions: prompt + generated never exceed it
};

// What the scheduler has done, for metrics.
struct BatchStats {
  std::int64_t steps = 0;
  std::int64_t step_tokens = 0;  // summed over steps: tokens per step = step_tokens / steps
  std::int64_t preemptions = 0;
  std::int64_t prefix_queried_tokens = 0;
  std::int64_t prefix_hit_tokens = 0;
  std::int64_t copied_blocks = 0;  // copy-on-write: a fork wrote into a partly filled block it shared
};

// One choice of a request: the id its events and sampler carry, and its seed.
struct ChoiceSeed {
  ChoiceId id = 0;
  std::uint64_t seed = 0;
};

struct PromptLogprobs {
  std::vector<engine::TokenStep> steps;  // the prompt's tokens 1..n-1
};

// One event for one choice, in the order its sink must hear them.
struct StepEvent {
  ChoiceId choice = 0;
  std::variant<SequenceStart, PromptLogprobs, engine::TokenStep, SequenceEnd> what;
};

class StepScheduler {
 public:
  // Throws nibble::Error for options that cannot work.
  explicit StepScheduler(const StepSchedulerOptions& options);
  ~StepScheduler();
  StepScheduler(const StepScheduler&) = delete;
  StepScheduler& operator=(const StepScheduler&) = delete;

  // Queues a request with its choices (one, or a group that computes the prompt
  // once and forks). Choice ids must be unique among those not yet finished.
  void add(SequenceRequest request, std::vector<ChoiceSeed> choices, Clock::time_point submitted);
  // Ends one choice now (cancelled, its sink failed); the rest of a group goes on.
  // Only between commit() and schedule(). Unknown or finished ids are ignored.
  void end_choice(ChoiceId id, FinishReason reason, std::string error = {});

  // The next step. Sequences past their deadline end first (Timeout), then running
  // sequences are planned oldest first, then waiting ones are admitted.
  engine::StepPlan schedule(Clock::time_point now);
  // What executing the last plan produced.
  void commit(const engine::StepOutput& output, Clock::time_point now);
  // Executing the last plan failed: its sequences end with `error`, and blocks they
  // had not written yet are not kept for reuse.
  void fail_step(const std::string& error, Clock::time_point now);

  // Events since the last call, in order.
  std::vector<StepEvent> take_events();

  bool idle() const { return waiting_.empty() && running_.empty(); }
  // In choices: a group waiting or prefilling counts as what it forks into.
  std::int64_t waiting_choices() const;
  std::int64_t running_choices() const;
  double kv_cache_usage() const { return blocks_.usage(); }
  BatchStats stats() const;
  const BlockManager& blocks() const { return blocks_; }

 private:
  struct Choice;
  struct Sequence;
  struct Planned {
    Sequence* sequence;
    std::int64_t tokens;  // computed this step, from sequence->computed on
  };

  void drop_expired(Clock::time_point now);
  void schedule_running(engine::StepPlan& plan);
  void schedule_waiting(engine::StepPlan& plan, Clock::time_point now);
  std::string admission_problem(const Sequence& sequence) const;
  bool has_room_for(const Sequence& sequence) const;
  void plan_sequence(Sequence& sequence, std::int64_t count, engine::StepPlan& plan);
  void advance(Sequence& sequence, const engine::StepOutput& output, Clock::time_point now);
  std::vector<Sequence*> fork_group(Sequence& sequence);
  void take_token(Sequence& sequence, const engine::StepOutput& output, Clock::time_point now);
  void preempt_newest();
  void finish(Sequence& sequence, FinishReason reason, Clock::time_point now, std::string error = {},
              bool written = true);
  void end_choice_at(Sequence& sequence, std::size_t index, FinishReason reason, Clock::time_point now,
                     std::string error);
  void release(Sequence& sequence, bool written);
  void collect_ended();
  template <typename What>
  void emit(ChoiceId choice, What what);

  const StepSchedulerOptions options_;
  BlockManager blocks_;
  std::deque<std::unique_ptr<Sequence>> waiting_;   // FCFS; preempted ones go back to the front
  std::vector<std::unique_ptr<Sequence>> running_;  // admitted, oldest first
  std::vector<Planned> planned_;                    // the last plan's sequences, until commit
  std::int64_t budget_ = 0;
  engine::SequenceId next_sequence_id_ = 1;
  std::vector<engine::SamplerId> finished_samplers_;  // for the next plan
  std::vector<StepEvent> events_;
  BatchStats stats_;
};

}  // namespace nibble::scheduler
