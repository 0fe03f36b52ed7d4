#pragma once
// A decoder-only transformer assembled from blocks: token embedding, N layers of
// [norm -> attention -> (post-norm) -> residual, norm -> MLP -> (post-norm) ->
// residual], final norm, lm_head (tied to the embedding or separate). Which
// blocks and which tensor names come from the architecture's table entry
// (loader/architecture.h): Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3,
// the mixture-of-experts Mixtral, Qwen2-MoE and Qwen3-MoE, and DeepSeek-V2/V3
// (latent attention) today.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/blocks/attention.h"
#include "engine/blocks/latent_attention.h"
#include "engine/blocks/linear.h"
#include "engine/blocks/mlp.h"
#include "engine/blocks/moe.h"
#include "engine/blocks/norm.h"
#include "engine/model.h"
#include "engine/step_context.h"

namespace nibble::engine {

struct DecoderLayer {
  RmsNorm attention_norm;
  // The layer's attention: q/k/v heads, or MLA (ModelConfig::mla).
  std::optional<AttentionBlock> attention;
  std::optional<LatentAttentionBlock> latent_attention;
  RmsNorm post_attention_norm;  // empty: none
  RmsNorm mlp_norm;
  // The layer's MLP: dense, or a mixture of experts (MoeConfig::sparse_layer).
  std::optional<GatedMlp> mlp;
  std::optional<MoeBlock> moe;
  RmsNorm post_mlp_norm;  // empty: none

  Linear* find(const std::string& module);
  std::int64_t stacked_width() const;

  void forward(const StepContext& step, Workspace& ws, std::int64_t hidden) const;
};

class DecoderModel final : public Model {
 public:
  DecoderModel(const ModelSource& source, kernels::Backend& backend, const LoadProgress& progress = {});
  DecoderModel(const ModelSource& source, kernels::Backend& backend, const ModelOptions& options,
               const LoadProgress& progress = {});

  // Under pipeline parallelism, the stage's view: num_layers counts its layers.
  const ModelConfig& config() const override { return stage_config_; }
  kernels::Backend& backend() const override { return backend_; }
  const WeightMemory& weight_memory() const override { return memory_; }
  const std::map<std::string, int>& linear_kinds() const override { return linear_kinds_; }
  void forward_batch(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits) override;
  void set_linear_input_hook(LinearInputHook hook) override { hook_ = std::move(hook); }

  // --- Layer by layer (the compressor) ---
  // Embeds the batch's tokens into the residual stream; run_layer() then moves it
  // through one layer at a time.
  void begin_layers(std::span<const BatchEntry> batch);
  // Layer `layer` over every row of the batch begin_layers() took, its keys and
  // values stored in `cache`, which holds that one layer alone (one_layer_cache()).
  void run_layer(std::int64_t layer, PagedKvCache& cache);
  PagedKvCache one_layer_cache(std::int32_t num_blocks, std::int32_t block_size) const;
  // Module `module` runs dense float32 weights [rows, cols] from now on (its bias
  // stays); the caller keeps `weights` alive while the model may run the module.
  void replace_linear(const std::string& module, const float* weights);
  // Mixture of experts: per MoE layer, how many of the last step's tokens each
  // expert ran (layers without experts are skipped); empty for a dense model.
  std::vector<std::span<const std::int64_t>> last_tokens_per_expert() const;
  ExpertLoad expert_load() const override;

 private:
  // The step's rows, positions and segments for `batch`, and room for them.
  void plan_rows(std::span<const BatchEntry> batch, std::int32_t block_size);
  // Rows of logits the planned rows want (all of an AllRows segment, the last of the others).
  std::int64_t output_rows() const;
  // This rank's layers over the planned rows, in the residual stream.
  void run_layers(PagedKvCache& cache);
  // Final norm and lm_head over the rows whose logits are wanted, into `logits`
  // [out_rows, vocab] in host memory.
  void head(std::int64_t out_rows, std::span<float> logits);
  // The same into `out` [out_rows, vocab] in the backend's memory (soft-capped):
  // what head() downloads, and what a last pipeline stage sends to stage 0.
  void head_into(std::int64_t out_rows, float* out);
  // Pipeline parallelism: the batch in micro-batches through this stage.
  void forward_pipelined(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits);
  // The step's tokens into the residual stream (a vocabulary-parallel lookup and
  // sum under tensor parallelism).
  void embed();
  // Tensor parallelism: lm_head over this rank's vocabulary, then every rank's
  // share gathered into `out` [out_rows, vocab] (the backend's memory) on every rank.
  void gather_logits(std::int64_t out_rows, float* out);
  // `elements` floats of the backend's memory in `buffer`, grown when too small
  // and otherwise reused between steps.
  float* scratch(kernels::Buffer& buffer, std::int64_t elements);

  ModelConfig config_;        // the whole model's (layer indices are the whole model's)
  ModelConfig stage_config_;  // what config() shows: config_ with this stage's layer count
  kernels::Backend& backend_;
  std::optional<TensorShardLayout> shard_;
  dist::Communicator* tensor_group_ = nullptr;
  std::optional<PipelineStage> stage_;
  dist::Communicator* pipeline_group_ = nullptr;
  std::int64_t first_layer_ = 0;  // layers_[0]'s index in the whole model
  WeightMemory memory_;
  std::map<std::string, int> linear_kinds_;
  std::vector<TensorView> held_;  // mapped or converted host weights the prepared ones may view
  Linear embedding_;
  Linear lm_head_;
  RmsNorm final_norm_;
  float embedding_scale_ = 1.0f;
  std::vector<DecoderLayer> layers_;
  LinearInputHook hook_;

  // Per step, reused: rows' positions, where each sequence's rows are, activations.
  Workspace workspace_;
  std::vector<TokenId> tokens_;
  std::vector<std::int32_t> positions_;
  std::vector<StepSegment> segments_;
  std::vector<TokenId> local_tokens_;  // tensor parallelism: tokens as this rank's vocabulary rows
  // In the backend's memory, so the collectives run where the ranks compute (host
  // memory over MPI, device memory over NCCL): tensor parallelism's lm_head
  // output, its share padded to the common stride, every rank's shares; a
  // pipeline stage's logits of every micro-batch (sent by the last stage,
  // received by the first).
  kernels::Buffer local_logits_, send_logits_, gathered_logits_, stage_logits_;
  std::vector<std::int64_t> entry_rows_;  // pipeline parallelism: rows of each batch entry
};

}  // namespace nibble::engine
