#include "engine/blocks/attention.h"

#include <array>
#include <cmath>

#include "engine/rope.h"

namespace nibble::engine {
namespace {

LinearGroup bind_qkv(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer) {
  const std::array<WeightBinder::Module, 3> modules{{{arch.module(TensorRole::Query, layer), config.q_dim()},
                                                     {arch.module(TensorRole::Key, layer), config.kv_dim()},
                                                     {arch.module(TensorRole::Value, layer), config.kv_dim()}}};
  return binder.group(modules, config.hidden_size, config.attention_bias);
}

RmsNorm bind_head_norm(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, TensorRole role,
                       std::int64_t layer) {
  if (!arch.qk_norm) return {};
  return {binder.vector(arch.module(role, layer) + ".weight", config.head_dim, arch.norm_weight_offset_one ? 1.0f : 0.0f),
          static_cast<float>(config.rms_norm_eps)};
}

kernels::AttentionShape shape_of(const ModelConfig& config, std::int64_t layer) {
  kernels::AttentionShape shape{config.num_heads, config.num_kv_heads, config.head_dim,
                                config.sliding_layer(layer) ? config.sliding_window : std::nullopt};
  // In double, then rounded once, as Python computes query_pre_attn_scalar**-0.5.
  if (config.query_pre_attn_scalar) shape.scale = static_cast<float>(1.0 / std::sqrt(*config.query_pre_attn_scalar));
  shape.logit_softcap = static_cast<float>(config.attn_logit_softcapping);
  return shape;
}

}  // namespace

AttentionBlock::AttentionBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config,
                               std::int64_t layer)
    : layer_(layer),
      shape_(shape_of(config, layer)),
      rope_(config, layer),
      qkv_(bind_qkv(binder, arch, config, layer)),
      q_norm_(bind_head_norm(binder, arch, config, TensorRole::QueryNorm, layer)),
      k_norm_(bind_head_norm(binder, arch, config, TensorRole::KeyNorm, layer)),
      o_(binder.linear(arch.module(TensorRole::AttentionOutput, layer), config.hidden_size, config.q_dim())) {}

Linear* AttentionBlock::find(const std::string& module) {
  if (module == o_.module) return &o_;
  return qkv_.find(module);
}

void AttentionBlock::rotate(const StepContext& step, Workspace& ws) const {
  const std::int64_t head_dim = shape_.head_dim;
  const auto rows_of = [&](std::int64_t first, std::int64_t rows, const RopeTable& table) {
    const auto positions = step.positions.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(rows));
    step.backend.rope(ws.q() + first * shape_.heads * head_dim, rows, shape_.heads, head_dim, positions, table.inv_freq,
                      table.scale);
    step.backend.rope(ws.k() + first * shape_.kv_heads * head_dim, rows, shape_.kv_heads, head_dim, positions,
                      table.inv_freq, table.scale);
  };
  for_each_rope_run(step, rope_, rows_of);
}

void AttentionBlock::forward(const StepContext& step, Workspace& ws, const float* input, float* out) const {
  kernels::Backend& backend = step.backend;
  const std::int64_t rows = step.rows;
  const std::int64_t head_dim = shape_.head_dim;
  const std::int64_t q_dim = shape_.heads * head_dim, kv_dim = shape_.kv_heads * head_dim;
  const std::array<float*, 3> qkv{ws.q(), ws.k(), ws.v()};
  qkv_.run(backend, input, rows, qkv, ws.stacked(), step.hook);
  if (!q_norm_.empty()) {
    q_norm_.run(backend, ws.q(), rows * shape_.heads, head_dim, ws.q());
    k_norm_.run(backend, ws.k(), rows * shape_.kv_heads, head_dim, ws.k());
  }
  rotate(step, ws);
  // Every sequence stores its keys and values, then all attend over their own in
  // one call (a sequence only ever writes its own blocks, so the order is free).
  auto& segments = ws.attention_segments();
  segments.clear();
  for (const auto& segment : step.segments) {
    step.cache.store(layer_ - step.first_cached_layer, segment.block_table, segment.start, segment.rows, ws.k() + segment.first_row * kv_dim,
                     ws.v() + segment.first_row * kv_dim);
    segments.push_back({ws.q() + segment.first_row * q_dim, segment.rows,
                        step.positions.subspan(static_cast<std::size_t>(segment.first_row),
                                               static_cast<std::size_t>(segment.rows)),
                        step.cache.layer(layer_ - step.first_cached_layer, segment.block_table), ws.attn() + segment.first_row * q_dim});
  }
  backend.attention_batch(segments, shape_);
  o_.run(backend, ws.attn(), rows, out, step.hook);
}

}  // namespace nibble::engine
