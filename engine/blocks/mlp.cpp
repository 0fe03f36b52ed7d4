#include "engine/blocks/mlp.h"

#include <array>

namespace nibble::engine {
namespace {

LinearGroup bind_gate_up(WeightBinder& binder, const GatedMlp::Modules& names, std::int64_t width, std::int64_t hidden) {
  const std::array<WeightBinder::Module, 2> modules{{{names.gate, width}, {names.up, width}}};
  return binder.group(modules, hidden, false);
}

}  // namespace

void gated_activation(kernels::Backend& backend, MlpActivation activation, const float* gate, const float* up,
                      std::int64_t n, float* out) {
  switch (activation) {
    case MlpActivation::Silu:
      backend.swiglu(gate, up, n, out);
      break;
    case MlpActivation::GeluTanh:
      backend.geglu_tanh(gate, up, n, out);
      break;
  }
}

GatedMlp::GatedMlp(WeightBinder& binder, const Architecture& arch, const ModelConfig& config, std::int64_t layer)
    : GatedMlp(binder, arch.activation,
               Modules{arch.module(TensorRole::Gate, layer), arch.module(TensorRole::Up, layer),
                       arch.module(TensorRole::Down, layer)},
               config.intermediate_size, config.hidden_size) {}

GatedMlp::GatedMlp(WeightBinder& binder, MlpActivation activation, const Modules& modules, std::int64_t width,
                   std::int64_t hidden)
    : width_(width),
      activation_(activation),
      gate_up_(bind_gate_up(binder, modules, width, hidden)),
      down_(binder.linear(modules.down, hidden, width)) {}

Linear* GatedMlp::find(const std::string& module) {
  if (module == down_.module) return &down_;
  return gate_up_.find(module);
}

void GatedMlp::run(kernels::Backend& backend, const LinearInputHook& hook, Workspace& ws, const float* input,
                   std::int64_t rows, float* out) const {
  const std::array<float*, 2> gate_up{ws.gate(), ws.up()};
  gate_up_.run(backend, input, rows, gate_up, ws.stacked(), hook);
  gated_activation(backend, activation_, ws.gate(), ws.up(), rows * width_, ws.gate());
  down_.run(backend, ws.gate(), rows, out, hook);
}

}  // namespace nibble::engine
