#pragma once
// What the model runner needs of a model, whatever its architecture: run one
// step of several sequences over the paged KV cache and write logits. Models
// are assembled from blocks (engine/blocks) by load_model(); the runner, the
// scheduler and the compressor see only this interface.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "common/token.h"
#include "engine/paged_kv_cache.h"
#include "engine/pipeline_stage.h"
#include "kernels/backend.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"

namespace nibble::dist {
class Communicator;
}

namespace nibble::engine {

enum class Logits { LastRow, AllRows };

// One sequence's part of a batched step: its new tokens at positions
// [start, start + tokens.size()), stored in and attending over its blocks of the
// paged cache.
struct BatchEntry {
  std::span<const TokenId> tokens;
  std::int64_t start = 0;
  std::span<const std::int32_t> block_table;
  Logits logits = Logits::LastRow;
};

struct ModelOptions {
  // Dense weights that are mostly zeros may run on a sparse kernel.
  kernels::SparseChoice sparse = kernels::SparseChoice::Auto;
  // Expand quantized weights to float32 at load and run the dense kernels: the
  // baseline benchmarks compare the packed kernels against, on the same weights.
  bool expand_quantized = false;
  // Run q/k/v and gate/up as one stacked matrix each when their quantized formats
  // agree. Off only to compare against the separate layers.
  bool stack_linears = true;
  // Tensor parallelism: the source load_model() gets is this rank's share
  // (shard_model_source with this layout), and `tensor_group` sums the ranks'
  // partial outputs (after o_proj, after down_proj, after the vocabulary-parallel
  // embedding) and gathers their logits. Unset: the whole model on this rank.
  std::optional<TensorShardLayout> tensor_shard;
  dist::Communicator* tensor_group = nullptr;
  // Pipeline parallelism: this rank runs the layers of `pipeline_stage` only
  // (and the embedding on the first stage, the final norm and lm_head on the
  // last). `pipeline_group` holds one rank per stage, in stage order (under
  // tensor parallelism too: the ranks of one tensor rank): each stage receives
  // the residual stream from the one before and sends it on; the last sends the
  // logits back to stage 0. Its config() then counts the stage's layers, which
  // is what its KV cache holds. Unset: every layer on this rank.
  std::optional<PipelineStage> pipeline_stage;
  dist::Communicator* pipeline_group = nullptr;
};

// What the weights cost in memory.
struct WeightMemory {
  std::uint64_t total = 0;               // every weight the model reads (mapped views and packed copies)
  std::uint64_t quantized_file = 0;      // quantized linear layers as stored in the file
  std::uint64_t quantized_resident = 0;  // the same layers packed for the backend
  std::int64_t quantized_layers = 0;
  std::int64_t sparse_layers = 0;    // dense weights running on a sparse kernel
  std::int64_t stacked_linears = 0;  // prepared matrices that each run several modules (q/k/v, gate/up)
};

// Where loading stands, told after each layer's weights are bound.
struct LoadStep {
  std::int64_t layers_done = 0;
  std::int64_t layers_total = 0;
  std::uint64_t weight_bytes = 0;  // bound so far: mapped views and packed copies
};
using LoadProgress = std::function<void(const LoadStep&)>;

// Sees the input of every linear module as a step runs, before the modules use
// it (the compressor's calibration capture): the modules that read it ("model.
// layers.0.self_attn.q_proj", k_proj, v_proj: one call for the three) and the
// input rows [rows, cols] in backend memory. The hook may replace those modules'
// weights (DecoderModel::replace_linear); they then compute with the new ones.
// Set only by offline tools.
using LinearInputHook = std::function<void(std::span<const std::string> modules, const float* x, std::int64_t rows,
                                           std::int64_t cols)>;

class SequenceCache;

// Mixture of experts: how the routed tokens spread over the experts (load
// imbalance), for metrics. Read on the thread that runs the steps.
struct ExpertLoad {
  std::vector<std::int64_t> layers;               // the MoE layers' indices
  std::vector<std::vector<std::int64_t>> tokens;  // [i][expert]: tokens the expert ran in layers[i], all steps so far
  // The last step's worst layer: its busiest expert's tokens over the mean per expert
  // (1: perfectly even; the number of experts / k: every token chose the same ones).
  double last_step_imbalance = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  std::int64_t vocab_size() const { return config().vocab_size; }
  virtual kernels::Backend& backend() const = 0;
  // Bytes of weights the model holds (as stored, plus any converted copies).
  std::uint64_t weight_bytes() const { return weight_memory().total; }
  virtual const WeightMemory& weight_memory() const = 0;
  // How each kind of linear weight runs ("int4 32 groups ..." -> count), for logs.
  virtual const std::map<std::string, int>& linear_kinds() const = 0;

  // One step of several sequences: every linear layer runs once over all their
  // tokens (M = tokens in the step); attention reads each sequence's own blocks.
  // Logits rows (host memory) come out in batch order, one or all per entry as it asks.
  virtual void forward_batch(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits) = 0;
  virtual void set_linear_input_hook(LinearInputHook hook) = 0;
  // Empty for a model without experts.
  virtual ExpertLoad expert_load() const { return {}; }

  // The cache this model's sequences need: `num_blocks` blocks of `block_size`
  // positions in the backend's memory.
  PagedKvCache make_kv_cache(std::int32_t num_blocks, std::int32_t block_size, KvDtype dtype = KvDtype::Float32) const {
    return PagedKvCache(backend(), config(), num_blocks, block_size, dtype);
  }
  // One sequence alone (evaluation, tests): runs `tokens` at positions
  // [start, start + n), appending their keys and values to `cache`; writes n
  // (AllRows) or 1 (LastRow) rows of logits.
  void forward(std::span<const TokenId> tokens, std::int64_t start, SequenceCache& cache, Logits mode,
               std::span<float> logits);
};

// One sequence's cache for Model::forward: a paged pool whose blocks all belong
// to the one sequence, so a lone sequence runs the very same path as a batch.
class SequenceCache {
 public:
  SequenceCache(const Model& model, std::int64_t capacity, std::int32_t block_size = 16);
  std::int64_t capacity() const { return capacity_; }
  PagedKvCache& paged() { return paged_; }
  std::span<const std::int32_t> block_table() const { return block_table_; }

 private:
  std::int64_t capacity_;
  PagedKvCache paged_;
  std::vector<std::int32_t> block_table_;
};

// Builds the model `source` describes from the blocks its architecture's entry
// (loader/architecture.h) names. Dense weights are mapped, not copied (on the
// CPU); quantized ones are packed into the backend's layout, never expanded.
// Throws nibble::Error naming any missing or mis-shaped tensor.
std::unique_ptr<Model> load_model(const ModelSource& source, kernels::Backend& backend,
                                  const ModelOptions& options = {}, const LoadProgress& progress = {});

}  // namespace nibble::engine
