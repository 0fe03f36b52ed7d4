// The event thread alone: batches delivered whole and in order, the step's counts
// published between a batch's tokens and its ends, a throwing sink cut off but
// still told its end, and wait_idle() returning only once everything was told.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/event_thread.h"

namespace nibble::scheduler {
namespace {

using namespace std::chrono_literals;

// Appends what it hears to a log shared by every sink of a test.
class LoggingSink : public SequenceSink {
 public:
  LoggingSink(std::string name, std::vector<std::string>& log, std::mutex& mutex)
      : name_(std::move(name)), log_(log), mutex_(mutex) {}
  void on_started(const SequenceStart&) override { add("started"); }
  void on_prompt_logprobs(const std::vector<engine::TokenStep>& steps) override {
    add("prompt" + std::to_string(steps.size()));
  }
  void on_token(const engine::TokenStep& step) override {
    add("token" + std::to_string(step.token));
    if (step.token == throw_at) throw std::runtime_error("the client is gone");
    if (step.token == block_at) {
      std::unique_lock lock(gate_mutex_);
      gate_.wait(lock, [&] { return open_; });
    }
  }
  void on_finished(const SequenceEnd& end) override { add("end:" + std::string(finish_reason_name(end.reason))); }

  void open() {
    const std::lock_guard lock(gate_mutex_);
    open_ = true;
    gate_.notify_all();
  }

  TokenId throw_at = -1;
  TokenId block_at = -1;

 private:
  void add(const std::string& what) {
    const std::lock_guard lock(mutex_);
    log_.push_back(name_ + " " + what);
  }
  std::string name_;
  std::vector<std::string>& log_;
  std::mutex& mutex_;
  std::mutex gate_mutex_;
  std::condition_variable gate_;
  bool open_ = false;
};

StepEvent token(ChoiceId choice, TokenId id) {
  StepEvent event;
  event.choice = choice;
  event.what.emplace<engine::TokenStep>().token = id;
  return event;
}
StepEvent started(ChoiceId choice) {
  StepEvent event;
  event.choice = choice;
  event.what.emplace<SequenceStart>();
  return event;
}
StepEvent ended(ChoiceId choice, FinishReason reason) {
  StepEvent event;
  event.choice = choice;
  event.what.emplace<SequenceEnd>().reason = reason;
  return event;
}

class EventThreadTest : public ::testing::Test {
 protected:
  std::shared_ptr<LoggingSink> sink(const std::string& name) {
    return std::make_shared<LoggingSink>(name, log_, mutex_);
  }
  std::vector<std::string> log() {
    const std::lock_guard lock(mutex_);
    return log_;
  }
  void add_to_log(const std::string& what) {
    const std::lock_guard lock(mutex_);
    log_.push_back(what);
  }

  std::mutex mutex_;
  std::vector<std::string> log_;
};

TEST_F(EventThreadTest, ABatchTellsTokensThenPublishesThenTellsTheEnds) {
  auto a = sink("a");
  auto b = sink("b");
  auto channel_a = std::make_shared<SinkChannel>(a);
  auto channel_b = std::make_shared<SinkChannel>(b);
  EventThread events;
  EventBatch first;
  first.events = {{channel_a, started(1)}, {channel_b, started(2)}, {channel_a, token(1, 10)}};
  events.post(std::move(first));
  EventBatch second;
  // The end of A comes before B's token in the step's order; A's end still waits for the counts.
  second.events = {{channel_a, token(1, 11)}, {channel_a, ended(1, FinishReason::Length)}, {channel_b, token(2, 20)}};
  second.publish = [&] { add_to_log("publish"); };
  events.post(std::move(second));
  events.wait_idle();
  EXPECT_EQ(log(), (std::vector<std::string>{"a started", "b started", "a token10", "a token11", "b token20", "publish",
                                             "a end:length"}));
}

TEST_F(EventThreadTest, ASinkThatThrowsHearsNothingMoreButItsEnd) {
  auto a = sink("a");
  a->throw_at = 11;
  auto channel = std::make_shared<SinkChannel>(a);
  EventThread events;
  EventBatch batch;
  batch.events = {{channel, token(1, 10)}, {channel, token(1, 11)}, {channel, token(1, 12)}};
  events.post(std::move(batch));
  events.wait_idle();
  ASSERT_TRUE(channel->failure());
  EXPECT_EQ(*channel->failure(), "the client is gone");
  EventBatch last;
  last.events = {{channel, token(1, 13)}, {channel, ended(1, FinishReason::Error)}};
  events.post(std::move(last));
  events.wait_idle();
  EXPECT_EQ(log(), (std::vector<std::string>{"a token10", "a token11", "a end:error"}));
}

TEST_F(EventThreadTest, WaitIdleReturnsOnlyOnceASlowSinkIsDone) {
  auto a = sink("a");
  a->block_at = 10;
  auto channel = std::make_shared<SinkChannel>(a);
  EventThread events;
  EventBatch batch;
  batch.events = {{channel, token(1, 10)}, {channel, ended(1, FinishReason::Stop)}};
  events.post(std::move(batch));
  std::thread opener([&] {
    std::this_thread::sleep_for(50ms);
    add_to_log("opened");
    a->open();
  });
  events.wait_idle();
  EXPECT_EQ(log(), (std::vector<std::string>{"a token10", "opened", "a end:stop"}));
  opener.join();
}

TEST_F(EventThreadTest, DestroyingTheThreadDeliversWhatWasPosted) {
  auto a = sink("a");
  auto channel = std::make_shared<SinkChannel>(a);
  {
    EventThread events;
    for (TokenId id = 0; id < 50; ++id) {
      EventBatch batch;
      batch.events = {{channel, token(1, id)}};
      events.post(std::move(batch));
    }
  }
  const auto told = log();
  ASSERT_EQ(told.size(), 50u);
  EXPECT_EQ(told.back(), "a token49");
}

}  // namespace
}  // namespace nibble::scheduler
