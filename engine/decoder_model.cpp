#include "engine/decoder_model.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>
#include <string_view>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "dist/communicator.h"
#include "common/half.h"
#include "engine/weight_binder.h"

namespace nibble::engine {
namespace {

RmsNorm bind_norm(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, TensorRole role,
                  std::int64_t layer = 0) {
  if (!arch.has(role)) return {};
  return {binder.vector(arch.module(role, layer) + ".weight", config.hidden_size, arch.norm_weight_offset_one ? 1.0f : 0.0f),
          static_cast<float>(config.rms_norm_eps)};
}

// How many stored tensors belong to layers numbered `layers` or above.
std::int64_t tensors_past_layer(const WeightSource& weights, std::int64_t layers) {
  constexpr std::string_view kPrefix = "model.layers.";
  std::int64_t count = 0;
  for (const auto& tensor : weights.list()) {
    const std::string_view name = tensor.name;
    if (!name.starts_with(kPrefix)) continue;
    std::int64_t layer = -1;
    const char* first = name.data() + kPrefix.size();
    std::from_chars(first, name.data() + name.size(), layer);
    if (layer >= layers) ++count;
  }
  return count;
}

// The activations one step needs for `config`'s layers.
Workspace::Widths workspace_widths(const ModelConfig& config, std::int64_t stacked_width) {
  return MoeBlock::widths(config,
                          LatentAttentionBlock::widths(config, Workspace::Widths{config.hidden_size, config.q_dim(),
                                                                                 config.kv_dim(), config.widest_ffn(),
                                                                                 stacked_width, config.moe.num_experts}));
}

// sqrt(hidden_size) as Hugging Face's Gemma computes it: a float32 tensor cast to
// the model's dtype (25.25, not 25.298, for a bfloat16 model of width 640).
float embedding_scale_of(const Architecture& arch, const ModelConfig& config) {
  if (!arch.scaled_embedding) return 1.0f;
  const auto scale = static_cast<float>(std::sqrt(static_cast<double>(config.hidden_size)));
  if (config.torch_dtype == "bfloat16") return bf16_to_f32(f32_to_bf16(scale));
  if (config.torch_dtype == "float16") return f16_to_f32(f32_to_f16(scale));
  return scale;
}

// The model hands a group pointers into the backend's memory (the workspace, its
// logits buffers): a host-memory group (MPI) cannot read a GPU's, nor NCCL the host's.
void check_group_memory(const dist::Communicator* group, const kernels::Backend& backend, std::string_view kind) {
  if (group == nullptr || group->device_memory() == !backend.host_visible_memory()) return;
  fail("the {} parallel group's {} collectives move {} memory, but the {} backend computes in {} memory", kind,
       group->engine(), group->device_memory() ? "device" : "host", backend.name(),
       backend.host_visible_memory() ? "host" : "device");
}

}  // namespace

void DecoderLayer::forward(const StepContext& step, Workspace& ws, std::int64_t hidden) const {
  kernels::Backend& backend = step.backend;
  attention_norm.run(backend, ws.x(), step.rows, hidden, ws.h());
  if (latent_attention) {
    latent_attention->forward(step, ws, ws.h(), ws.h());
  } else {
    attention->forward(step, ws, ws.h(), ws.h());
  }
  step.sum_across_ranks(ws.h(), hidden);
  if (!post_attention_norm.empty()) post_attention_norm.run(backend, ws.h(), step.rows, hidden, ws.h());
  backend.add(ws.h(), step.rows * hidden, ws.x());

  mlp_norm.run(backend, ws.x(), step.rows, hidden, ws.h());
  if (moe) {
    moe->forward(step, ws, ws.h(), ws.h());
  } else {
    mlp->forward(step, ws, ws.h(), ws.h());
  }
  step.sum_across_ranks(ws.h(), hidden);
  if (!post_mlp_norm.empty()) post_mlp_norm.run(backend, ws.h(), step.rows, hidden, ws.h());
  backend.add(ws.h(), step.rows * hidden, ws.x());
}

Linear* DecoderLayer::find(const std::string& module) {
  if (Linear* linear = latent_attention ? latent_attention->find(module) : attention->find(module)) return linear;
  return moe ? moe->find(module) : mlp->find(module);
}

std::int64_t DecoderLayer::stacked_width() const {
  return std::max(latent_attention ? latent_attention->stacked_width() : attention->stacked_width(),
                  moe ? moe->stacked_width() : mlp->stacked_width());
}

DecoderModel::DecoderModel(const ModelSource& source, kernels::Backend& backend, const LoadProgress& progress)
    : DecoderModel(source, backend, ModelOptions{}, progress) {}

DecoderModel::DecoderModel(const ModelSource& source, kernels::Backend& backend, const ModelOptions& options,
                           const LoadProgress& progress)
    : config_(source.config),
      stage_config_(source.config),
      backend_(backend),
      shard_(options.tensor_shard),
      tensor_group_(options.tensor_group),
      stage_(options.pipeline_stage),
      pipeline_group_(options.pipeline_group),
      workspace_(workspace_widths(config_, 0)) {
  const Architecture& arch = architecture_of(config_.architecture);
  if (shard_.has_value() != (tensor_group_ != nullptr) ||
      (shard_ && (shard_->size != tensor_group_->size() || shard_->rank != tensor_group_->rank()))) {
    fail("tensor parallelism needs this rank's shard layout and its group, and they must agree on rank and size");
  }
  check_group_memory(tensor_group_, backend, "tensor");
  if (config_.extra_predict_layers > 0) {
    // DeepSeek-V3's multi-token-prediction layers (numbered after the decoder's)
    // serve speculative decoding, which this engine does not run: their tensors stay unread.
    if (const std::int64_t unread = tensors_past_layer(*source.weights, config_.num_layers); unread > 0) {
      spdlog::info("mtp_layers_ignored layers={} first_layer={} tensors={}", config_.extra_predict_layers,
                   config_.num_layers, unread);
    }
  }
  if (stage_.has_value() != (pipeline_group_ != nullptr) ||
      (stage_ && (stage_->stages != pipeline_group_->size() || stage_->stage != pipeline_group_->rank() ||
                  stage_->end_layer > config_.num_layers || stage_->first_layer < 0 ||
                  stage_->layers() < 1))) {
    fail("pipeline parallelism needs this rank's stage and its group, agreeing on stage and size, "
         "with layers inside the model's {}", config_.num_layers);
  }
  check_group_memory(pipeline_group_, backend, "pipeline");
  const bool first_stage = !stage_ || stage_->first();
  const bool last_stage = !stage_ || stage_->last();
  first_layer_ = stage_ ? stage_->first_layer : 0;
  const std::int64_t end_layer = stage_ ? stage_->end_layer : config_.num_layers;
  stage_config_.num_layers = end_layer - first_layer_;
  embedding_scale_ = embedding_scale_of(arch, config_);
  WeightBinder binder(*source.weights, config_, backend, options);
  const auto d = config_.hidden_size;
  const std::string embedding = arch.module(TensorRole::TokenEmbedding);
  const std::string head = arch.module(TensorRole::LmHead);
  const bool separate_head = binder.contains(head + ".weight") || binder.has_quantized(head);
  const bool tied = config_.tie_word_embeddings && !separate_head;
  // Under tensor parallelism the tables hold this rank's vocabulary rows, the
  // embedding one more, zero row (loader/tensor_shard.h).
  const std::int64_t vocab_rows = shard_ ? shard_->vocab : config_.vocab_size;
  // An untied token table is only ever looked up by row, never multiplied sparsely.
  // A pipeline stage binds only what it runs: the table on the first stage (and on
  // the last when it is lm_head too), the final norm and lm_head on the last.
  if (first_stage || (last_stage && tied)) {
    embedding_ = binder.linear(embedding, vocab_rows + (shard_ ? 1 : 0), d, /*lookup_only=*/!config_.tie_word_embeddings);
  }
  if (last_stage) {
    final_norm_ = bind_norm(binder, arch, config_, TensorRole::FinalNorm);
    lm_head_ = tied ? Linear{head, embedding_.weights, {}} : binder.linear(head, vocab_rows, d);
  }
  std::int64_t stacked_width = 0;
  layers_.reserve(static_cast<std::size_t>(end_layer - first_layer_));
  for (std::int64_t i = first_layer_; i < end_layer; ++i) {
    const bool sparse = config_.moe.sparse_layer(i);
    if (!sparse && !arch.has(TensorRole::Gate)) {
      fail("{} has no dense MLP, but layer {} is not a mixture-of-experts layer", config_.architecture, i);
    }
    DecoderLayer layer{bind_norm(binder, arch, config_, TensorRole::AttentionNorm, i),
                       {},
                       {},
                       bind_norm(binder, arch, config_, TensorRole::PostAttentionNorm, i),
                       bind_norm(binder, arch, config_, TensorRole::MlpNorm, i),
                       {},
                       {},
                       {}};
    if (config_.mla) {
      layer.latent_attention.emplace(binder, arch, config_, i);
    } else {
      layer.attention.emplace(binder, arch, config_, i);
    }
    if (sparse) {
      layer.moe.emplace(binder, arch, config_, i);
    } else {
      layer.mlp.emplace(binder, arch, config_, i);
    }
    layer.post_mlp_norm = bind_norm(binder, arch, config_, TensorRole::PostMlpNorm, i);
    layers_.push_back(std::move(layer));
    stacked_width = std::max(stacked_width, layers_.back().stacked_width());
    if (progress) progress({i + 1 - first_layer_, end_layer - first_layer_, binder.memory().total});
  }
  workspace_ = Workspace(workspace_widths(config_, stacked_width));
  memory_ = binder.memory();
  linear_kinds_ = binder.linear_kinds();
  held_ = binder.take_held();
}

void DecoderModel::plan_rows(std::span<const BatchEntry> batch, std::int32_t block_size) {
  if (batch.empty()) fail("forward_batch: an empty batch");
  tokens_.clear();
  segments_.clear();
  for (const auto& entry : batch) {
    const auto rows = static_cast<std::int64_t>(entry.tokens.size());
    if (rows == 0) fail("forward_batch: an entry without tokens");
    if (entry.start < 0 || entry.start + rows > static_cast<std::int64_t>(entry.block_table.size()) * block_size) {
      fail("forward_batch: positions up to {} exceed the entry's {} blocks", entry.start + rows,
           entry.block_table.size());
    }
    segments_.push_back({static_cast<std::int64_t>(tokens_.size()), rows, entry.start, entry.block_table, entry.logits});
    tokens_.insert(tokens_.end(), entry.tokens.begin(), entry.tokens.end());
  }
  const auto rows = static_cast<std::int64_t>(tokens_.size());
  positions_.resize(static_cast<std::size_t>(rows));
  for (const auto& segment : segments_) {
    for (std::int64_t i = 0; i < segment.rows; ++i) {
      positions_[static_cast<std::size_t>(segment.first_row + i)] = static_cast<std::int32_t>(segment.start + i);
    }
  }
  workspace_.reserve(backend_, rows);
}

std::int64_t DecoderModel::output_rows() const {
  std::int64_t out = 0;
  for (const auto& segment : segments_) out += segment.logits == Logits::AllRows ? segment.rows : 1;
  return out;
}

void DecoderModel::run_layers(PagedKvCache& cache) {
  const StepContext step{backend_, cache, static_cast<std::int64_t>(tokens_.size()), positions_, segments_, hook_,
                         first_layer_, tensor_group_};
  for (const auto& layer : layers_) layer.forward(step, workspace_, config_.hidden_size);
}

void DecoderModel::forward_batch(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits) {
  if (stage_) {
    forward_pipelined(batch, cache, logits);
    return;
  }
  plan_rows(batch, cache.block_size());
  const std::int64_t out_rows = output_rows();
  if (static_cast<std::int64_t>(logits.size()) < out_rows * config_.vocab_size) fail("forward: logits buffer too small");
  embed();
  run_layers(cache);
  head(out_rows, logits);
}

void DecoderModel::forward_pipelined(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits) {
  const PipelineStage& stage = *stage_;
  const auto d = config_.hidden_size;
  const auto vocab = config_.vocab_size;
  entry_rows_.clear();
  std::int64_t total_out = 0;
  for (const auto& entry : batch) {
    const auto rows = static_cast<std::int64_t>(entry.tokens.size());
    entry_rows_.push_back(rows);
    total_out += entry.logits == Logits::AllRows ? rows : 1;
  }
  if (stage.first() && static_cast<std::int64_t>(logits.size()) < total_out * vocab) {
    fail("forward: logits buffer too small");
  }
  // The last stage's logits of every micro-batch, in the backend's memory (the
  // pipeline group moves that memory); stage 0 receives them there too.
  float* stage_logits = stage.last() || stage.first() ? scratch(stage_logits_, total_out * vocab) : nullptr;
  // Every stage cuts the step the same way (the same plan, the same arithmetic).
  // Stage s receives micro-batch m once it is done with m - 1, so while it runs
  // m, stage s - 1 runs m + 1: with M micro-batches over S stages a step takes
  // about (M + S - 1) / (M S) of the time one rank would need for it alone.
  const auto bounds = micro_batch_bounds(entry_rows_, stage.micro_batches);
  std::int64_t out = 0;
  for (std::size_t m = 0; m + 1 < bounds.size(); ++m) {
    plan_rows(batch.subspan(bounds[m], bounds[m + 1] - bounds[m]), cache.block_size());
    const auto values = static_cast<std::int64_t>(tokens_.size()) * d;
    if (stage.first()) {
      embed();
    } else {
      pipeline_group_->recv(workspace_.x(), values, DType::F32, stage.stage - 1);
    }
    run_layers(cache);
    if (!stage.last()) {
      pipeline_group_->send(workspace_.x(), values, DType::F32, stage.stage + 1);
      continue;
    }
    const std::int64_t part = output_rows();
    head_into(part, stage_logits + out * vocab);
    out += part;
  }
  // The last stage sends every micro-batch's logits at once, after it has received
  // the last micro-batch: stage 0 is sending micro-batches until then, and two
  // stages each waiting for the other to receive would never finish.
  if (stage.last()) pipeline_group_->send(stage_logits, total_out * vocab, DType::F32, 0);
  if (stage.first()) {
    pipeline_group_->recv(stage_logits, total_out * vocab, DType::F32, stage.stages - 1);
    backend_.download(stage_logits_, 0, static_cast<std::size_t>(total_out * vocab) * sizeof(float), logits.data());
  }
}

void DecoderModel::head(std::int64_t out_rows, std::span<float> logits) {
  // Where the host reads the backend's memory, the logits go straight into `logits`.
  if (backend_.host_visible_memory()) {
    head_into(out_rows, logits.data());
    return;
  }
  const kernels::Buffer& device_logits = workspace_.logits(backend_, out_rows * config_.vocab_size);
  head_into(out_rows, device_logits.data<float>());
  backend_.download(device_logits, 0, static_cast<std::size_t>(out_rows * config_.vocab_size) * sizeof(float),
                    logits.data());
}

void DecoderModel::head_into(std::int64_t out_rows, float* out) {
  const auto d = config_.hidden_size;
  Workspace& ws = workspace_;
  // The rows whose logits are wanted, normalized side by side so lm_head runs once over them.
  std::int64_t row = 0;
  for (const auto& segment : segments_) {
    const bool all = segment.logits == Logits::AllRows;
    const std::int64_t first = all ? segment.first_row : segment.first_row + segment.rows - 1;
    const std::int64_t count = all ? segment.rows : 1;
    final_norm_.run(backend_, ws.x() + first * d, count, d, ws.h() + row * d);
    row += count;
  }
  if (shard_) {
    gather_logits(out_rows, out);
  } else {
    lm_head_.run(backend_, ws.h(), out_rows, out, hook_);
  }
  if (config_.final_logit_softcapping > 0) {
    backend_.soft_cap(out, out_rows * config_.vocab_size, static_cast<float>(config_.final_logit_softcapping));
  }
}

void DecoderModel::begin_layers(std::span<const BatchEntry> batch) {
  // Blocks of any size: the cache each layer gets checks the tables.
  plan_rows(batch, std::numeric_limits<std::int32_t>::max());
  embed();
}

void DecoderModel::run_layer(std::int64_t layer, PagedKvCache& cache) {
  if (layer < 0 || layer >= static_cast<std::int64_t>(layers_.size())) fail("no layer {}", layer);
  const StepContext step{backend_, cache, static_cast<std::int64_t>(tokens_.size()), positions_, segments_, hook_, layer,
                         tensor_group_};
  layers_[static_cast<std::size_t>(layer)].forward(step, workspace_, config_.hidden_size);
}

void DecoderModel::embed() {
  const auto values = static_cast<std::int64_t>(tokens_.size()) * config_.hidden_size;
  if (!shard_) {
    backend_.embedding(*embedding_.weights, tokens_, workspace_.x());
    if (embedding_scale_ != 1.0f) backend_.scale(workspace_.x(), values, embedding_scale_);
    return;
  }
  // This rank's rows of the vocabulary are [first_vocab, first_vocab + vocab);
  // every other token reads the zero row after them. One rank contributes each
  // token's row and the others zeros, so the sum is that row exactly.
  local_tokens_.resize(tokens_.size());
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    const std::int64_t local = tokens_[i] - shard_->first_vocab;
    local_tokens_[i] = static_cast<TokenId>(local >= 0 && local < shard_->vocab ? local : shard_->vocab);
  }
  backend_.embedding(*embedding_.weights, local_tokens_, workspace_.x());
  tensor_group_->all_reduce(workspace_.x(), values, DType::F32, dist::ReduceOp::Sum);
  if (embedding_scale_ != 1.0f) backend_.scale(workspace_.x(), values, embedding_scale_);
}

void DecoderModel::gather_logits(std::int64_t out_rows, float* out) {
  // This rank's logits [out_rows, lm_head rows]: its vocabulary, plus the zero
  // row's 0 when lm_head is the tied embedding.
  const std::int64_t local_width = lm_head_.rows();
  const std::int64_t stride = shard_->vocab_stride;
  float* local = scratch(local_logits_, out_rows * local_width);
  lm_head_.run(backend_, workspace_.h(), out_rows, local, hook_);
  // Every rank sends `stride` columns per row (the last rank's share may be
  // shorter: its padding is never read), rank after rank; the vocabulary is the
  // ranks' shares in order. All of it stays in the backend's memory.
  float* send = scratch(send_logits_, out_rows * stride);
  backend_.copy_columns(local, out_rows, local_width, 0, shard_->vocab, send, stride, 0);
  const auto ranks = static_cast<std::int64_t>(shard_->size);
  float* gathered = scratch(gathered_logits_, ranks * out_rows * stride);
  tensor_group_->all_gather(send, gathered, out_rows * stride, DType::F32);
  const std::int64_t vocab = config_.vocab_size;
  for (std::int64_t rank = 0; rank < ranks; ++rank) {
    const std::int64_t first = rank * stride;
    backend_.copy_columns(gathered + rank * out_rows * stride, out_rows, stride, 0, std::min(stride, vocab - first),
                          out, vocab, first);
  }
}

float* DecoderModel::scratch(kernels::Buffer& buffer, std::int64_t elements) {
  if (buffer.numel() < elements) buffer = backend_.allocate(DType::F32, {elements});
  return buffer.data<float>();
}

PagedKvCache DecoderModel::one_layer_cache(std::int32_t num_blocks, std::int32_t block_size) const {
  ModelConfig one = config_;
  one.num_layers = 1;
  return PagedKvCache(backend_, one, num_blocks, block_size);
}

void DecoderModel::replace_linear(const std::string& module, const float* weights) {
  for (auto& layer : layers_) {
    Linear* linear = layer.find(module);
    if (linear == nullptr) continue;
    // Dense on purpose: a pruned matrix must run the same kernel as before it was pruned.
    linear->weights = backend_.prepare_linear(kernels::Matrix{DType::F32, linear->rows(), linear->cols(), weights},
                                              kernels::SparseChoice::Dense);
    return;
  }
  fail("the model has no linear module '{}'", module);
}

std::vector<std::span<const std::int64_t>> DecoderModel::last_tokens_per_expert() const {
  std::vector<std::span<const std::int64_t>> out;
  for (const auto& layer : layers_) {
    if (layer.moe) out.push_back(layer.moe->last_tokens_per_expert());
  }
  return out;
}

ExpertLoad DecoderModel::expert_load() const {
  ExpertLoad load;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto& moe = layers_[i].moe;
    if (!moe) continue;
    load.layers.push_back(first_layer_ + static_cast<std::int64_t>(i));  // the whole model's index
    const auto total = moe->tokens_per_expert_total();
    load.tokens.emplace_back(total.begin(), total.end());
    const auto last = moe->last_tokens_per_expert();
    const auto routed = std::accumulate(last.begin(), last.end(), std::int64_t{0});
    if (routed > 0) {
      const double mean = static_cast<double>(routed) / static_cast<double>(last.size());
      load.last_step_imbalance =
          std::max(load.last_step_imbalance, static_cast<double>(*std::ranges::max_element(last)) / mean);
    }
  }
  return load;
}

std::unique_ptr<Model> load_model(const ModelSource& source, kernels::Backend& backend, const ModelOptions& options,
                                  const LoadProgress& progress) {
  return std::make_unique<DecoderModel>(source, backend, options, progress);
}

}  // namespace nibble::engine
