#include "engine/model_stats.h"

namespace nibble::engine {

ModelStats compute_model_stats(const ModelSource& source) {
  const ModelConfig& config = source.config;
  ModelStats stats;
  for (const auto& tensor : source.weights->list()) {
    std::int64_t numel = 1;
    for (const auto d : tensor.shape) numel *= d;
    stats.parameters += numel;
    stats.parameters_by_type[tensor.stored_type] += numel;
    stats.bytes_by_type[tensor.stored_type] += tensor.stored_bytes;
    stats.stored_bytes += tensor.stored_bytes;
  }
  stats.file_bytes = source.weights->file_bytes();
  if (stats.stored_bytes > 0) {
    stats.compression_vs_fp16 = 2.0 * static_cast<double>(stats.parameters) / static_cast<double>(stats.stored_bytes);
  }
  const double d = static_cast<double>(config.hidden_size);
  const double per_layer = d * static_cast<double>(config.q_dim()) * 2 +        // q and o
                           d * static_cast<double>(config.kv_dim()) * 2 +       // k and v
                           d * static_cast<double>(config.intermediate_size) * 3;  // gate, up, down
  const double lm_head = d * static_cast<double>(config.vocab_size);
  stats.matmul_flops_per_token = 2 * (per_layer * static_cast<double>(config.num_layers) + lm_head);
  // q.k and p.v: 2 x 2 x q_dim per layer per attended position.
  stats.attention_flops_per_context_token = 4.0 * static_cast<double>(config.q_dim()) * static_cast<double>(config.num_layers);
  const auto kv_values = static_cast<std::uint64_t>(2 * config.num_layers * config.kv_dim());
  stats.kv_bytes_per_token_f32 = kv_values * 4;
  stats.kv_bytes_per_token_f16 = kv_values * 2;
  return stats;
}

}  // namespace nibble::engine
