#pragma once
// The gated MLP of Llama-family decoders (Shazeer 2020): down(act(gate(x)) * up(x)),
// with SwiGLU's SiLU or GeGLU's tanh-approximated GELU (Gemma) as the activation.
#include <cstdint>
#include <string>

#include "engine/blocks/linear.h"
#include "engine/step_context.h"
#include "engine/weight_binder.h"
#include "loader/architecture.h"

namespace nibble::engine {

// out = act(gate) * up over n values (out may be gate).
void gated_activation(kernels::Backend& backend, MlpActivation activation, const float* gate, const float* up,
                      std::int64_t n, float* out);

class GatedMlp {
 public:
  GatedMlp(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer);
  // Named modules of width `width` (a MoE layer's experts and shared expert).
  struct Modules {
    std::string gate, up, down;
  };
  GatedMlp(WeightBinder& binder, MlpActivation activation, const Modules& modules, std::int64_t width,
           std::int64_t hidden);

  // `input` [rows, hidden] -> `out` [rows, hidden] (may alias `input`).
  void forward(const StepContext& step, Workspace& ws, const float* input, float* out) const {
    run(step.backend, step.hook, ws, input, step.rows, out);
  }
  // The same over `rows` rows that need not be the step's (an expert's tokens).
  void run(kernels::Backend& backend, const LinearInputHook& hook, Workspace& ws, const float* input,
           std::int64_t rows, float* out) const;
  // Module `module`'s matrix, or nullptr when this block has no such module.
  Linear* find(const std::string& module);
  std::int64_t stacked_width() const { return gate_up_.stacked() ? gate_up_.total_width() : 0; }
  // Its parts, for a caller that runs several MLPs' layers in grouped calls
  // (MoeBlock): gate and up (in that order) read the input, down reads
  // act(gate) * up.
  const LinearGroup& gate_up() const { return gate_up_; }
  const Linear& down() const { return down_; }
  MlpActivation activation() const { return activation_; }
  std::int64_t width() const { return width_; }

 private:
  std::int64_t width_;
  MlpActivation activation_;
  LinearGroup gate_up_;
  Linear down_;
};

}  // namespace nibble::engine
