#include "scheduler/batch_scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <utility>

#include "common/error.h"

namespace nibble::scheduler {
namespace {

StepSchedulerOptions policy_options(const BatchSchedulerOptions& options, const engine::Model& model) {
  if (options.max_waiting < 1) fail("batch scheduler: max_waiting must be at least 1");
  StepSchedulerOptions out;
  out.max_num_seqs = options.max_num_seqs;
  out.max_num_batched_tokens = options.max_num_batched_tokens;
  out.num_blocks = options.num_blocks;
  out.block_size = options.block_size;
  out.context_length = model.config().max_position_embeddings;
  return out;
}

}  // namespace

BatchScheduler::BatchScheduler(engine::Model& model, const BatchSchedulerOptions& options)
    : options_(options),
      policy_(policy_options(options, model)),
      runner_(model, options.num_blocks, options.block_size, options.kv_dtype, options.before_step) {
  kv_blocks_free_ = policy_.blocks().num_free_blocks();
  worker_ = std::thread([this] { work(); });
}

BatchScheduler::~BatchScheduler() { stop(std::chrono::milliseconds(0)); }

std::shared_ptr<Ticket> BatchScheduler::submit(SequenceRequest request, std::shared_ptr<SequenceSink> sink) {
  const std::uint64_t seed = request.sampling.seed;
  return submit_group(std::move(request), {ForkedChoice{seed, std::move(sink)}}).front();
}

std::vector<std::shared_ptr<Ticket>> BatchScheduler::submit_group(SequenceRequest request,
                                                                  std::vector<ForkedChoice> choices) {
  if (choices.empty()) return {};
  Submission submission{std::move(request), {}, Clock::now()};
  std::vector<std::shared_ptr<Ticket>> tickets;
  const auto width = static_cast<std::int64_t>(choices.size());
  {
    const std::lock_guard lock(mutex_);
    if (!accepting_) throw Overloaded("the server is shutting down");
    // A group becomes `width` sequences, so it takes that many places; one wider than
    // the whole queue would never fit, so it may enter an empty queue.
    if (waiting_count_ > 0 && waiting_count_ + width > options_.max_waiting) {
      throw Overloaded(fmt::format("{} requests are already waiting", waiting_count_));
    }
    for (auto& choice : choices) {
      const ChoiceId id = next_choice_++;
      tickets.push_back(std::make_shared<Ticket>());
      submission.choices.push_back({id, choice.seed});
      incoming_listeners_[id] = {std::make_shared<SinkChannel>(std::move(choice.sink)), tickets.back(), 0};
    }
    incoming_.push_back(std::move(submission));
    waiting_count_ += width;
  }
  changed_.notify_all();
  return tickets;
}

SchedulerLoad BatchScheduler::load() const {
  const std::lock_guard lock(mutex_);
  return {running_count_,  waiting_count_,           kv_usage_, stats_.steps, stats_.step_tokens, stats_.preemptions,
          stats_.prefix_queried_tokens, stats_.prefix_hit_tokens, stats_.copied_blocks, options_.num_blocks,
          kv_blocks_free_};
}

StepLoopHealth BatchScheduler::health() const {
  const std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  StepLoopHealth health;
  health.turns = turns_;
  if (!waiting_for_work_) {
    health.stalled_seconds = std::chrono::duration<double>(now - progress_at_).count();
  } else if (!incoming_.empty()) {
    // Work arrived and the loop has not woken up to take it.
    health.stalled_seconds = std::chrono::duration<double>(now - incoming_.front().submitted).count();
  }
  return health;
}

BatchStats BatchScheduler::stats() const {
  const std::lock_guard lock(mutex_);
  return stats_;
}

void BatchScheduler::stop(std::chrono::milliseconds drain_timeout) {
  std::unique_lock lock(mutex_);
  accepting_ = false;
  const auto idle = [&] { return waiting_count_ == 0 && running_count_ == 0; };
  if (!changed_.wait_for(lock, drain_timeout, idle)) {
    // Past the drain time: what is left ends as cancelled at the next step.
    for (const auto& [id, listener] : incoming_listeners_) listener.ticket->cancel();
    cancel_all_ = true;
    changed_.notify_all();
    changed_.wait(lock, idle);
  }
  quit_ = true;
  lock.unlock();
  changed_.notify_all();
  if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
}

// One step per turn, one step ahead of the sinks: step k runs while the events of
// step k-1 are delivered, and step k+1 is planned only once they have been, so what
// a sink did (cancel its ticket, throw) counts before the next plan, and a sink
// that blocks holds the steps after one more.
void BatchScheduler::work() {
  EventBatch previous;  // the last step's events, posted after the next plan
  while (true) {
    events_.wait_idle();
    if (!take_submissions(previous)) break;
    end_cancelled(previous);
    engine::StepPlan plan = policy_.schedule(Clock::now());
    publish_counts();
    events_.post(std::exchange(previous, {}));
    const bool stepped = !plan.sequences.empty();
    run_step(std::move(plan));
    previous = collect_events(stepped);
    turn_done();
  }
  events_.wait_idle();
}

void BatchScheduler::turn_done() {
  const std::lock_guard lock(mutex_);
  progress_at_ = Clock::now();
  ++turns_;
}

// Waits for work; false once stopped with nothing left to run or tell.
bool BatchScheduler::take_submissions(const EventBatch& previous) {
  std::unique_lock lock(mutex_);
  const auto has_work = [&] { return !incoming_.empty() || !policy_.idle(); };
  if (previous.empty() && !quit_ && !has_work()) {
    waiting_for_work_ = true;
    changed_.wait(lock, [&] { return quit_ || has_work(); });
    waiting_for_work_ = false;
    progress_at_ = Clock::now();
  }
  if (quit_ && !has_work() && previous.empty()) return false;
  for (auto& submission : incoming_) {
    policy_.add(std::move(submission.request), std::move(submission.choices), submission.submitted);
  }
  incoming_.clear();
  listeners_.merge(incoming_listeners_);
  if (cancel_all_) {
    for (const auto& [id, listener] : listeners_) listener.ticket->cancel();
  }
  return true;
}

// Choices whose ticket was cancelled or whose sink failed end before the next plan.
// A token of theirs computed meanwhile (in `previous`, not yet told) is withheld:
// nothing reaches a choice after its cancel was seen.
void BatchScheduler::end_cancelled(EventBatch& previous) {
  for (auto& [id, listener] : listeners_) {
    const auto failure = listener.channel->failure();
    if (!failure && !listener.ticket->cancelled()) continue;
    const ChoiceId choice = id;
    const auto withheld = std::erase_if(previous.events, [&](const EventBatch::Delivery& delivery) {
      return delivery.event.choice == choice && std::holds_alternative<engine::TokenStep>(delivery.event.what);
    });
    listener.withheld_tokens += static_cast<std::int64_t>(withheld);
    if (failure) {
      policy_.end_choice(id, FinishReason::Error, *failure);
    } else {
      policy_.end_choice(id, FinishReason::Cancelled);
    }
  }
}

void BatchScheduler::run_step(engine::StepPlan plan) {
  try {
    const engine::StepOutput output = runner_.execute(plan);
    policy_.commit(output, Clock::now());
  } catch (const std::exception& e) {
    policy_.fail_step(e.what(), Clock::now());
  }
}

// The step's events for the event thread, with its counts to publish before the ends.
EventBatch BatchScheduler::collect_events(bool stepped) {
  EventBatch batch;
  for (StepEvent& event : policy_.take_events()) {
    const auto found = listeners_.find(event.choice);
    if (found == listeners_.end()) continue;  // cannot happen: every choice ends once
    auto channel = found->second.channel;
    if (auto* end = std::get_if<SequenceEnd>(&event.what)) {
      end->generated_tokens -= found->second.withheld_tokens;
      listeners_.erase(found);
    }
    batch.events.push_back({std::move(channel), std::move(event)});
  }
  if (batch.events.empty() && !stepped) return batch;  // nothing happened: nothing to wait for
  const double usage = policy_.kv_cache_usage();
  const std::int64_t free_blocks = policy_.blocks().num_free_blocks();
  const BatchStats stats = policy_.stats();
  batch.publish = [this, usage, free_blocks, stats] {
    const std::lock_guard lock(mutex_);
    kv_usage_ = usage;
    kv_blocks_free_ = free_blocks;
    stats_ = stats;
  };
  return batch;
}

// Counted out before their sinks hear the end, so load() never lags the events;
// admitted sequences count as running while their step is on the model.
void BatchScheduler::publish_counts() {
  {
    const std::lock_guard lock(mutex_);
    waiting_count_ = policy_.waiting_choices();
    for (const auto& submission : incoming_) waiting_count_ += static_cast<std::int64_t>(submission.choices.size());
    running_count_ = policy_.running_choices();
  }
  changed_.notify_all();
}

}  // namespace nibble::scheduler
