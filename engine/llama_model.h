#pragma once
// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2): token embedding,
// N x [RMSNorm -> GQA attention with RoPE -> residual, RMSNorm -> SwiGLU MLP ->
// residual], final RMSNorm, lm_head (tied to the embedding or separate).
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/token.h"
#include "common/quantized_matrix.h"
#include "engine/kv_cache.h"
#include "engine/paged_kv_cache.h"
#include "kernels/backend.h"
#include "loader/model_source.h"
#include "loader/tensor.h"

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

class LlamaModel {
 public:
  // Called after each layer's weights are bound: (layers done, layers in all).
  using LoadProgress = std::function<void(std::int64_t, std::int64_t)>;

  struct Options {
    // Dense weights that are mostly zeros may run on a sparse kernel.
    kernels::SparseChoice sparse = kernels::SparseChoice::Auto;
    // Expand quantized weights to float32 at load and run the dense kernels: the
    // baseline benchmarks compare the packed kernels against, on the same weights.
    bool expand_quantized = false;
    // Run q/k/v and gate/up as one stacked matrix each when their quantized formats
    // agree. Off only to compare against the separate layers.
    bool stack_linears = true;
  };

  // What the linear layers cost in memory.
  struct WeightMemory {
    std::uint64_t total = 0;             // every weight the model reads (mapped views and packed copies)
    std::uint64_t quantized_file = 0;    // quantized linear layers as stored in the file
    std::uint64_t quantized_resident = 0;  // the same layers packed for the backend
    std::int64_t quantized_layers = 0;
    std::int64_t sparse_layers = 0;      // dense weights running on a sparse kernel
    std::int64_t stacked_linears = 0;    // prepared matrices that each run several modules (q/k/v, gate/up)
  };

  // Binds the weights of `source`: dense weights are mapped, not copied;
  // quantized ones are packed into the backend's layout, never expanded.
  // Throws nibble::Error naming any missing or mis-shaped tensor.
  LlamaModel(const ModelSource& source, kernels::Backend& backend, const LoadProgress& progress = {});
  LlamaModel(const ModelSource& source, kernels::Backend& backend, const Options& options,
             const LoadProgress& progress = {});

  const ModelConfig& config() const { return config_; }
  std::int64_t vocab_size() const { return config_.vocab_size; }
  // Bytes of weights the model holds (as stored, plus any converted copies).
  std::uint64_t weight_bytes() const { return memory_.total; }
  const WeightMemory& weight_memory() const { return memory_; }
  // How each kind of linear weight runs ("int4 32 groups ..." -> count), for logs.
  const std::map<std::string, int>& linear_kinds() const { return linear_kinds_; }

  // Runs `tokens` at positions [start, start + n) of one sequence, appending their
  // keys and values to `cache`. Writes n (AllRows) or 1 (LastRow) rows of logits.
  void forward(std::span<const TokenId> tokens, std::int64_t start, KvCache& cache, Logits mode,
               std::span<float> logits);
  // One step of several sequences: every linear layer runs once over all their
  // tokens (M = tokens in the step); attention reads each sequence's own blocks.
  // Logits rows come out in batch order, one or all per entry as it asks.
  void forward_batch(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits);

 private:
  // A batch entry's rows in the step's activations.
  struct Segment {
    std::int64_t first_row;
    std::int64_t rows;
    std::int64_t start;
    Logits logits;
  };
  using StoreKv = std::function<void(std::int64_t layer, std::size_t segment, const float* keys, const float* values)>;
  using ViewKv = std::function<kernels::KvLayerView(std::int64_t layer, std::size_t segment)>;
  void forward_segments(std::span<const TokenId> tokens, std::span<const Segment> segments, const StoreKv& store,
                        const ViewKv& view, std::span<float> logits);

  using Linear = std::shared_ptr<const kernels::LinearWeights>;
  struct Layer {
    const float* attn_norm;
    const float* ffn_norm;
    Linear q, k, v, o, gate, up, down;
    // Set when q/k/v (gate/up) run as one stacked matrix; q, k, v (gate, up) are then unset.
    Linear qkv, gate_up;
    const float* q_bias = nullptr;
    const float* k_bias = nullptr;
    const float* v_bias = nullptr;
    const float* qkv_bias = nullptr;
  };
  struct Module {
    std::string name;
    std::int64_t rows;
  };

  // The weight of linear module `module` (quantized or `module`.weight), prepared for the backend.
  Linear linear(const WeightSource& weights, const std::string& module, std::int64_t rows, std::int64_t cols);
  // A quantized matrix prepared for the backend; it stands for `modules` modules of the checkpoint.
  Linear quantized_linear(QuantizedMatrix quantized, const std::string& module, std::int64_t rows, std::int64_t cols,
                          int modules);
  // Modules that read the same input (q/k/v, gate/up): one linear of their rows
  // stacked when all are quantized alike (the input is read, and rounded to int8,
  // once; one fork-join instead of several), else one linear each.
  std::vector<Linear> linears(const WeightSource& weights, std::span<const Module> modules, std::int64_t cols);
  // The modules' bias vectors one after another, for their stacked linear.
  const float* stacked_vector(std::initializer_list<const float*> parts, std::span<const Module> modules);
  const float* vector(const WeightSource& weights, const std::string& name, std::int64_t size);
  void ensure_scratch(std::int64_t rows);
  // Runs a stacked linear over h_ and splits each row's columns into the outputs, in order.
  struct Output {
    float* data;
    std::int64_t width;
  };
  void run_stacked(const kernels::LinearWeights& stacked, const float* bias, std::int64_t rows,
                   std::initializer_list<Output> outputs);

  ModelConfig config_;
  kernels::Backend& backend_;
  Options options_;
  std::vector<TensorView> held_;  // keeps mapped or converted weights alive
  WeightMemory memory_;
  std::map<std::string, int> linear_kinds_;
  Linear embedding_;
  Linear lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;

  std::int64_t scratch_rows_ = 0;
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_;
  std::vector<float> stacked_;  // a stacked linear's output before it is split
  std::vector<std::int32_t> positions_;
  std::vector<kernels::AttentionSegment> attention_segments_;  // per layer of forward_segments
};

}  // namespace nibble::engine
