// The batch scheduler on the real stories260K model. The Scheduler contract: events
// in order and equal to a direct generate(), cancellation within one step, a full
// queue refused at once, bad requests ending alone, stop() draining what was
// submitted, a group's choices each getting what they would alone. Then what
// continuous batching does: many sequences in shared steps with chunked prefill,
// preemption when KV blocks run out, prefix caching, groups that prefill once and
// fork with copy-on-write.
#include <gtest/gtest.h>

#include <cmath>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

#include "scheduler/batch_scheduler.h"
#include "scheduler/generate.h"
#include "stories_model.h"
#include "test_util.h"

namespace nibble::scheduler {
namespace {

using namespace std::chrono_literals;

using testing::reference_greedy_ids;

// Records every event; on_token can be held until the test lets it go, at once
// (hold) or when a given token arrives (hold_at).
class RecordingSink : public SequenceSink {
 public:
  void on_started(const SequenceStart& start) override {
    const std::lock_guard lock(mutex_);
    order.push_back("started");
    started = start;
  }
  void on_token(const engine::TokenStep& step) override {
    std::unique_lock lock(mutex_);
    order.push_back("token");
    tokens.push_back(step.token);
    if (tokens.size() == hold_at_) hold_ = true;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !hold_; });
    if (cancel_after > 0 && static_cast<int>(tokens.size()) == cancel_after) ticket_future.get()->cancel();
  }
  void on_finished(const SequenceEnd& sequence_end) override {
    const std::lock_guard lock(mutex_);
    order.push_back("finished");
    end = sequence_end;
    done_ = true;
    changed_.notify_all();
  }

  void hold() {
    const std::lock_guard lock(mutex_);
    hold_ = true;
  }
  void hold_at(std::size_t token_count) {
    const std::lock_guard lock(mutex_);
    hold_at_ = token_count;
  }
  void release() {
    const std::lock_guard lock(mutex_);
    hold_ = false;
    changed_.notify_all();
  }
  void wait_for_tokens(std::size_t n) {
    std::unique_lock lock(mutex_);
    ASSERT_TRUE(changed_.wait_for(lock, 30s, [&] { return tokens.size() >= n || done_; }));
  }
  SequenceEnd wait_end() {
    std::unique_lock lock(mutex_);
    EXPECT_TRUE(changed_.wait_for(lock, 60s, [&] { return done_; }));
    return end;
  }

  std::vector<std::string> order;
  std::vector<TokenId> tokens;
  SequenceStart started;
  SequenceEnd end;
  int cancel_after = 0;  // cancel its own ticket once this many tokens arrived
  std::promise<std::shared_ptr<Ticket>> ticket_promise;
  std::shared_future<std::shared_ptr<Ticket>> ticket_future = ticket_promise.get_future().share();

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool hold_ = false;
  std::size_t hold_at_ = 0;
  bool done_ = false;
};

class SchedulerContract : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    stories_ = new testing::StoriesModel();
    model_ = &stories_->model;
  }
  static void TearDownTestSuite() { delete stories_; }

  static SequenceRequest greedy(std::int64_t max_tokens) {
    SequenceRequest request;
    request.prompt = {1};
    request.sampling.temperature = 0;
    request.max_tokens = max_tokens;
    return request;
  }

  static SequenceRequest with_seed(SequenceRequest request, std::uint64_t seed) {
    request.sampling.seed = seed;
    return request;
  }
  // What the request gives when it runs alone through generate().
  static std::vector<TokenId> alone(const SequenceRequest& request) { return generate(*model_, request).tokens; }

  struct Group {
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    std::vector<std::shared_ptr<Ticket>> tickets;
  };
  // One choice per seed; `prepare` sets up the sinks before anything can reach them.
  static Group submit_group(Scheduler& scheduler, const SequenceRequest& request,
                            const std::vector<std::uint64_t>& seeds,
                            const std::function<void(Group&)>& prepare = {}) {
    Group group;
    std::vector<ForkedChoice> choices;
    for (const std::uint64_t seed : seeds) {
      group.sinks.push_back(std::make_shared<RecordingSink>());
      choices.push_back({seed, group.sinks.back()});
    }
    if (prepare) prepare(group);
    group.tickets = scheduler.submit_group(request, choices);
    EXPECT_EQ(group.tickets.size(), seeds.size());
    for (std::size_t i = 0; i < group.tickets.size(); ++i) group.sinks[i]->ticket_promise.set_value(group.tickets[i]);
    return group;
  }
  static void wait_choices(const Group& group) {
    for (std::size_t i = 0; i < group.sinks.size(); ++i) {
      const SequenceEnd end = group.sinks[i]->wait_end();
      EXPECT_EQ(end.reason, FinishReason::Length) << "choice " << i << ": " << end.error;
      EXPECT_EQ(group.sinks[i]->order.front(), "started") << "choice " << i;
    }
  }
  // Waits for every choice; each must have produced exactly what its request does
  // alone with its seed. Only once nothing else runs: the model is not to be used
  // by two threads at once.
  static void expect_choices_as_alone(const Group& group, const SequenceRequest& request,
                                      const std::vector<std::uint64_t>& seeds) {
    wait_choices(group);
    for (std::size_t i = 0; i < group.sinks.size(); ++i) {
      EXPECT_EQ(group.sinks[i]->tokens, alone(with_seed(request, seeds[i]))) << "choice " << i;
    }
  }

  std::unique_ptr<Scheduler> make(std::int64_t max_waiting) const {
    BatchSchedulerOptions options;
    options.max_waiting = max_waiting;
    options.num_blocks = 64;
    return std::make_unique<BatchScheduler>(*model_, options);
  }

  static testing::StoriesModel* stories_;
  static engine::Model* model_;
};
testing::StoriesModel* SchedulerContract::stories_ = nullptr;
engine::Model* SchedulerContract::model_ = nullptr;

TEST_P(SchedulerContract, SequencesRunInOrderAndMatchTheReference) {
  auto scheduler_owner = make(8);
  Scheduler& scheduler = *scheduler_owner;
  const auto expected = reference_greedy_ids();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    scheduler.submit(greedy(20 + i), sinks.back());
  }
  for (int i = 0; i < 3; ++i) {
    const SequenceEnd end = sinks[static_cast<std::size_t>(i)]->wait_end();
    EXPECT_EQ(end.reason, FinishReason::Length);
    EXPECT_EQ(end.generated_tokens, 20 + i);
    EXPECT_EQ(end.prompt_tokens, 1);
    const auto& sink = *sinks[static_cast<std::size_t>(i)];
    EXPECT_EQ(sink.tokens, std::vector<TokenId>(expected.begin(), expected.begin() + 20 + i));
    ASSERT_EQ(sink.order.size(), static_cast<std::size_t>(22 + i));
    EXPECT_EQ(sink.order.front(), "started");
    EXPECT_EQ(sink.order.back(), "finished");
  }
  const auto load = scheduler.load();
  EXPECT_EQ(load.running, 0);
  EXPECT_EQ(load.waiting, 0);
}

TEST_P(SchedulerContract, CancellingStopsTheSequenceAtTheNextStep) {
  auto scheduler_owner = make(8);
  Scheduler& scheduler = *scheduler_owner;
  auto sink = std::make_shared<RecordingSink>();
  sink->cancel_after = 3;
  sink->ticket_promise.set_value(scheduler.submit(greedy(100), sink));
  const SequenceEnd end = sink->wait_end();
  EXPECT_EQ(end.reason, FinishReason::Cancelled);
  EXPECT_EQ(sink->tokens.size(), 3u);
  EXPECT_EQ(end.generated_tokens, 3);
}

TEST_P(SchedulerContract, AFullQueueIsRefusedAtOnceAndCancelledWaitersNeverStart) {
  auto scheduler_owner = make(1);
  Scheduler& scheduler = *scheduler_owner;
  auto running = std::make_shared<RecordingSink>();
  running->hold();
  const auto running_ticket = scheduler.submit(greedy(50), running);
  running->wait_for_tokens(1);  // on the worker, held inside on_token

  auto waiting = std::make_shared<RecordingSink>();
  const auto waiting_ticket = scheduler.submit(greedy(5), waiting);
  EXPECT_EQ(scheduler.load().running, 1);
  EXPECT_EQ(scheduler.load().waiting, 1);
  EXPECT_THROW(scheduler.submit(greedy(5), std::make_shared<RecordingSink>()), Overloaded);

  waiting_ticket->cancel();
  running_ticket->cancel();
  running->release();
  EXPECT_EQ(running->wait_end().reason, FinishReason::Cancelled);
  EXPECT_EQ(waiting->wait_end().reason, FinishReason::Cancelled);
  EXPECT_EQ(waiting->order, std::vector<std::string>{"finished"});
  EXPECT_TRUE(waiting->tokens.empty());
}

TEST_P(SchedulerContract, ABadRequestEndsAloneAndDeadlinesTimeOut) {
  auto scheduler_owner = make(8);
  Scheduler& scheduler = *scheduler_owner;
  auto too_long = std::make_shared<RecordingSink>();
  SequenceRequest request = greedy(5);
  request.prompt.assign(600, 1);  // the model's context is 512
  scheduler.submit(request, too_long);

  auto expired = std::make_shared<RecordingSink>();
  request = greedy(5);
  request.deadline = Clock::now() - 1s;
  scheduler.submit(request, expired);

  auto fine = std::make_shared<RecordingSink>();
  scheduler.submit(greedy(4), fine);

  const SequenceEnd error = too_long->wait_end();
  EXPECT_EQ(error.reason, FinishReason::Error);
  EXPECT_NE(error.error.find("context is 512"), std::string::npos) << error.error;
  EXPECT_EQ(expired->wait_end().reason, FinishReason::Timeout);
  EXPECT_EQ(fine->wait_end().reason, FinishReason::Length);
  EXPECT_EQ(fine->tokens.size(), 4u);
}

TEST_P(SchedulerContract, StopDrainsWhatWasSubmittedAndRefusesTheRest) {
  auto scheduler = make(8);
  auto first = std::make_shared<RecordingSink>();
  auto second = std::make_shared<RecordingSink>();
  scheduler->submit(greedy(10), first);
  scheduler->submit(greedy(10), second);
  scheduler->stop(30s);
  EXPECT_EQ(first->wait_end().reason, FinishReason::Length);
  EXPECT_EQ(second->wait_end().reason, FinishReason::Length);
  EXPECT_THROW(scheduler->submit(greedy(1), std::make_shared<RecordingSink>()), Overloaded);

  // Past the drain time, what is left is cancelled.
  scheduler = make(8);
  auto held = std::make_shared<RecordingSink>();
  held->hold();
  scheduler->submit(greedy(50), held);
  held->wait_for_tokens(1);
  std::thread releaser([&] {
    std::this_thread::sleep_for(50ms);
    held->release();
  });
  scheduler->stop(10ms);
  releaser.join();
  EXPECT_EQ(held->wait_end().reason, FinishReason::Cancelled);
  EXPECT_LT(held->tokens.size(), 50u);
}

TEST_P(SchedulerContract, EveryChoiceOfAGroupGetsWhatItWouldAlone) {
  auto scheduler = make(8);
  SequenceRequest request = greedy(12);
  request.prompt = {1, 403, 29, 87};
  request.sampling.temperature = 0.8;
  const std::vector<std::uint64_t> seeds{5, 6, 7};
  const auto group = submit_group(*scheduler, request, seeds);
  expect_choices_as_alone(group, request, seeds);
  EXPECT_NE(group.sinks[0]->tokens, group.sinks[1]->tokens) << "the seeds should give different text";
  const auto load = scheduler->load();
  EXPECT_EQ(load.running + load.waiting, 0);
}

class BatchSchedulerTest : public SchedulerContract {
 protected:
  // A prompt of stories260K token ids, different for each seed.
  static std::vector<TokenId> prompt(std::uint32_t seed, std::size_t length) {
    std::mt19937 rng(seed);
    std::vector<TokenId> ids{1};
    while (ids.size() < length) ids.push_back(static_cast<TokenId>(3 + rng() % 500));
    return ids;
  }
  static SequenceRequest request_for(std::vector<TokenId> ids, std::int64_t max_tokens, std::uint64_t seed) {
    SequenceRequest request;
    request.prompt = std::move(ids);
    request.max_tokens = max_tokens;
    request.sampling.temperature = seed % 2 == 0 ? 0.0 : 0.8;  // half greedy, half seeded sampling
    request.sampling.seed = seed;
    return request;
  }
  // Submits all, waits for all; each must produce exactly what it does alone.
  static void expect_each_as_alone(BatchScheduler& scheduler, const std::vector<SequenceRequest>& requests) {
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (const auto& request : requests) {
      sinks.push_back(std::make_shared<RecordingSink>());
      scheduler.submit(request, sinks.back());
    }
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const SequenceEnd end = sinks[i]->wait_end();
      EXPECT_EQ(end.reason, FinishReason::Length) << "sequence " << i << ": " << end.error;
    }
    // Only now: the model is not to be used by two threads at once.
    for (std::size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(sinks[i]->tokens, alone(requests[i])) << "sequence " << i;
    }
    const auto load = scheduler.load();
    EXPECT_EQ(load.running + load.waiting, 0);
    EXPECT_EQ(load.kv_cache_usage, 0.0) << "every block back (cached ones are not in use)";
    EXPECT_GT(load.kv_blocks_total, 0);
    EXPECT_EQ(load.kv_blocks_free, load.kv_blocks_total) << "a free or cached block can be allocated again";
  }
};

TEST_P(BatchSchedulerTest, SequencesShareStepsWithChunkedPrefillAndEachGetsWhatItWouldAlone) {
  BatchSchedulerOptions options;
  options.max_num_seqs = 4;
  options.max_num_batched_tokens = 8;  // prompts of up to 30 tokens prefill over several steps
  options.num_blocks = 64;
  BatchScheduler scheduler(*model_, options);
  std::vector<SequenceRequest> requests;
  for (std::uint32_t i = 0; i < 10; ++i) requests.push_back(request_for(prompt(i, 3 + 3 * i), 24, i));
  expect_each_as_alone(scheduler, requests);
  const auto stats = scheduler.stats();
  EXPECT_GT(static_cast<double>(stats.step_tokens) / static_cast<double>(stats.steps), 2.0) << "steps were shared";
  EXPECT_EQ(stats.preemptions, 0);
}

TEST_P(BatchSchedulerTest, RunningOutOfBlocksPreemptsTheNewestAndEveryoneStillFinishesCorrectly) {
  BatchSchedulerOptions options;
  options.num_blocks = 12;  // 48 positions; each sequence needs up to 9 + 30 = 39
  options.block_size = 4;
  options.max_num_batched_tokens = 16;
  BatchScheduler scheduler(*model_, options);
  std::vector<SequenceRequest> requests;
  for (std::uint32_t i = 0; i < 6; ++i) requests.push_back(request_for(prompt(100 + i, 4 + i), 30, i));
  expect_each_as_alone(scheduler, requests);
  EXPECT_GT(scheduler.stats().preemptions, 0);
}

TEST_P(BatchSchedulerTest, AnFp16CacheGivesTheSameTokensWhetherPreemptedOrNot) {
  // fp16 rounding may change a token against the float32 reference, but never
  // between runs: recomputed and prefix-cached positions hold the same halves.
  const auto run = [](std::int32_t num_blocks, std::vector<SequenceRequest> requests, std::int64_t* preemptions) {
    BatchSchedulerOptions options;
    options.num_blocks = num_blocks;
    options.block_size = 4;
    options.max_num_batched_tokens = 16;
    options.kv_dtype = engine::KvDtype::Float16;
    BatchScheduler scheduler(*model_, options);
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (const auto& request : requests) {
      sinks.push_back(std::make_shared<RecordingSink>());
      scheduler.submit(request, sinks.back());
    }
    std::vector<std::vector<TokenId>> tokens;
    for (const auto& sink : sinks) {
      const SequenceEnd end = sink->wait_end();
      EXPECT_EQ(end.reason, FinishReason::Length) << end.error;
      tokens.push_back(sink->tokens);
    }
    *preemptions = scheduler.stats().preemptions;
    return tokens;
  };
  std::vector<SequenceRequest> requests;
  for (std::uint32_t i = 0; i < 6; ++i) requests.push_back(request_for(prompt(100 + i, 4 + i), 30, i));
  std::int64_t tight_preemptions = 0, roomy_preemptions = 0;
  const auto tight = run(12, requests, &tight_preemptions);
  const auto roomy = run(64, requests, &roomy_preemptions);
  EXPECT_GT(tight_preemptions, 0);
  EXPECT_EQ(roomy_preemptions, 0);
  EXPECT_EQ(tight, roomy);
}

TEST_P(BatchSchedulerTest, ASharedPrefixIsComputedOnce) {
  BatchSchedulerOptions options;
  options.block_size = 4;
  options.num_blocks = 64;
  BatchScheduler scheduler(*model_, options);
  const auto system = prompt(7, 41);
  expect_each_as_alone(scheduler, {request_for(system, 4, 0)});
  auto follow_up = system;
  follow_up.push_back(300);
  follow_up.push_back(301);
  const auto before = scheduler.stats();
  expect_each_as_alone(scheduler, {request_for(follow_up, 4, 2)});
  const auto after = scheduler.stats();
  EXPECT_EQ(after.prefix_hit_tokens - before.prefix_hit_tokens, 40) << "the 10 full blocks of the shared prefix";
}

// Alone, and for every choice of a group that computes the prompt once, though the
// first has cached the prompt's full block by then: scoring must not skip it.
TEST_P(BatchSchedulerTest, PromptLogprobsSurviveChunkedPrefill) {
  BatchSchedulerOptions options;
  options.max_num_batched_tokens = 5;
  BatchScheduler scheduler(*model_, options);
  auto request = request_for(prompt(3, 17), 2, 0);
  request.prompt_logprobs = 2;
  struct PromptSink : RecordingSink {
    void on_prompt_logprobs(const std::vector<engine::TokenStep>& steps) override { scored = steps; }
    std::vector<engine::TokenStep> scored;
  };
  const std::vector<std::shared_ptr<PromptSink>> sinks{std::make_shared<PromptSink>(), std::make_shared<PromptSink>(),
                                                       std::make_shared<PromptSink>()};
  scheduler.submit(request, sinks[0]);
  scheduler.submit_group(request, {{1, sinks[1]}, {2, sinks[2]}});
  for (const auto& sink : sinks) sink->wait_end();
  std::vector<engine::TokenStep> expected;
  generate(*model_, request, {}, [&](const std::vector<engine::TokenStep>& steps) { expected = steps; });
  ASSERT_EQ(expected.size(), 16u);
  for (const auto& sink : sinks) {
    ASSERT_EQ(sink->scored.size(), 16u);
    for (std::size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(sink->scored[i].token, expected[i].token);
      EXPECT_NEAR(sink->scored[i].logprob, expected[i].logprob, 1e-4);
    }
  }
}

// A prompt ending inside a block (its last block is shared, then copied on write)
// and one filling its last block (nothing to copy), greedy and seeded.
TEST_P(BatchSchedulerTest, AGroupPrefillsItsPromptOnceAndEachChoiceGetsWhatItWouldAlone) {
  constexpr std::int64_t kMaxTokens = 12;
  const std::vector<std::uint64_t> seeds{3, 4, 5, 6};
  const auto n = static_cast<std::int64_t>(seeds.size());
  for (const std::size_t length : {std::size_t{10}, std::size_t{12}}) {
    for (const double temperature : {0.0, 0.8}) {
      SCOPED_TRACE(::testing::Message() << "prompt of " << length << ", temperature " << temperature);
      BatchSchedulerOptions options;
      options.block_size = 4;
      options.num_blocks = 64;
      options.max_num_batched_tokens = 6;  // the prompt prefills in chunks
      auto request = request_for(prompt(21, length), kMaxTokens, 0);
      request.sampling.temperature = temperature;

      BatchScheduler grouped(*model_, options);
      expect_choices_as_alone(submit_group(grouped, request, seeds), request, seeds);
      const auto stats = grouped.stats();
      // The prompt once, then each choice's decode tokens (its first comes from the prompt's logits).
      EXPECT_EQ(stats.step_tokens, static_cast<std::int64_t>(length) + n * (kMaxTokens - 1));
      EXPECT_EQ(stats.prefix_queried_tokens, static_cast<std::int64_t>(length)) << "admitted once";
      EXPECT_EQ(stats.copied_blocks, length % 4 == 0 ? 0 : n - 1) << "all but the last writer copy the partial block";
      EXPECT_EQ(stats.preemptions, 0);
      EXPECT_EQ(grouped.load().kv_cache_usage, 0.0);

      // The same choices submitted one by one: the same tokens, but each computes
      // at least the end of the prompt again.
      BatchScheduler separate(*model_, options);
      std::vector<SequenceRequest> requests;
      for (const std::uint64_t seed : seeds) requests.push_back(with_seed(request, seed));
      expect_each_as_alone(separate, requests);
      EXPECT_GT(separate.stats().step_tokens, stats.step_tokens);
    }
  }
}

TEST_P(BatchSchedulerTest, AGroupSharesThePromptsBlocksAndCopiesThePartialOneOnlyWhenWritten) {
  BatchSchedulerOptions options;
  options.block_size = 4;
  options.num_blocks = 64;
  BatchScheduler scheduler(*model_, options);
  auto request = request_for(prompt(22, 10), 8, 1);  // 10 tokens: blocks of 4, 4 and 2
  const std::vector<std::uint64_t> seeds{1, 2, 3};
  const auto used = [&] { return std::lround(scheduler.load().kv_cache_usage * options.num_blocks); };
  // Choice 0 runs first; holding its sink holds the worker inside a step, when
  // load() shows the blocks as the step before left them.
  const auto group = submit_group(scheduler, request, seeds, [](Group& g) { g.sinks[0]->hold_at(2); });
  auto& first = *group.sinks[0];
  first.wait_for_tokens(2);
  EXPECT_EQ(used(), 3) << "after the prefill the three choices share the prompt's 3 blocks (apart: 9)";
  first.hold_at(3);
  first.release();
  first.wait_for_tokens(3);
  EXPECT_EQ(used(), 2 + 3) << "the full blocks still shared; the partial one copied by two, written in place by one";
  EXPECT_EQ(scheduler.stats().copied_blocks, 2);
  first.release();
  expect_choices_as_alone(group, request, seeds);
  EXPECT_EQ(scheduler.load().kv_cache_usage, 0.0);
}

TEST_P(BatchSchedulerTest, CancellingOneChoiceLeavesTheOthersOfItsGroup) {
  BatchSchedulerOptions options;
  options.block_size = 4;
  BatchScheduler scheduler(*model_, options);
  // A held sequence keeps the worker inside a step, so the group is still queued
  // when its first choice (the one that carries the prefill) is cancelled.
  auto busy = std::make_shared<RecordingSink>();
  busy->hold();
  const auto busy_ticket = scheduler.submit(greedy(50), busy);
  busy->wait_for_tokens(1);

  auto request = request_for(prompt(23, 10), 10, 1);
  const std::vector<std::uint64_t> seeds{11, 12, 13, 14};
  const auto group = submit_group(scheduler, request, seeds, [](Group& g) { g.sinks[2]->cancel_after = 3; });
  EXPECT_EQ(scheduler.load().waiting, 4);
  group.tickets[0]->cancel();
  busy_ticket->cancel();
  busy->release();

  EXPECT_EQ(group.sinks[0]->wait_end().reason, FinishReason::Cancelled);
  EXPECT_EQ(group.sinks[0]->order, std::vector<std::string>{"finished"}) << "never started";
  const SequenceEnd cancelled = group.sinks[2]->wait_end();
  EXPECT_EQ(cancelled.reason, FinishReason::Cancelled);
  EXPECT_EQ(cancelled.generated_tokens, 3);
  expect_choices_as_alone({{group.sinks[1], group.sinks[3]}, {}}, request, {seeds[1], seeds[3]});
  auto cancelled_alone = alone(with_seed(request, seeds[2]));
  cancelled_alone.resize(3);
  EXPECT_EQ(group.sinks[2]->tokens, cancelled_alone);
  const auto load = scheduler.load();
  EXPECT_EQ(load.running + load.waiting, 0);
  EXPECT_EQ(load.kv_cache_usage, 0.0);
}

// Both kinds of preemption happen here: forks that recompute their prompt and
// tokens alone, and a group still prefilling (recomputed as a group, forking later).
TEST_P(BatchSchedulerTest, ForkedChoicesArePreemptedAndRecomputedAloneWhenBlocksRunOut) {
  BatchSchedulerOptions options;
  options.num_blocks = 12;  // 48 positions; each choice needs up to 16 + 30 = 46
  options.block_size = 4;
  options.max_num_batched_tokens = 16;
  BatchScheduler scheduler(*model_, options);
  std::vector<SequenceRequest> requests;
  std::vector<Group> groups;
  const std::vector<std::vector<std::uint64_t>> seeds{{0, 1, 2}, {3, 4, 5}, {6, 7, 8}};
  for (std::uint32_t g = 0; g < 3; ++g) {
    requests.push_back(request_for(prompt(300 + g, 6 + 5 * g), 30, g));  // greedy, seeded, greedy
    groups.push_back(submit_group(scheduler, requests.back(), seeds[g]));
  }
  for (const auto& group : groups) wait_choices(group);
  for (std::size_t g = 0; g < 3; ++g) expect_choices_as_alone(groups[g], requests[g], seeds[g]);
  EXPECT_GT(scheduler.stats().preemptions, 0);
  const auto load = scheduler.load();
  EXPECT_EQ(load.running + load.waiting, 0);
  EXPECT_EQ(load.kv_cache_usage, 0.0);
}

TEST_P(BatchSchedulerTest, AGroupTakesAPlacePerChoiceAndOneWiderThanTheLimitsStillRuns) {
  const auto sink = [] { return std::make_shared<RecordingSink>(); };
  const auto keep_busy = [](Scheduler& scheduler, const std::shared_ptr<RecordingSink>& busy) {
    busy->hold();
    auto ticket = scheduler.submit(greedy(50), busy);
    busy->wait_for_tokens(1);
    return ticket;
  };
  BatchSchedulerOptions options;
  options.max_waiting = 3;
  {
    BatchScheduler scheduler(*model_, options);
    auto busy = sink();
    const auto busy_ticket = keep_busy(scheduler, busy);
    scheduler.submit_group(greedy(2), {{1, sink()}, {2, sink()}});
    EXPECT_EQ(scheduler.load().waiting, 2);
    EXPECT_THROW(scheduler.submit_group(greedy(2), {{3, sink()}, {4, sink()}}), Overloaded);
    EXPECT_NO_THROW(scheduler.submit(greedy(2), sink()));
    EXPECT_EQ(scheduler.load().waiting, 3);
    busy_ticket->cancel();
    busy->release();
    scheduler.stop(30s);
  }
  // An empty queue takes a group wider than itself (it would never fit otherwise),
  // and max_num_seqs lets a group wider than itself run alone.
  options.max_num_seqs = 2;
  BatchScheduler scheduler(*model_, options);
  auto busy = sink();
  const auto busy_ticket = keep_busy(scheduler, busy);
  SequenceRequest request = greedy(6);
  const std::vector<std::uint64_t> seeds{1, 2, 3, 4};
  const auto wide = submit_group(scheduler, request, seeds);
  EXPECT_EQ(scheduler.load().waiting, 4);
  EXPECT_THROW(scheduler.submit(greedy(2), sink()), Overloaded);
  busy_ticket->cancel();
  busy->release();
  expect_choices_as_alone(wide, request, seeds);
}

// Sinks run on the event thread; one that throws ends its own choice with the error,
// is told nothing computed after it threw, and leaves its siblings alone.
TEST_P(BatchSchedulerTest, ASinkThatThrowsEndsItsOwnChoiceOnly) {
  BatchSchedulerOptions options;
  options.num_blocks = 64;
  BatchScheduler scheduler(*model_, options);
  struct ThrowingSink : RecordingSink {
    void on_token(const engine::TokenStep& step) override {
      RecordingSink::on_token(step);
      if (tokens.size() == 2) throw std::runtime_error("the connection broke");
    }
  };
  const auto request = request_for(prompt(24, 6), 8, 1);
  const std::vector<std::uint64_t> seeds{1, 2};
  auto thrower = std::make_shared<ThrowingSink>();
  auto fine = std::make_shared<RecordingSink>();
  scheduler.submit_group(request, {{seeds[0], thrower}, {seeds[1], fine}});
  const SequenceEnd end = thrower->wait_end();
  EXPECT_EQ(end.reason, FinishReason::Error);
  EXPECT_EQ(end.error, "the connection broke");
  EXPECT_EQ(thrower->tokens.size(), 2u);
  EXPECT_EQ(end.generated_tokens, 2) << "a token picked after the throw is never counted";
  EXPECT_EQ(fine->wait_end().reason, FinishReason::Length);
  EXPECT_EQ(fine->tokens, alone(with_seed(request, seeds[1])));
  const auto load = scheduler.load();
  EXPECT_EQ(load.running + load.waiting, 0);
  EXPECT_EQ(load.kv_cache_usage, 0.0);
}

// The probes' view of the step loop: idle is healthy however long it lasts; a loop
// held inside a turn (here by a sink that does not return) counts its stall from
// its last progress, and is healthy again once it moves.
TEST_P(BatchSchedulerTest, TheStepLoopReportsHowLongItHasHadWorkWithoutProgress) {
  BatchSchedulerOptions options;
  options.num_blocks = 64;
  BatchScheduler scheduler(*model_, options);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(scheduler.health().stalled_seconds, 0.0) << "idle is not stalled";

  auto sink = std::make_shared<RecordingSink>();
  sink->hold_at(1);
  scheduler.submit(greedy(4), sink);
  sink->wait_for_tokens(1);
  std::this_thread::sleep_for(300ms);
  const StepLoopHealth held = scheduler.health();
  // At least most of the 300 ms: the loop's last progress is stamped on its own
  // thread, a little after the sink saw the token (ASan's slower run came in at
  // 0.2997 s against a bound of exactly 0.3).
  EXPECT_GE(held.stalled_seconds, 0.25) << "the loop waits for the held sink";
  EXPECT_LT(held.stalled_seconds, 30.0);

  sink->release();
  EXPECT_EQ(sink->wait_end().reason, FinishReason::Length);
  for (int i = 0; i < 100 && scheduler.health().stalled_seconds > 0; ++i) std::this_thread::sleep_for(10ms);
  const StepLoopHealth after = scheduler.health();
  EXPECT_EQ(after.stalled_seconds, 0.0) << "idle again";
  EXPECT_GT(after.turns, held.turns);
}

INSTANTIATE_TEST_SUITE_P(Batch, BatchSchedulerTest, ::testing::Values("batch"),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

INSTANTIATE_TEST_SUITE_P(Schedulers, SchedulerContract, ::testing::Values("batch"),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

}  // namespace
}  // namespace nibble::scheduler
