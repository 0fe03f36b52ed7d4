#include "scheduler/scheduler.h"

#include <utility>

namespace nibble::scheduler {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Timeout:
      return "timeout";
    case FinishReason::Error:
      return "error";
    case FinishReason::ConstraintDeadEnd:
      return "constraint_dead_end";
  }
  return "unknown";
}

std::vector<std::shared_ptr<Ticket>> Scheduler::submit_group(SequenceRequest request,
                                                             std::vector<ForkedChoice> choices) {
  std::vector<std::shared_ptr<Ticket>> tickets;
  try {
    for (auto& choice : choices) {
      SequenceRequest alone = request;
      alone.sampling.seed = choice.seed;
      tickets.push_back(submit(std::move(alone), std::move(choice.sink)));
    }
  } catch (const Overloaded&) {
    // All or nothing for the caller; the queued ones still hear on_finished (cancelled).
    for (const auto& ticket : tickets) ticket->cancel();
    throw;
  }
  return tickets;
}

}  // namespace nibble::scheduler
