#pragma once
// Test-only fault injection behind `nibble serve --test-stall-after-steps N`: the
// model answers N batched steps, then the next one never returns, as a hung kernel
// or a deadlocked device would. The e2e probe test uses it to show /health/ready
// and then /health/live turning red; nothing else should.
#include <atomic>
#include <cstdint>

#include "cli/forwarding_model.h"

namespace nibble::cli {

class StallingModel final : public ForwardingModel {
 public:
  StallingModel(engine::Model& inner, std::int64_t steps_before_stall)
      : ForwardingModel(inner), steps_left_(steps_before_stall) {}

  void forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                     std::span<float> logits) override;

 private:
  std::atomic<std::int64_t> steps_left_;
};

}  // namespace nibble::cli
