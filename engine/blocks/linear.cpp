#include "engine/blocks/linear.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace nibble::engine {

void Linear::run(kernels::Backend& backend, const float* x, std::int64_t rows, float* y,
                 const LinearInputHook& hook) const {
  if (hook) hook(std::span(&module, 1), x, rows, cols());
  backend.linear(x, rows, *weights, bias.empty() ? nullptr : bias.data<const float>(), y);
}

kernels::GroupedLinearJob Linear::job(const float* x, std::int64_t rows, float* y) const {
  return {weights.get(), x, rows, bias.empty() ? nullptr : bias.data<const float>(), y};
}

LinearGroup::LinearGroup(std::vector<std::string> modules, std::vector<std::int64_t> widths, std::vector<Linear> linears)
    : modules_(std::move(modules)), widths_(std::move(widths)), linears_(std::move(linears)) {
  if (modules_.size() != widths_.size() || (linears_.size() != 1 && linears_.size() != modules_.size())) {
    fail("internal error: a linear group of {} modules with {} matrices", modules_.size(), linears_.size());
  }
}

std::int64_t LinearGroup::total_width() const { return std::accumulate(widths_.begin(), widths_.end(), std::int64_t{0}); }

Linear* LinearGroup::find(const std::string& module) {
  const auto at = std::find(modules_.begin(), modules_.end(), module);
  if (at == modules_.end()) return nullptr;
  if (stacked()) fail("'{}' runs stacked with the other modules of its input; it has no matrix of its own", module);
  return &linears_[static_cast<std::size_t>(at - modules_.begin())];
}

void LinearGroup::run(kernels::Backend& backend, const float* x, std::int64_t rows, std::span<float* const> outputs,
                      float* scratch, const LinearInputHook& hook) const {
  // One call for every module reading x, before any of them runs.
  if (hook) hook(modules_, x, rows, linears_.front().cols());
  if (!stacked()) {
    for (std::size_t i = 0; i < linears_.size(); ++i) linears_[i].run(backend, x, rows, outputs[i], {});
    return;
  }
  linears_.front().run(backend, x, rows, scratch, {});
  split_outputs(backend, rows, outputs, scratch);
}

void LinearGroup::append_jobs(const float* x, std::int64_t rows, std::span<float* const> outputs, float* scratch,
                              std::vector<kernels::GroupedLinearJob>& jobs) const {
  if (stacked()) {
    jobs.push_back(linears_.front().job(x, rows, scratch));
    return;
  }
  for (std::size_t i = 0; i < linears_.size(); ++i) jobs.push_back(linears_[i].job(x, rows, outputs[i]));
}

void LinearGroup::split_outputs(kernels::Backend& backend, std::int64_t rows, std::span<float* const> outputs,
                                const float* scratch) const {
  if (!stacked()) return;
  const std::int64_t width = total_width();
  std::int64_t first = 0;
  for (std::size_t i = 0; i < widths_.size(); ++i) {
    backend.slice_columns(scratch, rows, width, first, widths_[i], outputs[i]);
    first += widths_[i];
  }
}

}  // namespace nibble::engine
