#include "cli/load_progress.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "common/log.h"
#include "scheduler/byte_size.h"

namespace nibble::cli {

engine::LoadProgress load_progress_reporter(std::function<void(double)> on_fraction) {
  using Clock = std::chrono::steady_clock;
  constexpr double kLogEverySeconds = 2.0;
  const bool interactive = ::isatty(STDERR_FILENO) != 0;
  return [interactive, on_fraction = std::move(on_fraction), start = Clock::now(),
          logged = -kLogEverySeconds](const engine::LoadStep& step) mutable {
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double fraction =
        step.layers_total > 0 ? static_cast<double>(step.layers_done) / static_cast<double>(step.layers_total) : 1.0;
    if (on_fraction) on_fraction(fraction);
    const bool done = step.layers_done == step.layers_total;
    if (done || seconds - logged >= kLogEverySeconds) {
      logged = seconds;
      // Layers cost about the same, so the rate so far predicts the rest.
      const double eta = fraction > 0 ? seconds * (1.0 - fraction) / fraction : 0.0;
      spdlog::info("load_progress layers={}/{} fraction={:.3f} weight_bytes={} weights=\"{}\" seconds={:.2f} "
                   "eta_seconds={:.1f}",
                   step.layers_done, step.layers_total, fraction, step.weight_bytes,
                   scheduler::format_bytes(static_cast<double>(step.weight_bytes)), seconds, eta);
    }
    if (interactive && seconds > 1.0) {
      std::fprintf(stderr, "\rloading layers %lld/%lld", static_cast<long long>(step.layers_done),
                   static_cast<long long>(step.layers_total));
      if (done) std::fprintf(stderr, "\n");
    }
  };
}

}  // namespace nibble::cli
