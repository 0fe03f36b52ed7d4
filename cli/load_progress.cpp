#include "cli/load_progress.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "common/log.h"

namespace nibble::cli {

engine::LoadProgress load_progress_reporter() {
  const bool interactive = ::isatty(STDERR_FILENO) != 0;
  return [interactive, start = std::chrono::steady_clock::now()](std::int64_t done, std::int64_t total) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spdlog::debug("load_progress layers={}/{} seconds={:.2f}", done, total, seconds);
    if (interactive && seconds > 1.0) {
      std::fprintf(stderr, "\rloading layers %lld/%lld", static_cast<long long>(done), static_cast<long long>(total));
      if (done == total) std::fprintf(stderr, "\n");
    }
  };
}

}  // namespace nibble::cli
