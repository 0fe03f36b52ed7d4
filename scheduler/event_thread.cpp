#include "scheduler/event_thread.h"

#include <exception>
#include <type_traits>
#include <variant>
#include <utility>

namespace nibble::scheduler {
namespace {

bool is_end(const StepEvent& event) { return std::holds_alternative<SequenceEnd>(event.what); }

}  // namespace

void SinkChannel::deliver(const StepEvent& event) {
  if (is_end(event)) {
    try {
      sink_->on_finished(std::get<SequenceEnd>(event.what));
    } catch (const std::exception&) {
      // A sink that cannot take its last event has nobody left to tell.
    }
    return;
  }
  if (failure()) return;
  try {
    std::visit(
        [&](const auto& what) {
          using What = std::decay_t<decltype(what)>;
          if constexpr (std::is_same_v<What, SequenceStart>) {
            sink_->on_started(what);
          } else if constexpr (std::is_same_v<What, PromptLogprobs>) {
            sink_->on_prompt_logprobs(what.steps);
          } else if constexpr (std::is_same_v<What, engine::TokenStep>) {
            sink_->on_token(what);
          }
        },
        event.what);
  } catch (const std::exception& e) {
    const std::lock_guard lock(mutex_);
    failure_ = e.what();
  }
}

std::optional<std::string> SinkChannel::failure() const {
  const std::lock_guard lock(mutex_);
  return failure_;
}

EventThread::EventThread() : thread_([this] { run(); }) {}

EventThread::~EventThread() {
  {
    const std::lock_guard lock(mutex_);
    quit_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void EventThread::post(EventBatch batch) {
  if (batch.empty()) return;
  {
    const std::lock_guard lock(mutex_);
    queue_.push_back(std::move(batch));
  }
  changed_.notify_all();
}

void EventThread::wait_idle() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty() && !delivering_; });
}

void EventThread::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return quit_ || !queue_.empty(); });
    if (queue_.empty()) return;  // quit_, and everything delivered
    EventBatch batch = std::move(queue_.front());
    queue_.pop_front();
    delivering_ = true;
    lock.unlock();
    for (const auto& delivery : batch.events) {
      if (!is_end(delivery.event)) delivery.channel->deliver(delivery.event);
    }
    if (batch.publish) batch.publish();
    for (const auto& delivery : batch.events) {
      if (is_end(delivery.event)) delivery.channel->deliver(delivery.event);
    }
    batch = {};  // sinks released off the lock
    lock.lock();
    delivering_ = false;
    changed_.notify_all();
  }
}

}  // namespace nibble::scheduler
