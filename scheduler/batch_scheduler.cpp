#include "scheduler/batch_scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <utility>

#include "common/error.h"
#include "engine/generator.h"

namespace nibble::scheduler {
namespace {

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Choices, not sequences: what load() reports and the limits count.
template <typename Sequences>
std::int64_t choices_in(const Sequences& sequences) {
  std::int64_t count = 0;
  for (const auto& sequence : sequences) count += static_cast<std::int64_t>(sequence->choices.size());
  return count;
}

template <typename Sequences>
void cancel_every_choice(const Sequences& sequences) {
  for (const auto& sequence : sequences) {
    for (const auto& choice : sequence->choices) choice.ticket->cancel();
  }
}

}  // namespace

// Who hears a sequence, and the seed it samples with.
struct BatchScheduler::Choice {
  std::shared_ptr<SequenceSink> sink;
  std::shared_ptr<Ticket> ticket;
  std::uint64_t seed = 0;
};

struct BatchScheduler::Sequence {
  SequenceRequest request;
  // One, except for a group until its prompt is computed: then every choice after
  // the first continues as a sequence of its own (fork_group). Empty once ended.
  std::vector<Choice> choices;
  Clock::time_point submitted;
  std::optional<Clock::time_point> scheduled;
  std::optional<Clock::time_point> first_token;
  std::vector<TokenId> tokens;  // the prompt, then every generated token
  std::int64_t prompt_length = 0;
  std::int64_t computed = 0;  // leading tokens whose keys and values are in the cache
  std::int64_t generated = 0;
  BlockTable table;  // a copied Sequence must take BlockManager::fork of it (fork_group)
  std::optional<engine::TokenPicker> picker;    // made at the first pick: a group's choices each get their own
  std::vector<engine::TokenStep> prompt_steps;  // prompt log-probabilities, gathered chunk by chunk
  bool prompt_scored = false;                   // delivered, or not asked for
  bool ended = false;

  std::int64_t pending() const { return static_cast<std::int64_t>(tokens.size()) - computed; }
  bool scores_prompt() const { return !prompt_scored && request.prompt_logprobs >= 0; }

  SequenceEnd end(FinishReason reason, std::string error) const {
    const auto now = Clock::now();
    SequenceEnd out;
    out.reason = reason;
    out.error = std::move(error);
    out.prompt_tokens = prompt_length;
    out.generated_tokens = generated;
    out.queue_seconds = seconds_between(submitted, scheduled.value_or(now));
    if (scheduled) out.prefill_seconds = seconds_between(*scheduled, first_token.value_or(now));
    if (first_token) out.decode_seconds = seconds_between(*first_token, now);
    return out;
  }
};

BatchScheduler::BatchScheduler(engine::Model& model, const BatchSchedulerOptions& options)
    : model_(model),
      options_(options),
      blocks_(options.num_blocks, options.block_size),
      cache_(model.make_kv_cache(options.num_blocks, options.block_size, options.kv_dtype)) {
  if (options.max_num_seqs < 1 || options.max_num_batched_tokens < 1 || options.max_waiting < 1) {
    fail("batch scheduler: max_num_seqs, max_num_batched_tokens and max_waiting must be at least 1");
  }
  kv_blocks_free_ = blocks_.num_free_blocks();
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
  auto sequence = std::make_unique<Sequence>();
  std::vector<std::shared_ptr<Ticket>> tickets;
  for (auto& choice : choices) {
    tickets.push_back(std::make_shared<Ticket>());
    sequence->choices.push_back({std::move(choice.sink), tickets.back(), choice.seed});
  }
  sequence->submitted = Clock::now();
  sequence->tokens = request.prompt;
  sequence->prompt_length = static_cast<std::int64_t>(request.prompt.size());
  sequence->request = std::move(request);
  const auto width = static_cast<std::int64_t>(tickets.size());
  {
    const std::lock_guard lock(mutex_);
    if (!accepting_) throw Overloaded("the server is shutting down");
    // A group becomes `width` sequences, so it takes that many places; one wider than
    // the whole queue would never fit, so it may enter an empty queue.
    if (waiting_count_ > 0 && waiting_count_ + width > options_.max_waiting) {
      throw Overloaded(fmt::format("{} requests are already waiting", waiting_count_));
    }
    incoming_.push_back(std::move(sequence));
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
    cancel_every_choice(incoming_);
    cancel_all_ = true;
    changed_.notify_all();
    changed_.wait(lock, idle);
  }
  quit_ = true;
  lock.unlock();
  changed_.notify_all();
  if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
}

void BatchScheduler::work() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return quit_ || !incoming_.empty() || !waiting_.empty() || !running_.empty(); });
      if (quit_ && incoming_.empty() && waiting_.empty() && running_.empty()) return;
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      if (cancel_all_) {
        cancel_every_choice(waiting_);
        cancel_every_choice(running_);
      }
    }
    step();
  }
}

void BatchScheduler::step() {
  drop_ended();
  plan_.clear();
  budget_ = options_.max_num_batched_tokens;
  schedule_running();
  schedule_waiting();
  {
    // Admitted sequences count as running while their step is on the model.
    const std::lock_guard lock(mutex_);
    waiting_count_ = choices_in(incoming_) + choices_in(waiting_);
    running_count_ = choices_in(running_);
  }

  std::vector<engine::BatchEntry> batch;
  std::int64_t logit_rows = 0, step_tokens = 0;
  for (const auto& [sequence, count] : plan_) {
    const auto logits = sequence->scores_prompt() ? engine::Logits::AllRows : engine::Logits::LastRow;
    batch.push_back({std::span(sequence->tokens).subspan(static_cast<std::size_t>(sequence->computed),
                                                         static_cast<std::size_t>(count)),
                     sequence->computed, sequence->table.blocks, logits});
    logit_rows += logits == engine::Logits::AllRows ? count : 1;
    step_tokens += count;
  }
  if (!batch.empty()) {
    const auto vocab = static_cast<std::size_t>(model_.vocab_size());
    logits_.resize(static_cast<std::size_t>(logit_rows) * vocab);
    bool ran = true;
    try {
      model_.forward_batch(batch, cache_, logits_);
    } catch (const std::exception& e) {
      ran = false;
      for (const auto& planned : plan_) finish(*planned.sequence, FinishReason::Error, e.what(), /*written=*/false);
    }
    std::size_t row = 0;
    for (std::size_t i = 0; ran && i < plan_.size(); ++i) {
      auto& sequence = *plan_[i].sequence;
      const std::int64_t count = plan_[i].tokens;
      const bool all_rows = batch[i].logits == engine::Logits::AllRows;
      const auto row_logits = [&](std::int64_t r) { return std::span(logits_).subspan((row + r) * vocab, vocab); };
      if (all_rows) {
        for (std::int64_t r = 0; r < count; ++r) {
          const std::int64_t next = sequence.computed + r + 1;
          if (next < sequence.prompt_length) {
            sequence.prompt_steps.push_back(engine::score_token(
                row_logits(r), sequence.tokens[static_cast<std::size_t>(next)], sequence.request.prompt_logprobs));
          }
        }
      }
      const auto last = row_logits(all_rows ? count - 1 : 0);
      row += static_cast<std::size_t>(all_rows ? count : 1);
      sequence.computed += count;
      if (sequence.pending() == 0) advance(sequence, last);
    }
  }
  {
    const std::lock_guard lock(mutex_);
    if (!batch.empty()) {
      ++stats_.steps;
      stats_.step_tokens += step_tokens;
    }
  }
  publish_and_notify_ended();
}

// Every known token is in the cache: deliver what the prompt scored, fork a group,
// then pick the next token from the last row's logits, or end.
void BatchScheduler::advance(Sequence& sequence, std::span<float> logits) {
  if (sequence.scores_prompt()) {
    tell(sequence, [&](SequenceSink& sink) { sink.on_prompt_logprobs(sequence.prompt_steps); });
    sequence.prompt_scored = true;
    sequence.prompt_steps.clear();
  }
  for (Sequence* fork : fork_group(sequence)) {
    // Picking changes the logits it is given (bias, penalties, temperature).
    std::vector<float> own(logits.begin(), logits.end());
    pick_next(*fork, own);
  }
  pick_next(sequence, logits);
}

// A group's prompt is in the cache: every choice after the first continues as a
// sequence of its own on a fork of the blocks, shared until one of them writes into
// a shared partial block (copy-on-write in plan()). The forks run right after the
// group's sequence, as old as it when the newest are preempted.
std::vector<BatchScheduler::Sequence*> BatchScheduler::fork_group(Sequence& sequence) {
  std::vector<Sequence*> forks;
  if (sequence.choices.size() < 2) return forks;
  auto position = std::ranges::find_if(running_, [&](const auto& running) { return running.get() == &sequence; });
  if (position == running_.end()) fail("internal error: a group forks while not running");
  for (std::size_t i = 1; i < sequence.choices.size(); ++i) {
    auto fork = std::make_unique<Sequence>(sequence);
    fork->choices = {sequence.choices[i]};
    fork->table = blocks_.fork(sequence.table);
    forks.push_back(fork.get());
    position = running_.insert(std::next(position), std::move(fork));
  }
  sequence.choices.resize(1);
  return forks;
}

void BatchScheduler::pick_next(Sequence& sequence, std::span<float> logits) {
  if (sequence.ended) return;
  const Choice& choice = sequence.choices.front();
  try {
    if (sequence.generated >= sequence.request.max_tokens) return finish(sequence, FinishReason::Length);
    if (choice.ticket->cancelled()) return finish(sequence, FinishReason::Cancelled);
    if (!sequence.picker) {
      engine::GenerationRequest picking;
      picking.sampling = sequence.request.sampling;
      picking.sampling.seed = choice.seed;
      picking.logit_bias = sequence.request.logit_bias;
      picking.top_logprobs = sequence.request.top_logprobs;
      sequence.picker.emplace(picking, sequence.request.prompt);
    }
    const engine::TokenStep step = sequence.picker->pick(logits);
    if (!sequence.first_token) sequence.first_token = Clock::now();
    sequence.tokens.push_back(step.token);
    ++sequence.generated;
    choice.sink->on_token(step);
  } catch (const std::exception& e) {
    return finish(sequence, FinishReason::Error, e.what());
  }
  const auto& stops = sequence.request.stop_tokens;
  if (std::find(stops.begin(), stops.end(), sequence.tokens.back()) != stops.end()) {
    finish(sequence, FinishReason::Stop);
  } else if (sequence.generated >= sequence.request.max_tokens ||
             static_cast<std::int64_t>(sequence.tokens.size()) >= model_.config().max_position_embeddings) {
    finish(sequence, FinishReason::Length);
  }
}

void BatchScheduler::schedule_running() {
  for (std::size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
    Sequence& sequence = *running_[i];
    if (sequence.ended) continue;
    const std::int64_t count = std::min(sequence.pending(), budget_);
    // Not enough blocks: the newest sequences give theirs back, this one last.
    while (!blocks_.can_append(sequence.table, count) && running_.back().get() != &sequence) preempt_newest();
    if (!blocks_.can_append(sequence.table, count)) {
      if (running_.size() == 1) {
        // Alone and still out of room: the cache cannot hold this sequence any longer.
        finish(sequence, FinishReason::Length);
      } else {
        preempt_newest();
      }
      return;
    }
    plan(sequence, count);
  }
}

void BatchScheduler::schedule_waiting() {
  const std::int64_t capacity = std::int64_t{options_.num_blocks} * options_.block_size;
  while (!waiting_.empty() && budget_ > 0 && has_room_for(*waiting_.front())) {
    Sequence& sequence = *waiting_.front();
    if (!sequence.scheduled) {
      // First admission: what cannot run at all is an error, not a queue that never moves.
      std::string problem;
      if (sequence.prompt_length == 0) {
        problem = "the prompt is empty";
      } else if (sequence.prompt_length >= model_.config().max_position_embeddings) {
        problem = fmt::format("the prompt has {} tokens but the model's context is {}", sequence.prompt_length,
                              model_.config().max_position_embeddings);
      } else if (sequence.prompt_length >= capacity) {
        problem = fmt::format("the prompt has {} tokens but the KV cache holds {}", sequence.prompt_length, capacity);
      }
      if (!problem.empty()) {
        finish(sequence, FinishReason::Error, problem);
        waiting_.pop_front();
        continue;
      }
    }
    const bool fresh = sequence.table.blocks.empty();
    // Scoring the prompt needs every position's logits, so nothing of it comes from the cache.
    if (fresh && !sequence.scores_prompt()) {
      sequence.computed = blocks_.reuse_cached_prefix(sequence.table, sequence.tokens);
    }
    const std::int64_t count = std::min(sequence.pending(), budget_);
    if (!blocks_.can_append(sequence.table, count)) {
      if (fresh) {
        blocks_.free(sequence.table);
        sequence.computed = 0;
      }
      return;  // first come, first served: nobody overtakes the head of the queue
    }
    if (!sequence.scheduled) {
      sequence.scheduled = Clock::now();
      sequence.prompt_scored = sequence.request.prompt_logprobs < 0;
      const SequenceStart start{seconds_between(sequence.submitted, *sequence.scheduled), sequence.prompt_length};
      tell(sequence, [&](SequenceSink& sink) { sink.on_started(start); });
      if (sequence.ended) {
        waiting_.pop_front();
        continue;
      }
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    plan(*running_.back(), count);
  }
}

// A group wider than max_num_seqs would never fit beside others, so it runs alone.
bool BatchScheduler::has_room_for(const Sequence& sequence) const {
  const auto width = static_cast<std::int64_t>(sequence.choices.size());
  return running_.empty() || choices_in(running_) + width <= options_.max_num_seqs;
}

void BatchScheduler::plan(Sequence& sequence, std::int64_t count) {
  const auto span = std::span(sequence.tokens).subspan(static_cast<std::size_t>(sequence.computed),
                                                       static_cast<std::size_t>(count));
  const auto appended = blocks_.append(sequence.table, span);
  if (!appended) fail("KV blocks ran out after can_append said yes");  // a bookkeeping bug, not a user error
  if (appended->copy) {
    cache_.copy_block(appended->copy->src, appended->copy->dst, appended->copy->tokens);
    const std::lock_guard lock(mutex_);
    ++stats_.copied_blocks;
  }
  plan_.push_back({&sequence, count});
  budget_ -= count;
}

void BatchScheduler::preempt_newest() {
  auto sequence = std::move(running_.back());
  running_.pop_back();
  // Full blocks stay cached, so the recompute mostly hits the prefix cache.
  blocks_.free(sequence->table);
  sequence->computed = 0;
  sequence->prompt_steps.clear();  // a recompute scores the prompt again
  waiting_.push_front(std::move(sequence));
  const std::lock_guard lock(mutex_);
  ++stats_.preemptions;
}

// Every choice hears `event`; a sink that throws ends its own choice only.
void BatchScheduler::tell(Sequence& sequence, const std::function<void(SequenceSink&)>& event) {
  for (std::size_t i = 0; i < sequence.choices.size();) {
    try {
      event(*sequence.choices[i].sink);
      ++i;
    } catch (const std::exception& e) {
      end_choice(sequence, i, FinishReason::Error, e.what());
    }
  }
}

// One choice leaves; the sequence ends with its last.
void BatchScheduler::end_choice(Sequence& sequence, std::size_t index, FinishReason reason, std::string error) {
  finished_.push_back({sequence.choices[index].sink, sequence.end(reason, std::move(error))});
  sequence.choices.erase(sequence.choices.begin() + static_cast<std::ptrdiff_t>(index));
  if (sequence.choices.empty()) release(sequence, /*written=*/true);
}

void BatchScheduler::finish(Sequence& sequence, FinishReason reason, std::string error, bool written) {
  if (sequence.ended) return;
  for (const Choice& choice : sequence.choices) finished_.push_back({choice.sink, sequence.end(reason, error)});
  sequence.choices.clear();
  release(sequence, written);
}

void BatchScheduler::release(Sequence& sequence, bool written) {
  sequence.ended = true;
  if (written) {
    blocks_.free(sequence.table);
  } else {
    blocks_.free_unwritten(sequence.table);
  }
}

// Cancelled or past their deadline: they end now, wherever they are, and free their
// blocks. A group loses only its cancelled choices.
void BatchScheduler::drop_ended() {
  const auto check = [&](Sequence& sequence) {
    for (std::size_t i = sequence.choices.size(); i-- > 0;) {
      if (sequence.choices[i].ticket->cancelled()) end_choice(sequence, i, FinishReason::Cancelled);
    }
    if (!sequence.ended && sequence.request.deadline && Clock::now() >= *sequence.request.deadline) {
      finish(sequence, FinishReason::Timeout);
    }
  };
  for (auto& sequence : waiting_) check(*sequence);
  for (auto& sequence : running_) check(*sequence);
  collect_ended();
}

// Their choices' ends are in finished_ already.
void BatchScheduler::collect_ended() {
  const auto ended = [](const std::unique_ptr<Sequence>& sequence) { return sequence->ended; };
  std::erase_if(waiting_, ended);
  std::erase_if(running_, ended);
}

// Counted out before their sinks hear the end, so load() never lags the events.
void BatchScheduler::publish_and_notify_ended() {
  collect_ended();
  {
    const std::lock_guard lock(mutex_);
    waiting_count_ = choices_in(incoming_) + choices_in(waiting_);
    running_count_ = choices_in(running_);
    kv_usage_ = blocks_.usage();
    kv_blocks_free_ = blocks_.num_free_blocks();
    stats_.prefix_queried_tokens = blocks_.prefix_cache_stats().queried_tokens;
    stats_.prefix_hit_tokens = blocks_.prefix_cache_stats().hit_tokens;
  }
  for (const Notice& notice : finished_) {
    try {
      notice.sink->on_finished(notice.end);
    } catch (const std::exception&) {
      // A sink that cannot take its last event has nobody left to tell.
    }
  }
  finished_.clear();
  changed_.notify_all();
}

}  // namespace nibble::scheduler
