#pragma once
// Continuous (iteration-level) batching over a paged KV cache: every step runs the
// decode token of each running sequence plus prefill chunks of waiting ones, so
// all of them share one pass over the weights. This class is the thread loop
// around three parts: the policy (StepScheduler: which sequences, which blocks,
// preemption, forks) plans a step, the ModelRunner executes it, the policy commits
// what it produced, and the events go to the sinks on an EventThread while the next
// step runs. A group (submit_group: n > 1, best_of) computes its prompt once and
// then forks into one sequence per choice, sharing the prompt's blocks.
#include <condition_variable>
#include <functional>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/decoder_model.h"
#include "engine/model_runner.h"
#include "engine/paged_kv_cache.h"
#include "scheduler/event_thread.h"
#include "scheduler/scheduler.h"
#include "scheduler/step_scheduler.h"

namespace nibble::scheduler {

struct BatchSchedulerOptions {
  std::int64_t max_num_seqs = 64;             // sequences in one step at most
  std::int64_t max_num_batched_tokens = 512;  // tokens in one step at most (decodes + prefill chunks)
  std::int32_t num_blocks = 1024;             // KV-cache blocks in the pool
  std::int32_t block_size = 16;               // positions per block
  engine::KvDtype kv_dtype = engine::KvDtype::Float32;
  std::int64_t max_waiting = 256;             // queued sequences before submit() refuses
  // Sees each plan on the step thread before it runs (tensor parallelism: rank 0
  // sends it to the other ranks; engine/plan_broadcast.h).
  std::function<void(const engine::StepPlan&)> before_step;
};

class BatchScheduler final : public Scheduler {
 public:
  // `model` must outlive the scheduler. Throws nibble::Error for options that
  // cannot work (no blocks, a budget below one token).
  BatchScheduler(engine::Model& model, const BatchSchedulerOptions& options);
  ~BatchScheduler() override;

  std::shared_ptr<Ticket> submit(SequenceRequest request, std::shared_ptr<SequenceSink> sink) override;
  // The group is one sequence until its prompt is computed (chunked as usual, prompt
  // log-probabilities told to every choice), then forks: every choice picks its first
  // token from the same logits with its own sampler, and the forks share the
  // prompt's blocks, copying a shared partial block before writing into it. It takes
  // one place per choice in the queue (a group wider than max_waiting only enters an
  // empty queue) and in max_num_seqs (a wider one runs alone).
  std::vector<std::shared_ptr<Ticket>> submit_group(SequenceRequest request,
                                                    std::vector<ForkedChoice> choices) override;
  SchedulerLoad load() const override;
  StepLoopHealth health() const override;
  // Returns once every sink has heard its on_finished.
  void stop(std::chrono::milliseconds drain_timeout) override;
  BatchStats stats() const;

 private:
  struct Submission {
    SequenceRequest request;
    std::vector<ChoiceSeed> choices;
    Clock::time_point submitted;
  };
  // The step thread's view of a choice.
  struct Listener {
    std::shared_ptr<SinkChannel> channel;
    std::shared_ptr<Ticket> ticket;
    std::int64_t withheld_tokens = 0;  // computed but never delivered: it was cancelled first
  };

  void work();
  bool take_submissions(const EventBatch& previous);
  void end_cancelled(EventBatch& previous);
  void run_step(engine::StepPlan plan);
  EventBatch collect_events(bool stepped);
  void publish_counts();
  void turn_done();

  const BatchSchedulerOptions options_;
  StepScheduler policy_;       // the step thread's
  engine::ModelRunner runner_;  // the step thread's
  std::unordered_map<ChoiceId, Listener> listeners_;  // the step thread's: choices not yet ended

  // Shared with submit(), load(), stop() and the event thread.
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Submission> incoming_;
  std::unordered_map<ChoiceId, Listener> incoming_listeners_;
  ChoiceId next_choice_ = 1;
  // Choices, not sequences: a group waiting or prefilling counts as what it forks into.
  std::int64_t waiting_count_ = 0;  // incoming_ + the policy's queue
  std::int64_t running_count_ = 0;
  double kv_usage_ = 0;   // as of the step whose events were delivered last
  std::int64_t kv_blocks_free_ = 0;  // the same
  BatchStats stats_;      // the same
  // The step loop's heartbeat: when it last finished a turn or went idle, and
  // whether it is now waiting for work (then only submissions it has not taken
  // can be stalled).
  Clock::time_point progress_at_ = Clock::now();
  bool waiting_for_work_ = false;
  std::int64_t turns_ = 0;
  bool accepting_ = true;
  bool cancel_all_ = false;  // the drain timed out
  bool quit_ = false;

  EventThread events_;
  std::thread worker_;
};

}  // namespace nibble::scheduler
