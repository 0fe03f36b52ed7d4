#include "cli/progress_bar.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

namespace nibble::cli {
namespace {

std::string clock_text(double seconds) {
  const auto total = static_cast<long long>(seconds + 0.5);
  char text[32];
  std::snprintf(text, sizeof text, "%lld:%02lld", total / 60, total % 60);
  return text;
}

struct BarState {
  bool interactive = false;
  std::string step;
  std::chrono::steady_clock::time_point step_start;
  std::chrono::steady_clock::time_point last_line;
};

}  // namespace

quant::Progress progress_bar() {
  auto state = std::make_shared<BarState>();
  state->interactive = ::isatty(STDERR_FILENO) != 0;
  return [state](std::string_view step, std::int64_t done, std::int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (step != state->step) {
      state->step = std::string(step);
      state->step_start = now;
      state->last_line = now;
    }
    const double elapsed = std::chrono::duration<double>(now - state->step_start).count();
    const double share = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total - done) : 0.0;
    const bool finished = done >= total;
    if (state->interactive) {
      constexpr int width = 30;
      const int filled = static_cast<int>(share * width);
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '-');
      std::fprintf(stderr, "\r%s [%s] %lld/%lld %s %s", state->step.c_str(), bar.c_str(),
                   static_cast<long long>(done), static_cast<long long>(total),
                   finished ? "took" : "ETA", clock_text(finished ? elapsed : eta).c_str());
      if (finished) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    } else if (finished || std::chrono::duration<double>(now - state->last_line).count() >= 5.0) {
      state->last_line = now;
      std::fprintf(stderr, "%s %lld/%lld (%.0f%%) %s %s\n", state->step.c_str(), static_cast<long long>(done),
                   static_cast<long long>(total), share * 100.0, finished ? "took" : "ETA",
                   clock_text(finished ? elapsed : eta).c_str());
    }
  };
}

}  // namespace nibble::cli
