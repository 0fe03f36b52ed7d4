#pragma once
// The layer-wise compressor behind `nibble quantize` and `nibble prune`. It runs
// the serving engine's own model (engine/decoder_model.h) over the calibration
// runs one layer at a time and compresses each group of modules in the hook that
// sees its input, before the modules use it:
//   inputs of q/k/v -> compress q, k, v -> inputs of o (through the compressed
//   q, k, v) -> compress o -> inputs of gate/up -> compress them -> inputs of
//   down -> compress down -> the next layer's inputs, through the compressed layer
// ("true sequential", as GPTQ's reference does), so every layer is calibrated on
// what the already-compressed layers before it produce. Each module's Hessian is
// accumulated from those inputs; the algorithms are in obs_sweep.h.
#include <cstdint>
#include <functional>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "loader/model_source.h"
#include "quant/checkpoint_writer.h"
#include "quant/obs_sweep.h"
#include "quant/progress.h"

namespace nibble::quant {

enum class QuantMethod : std::uint8_t { None, Rtn, Gptq };
enum class PruneMethod : std::uint8_t { None, Magnitude, Wanda, SparseGpt };

struct CompressionOptions {
  QuantMethod quantize = QuantMethod::None;
  QuantSpec spec;  // bits, group size, sym (when quantizing)
  bool act_order = false;
  bool static_groups = false;
  bool group_aware_order = false;  // GPTQ only: SweepOptions::group_aware_order
  double damp = 0.01;
  std::int64_t block_size = 128;
  PruneMethod prune = PruneMethod::None;
  SparsitySpec sparsity;
  // RTN: run the calibration pass and weight each group's scale search
  // (spec.scales == Search), or each GGUF block's fit, by its input columns'
  // activation second moments mean(x_j^2) (llama.cpp's imatrix information);
  // GPTQ always weights by H_jj.
  bool rtn_importance = false;
  // Also quantize the token embedding and the lm_head (tied: the one shared
  // tensor; untied: both) by RTN with `spec`, once the layers are done. The
  // embedding lookup dequantizes a row; the lm_head runs the quantized GEMM.
  bool quantize_embeddings = false;
  int embedding_bits = 0;  // their bits when not spec.bits (0: spec.bits); the writer's settings must agree
  // Mixture of experts: an expert routed fewer calibration rows than this is
  // compressed from its weights alone (GPTQ -> RTN, SparseGPT/Wanda -> magnitude);
  // 0: the hidden size, the fewest rows that can span the expert's input
  // (quant/moe_calibration.h says why).
  std::int64_t expert_min_rows = 0;

  // Whether the method needs activations (GPTQ, Wanda, SparseGPT) or only weights.
  bool needs_calibration() const;
};

// Sees the calibration inputs each group of modules is compressed on (the modules
// that read one input: q/k/v, o, gate/up, down) as [rows, cols] floats: tests and tools.
using CalibrationObserver =
    std::function<void(std::span<const std::string> modules, std::span<const float> inputs, std::int64_t rows)>;

// The calibration runs: token ids, each run a separate sequence starting at position 0.
using CalibrationRuns = std::vector<std::vector<std::int32_t>>;

struct CompressionReport {
  std::int64_t modules = 0;
  std::int64_t calibration_tokens = 0;
  double seconds = 0;
  double proxy_loss = 0;  // sum over modules of the sweep's loss (0 for RTN/magnitude/Wanda)
  // Mixture of experts, with calibration: routed experts over all sparse layers,
  // and how many of them were compressed from their weights alone (too few rows).
  std::int64_t experts = 0;
  std::int64_t expert_fallbacks = 0;
};

// Compresses every linear module of every decoder layer of `source` (and the
// embedding and lm_head with options.quantize_embeddings; otherwise they are left
// to the writer) and adds it to `writer`; the caller finish()es it. Modules the
// writer wants in GGUF blocks (writer.block_type) are encoded with that type's
// BlockCodec: GPTQ's sweep or round-to-nearest.
// Mixture-of-experts layers: each routed expert is compressed on the calibration
// rows the model's router sends it (quant/moe_calibration.h); routers stay float.
// Throws nibble::Error for unsupported models (not Llama-family), missing
// calibration when the method needs it, or bad options.
CompressionReport compress_model(const ModelSource& source, const CompressionOptions& options,
                                 const CalibrationRuns& calibration, kernels::Backend& backend,
                                 ModuleWriter& writer, const Progress& progress = {},
                                 const CalibrationObserver& observer = {});

// A decoder layer's linear module ("model.layers.3.mlp.up_proj") as float32
// [rows, cols], rows and cols as the config implies.
std::vector<float> load_module_weights(const ModelSource& source, const std::string& module);

// The float model (nothing compressed) over the calibration runs, layer by layer:
// `observer` sees each group of modules' inputs, as compress_model's observer does
// but without compression upstream. Dense models only.
void observe_calibration(const ModelSource& source, const CalibrationRuns& calibration, kernels::Backend& backend,
                         const CalibrationObserver& observer, const Progress& progress = {});

}  // namespace nibble::quant
