#include "scheduler/step_scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>
#include <utility>

#include "common/error.h"

namespace nibble::scheduler {
namespace {

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

template <typename Sequences>
std::int64_t choices_in(const Sequences& sequences) {
  std::int64_t count = 0;
  for (const auto& sequence : sequences) count += static_cast<std::int64_t>(sequence->choices.size());
  return count;
}

}  // namespace

struct StepScheduler::Choice {
  ChoiceId id = 0;
  std::uint64_t seed = 0;
  bool sampler_sent = false;  // its SamplerSetup went out in a plan: free it when the choice ends
};

struct StepScheduler::Sequence {
  engine::SequenceId id = 0;
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
  std::vector<engine::TokenStep> prompt_steps;  // prompt log-probabilities, gathered chunk by chunk
  bool prompt_scored = false;                   // delivered, or not asked for
  bool ended = false;

  std::int64_t pending() const { return static_cast<std::int64_t>(tokens.size()) - computed; }
  bool scores_prompt() const { return !prompt_scored && request.prompt_logprobs >= 0; }

  SequenceEnd end(FinishReason reason, std::string error, Clock::time_point now) const {
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

StepScheduler::StepScheduler(const StepSchedulerOptions& options)
    : options_(options), blocks_(options.num_blocks, options.block_size) {
  if (options.max_num_seqs < 1 || options.max_num_batched_tokens < 1) {
    fail("batch scheduler: max_num_seqs and max_num_batched_tokens must be at least 1");
  }
  if (options.context_length < 1) fail("batch scheduler: the model's context length must be at least 1");
}

StepScheduler::~StepScheduler() = default;

void StepScheduler::add(SequenceRequest request, std::vector<ChoiceSeed> choices, Clock::time_point submitted) {
  if (choices.empty()) return;
  auto sequence = std::make_unique<Sequence>();
  sequence->id = next_sequence_id_++;
  for (const auto& choice : choices) sequence->choices.push_back({choice.id, choice.seed, false});
  sequence->submitted = submitted;
  sequence->tokens = request.prompt;
  sequence->prompt_length = static_cast<std::int64_t>(request.prompt.size());
  sequence->request = std::move(request);
  waiting_.push_back(std::move(sequence));
}

void StepScheduler::end_choice(ChoiceId id, FinishReason reason, std::string error) {
  const auto now = Clock::now();
  const auto search = [&](auto& sequences) {
    for (auto& sequence : sequences) {
      for (std::size_t i = 0; i < sequence->choices.size(); ++i) {
        if (sequence->choices[i].id != id) continue;
        end_choice_at(*sequence, i, reason, now, std::move(error));
        return true;
      }
    }
    return false;
  };
  if (!search(waiting_)) search(running_);
  collect_ended();
}

std::int64_t StepScheduler::waiting_choices() const { return choices_in(waiting_); }
std::int64_t StepScheduler::running_choices() const { return choices_in(running_); }

BatchStats StepScheduler::stats() const {
  BatchStats stats = stats_;
  stats.prefix_queried_tokens = blocks_.prefix_cache_stats().queried_tokens;
  stats.prefix_hit_tokens = blocks_.prefix_cache_stats().hit_tokens;
  return stats;
}

// Built in place: gcc 12 warns (maybe-uninitialized) on a braced StepEvent temporary.
template <typename What>
void StepScheduler::emit(ChoiceId choice, What what) {
  StepEvent& event = events_.emplace_back();
  event.choice = choice;
  event.what.emplace<What>(std::move(what));
}

std::vector<StepEvent> StepScheduler::take_events() { return std::exchange(events_, {}); }

engine::StepPlan StepScheduler::schedule(Clock::time_point now) {
  drop_expired(now);
  engine::StepPlan plan;
  planned_.clear();
  budget_ = options_.max_num_batched_tokens;
  schedule_running(plan);
  schedule_waiting(plan, now);
  // Choices that ended up to now (here included) free their samplers in this plan.
  plan.finished_samplers = std::exchange(finished_samplers_, {});
  if (!plan.sequences.empty()) {
    ++stats_.steps;
    stats_.step_tokens += plan.num_tokens();
  }
  collect_ended();
  return plan;
}

void StepScheduler::drop_expired(Clock::time_point now) {
  const auto check = [&](Sequence& sequence) {
    if (!sequence.ended && sequence.request.deadline && now >= *sequence.request.deadline) {
      finish(sequence, FinishReason::Timeout, now);
    }
  };
  for (auto& sequence : waiting_) check(*sequence);
  for (auto& sequence : running_) check(*sequence);
  collect_ended();
}

void StepScheduler::schedule_running(engine::StepPlan& plan) {
  for (std::size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
    Sequence& sequence = *running_[i];
    if (sequence.ended) continue;
    const std::int64_t count = std::min(sequence.pending(), budget_);
    // Not enough blocks: the newest sequences give theirs back, this one last.
    while (!blocks_.can_append(sequence.table, count) && running_.back().get() != &sequence) preempt_newest();
    if (!blocks_.can_append(sequence.table, count)) {
      if (running_.size() == 1) {
        // Alone and still out of room: the cache cannot hold this sequence any longer.
        finish(sequence, FinishReason::Length, Clock::now());
      } else {
        preempt_newest();
      }
      return;
    }
    plan_sequence(sequence, count, plan);
  }
}

std::string StepScheduler::admission_problem(const Sequence& sequence) const {
  const std::int64_t capacity = std::int64_t{options_.num_blocks} * options_.block_size;
  if (sequence.prompt_length == 0) return "the prompt is empty";
  if (sequence.prompt_length >= options_.context_length) {
    return fmt::format("the prompt has {} tokens but the model's context is {}", sequence.prompt_length,
                       options_.context_length);
  }
  if (sequence.prompt_length >= capacity) {
    return fmt::format("the prompt has {} tokens but the KV cache holds {}", sequence.prompt_length, capacity);
  }
  return {};
}

void StepScheduler::schedule_waiting(engine::StepPlan& plan, Clock::time_point now) {
  while (!waiting_.empty() && budget_ > 0 && has_room_for(*waiting_.front())) {
    Sequence& sequence = *waiting_.front();
    if (!sequence.scheduled) {
      // First admission: what cannot run at all is an error, not a queue that never moves.
      if (std::string problem = admission_problem(sequence); !problem.empty()) {
        finish(sequence, FinishReason::Error, now, std::move(problem));
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
      sequence.scheduled = now;
      sequence.prompt_scored = sequence.request.prompt_logprobs < 0;
      const SequenceStart start{seconds_between(sequence.submitted, now), sequence.prompt_length};
      for (const Choice& choice : sequence.choices) emit(choice.id, start);
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    plan_sequence(*running_.back(), count, plan);
  }
}

// A group wider than max_num_seqs would never fit beside others, so it runs alone.
bool StepScheduler::has_room_for(const Sequence& sequence) const {
  const auto width = static_cast<std::int64_t>(sequence.choices.size());
  return running_.empty() || choices_in(running_) + width <= options_.max_num_seqs;
}

void StepScheduler::plan_sequence(Sequence& sequence, std::int64_t count, engine::StepPlan& plan) {
  const auto first = static_cast<std::size_t>(sequence.computed);
  const auto span = std::span(sequence.tokens).subspan(first, static_cast<std::size_t>(count));
  const auto appended = blocks_.append(sequence.table, span);
  if (!appended) fail("KV blocks ran out after can_append said yes");  // a bookkeeping bug, not a user error
  if (appended->copy) {
    plan.copies.push_back(*appended->copy);
    ++stats_.copied_blocks;
  }
  engine::ScheduledSequence scheduled;
  scheduled.id = sequence.id;
  scheduled.tokens.assign(span.begin(), span.end());
  scheduled.start = sequence.computed;
  scheduled.block_table = sequence.table.blocks;
  if (sequence.scores_prompt()) {
    scheduled.all_rows = true;
    scheduled.score_top = sequence.request.prompt_logprobs;
    // Row r predicts the token after it; the prompt's last row predicts generated text.
    for (std::int64_t next = sequence.computed + 1; next <= sequence.computed + count && next < sequence.prompt_length;
         ++next) {
      scheduled.score_targets.push_back(sequence.tokens[static_cast<std::size_t>(next)]);
    }
  }
  // Every known token is in the cache after this step: each choice picks the next.
  if (count == sequence.pending() && sequence.generated < sequence.request.max_tokens) {
    for (Choice& choice : sequence.choices) {
      scheduled.samplers.push_back(choice.id);
      if (choice.sampler_sent) continue;
      choice.sampler_sent = true;
      engine::SamplerSetup setup;
      setup.id = choice.id;
      setup.sampling = sequence.request.sampling;
      setup.sampling.seed = choice.seed;
      setup.logit_bias = sequence.request.logit_bias;
      setup.top_logprobs = sequence.request.top_logprobs;
      setup.prompt = sequence.request.prompt;
      setup.constraint = sequence.request.constraint;
      plan.new_samplers.push_back(std::move(setup));
    }
  }
  plan.sequences.push_back(std::move(scheduled));
  planned_.push_back({&sequence, count});
  budget_ -= count;
}

void StepScheduler::commit(const engine::StepOutput& output, Clock::time_point now) {
  for (const auto& [sequence, count] : planned_) {
    if (sequence->ended) continue;
    if (sequence->scores_prompt()) {
      for (const auto& scores : output.prompt_scores) {
        if (scores.sequence != sequence->id) continue;
        sequence->prompt_steps.insert(sequence->prompt_steps.end(), scores.steps.begin(), scores.steps.end());
      }
    }
    sequence->computed += count;
    if (sequence->pending() == 0) advance(*sequence, output, now);
  }
  planned_.clear();
  collect_ended();
}

void StepScheduler::fail_step(const std::string& error, Clock::time_point now) {
  for (const auto& planned : planned_) finish(*planned.sequence, FinishReason::Error, now, error, /*written=*/false);
  planned_.clear();
  collect_ended();
}

// Every known token is in the cache: deliver what the prompt scored, fork a group,
// then take each choice's picked token, or end.
void StepScheduler::advance(Sequence& sequence, const engine::StepOutput& output, Clock::time_point now) {
  if (sequence.scores_prompt()) {
    for (const Choice& choice : sequence.choices) emit(choice.id, PromptLogprobs{sequence.prompt_steps});
    sequence.prompt_scored = true;
    sequence.prompt_steps.clear();
  }
  for (Sequence* fork : fork_group(sequence)) take_token(*fork, output, now);
  take_token(sequence, output, now);
}

// A group's prompt is in the cache: every choice after the first continues as a
// sequence of its own on a fork of the blocks, shared until one of them writes into
// a shared partial block (copy-on-write in plan_sequence()). The forks run right
// after the group's sequence, as old as it when the newest are preempted.
std::vector<StepScheduler::Sequence*> StepScheduler::fork_group(Sequence& sequence) {
  std::vector<Sequence*> forks;
  if (sequence.choices.size() < 2) return forks;
  auto position = std::ranges::find_if(running_, [&](const auto& running) { return running.get() == &sequence; });
  if (position == running_.end()) fail("internal error: a group forks while not running");
  for (std::size_t i = 1; i < sequence.choices.size(); ++i) {
    auto fork = std::make_unique<Sequence>(sequence);
    fork->id = next_sequence_id_++;
    fork->choices = {sequence.choices[i]};
    fork->table = blocks_.fork(sequence.table);
    forks.push_back(fork.get());
    position = running_.insert(std::next(position), std::move(fork));
  }
  sequence.choices.resize(1);
  return forks;
}

void StepScheduler::take_token(Sequence& sequence, const engine::StepOutput& output, Clock::time_point now) {
  if (sequence.ended) return;
  if (sequence.generated >= sequence.request.max_tokens) return finish(sequence, FinishReason::Length, now);
  const ChoiceId id = sequence.choices.front().id;
  const auto sampled = std::ranges::find_if(output.tokens, [&](const auto& token) { return token.sampler == id; });
  if (sampled == output.tokens.end()) {
    return finish(sequence, FinishReason::Error, now, "internal error: the step picked no token for this choice");
  }
  if (!sampled->error.empty()) {
    return finish(sequence, sampled->dead_end ? FinishReason::ConstraintDeadEnd : FinishReason::Error, now,
                  sampled->error);
  }
  if (!sequence.first_token) sequence.first_token = now;
  sequence.tokens.push_back(sampled->step.token);
  ++sequence.generated;
  emit(id, sampled->step);
  const auto& stops = sequence.request.stop_tokens;
  if (std::find(stops.begin(), stops.end(), sequence.tokens.back()) != stops.end()) {
    finish(sequence, FinishReason::Stop, now);
  } else if (sequence.generated >= sequence.request.max_tokens ||
             static_cast<std::int64_t>(sequence.tokens.size()) >= options_.context_length) {
    finish(sequence, FinishReason::Length, now);
  }
}

void StepScheduler::preempt_newest() {
  auto sequence = std::move(running_.back());
  running_.pop_back();
  // Full blocks stay cached, so the recompute mostly hits the prefix cache.
  blocks_.free(sequence->table);
  sequence->computed = 0;
  sequence->prompt_steps.clear();  // a recompute scores the prompt again
  waiting_.push_front(std::move(sequence));
  ++stats_.preemptions;
}

void StepScheduler::finish(Sequence& sequence, FinishReason reason, Clock::time_point now, std::string error,
                           bool written) {
  if (sequence.ended) return;
  for (const Choice& choice : sequence.choices) {
    emit(choice.id, sequence.end(reason, error, now));
    if (choice.sampler_sent) finished_samplers_.push_back(choice.id);
  }
  sequence.choices.clear();
  release(sequence, written);
}

// One choice leaves; the sequence ends with its last.
void StepScheduler::end_choice_at(Sequence& sequence, std::size_t index, FinishReason reason, Clock::time_point now,
                                  std::string error) {
  const Choice& choice = sequence.choices[index];
  emit(choice.id, sequence.end(reason, std::move(error), now));
  if (choice.sampler_sent) finished_samplers_.push_back(choice.id);
  sequence.choices.erase(sequence.choices.begin() + static_cast<std::ptrdiff_t>(index));
  if (sequence.choices.empty()) release(sequence, /*written=*/true);
}

void StepScheduler::release(Sequence& sequence, bool written) {
  sequence.ended = true;
  if (written) {
    blocks_.free(sequence.table);
  } else {
    blocks_.free_unwritten(sequence.table);
  }
}

void StepScheduler::collect_ended() {
  const auto ended = [](const std::unique_ptr<Sequence>& sequence) { return sequence->ended; };
  std::erase_if(waiting_, ended);
  std::erase_if(running_, ended);
}

}  // namespace nibble::scheduler
