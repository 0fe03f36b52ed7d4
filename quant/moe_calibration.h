#pragma once
// Which modules of a decoder layer the compressor compresses, and, in a
// mixture-of-experts layer, which experts are compressed from their calibration
// rows and which fall back to a weights-only method (issue 18).
//
// The compressor runs the serving model's own MoeBlock over the calibration rows,
// so the router (the same MoeRouter the engine uses) decides which rows reach each
// expert, and the linear-input hook sees exactly an expert's rows when its gate/up
// run and the activation of its (already compressed) gate/up on those rows when its
// down_proj runs. This class only keeps the books:
//   - the router (`gate`) and Qwen2-MoE's `shared_expert_gate` are never compressed:
//     they are tiny ([experts, hidden], [1, hidden]) and an error in them changes
//     which experts run, not just how well;
//   - an expert whose rows are fewer than its input width cannot span its input
//     space: its Hessian is rank-deficient, so GPTQ/SparseGPT would move the
//     rounding error into directions no calibration row of that expert covers, but
//     later tokens routed to it may. It is compressed from its weights alone (RTN,
//     magnitude pruning), as is an expert no calibration row reached. The rule
//     counts the gate/up input (hidden_size); a down_proj wider than that (Mixtral:
//     14336 vs 4096) may still get fewer rows than its width, as a dense layer's
//     may from a small calibration set. GPTQModel's rule is relative instead
//     (meta.fallback: RTN below 0.5% of the calibration tokens);
//   - the shared expert and a dense layer's MLP are ordinary modules (every row).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loader/architecture.h"
#include "loader/model_config.h"

namespace nibble::quant {

// The linear modules of layer `layer` to compress, in the order the layer runs
// them: attention, then the dense MLP or (a sparse layer) every expert and the
// shared expert. Fused tensors appear as their parts; routers are left out.
std::vector<std::string> compressible_modules(const ModelConfig& config, std::int64_t layer);

// Modules that stay in the source's float type in a compressed MoE model.
bool kept_unquantized(TensorRole role);

class ExpertCalibration {
 public:
  // `min_rows`: the fewest routed rows an expert is calibrated on; 0: the expert's
  // input width (config.hidden_size), the least that can give a full-rank Hessian.
  ExpertCalibration(const ModelConfig& config, std::int64_t min_rows);

  enum class Use : std::uint8_t {
    Calibrated,   // compress from these inputs (not an expert, or an expert with enough rows)
    WeightsOnly,  // an expert with too few rows: compress from its weights alone
    Skip,         // a router: leave it as it is
  };
  // What to do with the modules of the current layer that read one input of `rows`
  // rows (the hook's group: an expert's gate/up, then its down_proj).
  Use classify(std::span<const std::string> modules, std::int64_t rows);

  // Ends layer `layer`: logs how many of its experts fell back, and returns the
  // modules of the experts the calibration never reached (to compress from their
  // weights alone). Empty for a dense layer.
  std::vector<std::string> finish_layer(std::int64_t layer);

  std::int64_t experts() const { return experts_; }
  // Experts compressed from their weights alone: fewer than min_rows() rows, or none.
  std::int64_t fallbacks() const { return fallbacks_; }
  std::int64_t min_rows() const { return min_rows_; }

 private:
  const ModelConfig& config_;
  const Architecture& arch_;
  std::int64_t min_rows_;
  // The current layer's experts: rows routed to each (nullopt: none yet).
  std::vector<std::optional<std::int64_t>> rows_of_;
  std::int64_t experts_ = 0;
  std::int64_t fallbacks_ = 0;
};

}  // namespace nibble::quant
