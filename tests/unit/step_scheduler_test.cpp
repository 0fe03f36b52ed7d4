// The batching policy with no model and no weights: each test feeds StepScheduler
// chosen token ids as if a model had picked them and checks the plans it makes and
// the events it emits. tests/unit/scheduler_test.cpp runs the same policy with the
// real model behind it.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <optional>

#include "scheduler/step_scheduler.h"

namespace nibble::scheduler {
namespace {

using namespace std::chrono_literals;
using engine::StepPlan;

SequenceRequest request(std::vector<TokenId> prompt, std::int64_t max_tokens) {
  SequenceRequest out;
  out.prompt = std::move(prompt);
  out.max_tokens = max_tokens;
  return out;
}

std::vector<TokenId> iota_tokens(std::size_t n, TokenId first) {
  std::vector<TokenId> out(n);
  std::iota(out.begin(), out.end(), first);
  return out;
}

StepSchedulerOptions options(std::int32_t num_blocks, std::int32_t block_size, std::int64_t budget = 512,
                             std::int64_t max_num_seqs = 64, std::int64_t context = 1024) {
  StepSchedulerOptions out;
  out.num_blocks = num_blocks;
  out.block_size = block_size;
  out.max_num_batched_tokens = budget;
  out.max_num_seqs = max_num_seqs;
  out.context_length = context;
  return out;
}

// Stands in for the model runner: every listed sampler "picks" what `pick` says,
// and every scored prompt row gets its target with a log-probability of -1.
class Driver {
 public:
  using Pick = std::function<TokenId(ChoiceId)>;

  explicit Driver(const StepSchedulerOptions& options) : policy(options) {}

  std::vector<ChoiceId> add(SequenceRequest r, std::size_t width = 1) {
    std::vector<ChoiceSeed> choices;
    std::vector<ChoiceId> ids;
    for (std::size_t i = 0; i < width; ++i) {
      ids.push_back(next_id_++);
      choices.push_back({ids.back(), 1000 + ids.back()});
    }
    policy.add(std::move(r), choices, now);
    return ids;
  }

  StepPlan schedule() {
    StepPlan plan = policy.schedule(now);
    record();
    return plan;
  }

  void commit(const StepPlan& plan, const Pick& pick) {
    engine::StepOutput output;
    for (const auto& sequence : plan.sequences) {
      if (!sequence.score_targets.empty()) {
        engine::PromptScores scores{sequence.id, {}};
        for (const TokenId target : sequence.score_targets) scores.steps.push_back({target, -1.0f, {}});
        output.prompt_scores.push_back(std::move(scores));
      }
      for (const auto sampler : sequence.samplers) output.tokens.push_back({sampler, {pick(sampler), 0.0f, {}}, {}});
    }
    now += 10ms;
    policy.commit(output, now);
    record();
  }

  // One step; every choice picks `token`, or what `pick` says.
  StepPlan step(TokenId token = 7) {
    return step([token](ChoiceId) { return token; });
  }
  StepPlan step(const Pick& pick) {
    StepPlan plan = schedule();
    commit(plan, pick);
    return plan;
  }

  void end_choice(ChoiceId id, FinishReason reason) {
    policy.end_choice(id, reason);
    record();
  }

  std::vector<TokenId> tokens_of(ChoiceId id) const {
    std::vector<TokenId> out;
    for (const auto& event : events_) {
      if (event.choice != id) continue;
      if (const auto* step = std::get_if<engine::TokenStep>(&event.what)) out.push_back(step->token);
    }
    return out;
  }
  std::optional<SequenceEnd> end_of(ChoiceId id) const {
    for (const auto& event : events_) {
      if (event.choice != id) continue;
      if (const auto* end = std::get_if<SequenceEnd>(&event.what)) return *end;
    }
    return std::nullopt;
  }
  bool started(ChoiceId id) const {
    return std::ranges::any_of(events_, [&](const StepEvent& event) {
      return event.choice == id && std::holds_alternative<SequenceStart>(event.what);
    });
  }
  // The kinds of a choice's events in order: S(tarted), P(rompt logprobs), T(oken), E(nd).
  std::string kinds_of(ChoiceId id) const {
    std::string out;
    for (const auto& event : events_) {
      if (event.choice == id) out += "SPTE"[event.what.index()];
    }
    return out;
  }
  const std::vector<StepEvent>& events() const { return events_; }

  StepScheduler policy;
  Clock::time_point now = Clock::time_point{} + 1h;

 private:
  void record() {
    for (auto& event : policy.take_events()) events_.push_back(std::move(event));
  }

  ChoiceId next_id_ = 1;
  std::vector<StepEvent> events_;
};

// Every planned sequence's block table must reach past its last new token.
void expect_tables_cover(const StepPlan& plan, std::int32_t block_size) {
  for (const auto& sequence : plan.sequences) {
    const auto end = sequence.start + static_cast<std::int64_t>(sequence.tokens.size());
    EXPECT_GE(static_cast<std::int64_t>(sequence.block_table.size()) * block_size, end) << "sequence " << sequence.id;
  }
}

TEST(StepScheduler, TheTokenBudgetGoesToDecodesFirstAndPrefillChunksTakeTheRest) {
  Driver driver(options(64, 4, /*budget=*/8));
  const auto a = driver.add(request({1, 2, 3}, 10)).front();
  StepPlan plan = driver.step(50);
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].tokens, (std::vector<TokenId>{1, 2, 3}));
  EXPECT_EQ(plan.sequences[0].samplers, std::vector<ChoiceId>{a});
  ASSERT_EQ(plan.new_samplers.size(), 1u);
  EXPECT_EQ(plan.new_samplers[0].id, a);

  const auto b_prompt = iota_tokens(20, 100);
  const auto b = driver.add(request(b_prompt, 10)).front();
  // A decodes one token; B prefills 7, 7, then 6 and only then picks.
  const std::vector<std::int64_t> chunks{7, 7, 6};
  std::int64_t start = 0;
  for (const auto chunk : chunks) {
    plan = driver.step(51);
    ASSERT_EQ(plan.sequences.size(), 2u);
    EXPECT_EQ(plan.sequences[0].tokens.size(), 1u) << "A's decode token comes first";
    EXPECT_EQ(plan.sequences[1].start, start);
    EXPECT_EQ(plan.sequences[1].tokens,
              std::vector<TokenId>(b_prompt.begin() + start, b_prompt.begin() + start + chunk));
    EXPECT_EQ(plan.sequences[1].samplers.empty(), start + chunk < 20) << "B picks after its last chunk only";
    EXPECT_LE(plan.num_tokens(), 8);
    expect_tables_cover(plan, 4);
    start += chunk;
  }
  EXPECT_EQ(driver.tokens_of(b), std::vector<TokenId>{51});
  EXPECT_EQ(driver.tokens_of(a).size(), 4u);
  const auto stats = driver.policy.stats();
  EXPECT_EQ(stats.steps, 4);
  EXPECT_EQ(stats.step_tokens, 3 + 3 + 20);
}

TEST(StepScheduler, AdmissionIsFirstComeFirstServedWithNoOvertaking) {
  Driver driver(options(/*num_blocks=*/4, /*block_size=*/4));
  const auto a = driver.add(request(iota_tokens(8, 1), 4)).front();  // 2 blocks, a 3rd for its first token
  driver.step();
  const auto b = driver.add(request(iota_tokens(6, 100), 4)).front();  // needs 2 blocks: 1 is free
  const auto c = driver.add(request({200}, 4)).front();                 // would fit in the free one
  StepPlan plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 1u) << "C must not overtake B";
  EXPECT_EQ(plan.sequences[0].start, 8);
  EXPECT_FALSE(driver.started(b));
  EXPECT_FALSE(driver.started(c));
  EXPECT_EQ(driver.policy.waiting_choices(), 2);
  while (!driver.end_of(a)) driver.step();
  // A's blocks are back: B first, then C in the same step.
  plan = driver.schedule();
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_EQ(plan.sequences[0].tokens, iota_tokens(6, 100));
  EXPECT_EQ(plan.sequences[1].tokens, std::vector<TokenId>{200});
  EXPECT_TRUE(driver.started(b));
  EXPECT_TRUE(driver.started(c));
}

TEST(StepScheduler, NoMoreThanMaxNumSeqsRunAtOnce) {
  Driver driver(options(64, 4, 512, /*max_num_seqs=*/2));
  const auto a = driver.add(request({1, 2}, 1)).front();
  const auto b = driver.add(request({3, 4}, 5)).front();
  const auto c = driver.add(request({5, 6}, 5)).front();
  StepPlan plan = driver.step();
  EXPECT_EQ(plan.sequences.size(), 2u);
  EXPECT_TRUE(driver.end_of(a)) << "max_tokens 1";
  EXPECT_FALSE(driver.started(c));
  EXPECT_EQ(driver.policy.running_choices(), 1);
  plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 2u) << "A's place goes to C";
  EXPECT_EQ(plan.sequences[1].tokens, (std::vector<TokenId>{5, 6}));
  EXPECT_TRUE(driver.started(c));
  EXPECT_FALSE(driver.end_of(b));
}

TEST(StepScheduler, RunningOutOfBlocksPreemptsTheNewestWhichRecomputesFromThePrefixCache) {
  Driver driver(options(/*num_blocks=*/4, /*block_size=*/2));
  const auto a = driver.add(request({1, 2, 3, 4}, 3)).front();
  const auto b = driver.add(request({5, 6, 7, 8}, 3)).front();
  StepPlan plan = driver.step([&](ChoiceId id) { return id == a ? 100 : 200; });
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 4);

  // A's first token needs a third block: B, the newest, gives its two back.
  plan = driver.step(101);
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].tokens, std::vector<TokenId>{100});
  EXPECT_EQ(driver.policy.stats().preemptions, 1);
  EXPECT_EQ(driver.policy.waiting_choices(), 1);
  EXPECT_EQ(driver.policy.running_choices(), 1);

  plan = driver.step(102);
  ASSERT_EQ(plan.sequences.size(), 1u) << "B waits while A still holds the blocks";
  ASSERT_TRUE(driver.end_of(a));
  EXPECT_EQ(driver.tokens_of(a), (std::vector<TokenId>{100, 101, 102}));

  // B recomputes its prompt and its token. A took the block of B's tail (freed
  // first, so evicted first); B's head block is still cached.
  plan = driver.schedule();
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].start, 2);
  EXPECT_EQ(plan.sequences[0].tokens, (std::vector<TokenId>{7, 8, 200}));
  EXPECT_EQ(plan.sequences[0].samplers, std::vector<ChoiceId>{b});
  EXPECT_TRUE(plan.new_samplers.empty()) << "B keeps its sampler (and its RNG) across the preemption";
  expect_tables_cover(plan, 2);
  driver.commit(plan, [](ChoiceId) { return 201; });
  EXPECT_EQ(driver.tokens_of(b), (std::vector<TokenId>{200, 201}));
  EXPECT_EQ(driver.kinds_of(b), "STT") << "started once, though admitted twice";
}

TEST(StepScheduler, ASequenceAloneThatOutgrowsTheCacheEndsWithLength) {
  Driver driver(options(/*num_blocks=*/2, /*block_size=*/2));
  const auto a = driver.add(request({1, 2, 3}, 10)).front();
  driver.step();
  driver.step();  // position 3 still fits the second block
  const StepPlan plan = driver.step();
  EXPECT_TRUE(plan.sequences.empty());
  ASSERT_TRUE(driver.end_of(a));
  EXPECT_EQ(driver.end_of(a)->reason, FinishReason::Length);
  EXPECT_EQ(driver.end_of(a)->generated_tokens, 2);
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 0);
}

TEST(StepScheduler, ARepeatedPromptReusesItsCachedFullBlocks) {
  Driver driver(options(64, 4));
  const auto prompt = iota_tokens(9, 10);  // blocks of 4, 4, 1
  driver.add(request(prompt, 1));
  StepPlan plan = driver.step();
  EXPECT_EQ(plan.sequences[0].start, 0);

  driver.add(request(prompt, 1));
  plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].start, 8) << "two full blocks cached";
  EXPECT_EQ(plan.sequences[0].tokens, std::vector<TokenId>{18});
  EXPECT_EQ(driver.policy.stats().prefix_hit_tokens, 8);

  // A prompt that ends on a block boundary recomputes that block: its last token's
  // logits are needed.
  driver.add(request(std::vector<TokenId>(prompt.begin(), prompt.begin() + 8), 1));
  plan = driver.step();
  EXPECT_EQ(plan.sequences[0].start, 4);
  EXPECT_EQ(plan.sequences[0].tokens, iota_tokens(4, 14));
}

TEST(StepScheduler, APromptScoredForLogprobsNeverTakesCachedBlocks) {
  Driver driver(options(64, 4, /*budget=*/4));
  const auto prompt = iota_tokens(9, 10);
  driver.add(request(prompt, 1));
  while (!driver.policy.idle()) driver.step();

  auto scored = request(prompt, 1);
  scored.prompt_logprobs = 2;
  const auto a = driver.add(scored).front();
  std::vector<TokenId> targets;
  std::int64_t start = 0;
  while (!driver.end_of(a)) {
    const StepPlan plan = driver.step();
    ASSERT_EQ(plan.sequences.size(), 1u);
    const auto& sequence = plan.sequences[0];
    EXPECT_EQ(sequence.start, start) << "nothing from the cache";
    EXPECT_TRUE(sequence.all_rows);
    EXPECT_EQ(sequence.score_top, 2);
    targets.insert(targets.end(), sequence.score_targets.begin(), sequence.score_targets.end());
    start += static_cast<std::int64_t>(sequence.tokens.size());
  }
  EXPECT_EQ(start, 9);
  EXPECT_EQ(targets, std::vector<TokenId>(prompt.begin() + 1, prompt.end())) << "each row scores the next token";
  EXPECT_EQ(driver.kinds_of(a), "SPTE");
  for (const auto& event : driver.events()) {
    if (const auto* scores = std::get_if<PromptLogprobs>(&event.what); scores && event.choice == a) {
      ASSERT_EQ(scores->steps.size(), 8u) << "gathered over the three chunks, told once";
      EXPECT_EQ(scores->steps.front().token, 11);
    }
  }
}

TEST(StepScheduler, AGroupComputesItsPromptOnceThenForksWithACopyOnWrite) {
  Driver driver(options(64, 4));
  auto r = request(iota_tokens(6, 10), 3);  // blocks of 4 and 2: the second is partly filled
  r.sampling.temperature = 0.5;
  r.logit_bias = {{3, 1.5f}};
  r.top_logprobs = 2;
  const auto ids = driver.add(r, 3);
  StepPlan plan = driver.step([](ChoiceId id) { return static_cast<TokenId>(100 + id); });
  ASSERT_EQ(plan.sequences.size(), 1u) << "one sequence computes the prompt";
  EXPECT_EQ(plan.sequences[0].tokens.size(), 6u);
  EXPECT_EQ(plan.sequences[0].samplers, ids) << "every choice picks from its last row";
  ASSERT_EQ(plan.new_samplers.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto& setup = plan.new_samplers[i];
    EXPECT_EQ(setup.id, ids[i]);
    EXPECT_EQ(setup.sampling.seed, 1000 + ids[i]) << "each choice's own seed";
    EXPECT_EQ(setup.sampling.temperature, 0.5);
    EXPECT_EQ(setup.logit_bias, r.logit_bias);
    EXPECT_EQ(setup.top_logprobs, 2);
    EXPECT_EQ(setup.prompt, r.prompt);
  }
  EXPECT_TRUE(plan.copies.empty());
  EXPECT_EQ(driver.policy.running_choices(), 3);
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 2) << "the forks share the prompt's blocks";

  plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 3u);
  ASSERT_EQ(plan.copies.size(), 2u) << "all but the last writer copy the shared partial block";
  const auto shared_full = plan.sequences[0].block_table[0];
  const auto shared_partial = plan.copies[0].src;
  std::vector<std::int32_t> last_blocks;
  for (std::size_t i = 0; i < 3; ++i) {
    const auto& sequence = plan.sequences[i];
    EXPECT_EQ(sequence.start, 6);
    EXPECT_EQ(sequence.tokens, std::vector<TokenId>{static_cast<TokenId>(100 + ids[i])});
    EXPECT_EQ(sequence.samplers, std::vector<ChoiceId>{ids[i]});
    ASSERT_EQ(sequence.block_table.size(), 2u);
    EXPECT_EQ(sequence.block_table[0], shared_full);
    last_blocks.push_back(sequence.block_table[1]);
  }
  for (const auto& copy : plan.copies) {
    EXPECT_EQ(copy.src, shared_partial);
    EXPECT_EQ(copy.tokens, 2);
  }
  EXPECT_EQ(plan.copies[0].dst, last_blocks[0]);
  EXPECT_EQ(plan.copies[1].dst, last_blocks[1]);
  EXPECT_EQ(last_blocks[2], shared_partial) << "the last writer keeps the original";
  EXPECT_EQ(driver.policy.stats().copied_blocks, 2);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(driver.kinds_of(ids[i]), "STT");
}

TEST(StepScheduler, AGroupWhosePromptFillsItsLastBlockCopiesNothing) {
  Driver driver(options(64, 4));
  driver.add(request(iota_tokens(8, 10), 3), 2);
  driver.step();
  const StepPlan plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_TRUE(plan.copies.empty());
  EXPECT_NE(plan.sequences[0].block_table[2], plan.sequences[1].block_table[2]);
}

TEST(StepScheduler, CancellingAChoiceBeforeTheForkLeavesTheRestOfItsGroup) {
  Driver driver(options(64, 4, /*budget=*/4));
  const auto ids = driver.add(request(iota_tokens(10, 10), 2), 3);
  driver.step();  // the first chunk
  driver.end_choice(ids[0], FinishReason::Cancelled);
  ASSERT_TRUE(driver.end_of(ids[0]));
  EXPECT_EQ(driver.end_of(ids[0])->reason, FinishReason::Cancelled);
  EXPECT_EQ(driver.policy.running_choices(), 2);
  StepPlan plan = driver.step();
  plan = driver.step();  // the last chunk: the two left pick
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].samplers, (std::vector<ChoiceId>{ids[1], ids[2]}));
  for (const auto& setup : plan.new_samplers) EXPECT_NE(setup.id, ids[0]);
  while (!driver.policy.idle()) driver.step();
  EXPECT_EQ(driver.tokens_of(ids[1]).size(), 2u);
  EXPECT_EQ(driver.tokens_of(ids[2]).size(), 2u);
  EXPECT_TRUE(driver.tokens_of(ids[0]).empty());
}

TEST(StepScheduler, CancellingFreesTheBlocksAndTheSamplerAtTheNextStep) {
  Driver driver(options(64, 4));
  const auto a = driver.add(request(iota_tokens(6, 10), 50)).front();
  const auto b = driver.add(request({1}, 50)).front();
  driver.step();
  driver.step();
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 3);
  driver.end_choice(a, FinishReason::Cancelled);
  const auto end = driver.end_of(a);
  ASSERT_TRUE(end);
  EXPECT_EQ(end->reason, FinishReason::Cancelled);
  EXPECT_EQ(end->generated_tokens, 2);
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 1) << "only B's";
  const StepPlan plan = driver.step();
  EXPECT_EQ(plan.finished_samplers, std::vector<ChoiceId>{a});
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].samplers, std::vector<ChoiceId>{b});
  EXPECT_EQ(driver.kinds_of(a), "STTE");
}

TEST(StepScheduler, ASequencePastItsDeadlineEndsWithTimeoutWhereverItIs) {
  Driver driver(options(64, 4, 512, /*max_num_seqs=*/1));
  auto timed = request({1, 2}, 50);
  timed.deadline = driver.now + 1s;
  const auto a = driver.add(timed).front();
  auto queued = request({3}, 50);
  queued.deadline = driver.now + 1s;
  const auto b = driver.add(queued).front();  // waits behind A (max_num_seqs 1)
  driver.step();
  EXPECT_FALSE(driver.end_of(a));
  driver.now += 2s;
  const StepPlan plan = driver.step();
  EXPECT_TRUE(plan.sequences.empty());
  ASSERT_TRUE(driver.end_of(a) && driver.end_of(b));
  EXPECT_EQ(driver.end_of(a)->reason, FinishReason::Timeout);
  EXPECT_EQ(driver.end_of(b)->reason, FinishReason::Timeout);
  EXPECT_FALSE(driver.started(b));
  EXPECT_TRUE(driver.policy.idle());
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 0);
}

TEST(StepScheduler, PromptsThatCanNeverRunEndWithAnErrorAndTheQueueMovesOn) {
  Driver driver(options(/*num_blocks=*/4, /*block_size=*/4, 512, 64, /*context=*/32));
  const auto empty = driver.add(request({}, 5)).front();
  const auto too_long = driver.add(request(iota_tokens(32, 1), 5)).front();
  const auto too_big = driver.add(request(iota_tokens(16, 1), 5)).front();  // the cache holds 16
  const auto fine = driver.add(request({1}, 5)).front();
  const StepPlan plan = driver.step();
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].tokens, std::vector<TokenId>{1});
  const auto expect_error = [&](ChoiceId id, const std::string& words) {
    const auto end = driver.end_of(id);
    ASSERT_TRUE(end);
    EXPECT_EQ(end->reason, FinishReason::Error);
    EXPECT_NE(end->error.find(words), std::string::npos) << end->error;
    EXPECT_EQ(driver.kinds_of(id), "E") << "never started";
  };
  expect_error(empty, "the prompt is empty");
  expect_error(too_long, "32 tokens but the model's context is 32");
  expect_error(too_big, "16 tokens but the KV cache holds 16");
  EXPECT_TRUE(driver.started(fine));
}

TEST(StepScheduler, AStopTokenMaxTokensAndTheContextEndASequence) {
  Driver driver(options(64, 4, 512, 64, /*context=*/8));
  auto stopping = request({1}, 50);
  stopping.stop_tokens = {9};
  const auto stop = driver.add(stopping).front();
  const auto length = driver.add(request({1}, 3)).front();
  const auto context = driver.add(request({1, 2, 3, 4, 5}, 50)).front();
  const auto none = driver.add(request({1}, 0)).front();
  int stop_picks = 0;
  const auto pick = [&](ChoiceId id) -> TokenId { return id == stop && stop_picks++ == 1 ? 9 : 7; };
  while (!driver.policy.idle()) driver.step(pick);
  EXPECT_EQ(driver.end_of(stop)->reason, FinishReason::Stop);
  EXPECT_EQ(driver.tokens_of(stop), (std::vector<TokenId>{7, 9})) << "the stop token is told, then the end";
  EXPECT_EQ(driver.end_of(length)->reason, FinishReason::Length);
  EXPECT_EQ(driver.end_of(length)->generated_tokens, 3);
  EXPECT_EQ(driver.end_of(context)->reason, FinishReason::Length);
  EXPECT_EQ(driver.end_of(context)->generated_tokens, 3) << "5 + 3 fill the context of 8";
  EXPECT_EQ(driver.end_of(none)->reason, FinishReason::Length);
  EXPECT_EQ(driver.kinds_of(none), "SE") << "max_tokens 0: the prompt runs, nothing is picked";
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 0);
}

TEST(StepScheduler, AFailedStepEndsItsSequencesAndCachesNothingTheyWrote) {
  Driver driver(options(64, 4));
  const auto prompt = iota_tokens(9, 10);
  const auto a = driver.add(request(prompt, 5)).front();
  driver.schedule();
  driver.policy.fail_step("the forward failed", driver.now);
  for (auto& event : driver.policy.take_events()) {
    if (auto* end = std::get_if<SequenceEnd>(&event.what)) {
      EXPECT_EQ(event.choice, a);
      EXPECT_EQ(end->reason, FinishReason::Error);
      EXPECT_EQ(end->error, "the forward failed");
    }
  }
  EXPECT_TRUE(driver.policy.idle());
  EXPECT_EQ(driver.policy.blocks().num_used_blocks(), 0);
  driver.add(request(prompt, 1));
  const StepPlan plan = driver.step();
  EXPECT_EQ(plan.sequences[0].start, 0) << "blocks never written are not reused";
}

TEST(StepScheduler, ASamplerThatFailsEndsOnlyItsChoice) {
  Driver driver(options(64, 4));
  const auto ids = driver.add(request({1, 2}, 3), 2);
  const StepPlan plan = driver.schedule();
  engine::StepOutput output;
  output.tokens.push_back({ids[0], {5, 0, {}}, {}});
  output.tokens.push_back({ids[1], {}, "logit_bias names token 900, outside the vocabulary"});
  driver.policy.commit(output, driver.now);
  for (auto& event : driver.policy.take_events()) {
    if (auto* end = std::get_if<SequenceEnd>(&event.what)) {
      EXPECT_EQ(event.choice, ids[1]);
      EXPECT_EQ(end->reason, FinishReason::Error);
      EXPECT_NE(end->error.find("outside the vocabulary"), std::string::npos);
    }
  }
  EXPECT_EQ(driver.policy.running_choices(), 1);
  EXPECT_EQ(plan.sequences.size(), 1u);
}

}  // namespace
}  // namespace nibble::scheduler
