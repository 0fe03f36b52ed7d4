#pragma once
// What a model costs: parameters, bytes by stored type, compression against
// fp16, compute and KV-cache memory per token. Used by `nibble inspect` and,
// later, by the memory planner.
#include <cstdint>
#include <map>
#include <string>

#include "loader/model_source.h"

namespace nibble::engine {

struct ModelStats {
  std::int64_t parameters = 0;
  // Mixture of experts: the parameters one token uses (the routed experts it does
  // not choose left out); equal to `parameters` for a dense model.
  std::int64_t active_parameters = 0;
  std::map<std::string, std::uint64_t> bytes_by_type;       // stored type -> bytes
  std::map<std::string, std::int64_t> parameters_by_type;  // stored type -> elements
  std::uint64_t stored_bytes = 0;  // sum of tensor bytes as stored
  std::uint64_t file_bytes = 0;    // size of the files on disk
  double compression_vs_fp16 = 1.0;
  // Multiply-adds of the weight matmuls (incl. lm_head) per generated token, x2.
  double matmul_flops_per_token = 0;
  // Extra attention FLOPs per token for each position of context it attends to.
  double attention_flops_per_context_token = 0;
  std::uint64_t kv_bytes_per_token_f32 = 0;
  std::uint64_t kv_bytes_per_token_f16 = 0;
};

ModelStats compute_model_stats(const ModelSource& source);

}  // namespace nibble::engine
