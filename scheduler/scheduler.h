#pragma once
// The boundary between the API server and the model: sequence requests in, events
// out (see README.md). The server sees only this interface; BatchScheduler
// implements it.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/step_plan.h"
#include "engine/sampler.h"

namespace nibble::scheduler {


using Clock = std::chrono::steady_clock;

struct SequenceRequest {
  std::vector<TokenId> prompt;
  engine::SamplingParams sampling;
  std::int64_t max_tokens = 16;  // also capped by the model's context
  std::vector<TokenId> stop_tokens;
  std::map<TokenId, float> logit_bias;
  std::shared_ptr<const engine::TokenConstraint> constraint;  // none: free text
  int top_logprobs = -1;  // -1: none; N >= 0: the token's log-probability and N alternatives
  int prompt_logprobs = -1;  // the same for the prompt's tokens (echo with logprobs)
  std::optional<Clock::time_point> deadline;  // past it, the sequence ends as Timeout
};

// ConstraintDeadEnd: the output constraint (grammar) allowed no next token.
enum class FinishReason { Stop, Length, Cancelled, Timeout, Error, ConstraintDeadEnd };
const char* finish_reason_name(FinishReason reason);

struct SequenceStart {
  double queue_seconds = 0;
  std::int64_t prompt_tokens = 0;
};

struct SequenceEnd {
  FinishReason reason = FinishReason::Length;
  std::string error;  // FinishReason::Error / ConstraintDeadEnd: why (prompt longer than the context, ...)
  std::int64_t prompt_tokens = 0;
  std::int64_t generated_tokens = 0;
  double queue_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Receives one sequence's events, in order, on the scheduler's event thread (never
// the thread that runs the model): on_started once unless the sequence ends while
// queued, on_token per token, then exactly one on_finished. Implementations may
// detokenize and format here, but should not block: the steps wait for a slow sink
// after running one step ahead of it.
class SequenceSink {
 public:
  virtual ~SequenceSink() = default;
  virtual void on_started(const SequenceStart& start) = 0;
  // With prompt_logprobs >= 0: the prompt's tokens 1..n-1, once, before on_token.
  virtual void on_prompt_logprobs(const std::vector<engine::TokenStep>& /*steps*/) {}
  virtual void on_token(const engine::TokenStep& step) = 0;
  virtual void on_finished(const SequenceEnd& end) = 0;
};

// The submitter's hold on a sequence. cancel() is safe from any thread; the
// scheduler checks it between decode steps, so cancelling frees the sequence's
// KV cache within one step.
class Ticket {
 public:
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// submit() refuses at once when the queue is full or the scheduler is stopping;
// the server answers 429 / 503 with Retry-After.
class Overloaded : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SchedulerLoad {
  std::int64_t running = 0;
  std::int64_t waiting = 0;
  double kv_cache_usage = 0;  // fraction of the KV-cache capacity holding tokens
  // Totals since the start, for throughput metrics (zero where a scheduler has no such thing).
  std::int64_t steps = 0;        // forward passes
  std::int64_t step_tokens = 0;  // tokens over all steps: per step = step_tokens / steps
  std::int64_t preemptions = 0;
  std::int64_t prefix_cache_queried_tokens = 0;
  std::int64_t prefix_cache_hit_tokens = 0;
  std::int64_t copied_blocks = 0;  // copy-on-write copies of a block shared by forked choices
  // KV-cache blocks (paged schedulers; 0 where there are none). Free counts what
  // an allocation can take (cached prefixes included): equal to the total when
  // idle, so a leaked block shows (scripts/soak checks it).
  std::int64_t kv_blocks_total = 0;
  std::int64_t kv_blocks_free = 0;
};

// Whether the step loop is making progress, for the server's liveness and
// readiness probes: a loop that is stuck (a hung kernel, a deadlock, a sink that
// never returns) still answers HTTP, so "the port is open" says nothing.
struct StepLoopHealth {
  // How long the loop has had work without finishing a turn: a step in progress,
  // or submissions waiting for the loop to take them. 0 while it is idle.
  double stalled_seconds = 0;
  std::int64_t turns = 0;  // turns of the loop completed since the start
};

// One choice of a group (n > 1, best_of): what differs from its siblings.
struct ForkedChoice {
  std::uint64_t seed = 0;  // replaces the request's sampling seed
  std::shared_ptr<SequenceSink> sink;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Queues the sequence; its events go to `sink`. Throws Overloaded.
  virtual std::shared_ptr<Ticket> submit(SequenceRequest request, std::shared_ptr<SequenceSink> sink) = 0;
  // Queues one sequence per choice, all continuing the same `request`; returns
  // their tickets in order, each cancelling its choice alone. Each choice's events
  // are those it would get submitted alone with its seed, and so are its tokens. A
  // scheduler that can (BatchScheduler) computes the prompt once for the group;
  // this default submits the choices one by one. Throws Overloaded, after
  // cancelling whatever it had already queued.
  virtual std::vector<std::shared_ptr<Ticket>> submit_group(SequenceRequest request,
                                                            std::vector<ForkedChoice> choices);
  virtual SchedulerLoad load() const = 0;
  virtual StepLoopHealth health() const = 0;
  // Stops accepting; sequences already submitted run to their end (drain) until
  // `drain_timeout`, after which the rest are cancelled. Returns when all ended.
  virtual void stop(std::chrono::milliseconds drain_timeout) = 0;
};

}  // namespace nibble::scheduler
