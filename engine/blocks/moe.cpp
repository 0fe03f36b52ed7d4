#include "engine/blocks/moe.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace nibble::engine {
namespace {

// DeepSeek-V3's e_score_correction_bias (noaux_tc routing); empty where the
// architecture has none.
std::vector<float> correction_bias(WeightBinder& binder, const Architecture& arch, const ModelConfig& config,
                                   std::int64_t layer) {
  if (!arch.has(TensorRole::RouterBias) || config.moe.scoring != MoeConfig::Scoring::Sigmoid) return {};
  return binder.host_vector(arch.module(TensorRole::RouterBias, layer), config.moe.num_experts);
}

}  // namespace

MoeBlock::MoeBlock(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer)
    : hidden_(config.hidden_size),
      router_(config.moe, correction_bias(binder, arch, config, layer)),
      gate_(binder.linear(arch.module(TensorRole::Router, layer), config.moe.num_experts, config.hidden_size)) {
  const MoeConfig& moe = config.moe;
  // Under expert parallelism only this rank's experts are bound (and so mapped).
  first_expert_ = moe.first_held_expert();
  experts_.reserve(static_cast<std::size_t>(moe.held_experts()));
  for (std::int64_t e = first_expert_; e < first_expert_ + moe.held_experts(); ++e) {
    experts_.emplace_back(binder, arch.activation,
                          GatedMlp::Modules{arch.expert_module(TensorRole::ExpertGate, layer, e),
                                            arch.expert_module(TensorRole::ExpertUp, layer, e),
                                            arch.expert_module(TensorRole::ExpertDown, layer, e)},
                          moe.expert_intermediate_size, config.hidden_size);
  }
  if (moe.shared_expert_intermediate_size > 0) {
    shared_.emplace(binder, arch.activation,
                    GatedMlp::Modules{arch.module(TensorRole::SharedGate, layer), arch.module(TensorRole::SharedUp, layer),
                                      arch.module(TensorRole::SharedDown, layer)},
                    moe.shared_expert_intermediate_size, config.hidden_size);
    if (moe.shared_expert_gate) {
      shared_gate_ = binder.linear(arch.module(TensorRole::SharedExpertGate, layer), 1, config.hidden_size);
    }
  }
  // Routing and its counts cover every expert, held or not: every rank routes alike.
  const auto all = static_cast<std::size_t>(moe.num_experts);
  rows_of_.resize(all);
  weights_of_.resize(all);
  tokens_per_expert_.assign(all, 0);
  tokens_total_.assign(all, 0);
  first_routed_.resize(experts_.size());
}

Workspace::Widths MoeBlock::widths(const ModelConfig& config, Workspace::Widths base) {
  if (config.moe.enabled()) {
    base.routed_per_row = config.moe.experts_per_token;
    base.expert_ffn = config.moe.expert_intermediate_size;
  }
  return base;
}

Linear* MoeBlock::find(const std::string& module) {
  if (module == gate_.module) return &gate_;
  if (shared_gate_ && module == shared_gate_->module) return &*shared_gate_;
  for (auto& expert : experts_) {
    if (Linear* linear = expert.find(module)) return linear;
  }
  return shared_ ? shared_->find(module) : nullptr;
}

std::int64_t MoeBlock::stacked_width() const {
  std::int64_t width = shared_ ? shared_->stacked_width() : 0;
  for (const auto& expert : experts_) width = std::max(width, expert.stacked_width());
  return width;
}

void MoeBlock::forward(const StepContext& step, Workspace& ws, const float* input, float* out) const {
  kernels::Backend& backend = step.backend;
  const std::int64_t rows = step.rows;
  const auto experts = static_cast<std::int64_t>(rows_of_.size());
  const std::int64_t k = router_.top_k();
  // Route: the logits come to the host (rows x experts floats), the choice is made there.
  gate_.run(backend, input, rows, ws.router().data<float>(), step.hook);
  logits_.resize(static_cast<std::size_t>(rows * experts));
  backend.download(ws.router(), 0, logits_.size() * sizeof(float), logits_.data());
  choices_.resize(static_cast<std::size_t>(rows * k));
  weights_.resize(choices_.size());
  router_.route(logits_, rows, choices_, weights_);

  // Group the rows by expert (ascending row order within each).
  for (std::size_t e = 0; e < rows_of_.size(); ++e) {
    rows_of_[e].clear();
    weights_of_[e].clear();
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t i = 0; i < k; ++i) {
      const auto at = static_cast<std::size_t>(r * k + i);
      const auto e = static_cast<std::size_t>(choices_[at]);
      rows_of_[e].push_back(static_cast<std::int32_t>(r));
      weights_of_[e].push_back(weights_[at]);
    }
  }

  for (std::size_t e = 0; e < rows_of_.size(); ++e) {
    tokens_per_expert_[e] = static_cast<std::int64_t>(rows_of_[e].size());
    tokens_total_[e] += tokens_per_expert_[e];
  }
  float* sum = ws.moe_sum();
  backend.fill_zero(sum, rows * hidden_);
  if (grouped_ && !step.hook) {
    run_experts_grouped(backend, ws, input, rows, sum);
  } else {
    run_experts_one_by_one(backend, step.hook, ws, input, rows, sum);
  }
  if (shared_) {
    shared_->run(backend, step.hook, ws, input, rows, ws.expert_out());
    if (shared_gate_) {
      // sigmoid(x . w_gate) per row, on the host like the routing weights.
      shared_gate_->run(backend, input, rows, ws.router().data<float>(), step.hook);
      shared_weights_.resize(static_cast<std::size_t>(rows));
      backend.download(ws.router(), 0, shared_weights_.size() * sizeof(float), shared_weights_.data());
      for (auto& w : shared_weights_) w = 1.0f / (1.0f + std::exp(-w));
      all_rows_.resize(static_cast<std::size_t>(rows));
      std::iota(all_rows_.begin(), all_rows_.end(), 0);
      backend.scatter_add_rows(ws.expert_out(), hidden_, all_rows_, shared_weights_, sum);
    } else {
      backend.add(ws.expert_out(), rows * hidden_, sum);
    }
  }
  // `out` may be `input`, read until here.
  backend.slice_columns(sum, rows, hidden_, 0, hidden_, out);
}

void MoeBlock::run_experts_one_by_one(kernels::Backend& backend, const LinearInputHook& hook, Workspace& ws,
                                      const float* input, std::int64_t rows, float* sum) const {
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const std::size_t e = routed_index(i);
    const auto& ids = rows_of_[e];
    if (ids.empty()) continue;  // an expert no token chose costs nothing
    const auto count = static_cast<std::int64_t>(ids.size());
    // Every row routed here (a lone decode token): run straight on the input.
    const float* x = input;
    if (count != rows) {
      backend.gather_rows(input, hidden_, ids, ws.expert_in());
      x = ws.expert_in();
    }
    experts_[i].run(backend, hook, ws, x, count, ws.expert_out());
    backend.scatter_add_rows(ws.expert_out(), hidden_, ids, weights_of_[e], sum);
  }
}

void MoeBlock::run_experts_grouped(kernels::Backend& backend, Workspace& ws, const float* input, std::int64_t rows,
                                   float* sum) const {
  // Held expert i's routed rows are rows [first_routed_[i], + its count) of every
  // routed buffer; experts without tokens take none, so the rows are contiguous
  // and one activation call covers them all.
  if (ws.routed_gate() == nullptr) {
    fail("internal error: the workspace has no routed-expert buffers (MoeBlock::widths)");
  }
  const std::int64_t width = experts_.front().width();
  const auto at = [](float* buffer, std::int64_t row, std::int64_t row_width) { return buffer + row * row_width; };
  jobs_.clear();
  std::int64_t routed = 0;
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const std::size_t e = routed_index(i);
    first_routed_[i] = routed;
    const auto count = static_cast<std::int64_t>(rows_of_[e].size());
    if (count == 0) continue;
    const float* x = input;  // every row routed here: read in place, as one by one
    if (count != rows) {
      backend.gather_rows(input, hidden_, rows_of_[e], at(ws.routed(), routed, hidden_));
      x = at(ws.routed(), routed, hidden_);
    }
    const std::array<float*, 2> gate_up{at(ws.routed_gate(), routed, width), at(ws.routed_up(), routed, width)};
    experts_[i].gate_up().append_jobs(x, count, gate_up, at(ws.routed_stacked(), routed, 2 * width), jobs_);
    routed += count;
  }
  backend.grouped_linear(jobs_);
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const auto count = static_cast<std::int64_t>(rows_of_[routed_index(i)].size());
    if (count == 0) continue;
    const std::int64_t first = first_routed_[i];
    const std::array<float*, 2> gate_up{at(ws.routed_gate(), first, width), at(ws.routed_up(), first, width)};
    experts_[i].gate_up().split_outputs(backend, count, gate_up, at(ws.routed_stacked(), first, 2 * width));
  }
  gated_activation(backend, experts_.front().activation(), ws.routed_gate(), ws.routed_up(), routed * width,
                   ws.routed_gate());
  // The gathered inputs are read; the outputs take their place.
  jobs_.clear();
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const auto count = static_cast<std::int64_t>(rows_of_[routed_index(i)].size());
    if (count == 0) continue;
    const std::int64_t first = first_routed_[i];
    jobs_.push_back(
        experts_[i].down().job(at(ws.routed_gate(), first, width), count, at(ws.routed(), first, hidden_)));
  }
  backend.grouped_linear(jobs_);
  // Expert by expert, in the order the one-by-one path adds them, so every sum
  // rounds the same.
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const std::size_t e = routed_index(i);
    if (rows_of_[e].empty()) continue;
    backend.scatter_add_rows(at(ws.routed(), first_routed_[i], hidden_), hidden_, rows_of_[e], weights_of_[e], sum);
  }
}

}  // namespace nibble::engine
