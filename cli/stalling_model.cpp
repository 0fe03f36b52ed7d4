#include "cli/stalling_model.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

namespace nibble::cli {

void StallingModel::forward_batch(std::span<const engine::BatchEntry> batch, engine::PagedKvCache& cache,
                                  std::span<float> logits) {
  if (steps_left_.fetch_sub(1) <= 0) {
    spdlog::warn("test_stall_injected flag=--test-stall-after-steps");
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  inner_.forward_batch(batch, cache, logits);
}

}  // namespace nibble::cli
