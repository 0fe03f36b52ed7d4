#pragma once
// Test-only fault injection behind `nibble serve --test-stall-after-steps N`: the
// model answers N batched steps, then the next one never returns, as a hung kernel
// or a deadlocked device would. The e2e probe test uses it to show /health/ready
// and then /health/live turning red; nothing else should.
#include <atomic>
#include <cstdint>

#include "engine/model.h"

namespace nibble::cli {

class StallingModel final : public engine::Model {
 public:
  StallingModel(engine::Model& inner, std::int64_t steps_before_stall)
      : inner_(inner), steps_left_(steps_before_stall) {}

  const ModelConfig& config() const override { return inner_.config(); }
  kernels::Backend& backend() const override { return inner_.backend(); }
  const engine::WeightMemory& weight_memory() const override { return inner_.weight_memory(); }
  const std::map<std::string, int>& linear_kinds() const override { return inner_.linear_kinds(); }
  void set_linear_input_hook(engine::LinearInputHook hook) override { inner_.set_linear_input_hook(std::move(hook)); }
  void forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                     std::span<float> logits) override;

 private:
  engine::Model& inner_;
  std::atomic<std::int64_t> steps_left_;
};

}  // namespace nibble::cli
