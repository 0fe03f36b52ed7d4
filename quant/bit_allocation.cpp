#include "quant/bit_allocation.h"

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "loader/architecture.h"
#include "quant/block_codec.h"
#include "quant/hessian.h"
#include "quant/obs_sweep.h"

namespace nibble::quant {

std::vector<GgmlType> candidate_types(std::int64_t cols) {
  if (cols % 256 == 0) return {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0};
  if (cols % 32 == 0) return {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0};
  return {};
}

double type_bits_per_weight(GgmlType type) { return BlockCodec(type).bits_per_weight(); }

Allocation allocate_bits(std::span<const ModuleCosts> modules, double target_bpw) {
  struct State {
    const ModuleCosts* costs;
    std::vector<double> bits;  // per option, the module's total
    std::size_t at = 0;
  };
  std::vector<State> states;
  double weights = 0, bits = 0;
  for (const ModuleCosts& m : modules) {
    if (m.options.empty()) fail("module '{}' has no candidate GGUF type ({} columns)", m.module, m.cols);
    State s{&m, {}, 0};
    for (const TypeCost& option : m.options) {
      s.bits.push_back(type_bits_per_weight(option.type) * static_cast<double>(m.rows * m.cols));
    }
    weights += static_cast<double>(m.rows * m.cols);
    bits += s.bits.front();
    states.push_back(std::move(s));
  }
  if (weights == 0) fail("no modules to allocate bits to");
  const double budget = target_bpw * weights;
  if (bits > budget * (1 + 1e-12)) {
    fail("--target-bpw {} is below the {:.4f} bits per weight of the cheapest types", target_bpw, bits / weights);
  }
  // Greedy on error saved per extra bit. Each step may jump a module several types
  // up (the error ladder need not be convex), and the budget only ever admits
  // upgrades that fit, so the total never exceeds it.
  for (;;) {
    State* best = nullptr;
    std::size_t best_to = 0;
    double best_ratio = 0;
    for (State& s : states) {
      const auto& options = s.costs->options;
      for (std::size_t to = s.at + 1; to < options.size(); ++to) {
        const double extra = s.bits[to] - s.bits[s.at];
        const double saved = options[s.at].error - options[to].error;
        if (!(extra > 0) || bits + extra > budget || !(saved > 0)) continue;
        if (const double ratio = saved / extra; ratio > best_ratio) best = &s, best_to = to, best_ratio = ratio;
      }
    }
    if (best == nullptr) break;
    bits += best->bits[best_to] - best->bits[best->at];
    best->at = best_to;
  }
  Allocation out;
  for (const State& s : states) {
    out.types[s.costs->module] = s.costs->options[s.at].type;
    out.error += s.costs->options[s.at].error;
  }
  out.bits_per_weight = bits / weights;
  return out;
}

ModuleCosts block_costs(const std::string& module, std::span<const float> weights, std::int64_t rows,
                        std::int64_t cols, std::span<const float> importance, std::int64_t sample_rows) {
  if (sample_rows < 1) fail("sample_rows must be positive");
  // Evenly spaced rows: the error of the rest is estimated from them.
  const std::int64_t stride = (rows + sample_rows - 1) / sample_rows;
  std::vector<float> sample;
  std::int64_t picked = 0;
  for (std::int64_t r = 0; r < rows; r += stride, ++picked) {
    sample.insert(sample.end(), weights.begin() + r * cols, weights.begin() + (r + 1) * cols);
  }
  ModuleCosts costs{module, rows, cols, {}};
  for (const GgmlType type : candidate_types(cols)) {
    const SweepResult r = round_to_nearest_blocks(sample, picked, cols, BlockCodec(type), importance);
    costs.options.push_back({type, r.loss * static_cast<double>(rows) / static_cast<double>(picked)});
  }
  return costs;
}

std::vector<ModuleCosts> measure_block_costs(const ModelSource& source, const CalibrationRuns& calibration,
                                             kernels::Backend& backend, std::int64_t sample_rows,
                                             const Progress& progress) {
  std::vector<ModuleCosts> out;
  const CalibrationObserver observer = [&](std::span<const std::string> modules, std::span<const float> inputs,
                                           std::int64_t rows) {
    const auto cols = static_cast<std::int64_t>(inputs.size()) / rows;
    const std::vector<double> moments = column_second_moments(inputs, rows, cols);
    const std::vector<float> importance(moments.begin(), moments.end());
    for (const std::string& name : modules) {
      const std::vector<float> w = load_module_weights(source, name);
      out.push_back(block_costs(name, w, static_cast<std::int64_t>(w.size()) / cols, cols, importance, sample_rows));
    }
  };
  observe_calibration(source, calibration, backend, observer, progress);
  return out;
}

}  // namespace nibble::quant
