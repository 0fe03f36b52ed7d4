#include "engine/step_context.h"

#include "dist/communicator.h"

namespace nibble::engine {

void StepContext::sum_across_ranks(float* data, std::int64_t width) const {
  if (tensor_group != nullptr) tensor_group->all_reduce(data, rows * width, DType::F32, dist::ReduceOp::Sum);
}

void Workspace::reserve(kernels::Backend& backend, std::int64_t rows) {
  if (rows <= rows_) return;
  const auto grow_rows = [&](kernels::Buffer& buffer, std::int64_t buffer_rows, std::int64_t width) {
    buffer = width > 0 && buffer_rows > 0 ? backend.allocate(DType::F32, {buffer_rows, width}) : kernels::Buffer();
  };
  const auto grow = [&](kernels::Buffer& buffer, std::int64_t width) { grow_rows(buffer, rows, width); };
  grow(x_, widths_.hidden);
  grow(h_, widths_.hidden);
  grow(q_, widths_.q);
  grow(k_, widths_.kv);
  grow(v_, widths_.kv);
  grow(attn_, widths_.q);
  grow(gate_, widths_.ffn);
  grow(up_, widths_.ffn);
  grow(stacked_, widths_.stacked);
  grow(router_, widths_.experts);
  grow(expert_in_, widths_.experts > 0 ? widths_.hidden : 0);
  grow(expert_out_, widths_.experts > 0 ? widths_.hidden : 0);
  grow(moe_sum_, widths_.experts > 0 ? widths_.hidden : 0);
  const std::int64_t routed_rows = rows * widths_.routed_per_row;
  grow_rows(routed_, routed_rows, widths_.expert_ffn > 0 ? widths_.hidden : 0);
  grow_rows(routed_stacked_, routed_rows, 2 * widths_.expert_ffn);
  grow_rows(routed_gate_, routed_rows, widths_.expert_ffn);
  grow_rows(routed_up_, routed_rows, widths_.expert_ffn);
  grow(latent_query_, widths_.latent_query);
  grow(latent_out_, widths_.latent_out);
  rows_ = rows;
}

const kernels::Buffer& Workspace::logits(kernels::Backend& backend, std::int64_t elements) {
  if (logits_.numel() < elements) logits_ = backend.allocate(DType::F32, {elements});
  return logits_;
}

}  // namespace nibble::engine
