#pragma once
// A sparse mixture-of-experts MLP (Mixtral, Qwen MoE): a router scores every
// expert for each token, each token runs its top-k experts (gated MLPs like
// GatedMlp) and their outputs are summed with the routing weights; a shared
// expert, when the model has one, runs on every token (Qwen2-MoE scales it by
// sigmoid(shared_expert_gate(x)); DeepSeek's shared experts, one MLP of their
// summed width, are added as they are). DeepSeek-V3's router adds its
// e_score_correction_bias to the scores for the choice (MoeRouter).
//
// A step's tokens are grouped by expert: each expert with tokens runs its linear
// layers once over exactly its rows (gathered into one contiguous block, so the
// backend's quantized kernels are reused as they are), experts with none cost
// nothing, and the outputs are scatter-added back with their weights. The
// routing itself (MoeRouter) runs on the host over the downloaded router logits.
//
// Under expert parallelism (MoeConfig::expert_parallel_size) the block binds and
// runs only its rank's experts; it still routes every token over every expert,
// exactly as the other ranks do, and the layer's all-reduce adds the other ranks'
// experts' shares (DecoderModel; docs/parallel.md).
//
// The experts run together: every active expert's rows are gathered into one
// buffer, expert after expert, then one Backend::grouped_linear call runs all
// their gate/up projections, one activation call covers all the rows, one more
// grouped call runs the down projections, and the outputs are added back expert
// by expert. A decode batch gives each expert only a few rows, so one fork-join
// over every (expert, output tile) keeps the threads busy where a GEMM per expert
// would not. Results are bit-identical to running the experts one by one
// (set_grouped_experts(false), kept for benchmarks and tests).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/blocks/linear.h"
#include "engine/blocks/mlp.h"
#include "engine/blocks/moe_router.h"
#include "engine/step_context.h"
#include "engine/weight_binder.h"
#include "loader/architecture.h"

namespace nibble::engine {

class MoeBlock {
 public:
  MoeBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer);

  // `input` [rows, hidden] -> `out` [rows, hidden] (may alias `input`).
  void forward(const StepContext& step, Workspace& ws, const float* input, float* out) const;
  // Module `module`'s matrix (router, an expert's, the shared expert's), or nullptr.
  Linear* find(const std::string& module);
  std::int64_t stacked_width() const;
  // Every routed expert the router scores (this rank may hold only some: first_expert_ on).
  std::int64_t experts() const { return static_cast<std::int64_t>(rows_of_.size()); }
  // The workspace widths the grouped experts need (Workspace::Widths' routed fields).
  static Workspace::Widths widths(const ModelConfig& config, Workspace::Widths base);
  // false: the experts run one by one, each its own linear calls (the path before
  // grouping; same results). A linear-input hook (the compressor) always gets
  // that path, so it sees each expert's inputs right before the expert runs.
  void set_grouped_experts(bool grouped) { grouped_ = grouped; }
  // How many of the last forward()'s tokens each expert ran (load imbalance).
  std::span<const std::int64_t> last_tokens_per_expert() const { return tokens_per_expert_; }
  // The same summed over every forward() since load.
  std::span<const std::int64_t> tokens_per_expert_total() const { return tokens_total_; }

 private:
  std::int64_t hidden_;
  MoeRouter router_;
  Linear gate_;  // the router's linear layer [experts, hidden]
  std::vector<GatedMlp> experts_;  // the held experts: experts_[i] is expert first_expert_ + i
  std::int64_t first_expert_ = 0;
  // The routed expert number of held expert i (expert parallelism holds a range).
  std::size_t routed_index(std::size_t i) const { return static_cast<std::size_t>(first_expert_) + i; }
  std::optional<GatedMlp> shared_;
  std::optional<Linear> shared_gate_;
  bool grouped_ = true;

  // The routed experts' outputs, unweighted, added into `sum` [rows, hidden].
  void run_experts_one_by_one(kernels::Backend& backend, const LinearInputHook& hook, Workspace& ws,
                              const float* input, std::int64_t rows, float* sum) const;
  void run_experts_grouped(kernels::Backend& backend, Workspace& ws, const float* input, std::int64_t rows,
                           float* sum) const;

  // Host scratch reused every step (one step runs at a time).
  mutable std::vector<float> logits_, weights_, shared_weights_;
  mutable std::vector<std::int32_t> choices_, all_rows_;
  mutable std::vector<std::vector<std::int32_t>> rows_of_;
  mutable std::vector<std::vector<float>> weights_of_;
  mutable std::vector<std::int64_t> tokens_per_expert_, tokens_total_;
  mutable std::vector<std::int64_t> first_routed_;  // each expert's first row in the routed buffers
  mutable std::vector<kernels::GroupedLinearJob> jobs_;
};

}  // namespace nibble::engine
