#include "engine/model_stats.h"

#include <fmt/format.h>

#include <set>

#include "engine/paged_kv_cache.h"

namespace nibble::engine {

ModelStats compute_model_stats(const ModelSource& source) {
  const ModelConfig& config = source.config;
  ModelStats stats;
  std::set<std::string> counted_modules;
  for (const auto& tensor : source.weights->list()) {
    // A GPTQ/AWQ/compressed-tensors module is several packed tensors (qweight,
    // scales, ...): its parameters are the logical matrix, counted once, and all
    // its tensors' bytes go to one "<bits>-bit <method>" entry.
    const auto dot = tensor.name.rfind('.');
    const std::string module = dot == std::string::npos ? tensor.name : tensor.name.substr(0, dot);
    // FP8 keeps its codes in `weight` (F8_E4M3) beside the scales: one module too.
    const bool packed_part = (tensor.name.ends_with(".weight") == false || tensor.stored_type == "F8_E4M3") &&
                             source.quantization.has_value() && source.weights->has_quantized(module);
    if (packed_part) {
      const auto scheme = source.quantization->module(module);
      const std::string label = scheme && scheme->fp8() ? std::string("fp8 e4m3 + scales")
                                                        : fmt::format("{}-bit {}", scheme ? scheme->bits : 0,
                                                                      quant_method_name(source.quantization->method));
      stats.bytes_by_type[label] += tensor.stored_bytes;
      stats.stored_bytes += tensor.stored_bytes;
      const auto shape = linear_module_shape(config, module);
      if (shape && counted_modules.insert(module).second) {
        const std::int64_t numel = (*shape)[0] * (*shape)[1];
        stats.parameters += numel;
        stats.parameters_by_type[label] += numel;
      }
      continue;
    }
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
  const double attention = d * static_cast<double>(config.q_dim()) * 2 +  // q and o
                           d * static_cast<double>(config.kv_dim()) * 2;   // k and v
  const MoeConfig& moe = config.moe;
  // What one token multiplies in a dense and in a MoE layer: gate, up, down; or the
  // router, its k experts and the shared expert (and its gate).
  const double dense_mlp = d * static_cast<double>(config.intermediate_size) * 3;
  const double moe_mlp = d * (static_cast<double>(moe.num_experts) + (moe.shared_expert_gate ? 1.0 : 0.0) +
                              3.0 * static_cast<double>(moe.experts_per_token * moe.expert_intermediate_size +
                                                        moe.shared_expert_intermediate_size));
  double layers = 0;
  stats.active_parameters = stats.parameters;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    const bool sparse = moe.sparse_layer(layer);
    layers += attention + (sparse ? moe_mlp : dense_mlp);
    if (sparse) {
      stats.active_parameters -=
          (moe.num_experts - moe.experts_per_token) * 3 * config.hidden_size * moe.expert_intermediate_size;
    }
  }
  const double lm_head = d * static_cast<double>(config.vocab_size);
  stats.matmul_flops_per_token = 2 * (layers + lm_head);
  // q.k and p.v: 2 x 2 x q_dim per layer per attended position.
  // A multiply-add per feature of q.k and of the weighted values, every head; MLA's
  // absorbed form scores over the latent row and sums its c_kv prefix.
  const double per_head = config.mla ? static_cast<double>(config.mla->latent_width() + config.mla->kv_lora_rank)
                                     : 2.0 * static_cast<double>(config.head_dim);
  stats.attention_flops_per_context_token =
      2.0 * per_head * static_cast<double>(config.num_heads) * static_cast<double>(config.num_layers);
  // The cache's own formula, so `inspect` prints what `serve` allocates.
  stats.kv_bytes_per_token_f32 = kv_bytes_per_token(config, KvDtype::Float32);
  stats.kv_bytes_per_token_f16 = kv_bytes_per_token(config, KvDtype::Float16);
  return stats;
}

}  // namespace nibble::engine
