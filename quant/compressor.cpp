#include "quant/compressor.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <cstring>

#include "common/error.h"
#include "common/half.h"
#include "engine/decoder_model.h"
#include "loader/architecture.h"
#include "quant/moe_calibration.h"

namespace nibble::quant {
namespace {

// One linear module of the layer being compressed, in float32 while it is worked on.
struct Module {
  std::string name;  // "model.layers.3.mlp.up_proj"
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<float> weights;  // [rows, cols]; replaced by the compressed weights
  std::vector<float> bias;     // empty when the module has none
};

std::vector<float> widen(const TensorView& tensor) {
  std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
  switch (tensor.dtype) {
    case DType::F32:
      std::memcpy(out.data(), tensor.bytes.data(), out.size() * sizeof(float));
      break;
    case DType::F16: {
      const auto halves = tensor.as<std::uint16_t>();
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = f16_to_f32(halves[i]);
      break;
    }
    case DType::BF16: {
      const auto halves = tensor.as<std::uint16_t>();
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(halves[i]);
      break;
    }
    default:
      fail("tensor '{}' is stored as {}; compression starts from an F32, F16 or BF16 model", tensor.name,
           dtype_name(tensor.dtype));
  }
  return out;
}

std::vector<float> load_floats(const WeightSource& weights, const std::string& name,
                               const std::vector<std::int64_t>& shape) {
  const TensorView tensor = weights.load(name);
  if (tensor.shape != shape) {
    TensorView want;
    want.shape = shape;
    fail("tensor '{}' has shape {} but the config implies {}", name, tensor.shape_string(), want.shape_string());
  }
  return widen(tensor);
}

Module load_module(const WeightSource& weights, std::string name, std::int64_t rows, std::int64_t cols,
                   bool with_bias) {
  if (weights.has_quantized(name)) {
    fail("module '{}' is already quantized; compress the unquantized (F32/F16/BF16) model instead", name);
  }
  Module module;
  module.weights = load_floats(weights, name + ".weight", {rows, cols});
  if (with_bias) module.bias = load_floats(weights, name + ".bias", {rows});
  module.name = std::move(name);
  module.rows = rows;
  module.cols = cols;
  return module;
}

class LayerCompressor {
 public:
  LayerCompressor(const ModelConfig& config, const CompressionOptions& options, kernels::Backend& backend,
                  ModuleWriter& writer, CompressionReport& report, const CalibrationObserver& observer)
      : config_(config), options_(options), backend_(backend), writer_(writer), report_(report), observer_(observer) {}

  // Compresses the modules that read `inputs` [rows, cols] (one Hessian serves them
  // all: they see the same activations) and replaces their weights with the result.
  void compress(std::span<Module*> modules, std::span<const float> inputs, std::int64_t rows) {
    if (observer_) {
      std::vector<std::string> names;
      for (const Module* module : modules) names.push_back(module->name);
      observer_(names, inputs.first(static_cast<std::size_t>(rows * modules.front()->cols)), rows);
    }
    std::optional<Hessian> hessian;
    std::vector<double> importance;
    const std::int64_t cols = modules.front()->cols;
    if (needs_hessian()) {
      hessian.emplace(cols);
      hessian->add(inputs, rows, backend_);
    } else if (options_.rtn_importance) {
      importance = column_second_moments(inputs.first(static_cast<std::size_t>(rows * cols)), rows, cols);
    }
    for (Module* module : modules) compress_one(*module, hessian ? &*hessian : nullptr, importance);
  }

  // `importance`: RTN's per-column weights (empty: none).
  void compress_one(Module& module, const Hessian* hessian, std::span<const double> importance = {}) {
    if (const auto type = writer_.block_type(module.name, module.rows, module.cols)) {
      compress_blocks(module, hessian, importance, *type);
      return;
    }
    const auto& w = module.weights;
    std::optional<SweepResult> result;
    std::vector<float> pruned;
    std::span<const float> to_quantize = w;
    switch (options_.prune) {
      case PruneMethod::None:
        break;
      case PruneMethod::Magnitude:
        pruned = prune_magnitude(w, module.rows, module.cols, options_.sparsity);
        to_quantize = pruned;
        break;
      case PruneMethod::Wanda:
        pruned = prune_wanda(w, module.rows, module.cols, hessian->column_norms(), options_.sparsity);
        to_quantize = pruned;
        break;
      case PruneMethod::SparseGpt: {
        // SparseGPT with GPTQ is the joint sweep; with RTN the mask is chosen first.
        SweepOptions sweep = sweep_options();
        sweep.sparsity = options_.sparsity;
        if (options_.quantize != QuantMethod::Gptq) sweep.quantize.reset();
        result = obs_sweep(w, module.rows, module.cols, *hessian, sweep);
        if (options_.quantize == QuantMethod::Rtn) {
          pruned = std::move(result->weights);
          to_quantize = pruned;
          result.reset();
        }
        break;
      }
    }
    if (!result) {
      if (options_.quantize == QuantMethod::Gptq) {
        SweepOptions sweep = sweep_options();
        sweep.preserve_zeros = options_.prune != PruneMethod::None;
        sweep.group_aware_order = options_.group_aware_order;
        result = obs_sweep(to_quantize, module.rows, module.cols, *hessian, sweep);
      } else if (options_.quantize == QuantMethod::Rtn) {
        result = round_to_nearest(to_quantize, module.rows, module.cols, options_.spec, importance);
      } else {
        result.emplace();
        result->weights = pruned;
      }
    }
    report_.proxy_loss += result->loss;
    ++report_.modules;
    spdlog::debug("compress_module module={} loss={:.6g} loss_per_token={:.6g}", module.name, result->loss,
                  report_.calibration_tokens > 0 ? result->loss / 2.0 / static_cast<double>(report_.calibration_tokens)
                                                 : 0.0);
    if (result->quantized) {
      QuantizedMatrix& matrix = *result->quantized;
      matrix.name = module.name;
      matrix.sparse_2_4 = options_.prune != PruneMethod::None && is_2_4();
      writer_.add_quantized(module.name, matrix);
    } else {
      writer_.add_pruned(module.name, result->weights, module.rows, module.cols);
    }
    module.weights = std::move(result->weights);
  }

 private:
  // GGUF blocks: GPTQ's sweep with the type's codec (H_jj weighting each block's
  // fit), or RTN weighted by `importance` (the inputs' mean x_j^2, from
  // calibration) when given.
  void compress_blocks(Module& module, const Hessian* hessian, std::span<const double> importance, GgmlType type) {
    if (options_.prune != PruneMethod::None) fail("pruning cannot be combined with GGUF block output");
    const BlockCodec codec(type);
    SweepResult result;
    if (options_.quantize == QuantMethod::Gptq) {
      SweepOptions sweep = sweep_options();
      sweep.quantize.reset();
      sweep.block_codec = &codec;
      sweep.static_groups = false;
      sweep.group_aware_order = options_.group_aware_order;
      result = obs_sweep(module.weights, module.rows, module.cols, *hessian, sweep);
    } else {
      std::vector<float> weights(importance.begin(), importance.end());
      result = round_to_nearest_blocks(module.weights, module.rows, module.cols, codec, weights);
    }
    report_.proxy_loss += result.loss;
    ++report_.modules;
    spdlog::debug("compress_module module={} type={} loss={:.6g}", module.name, ggml_type_name(type), result.loss);
    writer_.add_blocks(module.name, type, std::move(result.blocks), module.rows, module.cols);
    module.weights = std::move(result.weights);
  }

  bool needs_hessian() const {
    return options_.quantize == QuantMethod::Gptq || options_.prune == PruneMethod::Wanda ||
           options_.prune == PruneMethod::SparseGpt;
  }
  SweepOptions sweep_options() const {
    SweepOptions sweep;
    sweep.quantize = options_.spec;
    sweep.act_order = options_.act_order;
    sweep.static_groups = options_.static_groups;
    sweep.damp = options_.damp;
    sweep.block_size = options_.block_size;
    sweep.backend = &backend_;
    return sweep;
  }
  bool is_2_4() const {
    return options_.sparsity.kind == SparsitySpec::Kind::NofM && options_.sparsity.n == 2 && options_.sparsity.m == 4;
  }

  const ModelConfig& config_;
  const CompressionOptions& options_;
  kernels::Backend& backend_;
  ModuleWriter& writer_;
  CompressionReport& report_;
  const CalibrationObserver& observer_;
};

// What an expert with too few calibration rows gets instead: the same format from
// its weights alone (GPTQ -> RTN; SparseGPT, Wanda -> magnitude).
CompressionOptions weights_only(const CompressionOptions& options) {
  CompressionOptions out = options;
  if (out.quantize == QuantMethod::Gptq) out.quantize = QuantMethod::Rtn;
  if (out.prune != PruneMethod::None) out.prune = PruneMethod::Magnitude;
  out.rtn_importance = false;
  return out;
}

// The shape of linear module `module` as the config implies it.
std::array<std::int64_t, 2> module_shape(const ModelConfig& config, const std::string& module) {
  const auto shape = linear_module_shape(config, module);
  if (!shape) fail("internal error: '{}' is not a linear module of {}", module, config.architecture);
  return *shape;
}

// Methods that need no activations: every module of every layer, from its weights alone.
void compress_weights_only(const ModelSource& source, LayerCompressor& compressor, const Progress& progress) {
  const auto& config = source.config;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    for (const auto& module : compressible_modules(config, layer)) {
      const auto shape = module_shape(config, module);
      Module loaded = load_module(*source.weights, module, shape[0], shape[1], false);
      compressor.compress_one(loaded, nullptr);
    }
    if (progress) progress("compressing layers", layer + 1, config.num_layers);
  }
}

// The calibration runs as one engine batch, each run its own sequence from
// position 0 with its own block table in a one-layer KV cache.
struct CalibrationBatch {
  std::vector<engine::BatchEntry> entries;
  std::vector<std::vector<std::int32_t>> tables;
  std::int32_t blocks = 0;
  std::int64_t tokens = 0;
  static constexpr std::int32_t kBlockSize = 16;

  CalibrationBatch(const ModelConfig& config, const CalibrationRuns& calibration) {
    for (const auto& run : calibration) {
      if (run.empty()) continue;
      for (const auto id : run) {
        if (id < 0 || id >= config.vocab_size) {
          fail("calibration token id {} is outside the model's vocabulary of {}", id, config.vocab_size);
        }
      }
      auto& table = tables.emplace_back();
      for (std::size_t i = 0; i < (run.size() + kBlockSize - 1) / kBlockSize; ++i) table.push_back(blocks++);
      tokens += static_cast<std::int64_t>(run.size());
    }
    if (tokens == 0) fail("the calibration set holds no tokens");
    // After the tables: entries point into them.
    std::size_t next_table = 0;
    for (const auto& run : calibration) {
      if (!run.empty()) entries.push_back({run, 0, tables[next_table++], engine::Logits::LastRow});
    }
  }
};

engine::DecoderModel calibration_model(const ModelSource& source, kernels::Backend& backend) {
  if (!backend.host_visible_memory()) fail("compression runs on the CPU backend");
  engine::ModelOptions model_options;
  model_options.sparse = kernels::SparseChoice::Dense;  // the kernels the compressed weights will run on
  return engine::DecoderModel(source, backend, model_options);
}

// Runs the serving engine's own model over the calibration runs one layer at a
// time. Each group of modules that reads one input (q/k/v, o, gate/up, down) is
// compressed inside the hook that sees that input, before the modules run, and
// the model continues on the compressed weights: so o is calibrated through the
// compressed q/k/v, and the next layer through the whole compressed layer.
// A MoE layer's experts are compressed the same way, each in the hook that sees
// the rows its router sent it; `fallback` compresses the experts with too few rows
// (ExpertCalibration) from their weights alone.
void compress_with_calibration(const ModelSource& source, const CompressionOptions& options,
                               const CalibrationRuns& calibration, kernels::Backend& backend,
                               LayerCompressor& compressor, LayerCompressor& fallback, CompressionReport& report,
                               const Progress& progress) {
  const auto& config = source.config;
  const CalibrationBatch batch(config, calibration);
  report.calibration_tokens += batch.tokens;
  spdlog::info("compress_start layers={} calibration_tokens={} runs={}", config.num_layers, report.calibration_tokens,
               batch.entries.size());

  engine::DecoderModel model = calibration_model(source, backend);
  engine::PagedKvCache cache = model.one_layer_cache(batch.blocks, CalibrationBatch::kBlockSize);
  // The current layer's compressed weights, which the model runs until the layer ends.
  std::vector<std::vector<float>> compressed;
  ExpertCalibration experts(config, options.expert_min_rows);
  model.set_linear_input_hook(
      [&](std::span<const std::string> modules, const float* x, std::int64_t rows, std::int64_t cols) {
        const auto use = experts.classify(modules, rows);
        if (use == ExpertCalibration::Use::Skip) return;  // a router runs as it is
        std::vector<Module> loaded;
        loaded.reserve(modules.size());
        for (const auto& name : modules) {
          const auto shape = module_shape(config, name);
          loaded.push_back(load_module(*source.weights, name, shape[0], shape[1], false));
        }
        std::vector<Module*> group;
        for (auto& module : loaded) group.push_back(&module);
        // A fallback expert is replaced too, so the rows it did get see the weights
        // the engine will run, and the next layer's inputs stay exact.
        (use == ExpertCalibration::Use::Calibrated ? compressor : fallback)
            .compress(group, std::span(x, static_cast<std::size_t>(rows * cols)), rows);
        for (auto& module : loaded) {
          compressed.push_back(std::move(module.weights));
          model.replace_linear(module.name, compressed.back().data());
        }
      });
  model.begin_layers(batch.entries);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    model.run_layer(layer, cache);
    // Experts no calibration row reached never saw the hook.
    for (const auto& name : experts.finish_layer(layer)) {
      const auto shape = module_shape(config, name);
      Module loaded = load_module(*source.weights, name, shape[0], shape[1], false);
      fallback.compress_one(loaded, nullptr);
    }
    compressed.clear();  // the layer never runs again
    if (progress) progress("compressing layers", layer + 1, config.num_layers);
    spdlog::debug("compress_layer layer={} modules={} seconds={:.2f}", layer, report.modules,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  report.experts = experts.experts();
  report.expert_fallbacks = experts.fallbacks();
  if (report.experts > 0) {
    spdlog::info("compress_moe experts={} calibrated={} fallback={} min_rows={}", report.experts,
                 report.experts - report.expert_fallbacks, report.expert_fallbacks, experts.min_rows());
  }
}

// The token embedding and lm_head, by RTN with the layers' spec at
// options.embedding_bits (no activation
// weighting: the embedding's input is one-hot). A tied model stores one tensor,
// quantized once and read by both the lookup and the lm_head; a tied model whose
// folder also stores lm_head.weight gets both quantized (the loader prefers a
// stored lm_head).
void compress_embeddings(const ModelSource& source, const CompressionOptions& options, ModuleWriter& writer,
                         CompressionReport& report) {
  const auto& config = source.config;
  const Architecture& arch = architecture_of(config.architecture);
  for (const TensorRole role : {TensorRole::TokenEmbedding, TensorRole::LmHead}) {
    const std::string module = arch.module(role);
    if (!source.weights->contains(module + ".weight")) continue;  // a tied lm_head
    Module loaded = load_module(*source.weights, module, config.vocab_size, config.hidden_size, false);
    QuantSpec spec = options.spec;
    if (options.embedding_bits != 0) spec.bits = options.embedding_bits;
    SweepResult result = round_to_nearest(loaded.weights, loaded.rows, loaded.cols, spec);
    result.quantized->name = module;
    writer.add_quantized(module, *result.quantized);
    ++report.modules;
    spdlog::info("compress_embedding module={} rows={} cols={} loss={:.6g}", module, loaded.rows, loaded.cols,
                 result.loss);
  }
}

}  // namespace

std::vector<float> load_module_weights(const ModelSource& source, const std::string& module) {
  const auto shape = module_shape(source.config, module);
  return load_module(*source.weights, module, shape[0], shape[1], false).weights;
}

void observe_calibration(const ModelSource& source, const CalibrationRuns& calibration, kernels::Backend& backend,
                         const CalibrationObserver& observer, const Progress& progress) {
  const auto& config = source.config;
  if (config.moe.enabled()) fail("observing calibration inputs of a mixture-of-experts model is not supported");
  const CalibrationBatch batch(config, calibration);
  engine::DecoderModel model = calibration_model(source, backend);
  engine::PagedKvCache cache = model.one_layer_cache(batch.blocks, CalibrationBatch::kBlockSize);
  model.set_linear_input_hook(
      [&](std::span<const std::string> modules, const float* x, std::int64_t rows, std::int64_t cols) {
        observer(modules, std::span(x, static_cast<std::size_t>(rows * cols)), rows);
      });
  model.begin_layers(batch.entries);
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    model.run_layer(layer, cache);
    if (progress) progress("measuring layers", layer + 1, config.num_layers);
  }
}

bool CompressionOptions::needs_calibration() const {
  return quantize == QuantMethod::Gptq || prune == PruneMethod::Wanda || prune == PruneMethod::SparseGpt ||
         (quantize == QuantMethod::Rtn && rtn_importance);
}

CompressionReport compress_model(const ModelSource& source, const CompressionOptions& options,
                                 const CalibrationRuns& calibration, kernels::Backend& backend,
                                 ModuleWriter& writer, const Progress& progress,
                                 const CalibrationObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const auto& config = source.config;
  if (source.format != ModelFormat::HuggingFace && !writer.reads_gguf_source()) {
    fail("compression reads a Hugging Face folder (safetensors); convert the model first");
  }
  if (source.quantization) {
    fail("{} is already quantized ({}); compress the unquantized model instead", source.path.string(),
         quant_method_name(source.quantization->method));
  }
  if (config.moe.enabled() && !writer.writes_experts()) {
    fail("this output format cannot hold a mixture-of-experts model's experts ({}); write a Hugging Face folder",
         config.architecture);
  }
  // kv_b_proj runs as per-head matrices built at load, not as a linear layer a hook sees.
  if (config.mla) fail("compressing latent-attention models ({}) is not supported yet", config.architecture);
  if (options.quantize == QuantMethod::None && options.prune == PruneMethod::None) {
    fail("nothing to do: choose a quantization or a pruning method");
  }
  if (options.prune != PruneMethod::None && !options.sparsity.active()) fail("pruning needs a sparsity");
  CompressionReport report;
  LayerCompressor compressor(config, options, backend, writer, report, observer);
  const CompressionOptions fallback_options = weights_only(options);
  const CalibrationObserver no_observer;  // the fallback compresses from weights, not inputs
  LayerCompressor fallback(config, fallback_options, backend, writer, report, no_observer);
  if (options.needs_calibration()) {
    if (calibration.empty()) fail("this method needs calibration data (--calib)");
    compress_with_calibration(source, options, calibration, backend, compressor, fallback, report, progress);
  } else {
    spdlog::info("compress_start layers={} calibration_tokens=0 runs=0", config.num_layers);
    compress_weights_only(source, compressor, progress);
  }
  if (options.quantize_embeddings) {
    if (options.quantize == QuantMethod::None) fail("quantizing the embeddings needs a quantization method");
    compress_embeddings(source, options, writer, report);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace nibble::quant
