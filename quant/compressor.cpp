#include "quant/compressor.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <cstring>

#include "common/error.h"
#include "common/half.h"
#include "engine/rope.h"

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

// The calibration activations of one layer: every run's tokens as rows, runs one after another.
struct Activations {
  std::int64_t rows = 0;
  std::vector<std::int32_t> positions;  // each run restarts at 0
  std::vector<std::int64_t> run_starts;
  std::vector<std::int64_t> run_lengths;
  std::vector<float> residual;  // [rows, hidden]: the stream entering the next layer
};

class LayerCompressor {
 public:
  LayerCompressor(const ModelConfig& config, const CompressionOptions& options, kernels::Backend& backend,
                  CheckpointWriter& writer, CompressionReport& report, const CalibrationObserver& observer)
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
    if (options_.needs_calibration()) {
      hessian.emplace(modules.front()->cols);
      hessian->add(inputs, rows, backend_);
    }
    for (Module* module : modules) compress_one(*module, hessian ? &*hessian : nullptr);
  }

  void compress_one(Module& module, const Hessian* hessian) {
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
        result = round_to_nearest(to_quantize, module.rows, module.cols, options_.spec);
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
  CheckpointWriter& writer_;
  CompressionReport& report_;
  const CalibrationObserver& observer_;
};

// Runs one decoder layer over the calibration activations, compressing its modules
// stage by stage as their inputs become known.
class LayerRunner {
 public:
  LayerRunner(const ModelConfig& config, kernels::Backend& backend, std::vector<float> inv_freq)
      : config_(config), backend_(backend), inv_freq_(std::move(inv_freq)) {}

  void run(std::int64_t layer, const WeightSource& weights, Activations& acts, LayerCompressor* compressor) {
    const auto d = config_.hidden_size, q_dim = config_.q_dim(), kv_dim = config_.kv_dim(),
               ffn = config_.intermediate_size, rows = acts.rows;
    const auto eps = static_cast<float>(config_.rms_norm_eps);
    const auto name = [layer](const char* suffix) { return fmt::format("model.layers.{}.{}", layer, suffix); };
    const bool bias = config_.attention_bias;
    Module q = load_module(weights, name("self_attn.q_proj"), q_dim, d, bias);
    Module k = load_module(weights, name("self_attn.k_proj"), kv_dim, d, bias);
    Module v = load_module(weights, name("self_attn.v_proj"), kv_dim, d, bias);
    Module o = load_module(weights, name("self_attn.o_proj"), d, q_dim, false);
    Module gate = load_module(weights, name("mlp.gate_proj"), ffn, d, false);
    Module up = load_module(weights, name("mlp.up_proj"), ffn, d, false);
    Module down = load_module(weights, name("mlp.down_proj"), d, ffn, false);
    const auto attn_norm = load_floats(weights, name("input_layernorm.weight"), {d});
    const auto ffn_norm = load_floats(weights, name("post_attention_layernorm.weight"), {d});

    if (acts.rows == 0) {  // weights-only methods: nothing to run
      for (Module* module : {&q, &k, &v, &o, &gate, &up, &down}) compressor->compress_one(*module, nullptr);
      return;
    }
    std::vector<float> normed(static_cast<std::size_t>(rows * d));
    backend_.rms_norm(acts.residual.data(), rows, d, attn_norm.data(), eps, normed.data());
    if (compressor) {
      std::array<Module*, 3> qkv{&q, &k, &v};
      compressor->compress(qkv, normed, rows);
    }
    std::vector<float> qs(static_cast<std::size_t>(rows * q_dim)), ks(static_cast<std::size_t>(rows * kv_dim)),
        vs(static_cast<std::size_t>(rows * kv_dim));
    linear(normed, rows, q, qs);
    linear(normed, rows, k, ks);
    linear(normed, rows, v, vs);
    normed = {};
    backend_.rope(qs.data(), rows, config_.num_heads, config_.head_dim, acts.positions, inv_freq_);
    backend_.rope(ks.data(), rows, config_.num_kv_heads, config_.head_dim, acts.positions, inv_freq_);
    std::vector<float> attn(static_cast<std::size_t>(rows * q_dim));
    const kernels::AttentionShape shape{config_.num_heads, config_.num_kv_heads, config_.head_dim,
                                        config_.sliding_window};
    for (std::size_t r = 0; r < acts.run_starts.size(); ++r) {
      const auto start = acts.run_starts[r], length = acts.run_lengths[r];
      const auto view = kernels::KvLayerView::floats(ks.data() + start * kv_dim, vs.data() + start * kv_dim, kv_dim);
      backend_.attention(qs.data() + start * q_dim, length,
                         std::span(acts.positions).subspan(static_cast<std::size_t>(start),
                                                          static_cast<std::size_t>(length)),
                         view, shape, attn.data() + start * q_dim);
    }
    qs = {};
    ks = {};
    vs = {};
    if (compressor) {
      std::array<Module*, 1> out{&o};
      compressor->compress(out, attn, rows);
    }
    std::vector<float> delta(static_cast<std::size_t>(rows * d));
    linear(attn, rows, o, delta);
    attn = {};
    backend_.add(delta.data(), rows * d, acts.residual.data());

    normed.resize(static_cast<std::size_t>(rows * d));
    backend_.rms_norm(acts.residual.data(), rows, d, ffn_norm.data(), eps, normed.data());
    if (compressor) {
      std::array<Module*, 2> gate_up{&gate, &up};
      compressor->compress(gate_up, normed, rows);
    }
    std::vector<float> gates(static_cast<std::size_t>(rows * ffn)), ups(static_cast<std::size_t>(rows * ffn));
    linear(normed, rows, gate, gates);
    linear(normed, rows, up, ups);
    normed = {};
    backend_.swiglu(gates.data(), ups.data(), rows * ffn, gates.data());
    ups = {};
    if (compressor) {
      std::array<Module*, 1> down_only{&down};
      compressor->compress(down_only, gates, rows);
    }
    linear(gates, rows, down, delta);
    backend_.add(delta.data(), rows * d, acts.residual.data());
  }

 private:
  void linear(std::span<const float> x, std::int64_t rows, const Module& module, std::span<float> y) {
    const kernels::Matrix w{DType::F32, module.rows, module.cols, module.weights.data()};
    backend_.linear(x.data(), rows, w, module.bias.empty() ? nullptr : module.bias.data(), y.data());
  }

  const ModelConfig& config_;
  kernels::Backend& backend_;
  std::vector<float> inv_freq_;
};

Activations embed_calibration(const ModelSource& source, const CalibrationRuns& calibration,
                              kernels::Backend& backend) {
  const auto& config = source.config;
  Activations acts;
  std::vector<std::int32_t> ids;
  for (const auto& run : calibration) {
    if (run.empty()) continue;
    acts.run_starts.push_back(acts.rows);
    acts.run_lengths.push_back(static_cast<std::int64_t>(run.size()));
    acts.rows += static_cast<std::int64_t>(run.size());
    for (std::size_t i = 0; i < run.size(); ++i) {
      if (run[i] < 0 || run[i] >= config.vocab_size) {
        fail("calibration token id {} is outside the model's vocabulary of {}", run[i], config.vocab_size);
      }
      ids.push_back(run[i]);
      acts.positions.push_back(static_cast<std::int32_t>(i));
    }
  }
  if (acts.rows == 0) fail("the calibration set holds no tokens");
  const TensorView table = source.weights->load("model.embed_tokens.weight");
  if (table.shape != std::vector<std::int64_t>{config.vocab_size, config.hidden_size}) {
    fail("model.embed_tokens.weight has shape {}, expected [{}, {}]", table.shape_string(), config.vocab_size,
         config.hidden_size);
  }
  acts.residual.resize(static_cast<std::size_t>(acts.rows * config.hidden_size));
  backend.embedding(kernels::Matrix{table.dtype, config.vocab_size, config.hidden_size, table.bytes.data()}, ids,
                    acts.residual.data());
  return acts;
}

}  // namespace

bool CompressionOptions::needs_calibration() const {
  return quantize == QuantMethod::Gptq || prune == PruneMethod::Wanda || prune == PruneMethod::SparseGpt;
}

CompressionReport compress_model(const ModelSource& source, const CompressionOptions& options,
                                 const CalibrationRuns& calibration, kernels::Backend& backend,
                                 CheckpointWriter& writer, const Progress& progress,
                                 const CalibrationObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const auto& config = source.config;
  if (source.format != ModelFormat::HuggingFace) {
    fail("compression reads a Hugging Face folder (safetensors); convert the model first");
  }
  if (source.quantization) {
    fail("{} is already quantized ({}); compress the unquantized model instead", source.path.string(),
         quant_method_name(source.quantization->method));
  }
  if (options.quantize == QuantMethod::None && options.prune == PruneMethod::None) {
    fail("nothing to do: choose a quantization or a pruning method");
  }
  if (options.prune != PruneMethod::None && !options.sparsity.active()) fail("pruning needs a sparsity");
  CompressionReport report;
  LayerCompressor compressor(config, options, backend, writer, report, observer);
  LayerRunner runner(config, backend, engine::rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling));
  Activations acts;
  if (options.needs_calibration()) {
    if (calibration.empty()) fail("this method needs calibration data (--calib)");
    acts = embed_calibration(source, calibration, backend);
    report.calibration_tokens = acts.rows;
  }
  spdlog::info("compress_start layers={} calibration_tokens={} runs={}", config.num_layers, acts.rows,
               acts.run_starts.size());
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    runner.run(layer, *source.weights, acts, &compressor);
    if (progress) progress("compressing layers", layer + 1, config.num_layers);
    spdlog::debug("compress_layer layer={} modules={} seconds={:.2f}", layer, report.modules,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace nibble::quant
