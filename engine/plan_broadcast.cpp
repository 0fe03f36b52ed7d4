#include "engine/plan_broadcast.h"

#include <string>

#include "engine/step_plan_codec.h"

namespace nibble::engine {

// An empty message (no magic, no version) is the end of the loop; every plan,
// even one with no sequences, encodes to at least its header.
std::function<void(const StepPlan&)> plan_sender(dist::Communicator& plans) {
  return [&plans](const StepPlan& plan) {
    std::string bytes = encode_forward_plan(plan);
    dist::broadcast_bytes(plans, bytes, 0);
  };
}

std::int64_t run_plan_receiver(ModelRunner& runner, dist::Communicator& plans) {
  std::int64_t steps = 0;
  for (;;) {
    std::string bytes;
    dist::broadcast_bytes(plans, bytes, 0);
    if (bytes.empty()) return steps;
    runner.execute(decode_forward_plan(bytes));
    ++steps;
  }
}

void stop_plan_receivers(dist::Communicator& plans) {
  std::string end;
  dist::broadcast_bytes(plans, end, 0);
}

}  // namespace nibble::engine
