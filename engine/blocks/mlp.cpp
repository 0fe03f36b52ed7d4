#include "engine/blocks/mlp.h"

#include <array>

namespace nibble::engine {
namespace {

LinearGroup bind_gate_up(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer) {
  const std::array<WeightBinder::Module, 2> modules{{{arch.module(TensorRole::Gate, layer), config.intermediate_size},
                                                     {arch.module(TensorRole::Up, layer), config.intermediate_size}}};
  return binder.group(modules, config.hidden_size, false);
}

}  // namespace

GatedMlp::GatedMlp(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer)
    : width_(config.intermediate_size),
      activation_(arch.activation),
      gate_up_(bind_gate_up(binder, arch, config, layer)),
      down_(binder.linear(arch.module(TensorRole::Down, layer), config.hidden_size, config.intermediate_size)) {}

Linear* GatedMlp::find(const std::string& module) {
  if (module == down_.module) return &down_;
  return gate_up_.find(module);
}

void GatedMlp::forward(const StepContext& step, Workspace& ws, const float* input, float* out) const {
  kernels::Backend& backend = step.backend;
  const std::array<float*, 2> gate_up{ws.gate(), ws.up()};
  gate_up_.run(backend, input, step.rows, gate_up, ws.stacked(), step.hook);
  switch (activation_) {
    case MlpActivation::Silu:
      backend.swiglu(ws.gate(), ws.up(), step.rows * width_, ws.gate());
      break;
    case MlpActivation::GeluTanh:
      backend.geglu_tanh(ws.gate(), ws.up(), step.rows * width_, ws.gate());
      break;
  }
  down_.run(backend, ws.gate(), step.rows, out, step.hook);
}

}  // namespace nibble::engine
