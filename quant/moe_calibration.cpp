#include "quant/moe_calibration.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/error.h"

namespace nibble::quant {
namespace {

bool dense_mlp_role(TensorRole role) {
  return role == TensorRole::Gate || role == TensorRole::Up || role == TensorRole::Down;
}

bool moe_role(TensorRole role) {
  switch (role) {
    case TensorRole::Router:
    case TensorRole::ExpertGate:
    case TensorRole::ExpertUp:
    case TensorRole::ExpertDown:
    case TensorRole::SharedGate:
    case TensorRole::SharedUp:
    case TensorRole::SharedDown:
    case TensorRole::SharedExpertGate:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool kept_unquantized(TensorRole role) {
  return role == TensorRole::Router || role == TensorRole::SharedExpertGate;
}

std::vector<std::string> compressible_modules(const ModelConfig& config, std::int64_t layer) {
  const Architecture& arch = architecture_of(config.architecture);
  const bool sparse = config.moe.sparse_layer(layer);
  std::vector<std::string> modules;
  for (const auto& name : arch.names) {
    const TensorRole role = name.role;
    // Fused tensors (Phi-3's qkv_proj) are compressed as the parts the loader splits them into.
    if (role == TensorRole::TokenEmbedding || role == TensorRole::LmHead || !fused_parts(role).empty() ||
        kept_unquantized(role)) {
      continue;
    }
    // A sparse layer has experts where a dense one has its MLP (Qwen's mlp_only_layers).
    if ((sparse && dense_mlp_role(role)) || (!sparse && moe_role(role))) continue;
    if (is_expert_role(role)) {
      for (std::int64_t e = 0; e < config.moe.num_experts; ++e) modules.push_back(arch.expert_module(role, layer, e));
      continue;
    }
    if ((role == TensorRole::SharedGate || role == TensorRole::SharedUp || role == TensorRole::SharedDown) &&
        config.moe.shared_expert_intermediate_size == 0) {
      continue;
    }
    std::string module = arch.module(role, layer);
    if (linear_module_shape(config, module)) modules.push_back(std::move(module));
  }
  return modules;
}

ExpertCalibration::ExpertCalibration(const ModelConfig& config, std::int64_t min_rows)
    : config_(config),
      arch_(architecture_of(config.architecture)),
      min_rows_(min_rows > 0 ? min_rows : config.hidden_size),
      rows_of_(static_cast<std::size_t>(config.moe.num_experts)) {}

ExpertCalibration::Use ExpertCalibration::classify(std::span<const std::string> modules, std::int64_t rows) {
  const auto ref = arch_.parse_module(modules.front());
  if (!ref) fail("internal error: '{}' is not a module of {}", modules.front(), config_.architecture);
  if (kept_unquantized(ref->role)) return Use::Skip;
  if (!is_expert_role(ref->role)) return Use::Calibrated;
  // The expert's gate/up see its routed rows first and decide; its down_proj sees
  // the same rows (through gate/up) and follows.
  auto& seen = rows_of_.at(static_cast<std::size_t>(ref->expert));
  if (!seen) seen = rows;
  return *seen >= min_rows_ ? Use::Calibrated : Use::WeightsOnly;
}

std::vector<std::string> ExpertCalibration::finish_layer(std::int64_t layer) {
  std::vector<std::string> unreached;
  if (!config_.moe.sparse_layer(layer)) return unreached;
  std::int64_t few = 0, none = 0, least = -1;
  for (std::size_t e = 0; e < rows_of_.size(); ++e) {
    auto& rows = rows_of_[e];
    if (!rows) {
      ++none;
      for (const TensorRole role : {TensorRole::ExpertGate, TensorRole::ExpertUp, TensorRole::ExpertDown}) {
        unreached.push_back(arch_.expert_module(role, layer, static_cast<std::int64_t>(e)));
      }
    } else if (*rows < min_rows_) {
      ++few;
    }
    const std::int64_t got = rows.value_or(0);
    least = least < 0 ? got : std::min(least, got);
    rows.reset();
  }
  experts_ += static_cast<std::int64_t>(rows_of_.size());
  fallbacks_ += few + none;
  // One line per layer; compress_model logs the total.
  spdlog::info("compress_moe_layer layer={} experts={} calibrated={} fallback={} no_rows={} few_rows={} min_rows={} "
               "least_rows={}",
               layer, rows_of_.size(), static_cast<std::int64_t>(rows_of_.size()) - few - none, few + none, none, few,
               min_rows_, least);
  return unreached;
}

}  // namespace nibble::quant
