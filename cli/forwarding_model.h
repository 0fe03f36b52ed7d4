#pragma once
// A Model that hands every call to another one: the base of serve's wrappers,
// which each change only forward_batch (fault injection, a tensor-parallel
// group's failure handling) and so override only that.
#include <utility>

#include "engine/model.h"

namespace nibble::cli {

class ForwardingModel : public engine::Model {
 public:
  explicit ForwardingModel(engine::Model& inner) : inner_(inner) {}

  const ModelConfig& config() const override { return inner_.config(); }
  kernels::Backend& backend() const override { return inner_.backend(); }
  const engine::WeightMemory& weight_memory() const override { return inner_.weight_memory(); }
  const std::map<std::string, int>& linear_kinds() const override { return inner_.linear_kinds(); }
  void set_linear_input_hook(engine::LinearInputHook hook) override { inner_.set_linear_input_hook(std::move(hook)); }
  engine::ExpertLoad expert_load() const override { return inner_.expert_load(); }
  void forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                     std::span<float> logits) override {
    inner_.forward_batch(batch, cache, logits);
  }

 protected:
  engine::Model& inner_;
};

}  // namespace nibble::cli
