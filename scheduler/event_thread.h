#pragma once
// Delivers sequence events to their sinks on a thread of its own, so detokenizing,
// stop strings and JSON building in the sinks overlap the next model step instead
// of delaying it. Batches are delivered whole and in the order posted; within a
// batch, every event but the ends first, then `publish` (the step's counts, so
// load() never lags an on_finished), then the ends. A sink's events therefore keep
// their order: started, prompt log-probabilities, tokens, finished.
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/step_scheduler.h"

namespace nibble::scheduler {

// One choice's sink as the event thread uses it. A sink that throws is not called
// again except for its on_finished; the step thread reads failure() and ends the
// choice with an error, which reaches that on_finished.
class SinkChannel {
 public:
  explicit SinkChannel(std::shared_ptr<SequenceSink> sink) : sink_(std::move(sink)) {}
  void deliver(const StepEvent& event);
  std::optional<std::string> failure() const;

 private:
  std::shared_ptr<SequenceSink> sink_;
  mutable std::mutex mutex_;
  std::optional<std::string> failure_;
};

struct EventBatch {
  struct Delivery {
    std::shared_ptr<SinkChannel> channel;
    StepEvent event;
  };
  std::vector<Delivery> events;
  std::function<void()> publish;  // runs after the events that are not ends, before the ends
  bool empty() const { return events.empty() && !publish; }
};

class EventThread {
 public:
  EventThread();
  ~EventThread();  // delivers what was posted, then stops
  EventThread(const EventThread&) = delete;
  EventThread& operator=(const EventThread&) = delete;

  void post(EventBatch batch);
  // Returns once every posted batch has been delivered.
  void wait_idle();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<EventBatch> queue_;
  bool delivering_ = false;
  bool quit_ = false;
  std::thread thread_;
};

}  // namespace nibble::scheduler
