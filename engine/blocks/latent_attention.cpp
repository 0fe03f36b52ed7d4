#include "engine/blocks/latent_attention.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "common/error.h"

namespace nibble::engine {
namespace {

const MlaConfig& mla_of(const ModelConfig& config) {
  if (!config.mla) fail("internal error: {} has no latent-attention settings", config.architecture);
  return *config.mla;
}

// The module reading the layer input for the query: q_a_proj, or q_proj without a low-rank query.
std::string query_input(const Architecture& arch, const MlaConfig& mla, std::int64_t layer) {
  return arch.module(mla.q_lora_rank > 0 ? TensorRole::QueryA : TensorRole::Query, layer);
}

LinearGroup bind_input(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer) {
  const MlaConfig& mla = mla_of(config);
  const std::int64_t q_rows = mla.q_lora_rank > 0 ? mla.q_lora_rank : config.q_dim();
  const std::array<WeightBinder::Module, 2> modules{{{query_input(arch, mla, layer), q_rows},
                                                     {arch.module(TensorRole::KvA, layer), mla.latent_width()}}};
  return binder.group(modules, config.hidden_size, false);
}

// q_a_layernorm and kv_a_layernorm use RMSNorm's default epsilon, 1e-6, not the
// config's rms_norm_eps (DeepSeek's modeling code and transformers' both build
// them without it; the released models' rms_norm_eps is 1e-6 anyway).
constexpr float kLatentNormEps = 1e-6f;

RmsNorm bind_norm(WeightBinder& binder, const Architecture& arch, TensorRole role, std::int64_t size,
                  std::int64_t layer) {
  return {binder.vector(arch.module(role, layer) + ".weight", size), kLatentNormEps};
}

kernels::AttentionShape shape_of(const ModelConfig& config) {
  const MlaConfig& mla = mla_of(config);
  kernels::AttentionShape shape;
  shape.heads = config.num_heads;
  shape.kv_heads = 1;  // the one latent every head reads
  shape.head_dim = mla.latent_width();
  shape.value_dim = mla.kv_lora_rank;
  shape.scale = mla_softmax_scale(config);
  return shape;
}

}  // namespace

// transformers' yarn_apply_mscale, in double and rounded once.
float mla_softmax_scale(const ModelConfig& config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(mla_of(config).qk_head_dim()));
  const RopeScaling& rope = config.rope_scaling;
  if (rope.kind != RopeScaling::Kind::None && rope.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(rope.factor, rope.mscale_all_dim);
    scale = scale * m * m;
  }
  return static_cast<float>(scale);
}

Workspace::Widths LatentAttentionBlock::widths(const ModelConfig& config, Workspace::Widths base) {
  if (!config.mla) return base;
  const MlaConfig& mla = *config.mla;
  const std::int64_t heads = config.num_heads;
  // q(): the queries, and attn(): the per-head values before o_proj.
  base.q = std::max({base.q, config.q_dim(), heads * mla.v_head_dim});
  // k(): the new latent rows; v(): the low-rank query. (No per-head keys or values:
  // config.kv_dim() would size heads x head_dim for buffers MLA never fills.)
  base.kv = std::max(mla.latent_width(), mla.q_lora_rank);
  base.latent_query = heads * mla.latent_width();
  base.latent_out = heads * mla.kv_lora_rank;
  return base;
}

LatentAttentionBlock::LatentAttentionBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config,
                                           std::int64_t layer)
    : layer_(layer),
      mla_(mla_of(config)),
      heads_(config.num_heads),
      shape_(shape_of(config)),
      rope_(config, layer),
      pairs_(mla_.rope_interleave ? kernels::RopePairs::Adjacent : kernels::RopePairs::Halves),
      input_(bind_input(binder, arch, config, layer)),
      kv_a_norm_(bind_norm(binder, arch, TensorRole::KvANorm, mla_.kv_lora_rank, layer)),
      o_(binder.linear(arch.module(TensorRole::AttentionOutput, layer), config.hidden_size,
                       config.attention_output_dim())) {
  if (mla_.q_lora_rank > 0) {
    q_a_norm_ = bind_norm(binder, arch, TensorRole::QueryANorm, mla_.q_lora_rank, layer);
    q_b_ = binder.linear(arch.module(TensorRole::QueryB, layer), config.q_dim(), mla_.q_lora_rank);
  }
  // kv_b_proj [heads * (nope + v), rank]: head h's rows are W_UK_h [nope, rank] then
  // W_UV_h [v, rank]. W_UV_h is used as stored; W_UK_h transposed to [rank, nope].
  const std::int64_t nope = mla_.qk_nope_head_dim, v = mla_.v_head_dim, rank = mla_.kv_lora_rank;
  const std::string kv_b = arch.module(TensorRole::KvB, layer);
  const std::vector<float> stored = binder.host_matrix(kv_b, heads_ * (nope + v), rank);
  std::vector<float> uk_t(static_cast<std::size_t>(heads_ * rank * nope)), uv(static_cast<std::size_t>(heads_ * v * rank));
  for (std::int64_t h = 0; h < heads_; ++h) {
    const float* head = stored.data() + h * (nope + v) * rank;
    for (std::int64_t i = 0; i < nope; ++i) {
      for (std::int64_t c = 0; c < rank; ++c) uk_t[static_cast<std::size_t>((h * rank + c) * nope + i)] = head[i * rank + c];
    }
    std::copy_n(head + nope * rank, v * rank, uv.begin() + h * v * rank);
  }
  w_uk_t_ = binder.upload_f32(kv_b + ".w_uk_t", {heads_ * rank, nope}, std::move(uk_t));
  w_uv_ = binder.upload_f32(kv_b + ".w_uv", {heads_ * v, rank}, std::move(uv));
}

Linear* LatentAttentionBlock::find(const std::string& module) {
  if (module == o_.module) return &o_;
  if (q_b_ && module == q_b_->module) return &*q_b_;
  return input_.find(module);
}

void LatentAttentionBlock::rotate(const StepContext& step, Workspace& ws) const {
  const std::int64_t nope = mla_.qk_nope_head_dim, qk = mla_.qk_head_dim(), latent = mla_.latent_width();
  const auto rows_of = [&](std::int64_t first, std::int64_t rows, const RopeTable& table) {
    const auto positions = step.positions.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(rows));
    // Backend::rope turns the first features of each head-sized stride; started
    // at the rotary part's offset, a stride's first features are that part.
    step.backend.rope(ws.q() + first * heads_ * qk + nope, rows, heads_, qk, positions, table.inv_freq, table.scale,
                      pairs_);
    step.backend.rope(ws.k() + first * latent + mla_.kv_lora_rank, rows, 1, latent, positions, table.inv_freq,
                      table.scale, pairs_);
  };
  for_each_rope_run(step, rope_, rows_of);
}

void LatentAttentionBlock::forward(const StepContext& step, Workspace& ws, const float* input, float* out) const {
  kernels::Backend& backend = step.backend;
  const std::int64_t rows = step.rows;
  const std::int64_t nope = mla_.qk_nope_head_dim, rope = mla_.qk_rope_head_dim, qk = mla_.qk_head_dim();
  const std::int64_t rank = mla_.kv_lora_rank, latent = mla_.latent_width(), v = mla_.v_head_dim;

  // The query's input projection and the latent [c_kv ; k_rope] from one read of the input.
  const std::array<float*, 2> outputs{q_b_ ? ws.v() : ws.q(), ws.k()};
  input_.run(backend, input, rows, outputs, ws.stacked(), step.hook);
  if (q_b_) {
    q_a_norm_.run(backend, ws.v(), rows, mla_.q_lora_rank, ws.v());
    q_b_->run(backend, ws.v(), rows, ws.q(), step.hook);
  }
  // kv_a_layernorm over c_kv, the first kv_lora_rank features of each latent row
  // (normalized in a contiguous copy: the norm takes whole rows).
  backend.copy_columns(ws.k(), rows, latent, 0, rank, ws.latent_out(), rank, 0);
  kv_a_norm_.run(backend, ws.latent_out(), rows, rank, ws.latent_out());
  backend.copy_columns(ws.latent_out(), rows, rank, 0, rank, ws.k(), latent, 0);
  rotate(step, ws);

  // Absorbed queries [W_UK^T q_nope ; q_rope] per head, over the latent.
  const std::int64_t q_latent = heads_ * latent;
  backend.head_linear(ws.q(), {heads_ * qk, qk}, rows, heads_,
                      kernels::Matrix{DType::F32, heads_ * rank, nope, w_uk_t_.data<const float>()}, ws.latent_query(),
                      {q_latent, latent});
  backend.copy_columns(ws.q(), rows * heads_, qk, nope, rope, ws.latent_query(), latent, rank);

  // Each sequence stores its latent rows, then all attend in one call.
  auto& segments = ws.attention_segments();
  segments.clear();
  const std::int64_t cached_layer = layer_ - step.first_cached_layer;
  for (const auto& segment : step.segments) {
    step.cache.store(cached_layer, segment.block_table, segment.start, segment.rows, ws.k() + segment.first_row * latent,
                     nullptr);
    segments.push_back({ws.latent_query() + segment.first_row * q_latent, segment.rows,
                        step.positions.subspan(static_cast<std::size_t>(segment.first_row),
                                               static_cast<std::size_t>(segment.rows)),
                        step.cache.layer(cached_layer, segment.block_table),
                        ws.latent_out() + segment.first_row * heads_ * rank});
  }
  backend.attention_batch(segments, shape_);

  // W_UV per head, then o_proj.
  backend.head_linear(ws.latent_out(), {heads_ * rank, rank}, rows, heads_,
                      kernels::Matrix{DType::F32, heads_ * v, rank, w_uv_.data<const float>()}, ws.attn(),
                      {heads_ * v, v});
  o_.run(backend, ws.attn(), rows, out, step.hook);
}

}  // namespace nibble::engine
