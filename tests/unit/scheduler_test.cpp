// The serial scheduler on the real stories260K model: events in order and equal
// to a direct generate(), cancellation within one step, a full queue refused at
// once, bad requests ending alone, and stop() draining what was submitted.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>

#include <nlohmann/json.hpp>

#include "scheduler/serial_scheduler.h"
#include "stories_model.h"
#include "test_util.h"

namespace nibble::scheduler {
namespace {

using namespace std::chrono_literals;

using testing::reference_greedy_ids;

// Records every event; on_token can be held until the test lets it go.
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
  bool done_ = false;
};

class SerialSchedulerTest : public ::testing::Test {
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

  static testing::StoriesModel* stories_;
  static engine::LlamaModel* model_;
};
testing::StoriesModel* SerialSchedulerTest::stories_ = nullptr;
engine::LlamaModel* SerialSchedulerTest::model_ = nullptr;

TEST_F(SerialSchedulerTest, SequencesRunInOrderAndMatchTheReference) {
  SerialScheduler scheduler(*model_, 8);
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

TEST_F(SerialSchedulerTest, CancellingStopsTheSequenceAtTheNextStep) {
  SerialScheduler scheduler(*model_, 8);
  auto sink = std::make_shared<RecordingSink>();
  sink->cancel_after = 3;
  sink->ticket_promise.set_value(scheduler.submit(greedy(100), sink));
  const SequenceEnd end = sink->wait_end();
  EXPECT_EQ(end.reason, FinishReason::Cancelled);
  EXPECT_EQ(sink->tokens.size(), 3u);
  EXPECT_EQ(end.generated_tokens, 3);
}

TEST_F(SerialSchedulerTest, AFullQueueIsRefusedAtOnceAndCancelledWaitersNeverStart) {
  SerialScheduler scheduler(*model_, 1);
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

TEST_F(SerialSchedulerTest, ABadRequestEndsAloneAndDeadlinesTimeOut) {
  SerialScheduler scheduler(*model_, 8);
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

TEST_F(SerialSchedulerTest, StopDrainsWhatWasSubmittedAndRefusesTheRest) {
  auto scheduler = std::make_unique<SerialScheduler>(*model_, 8);
  auto first = std::make_shared<RecordingSink>();
  auto second = std::make_shared<RecordingSink>();
  scheduler->submit(greedy(10), first);
  scheduler->submit(greedy(10), second);
  scheduler->stop(30s);
  EXPECT_EQ(first->wait_end().reason, FinishReason::Length);
  EXPECT_EQ(second->wait_end().reason, FinishReason::Length);
  EXPECT_THROW(scheduler->submit(greedy(1), std::make_shared<RecordingSink>()), Overloaded);

  // Past the drain time, what is left is cancelled.
  scheduler = std::make_unique<SerialScheduler>(*model_, 8);
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

}  // namespace
}  // namespace nibble::scheduler
