#pragma once
// One sequence at a time on one worker thread, in arrival order: the scheduler
// the server starts with, until continuous batching (issue 5) replaces it behind
// the same Scheduler interface.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engine/decoder_model.h"
#include "scheduler/scheduler.h"

namespace nibble::scheduler {

class SerialScheduler final : public Scheduler {
 public:
  // `model` must outlive the scheduler. At most `max_waiting` sequences wait
  // behind the running one.
  SerialScheduler(engine::Model& model, std::int64_t max_waiting);
  ~SerialScheduler() override;

  std::shared_ptr<Ticket> submit(SequenceRequest request, std::shared_ptr<SequenceSink> sink) override;
  SchedulerLoad load() const override;
  void stop(std::chrono::milliseconds drain_timeout) override;

 private:
  struct Entry {
    SequenceRequest request;
    std::shared_ptr<SequenceSink> sink;
    std::shared_ptr<Ticket> ticket;
    Clock::time_point submitted;
  };

  void work();
  SequenceEnd run(Entry& entry);  // every event but the last
  static void finish(Entry& entry, const SequenceEnd& end);

  engine::Model& model_;
  const std::int64_t max_waiting_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Entry> waiting_;
  std::shared_ptr<Ticket> running_;  // the sequence on the worker, if any
  std::atomic<std::int64_t> cached_tokens_{0};  // in the running sequence's KV cache
  bool accepting_ = true;
  bool quit_ = false;
  std::thread worker_;
};

}  // namespace nibble::scheduler
