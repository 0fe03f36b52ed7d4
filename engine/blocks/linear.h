#pragma once
// Linear modules as the blocks run them. A LinearGroup is the modules that read
// the same input (q/k/v, gate/up): one stacked matrix when they are quantized
// alike (the input is read, and rounded to int8, once; one fork-join instead of
// several, as vLLM's QKV and merged-column layers do), else one matrix each. The
// results are the same either way.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/model.h"
#include "kernels/backend.h"

namespace nibble::engine {

struct Linear {
  std::string module;  // "model.layers.0.self_attn.o_proj": for hooks and messages
  std::shared_ptr<const kernels::LinearWeights> weights;
  kernels::Buffer bias;  // empty: none

  std::int64_t rows() const { return weights->rows(); }
  std::int64_t cols() const { return weights->cols(); }
  // y [rows, this->rows()] = x [rows, cols()] W^T (+ bias).
  void run(kernels::Backend& backend, const float* x, std::int64_t rows, float* y, const LinearInputHook& hook) const;
  // The same as one job of a Backend::grouped_linear call (no hook).
  kernels::GroupedLinearJob job(const float* x, std::int64_t rows, float* y) const;
};

class LinearGroup {
 public:
  // One prepared matrix for all modules (`stacked`), or one per module.
  LinearGroup(std::vector<std::string> modules, std::vector<std::int64_t> widths, std::vector<Linear> linears);

  // Writes each module's output [rows, width_i] to outputs[i]. A stacked matrix
  // writes all of them side by side into `scratch` first and the backend splits
  // the columns apart.
  void run(kernels::Backend& backend, const float* x, std::int64_t rows, std::span<float* const> outputs,
           float* scratch, const LinearInputHook& hook) const;
  // run() in two parts, for a caller that runs several groups' layers in one
  // Backend::grouped_linear call (MoeBlock's experts), without the hook: the jobs
  // (a stacked matrix writes to `scratch`), then, after the call, the stacked
  // output's columns split into `outputs` (nothing to do when not stacked).
  void append_jobs(const float* x, std::int64_t rows, std::span<float* const> outputs, float* scratch,
                   std::vector<kernels::GroupedLinearJob>& jobs) const;
  void split_outputs(kernels::Backend& backend, std::int64_t rows, std::span<float* const> outputs,
                     const float* scratch) const;
  std::int64_t total_width() const;
  bool stacked() const { return linears_.size() == 1 && widths_.size() > 1; }
  // The module's own matrix; nullptr when it is not in the group. Throws when the
  // module runs stacked with others (it has no matrix of its own).
  Linear* find(const std::string& module);

 private:
  std::vector<std::string> modules_;
  std::vector<std::int64_t> widths_;
  std::vector<Linear> linears_;
};

}  // namespace nibble::engine
