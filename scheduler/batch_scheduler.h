#pragma once
// Continuous (iteration-level) batching over a paged KV cache: every step runs the
// decode token of each running sequence plus prefill chunks of waiting ones, so
// all of them share one pass over the weights. Blocks come from the
// BlockManager (prefix caching, copy-on-write); when they run out the newest
// sequences are preempted (their blocks freed, recomputed later), never dropped.
// Same Scheduler interface as the serial worker: the server does not change.
// A group (submit_group: n > 1, best_of) computes its prompt once and then forks
// into one sequence per choice, sharing the prompt's blocks.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/decoder_model.h"
#include "engine/paged_kv_cache.h"
#include "scheduler/block_manager.h"
#include "scheduler/scheduler.h"

namespace nibble::scheduler {

struct BatchSchedulerOptions {
  std::int64_t max_num_seqs = 64;             // sequences in one step at most
  std::int64_t max_num_batched_tokens = 512;  // tokens in one step at most (decodes + prefill chunks)
  std::int32_t num_blocks = 1024;             // KV-cache blocks in the pool
  std::int32_t block_size = 16;               // positions per block
  engine::KvDtype kv_dtype = engine::KvDtype::Float32;
  std::int64_t max_waiting = 256;             // queued sequences before submit() refuses
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
  void stop(std::chrono::milliseconds drain_timeout) override;
  BatchStats stats() const;

 private:
  struct Choice;
  struct Sequence;
  struct Notice {  // an on_finished to send once the step's counts are published
    std::shared_ptr<SequenceSink> sink;
    SequenceEnd end;
  };

  void work();
  void step();
  void schedule_running();   // running sequences first, oldest first, preempting the newest when blocks run out
  void schedule_waiting();   // then the queue, first come first served, while budget and blocks last
  bool has_room_for(const Sequence& sequence) const;  // within max_num_seqs
  void plan(Sequence& sequence, std::int64_t count);
  void advance(Sequence& sequence, std::span<float> logits);
  std::vector<Sequence*> fork_group(Sequence& sequence);
  void pick_next(Sequence& sequence, std::span<float> logits);
  void preempt_newest();
  void tell(Sequence& sequence, const std::function<void(SequenceSink&)>& event);
  void end_choice(Sequence& sequence, std::size_t index, FinishReason reason, std::string error = {});
  void finish(Sequence& sequence, FinishReason reason, std::string error = {}, bool written = true);
  void release(Sequence& sequence, bool written);
  void drop_ended();
  void collect_ended();
  void publish_and_notify_ended();

  engine::Model& model_;
  const BatchSchedulerOptions options_;
  BlockManager blocks_;
  engine::PagedKvCache cache_;

  // Shared with submit(), load() and stop().
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::unique_ptr<Sequence>> incoming_;
  // Choices, not sequences: a group waiting or prefilling counts as what it forks into.
  std::int64_t waiting_count_ = 0;  // incoming_ + waiting_
  std::int64_t running_count_ = 0;
  double kv_usage_ = 0;
  std::int64_t kv_blocks_free_ = 0;
  BatchStats stats_;
  bool accepting_ = true;
  bool cancel_all_ = false;  // the drain timed out
  bool quit_ = false;

  // The worker's own.
  std::deque<std::unique_ptr<Sequence>> waiting_;   // FCFS; preempted ones go back to the front
  std::vector<std::unique_ptr<Sequence>> running_;  // admitted, oldest first
  struct Planned {
    Sequence* sequence;
    std::int64_t tokens;  // to compute this step, from sequence->computed on
  };
  std::vector<Planned> plan_;
  std::int64_t budget_ = 0;
  std::vector<float> logits_;
  std::vector<Notice> finished_;  // choices that ended this step

  std::thread worker_;
};

}  // namespace nibble::scheduler
