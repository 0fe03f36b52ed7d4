#pragma once
// RoPE inverse frequencies, including the context-extension schemes real
// checkpoints ship with (linear, llama3). Backend-independent: computed once.
#include <cstdint>
#include <vector>

#include "loader/model_config.h"

namespace nibble::engine {

// head_dim / 2 inverse frequencies, matching Hugging Face's float32 computation.
std::vector<float> rope_inv_freq(std::int64_t head_dim, double theta, const RopeScaling& scaling);

}  // namespace nibble::engine
