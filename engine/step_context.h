#pragma once
// What every block of a model sees while one step runs: the backend, the step's
// rows (tokens of all its sequences, sequence after sequence) and their
// positions, where each sequence's rows are, and its KV cache. Plain data
// built once per step by the model.
#include <cstdint>
#include <span>
#include <vector>

#include "engine/model.h"
#include "engine/paged_kv_cache.h"
#include "engine/rope.h"
#include "kernels/backend.h"

namespace nibble::engine {

// One sequence's rows in the step.
struct StepSegment {
  std::int64_t first_row = 0;
  std::int64_t rows = 0;
  std::int64_t start = 0;  // position of its first row
  std::span<const std::int32_t> block_table;
  Logits logits = Logits::LastRow;
};

struct StepContext {
  kernels::Backend& backend;
  PagedKvCache& cache;
  std::int64_t rows = 0;
  std::span<const std::int32_t> positions;  // [rows], host memory
  std::span<const StepSegment> segments;
  const LinearInputHook& hook;
  // The cache holds layers [first_cached_layer, ...): 0 for a whole model's cache;
  // layer by layer (the compressor) a one-layer cache serves each layer in turn.
  std::int64_t first_cached_layer = 0;
  // Tensor parallelism: the group whose ranks each computed part of a block's
  // output (null: this rank computed all of it).
  dist::Communicator* tensor_group = nullptr;

  // A row-parallel block's output [rows, width] is this rank's share of the sum:
  // add the other ranks' shares, in place.
  void sum_across_ranks(float* data, std::int64_t width) const;
};

// The activations one step computes on, in the backend's memory: grown to the
// largest step seen and then reused, so a step allocates nothing.
class Workspace {
 public:
  struct Widths {
    std::int64_t hidden = 0;
    std::int64_t q = 0;
    std::int64_t kv = 0;
    std::int64_t ffn = 0;
    std::int64_t stacked = 0;  // the widest stacked linear's output (q+k+v, gate+up)
    std::int64_t experts = 0;  // a MoE layer's router width; 0: a dense model
    // MLA (0: none): the absorbed queries [rows, heads * (kv_lora_rank + qk_rope)]
    // and the attention output over the latent [rows, heads * kv_lora_rank].
    std::int64_t latent_query = 0;
    std::int64_t latent_out = 0;
    // A MoE layer's experts run grouped (MoeBlock::widths; 0: none): the rows
    // routed per token (top-k) and an expert's intermediate width.
    std::int64_t routed_per_row = 0;
    std::int64_t expert_ffn = 0;
  };
  explicit Workspace(const Widths& widths) : widths_(widths) {}

  // Makes room for `rows` rows in every buffer.
  void reserve(kernels::Backend& backend, std::int64_t rows);

  float* x() const { return x_.data<float>(); }       // the residual stream [rows, hidden]
  float* h() const { return h_.data<float>(); }       // a block's input or output [rows, hidden]
  float* q() const { return q_.data<float>(); }       // [rows, q]
  float* k() const { return k_.data<float>(); }       // [rows, kv]
  float* v() const { return v_.data<float>(); }       // [rows, kv]
  float* attn() const { return attn_.data<float>(); }  // attention output [rows, q]
  float* gate() const { return gate_.data<float>(); }  // [rows, ffn]
  float* up() const { return up_.data<float>(); }      // [rows, ffn]
  float* stacked() const { return stacked_.data<float>(); }  // a stacked linear's output before it is split
  // Mixture of experts (allocated only when widths.experts > 0):
  const kernels::Buffer& router() const { return router_; }    // router logits [rows, experts] (and the shared gate)
  float* expert_in() const { return expert_in_.data<float>(); }   // one expert's gathered rows [rows, hidden]
  float* expert_out() const { return expert_out_.data<float>(); }  // its outputs [rows, hidden]
  float* moe_sum() const { return moe_sum_.data<float>(); }        // the weighted sum [rows, hidden]
  // Every routed (token, expert) pair of a step, expert by expert (R = rows x routed_per_row):
  float* routed() const { return routed_.data<float>(); }  // gathered inputs, then outputs [R, hidden]
  float* routed_stacked() const { return routed_stacked_.data<float>(); }  // stacked gate|up [R, 2 x expert_ffn]
  float* routed_gate() const { return routed_gate_.data<float>(); }        // [R, expert_ffn]
  float* routed_up() const { return routed_up_.data<float>(); }            // [R, expert_ffn]
  // MLA (allocated only when its widths are set):
  float* latent_query() const { return latent_query_.data<float>(); }  // [rows, widths.latent_query]
  float* latent_out() const { return latent_out_.data<float>(); }      // [rows, widths.latent_out]
  // Logits rows for backends whose memory the host cannot read.
  const kernels::Buffer& logits(kernels::Backend& backend, std::int64_t elements);
  // Host-side list the attention block fills each layer (kept to avoid allocating).
  std::vector<kernels::AttentionSegment>& attention_segments() { return attention_segments_; }

 private:
  Widths widths_;
  std::int64_t rows_ = 0;
  kernels::Buffer x_, h_, q_, k_, v_, attn_, gate_, up_, stacked_, logits_;
  kernels::Buffer router_, expert_in_, expert_out_, moe_sum_;
  kernels::Buffer routed_, routed_stacked_, routed_gate_, routed_up_;
  kernels::Buffer latent_query_, latent_out_;
  std::vector<kernels::AttentionSegment> attention_segments_;
};

// Calls rows_of(first_row, rows, table) over the step's rows with the RoPE table
// each needs: all rows at once unless the table depends on each sequence's length
// (LongRoPE), then sequence by sequence.
template <typename RowsOf>
void for_each_rope_run(const StepContext& step, const RopeTables& rope, RowsOf&& rows_of) {
  if (!rope.by_length()) {
    rows_of(std::int64_t{0}, step.rows, rope.for_length(0));
    return;
  }
  for (const auto& segment : step.segments) {
    rows_of(segment.first_row, segment.rows, rope.for_length(segment.start + segment.rows));
  }
}

}  // namespace nibble::engine
