#include "scheduler/serial_scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <utility>

#include "common/error.h"

namespace nibble::scheduler {
namespace {

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

bool past(const std::optional<Clock::time_point>& deadline) { return deadline && Clock::now() >= *deadline; }

}  // namespace

SerialScheduler::SerialScheduler(engine::Model& model, std::int64_t max_waiting)
    : model_(model), max_waiting_(max_waiting), worker_([this] { work(); }) {}

SerialScheduler::~SerialScheduler() { stop(std::chrono::milliseconds(0)); }

std::shared_ptr<Ticket> SerialScheduler::submit(SequenceRequest request, std::shared_ptr<SequenceSink> sink) {
  auto ticket = std::make_shared<Ticket>();
  {
    const std::lock_guard lock(mutex_);
    if (!accepting_) throw Overloaded("the server is shutting down");
    if (static_cast<std::int64_t>(waiting_.size()) >= max_waiting_) {
      throw Overloaded(fmt::format("{} requests are already waiting", waiting_.size()));
    }
    waiting_.push_back(Entry{std::move(request), std::move(sink), ticket, Clock::now()});
  }
  changed_.notify_all();
  return ticket;
}

SchedulerLoad SerialScheduler::load() const {
  const std::lock_guard lock(mutex_);
  // One sequence's cache, sized for the whole context.
  const double capacity = static_cast<double>(std::max<std::int64_t>(1, model_.config().max_position_embeddings));
  return {running_ ? 1 : 0, static_cast<std::int64_t>(waiting_.size()),
          running_ ? static_cast<double>(cached_tokens_.load()) / capacity : 0.0};
}

void SerialScheduler::stop(std::chrono::milliseconds drain_timeout) {
  std::unique_lock lock(mutex_);
  accepting_ = false;
  const auto idle = [&] { return waiting_.empty() && !running_; };
  if (!changed_.wait_for(lock, drain_timeout, idle)) {
    // Past the drain time: everything left ends as cancelled, at its next step.
    for (auto& entry : waiting_) entry.ticket->cancel();
    if (running_) running_->cancel();
    changed_.wait(lock, idle);
  }
  quit_ = true;
  lock.unlock();
  changed_.notify_all();
  if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
}

void SerialScheduler::work() {
  while (true) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return quit_ || !waiting_.empty(); });
    if (waiting_.empty()) return;  // quit_
    Entry entry = std::move(waiting_.front());
    waiting_.pop_front();
    running_ = entry.ticket;
    lock.unlock();
    const SequenceEnd end = run(entry);
    // Counted out before the sink hears the end, so load() never lags the events.
    lock.lock();
    running_.reset();
    lock.unlock();
    finish(entry, end);
    changed_.notify_all();
  }
}

SequenceEnd SerialScheduler::run(Entry& entry) {
  const auto& request = entry.request;
  SequenceEnd end;
  end.prompt_tokens = static_cast<std::int64_t>(request.prompt.size());
  end.queue_seconds = seconds_between(entry.submitted, Clock::now());
  if (entry.ticket->cancelled() || past(request.deadline)) {
    end.reason = entry.ticket->cancelled() ? FinishReason::Cancelled : FinishReason::Timeout;
    return end;
  }
  try {
    entry.sink->on_started(SequenceStart{end.queue_seconds, end.prompt_tokens});
    cached_tokens_ = end.prompt_tokens;

    engine::GenerationRequest generation;
    generation.prompt = request.prompt;
    generation.sampling = request.sampling;
    generation.max_new_tokens = request.max_tokens;
    generation.stop_tokens = request.stop_tokens;
    generation.logit_bias = request.logit_bias;
    generation.top_logprobs = request.top_logprobs;
    generation.prompt_logprobs = request.prompt_logprobs;
    bool timed_out = false;
    const auto on_token = [&](const engine::TokenStep& step) {
      if (entry.ticket->cancelled()) return false;
      if (past(request.deadline)) {
        timed_out = true;
        return false;
      }
      entry.sink->on_token(step);
      ++end.generated_tokens;
      cached_tokens_ = end.prompt_tokens + end.generated_tokens;
      return true;
    };
    const auto on_prompt = [&](const std::vector<engine::TokenStep>& steps) { entry.sink->on_prompt_logprobs(steps); };
    const engine::GenerationResult result = engine::generate(model_, generation, on_token, on_prompt);
    end.prefill_seconds = result.prefill_seconds;
    end.decode_seconds = result.decode_seconds;
    switch (result.finish) {
      case engine::FinishReason::Stop:
        end.reason = FinishReason::Stop;
        break;
      case engine::FinishReason::Length:
        end.reason = FinishReason::Length;
        break;
      case engine::FinishReason::Cancelled:
        end.reason = timed_out ? FinishReason::Timeout : FinishReason::Cancelled;
        break;
    }
  } catch (const std::exception& e) {
    // A bad request (prompt longer than the context) or a failing sink ends this
    // sequence only; the worker goes on with the next.
    end.reason = FinishReason::Error;
    end.error = e.what();
  }
  return end;
}

void SerialScheduler::finish(Entry& entry, const SequenceEnd& end) {
  try {
    entry.sink->on_finished(end);
  } catch (const std::exception&) {
    // A sink that cannot take its last event has nobody left to tell.
  }
}

}  // namespace nibble::scheduler
