#pragma once
// A StepPlan's forward part as bytes, for rank 0 of a sharded model to send to
// the other ranks, which run the same forward (their heads, their layers) and
// never sample. Sampler set-ups and frees stay on rank 0 with the samplers:
// they are not encoded, and a decoded plan has none. Decoding checks every
// length against the bytes, so a corrupt or truncated message is a clear error.
#include <string>
#include <string_view>

#include "engine/step_plan.h"

namespace nibble::engine {

std::string encode_forward_plan(const StepPlan& plan);
StepPlan decode_forward_plan(std::string_view bytes);

}  // namespace nibble::engine
