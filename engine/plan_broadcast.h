#pragma once
// Tensor-parallel serving's control path: rank 0 (HTTP, tokenizer, scheduler,
// sampling) sends each step's plan to the other ranks before running it, and
// they run the same forward over their share of the model. The plans travel
// over their own communicator, whose deadline is long: a worker waits for the
// next plan as long as rank 0 is idle, while the forward's collectives keep the
// tensor group's short deadline (a dead or hung peer is found there).
#include <functional>

#include "dist/communicator.h"
#include "engine/model_runner.h"
#include "engine/step_plan.h"

namespace nibble::engine {

// What rank 0's ModelRunner calls with each plan before executing it.
std::function<void(const StepPlan&)> plan_sender(dist::Communicator& plans);

// Ranks 1..N-1: execute every plan rank 0 sends (they pick no tokens: their plans
// have no samplers) until rank 0 calls stop_plan_receivers(). Returns the number
// of steps run.
std::int64_t run_plan_receiver(ModelRunner& runner, dist::Communicator& plans);

// Rank 0, after its last step: ends the receivers' loops.
void stop_plan_receivers(dist::Communicator& plans);

}  // namespace nibble::engine
