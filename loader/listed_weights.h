#pragma once
// The tensors a Hugging Face checkpoint of a config stores, listed without the
// checkpoint: names, shapes, stored types and bytes, as a WeightSource whose
// list() is all it answers. `nibble plan --config` sizes each rank's share of a
// model nobody has downloaded with it, through the same shard mapping serve uses
// (loader/tensor_shard.h), so the planner's bytes per rank are serve's.
#include <cstdint>
#include <memory>

#include "loader/model_config.h"
#include "loader/weight_source.h"

namespace nibble {

struct ListedFormat {
  // 0: every tensor bfloat16. Otherwise FP8 e4m3 linear weights with a float32
  // weight_scale_inv per block x block tile (DeepSeek-V3's quantization_config);
  // embeddings, lm_head, routers and norms stay bfloat16, as that checkpoint keeps them.
  std::int64_t fp8_block = 0;
};

// Throws nibble::Error for an architecture the engine does not know. Linear biases
// (a few kilobytes) are not listed.
std::unique_ptr<WeightSource> listed_weights(const ModelConfig& config, const ListedFormat& format);

}  // namespace nibble
