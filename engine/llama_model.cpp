#include "engine/llama_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <optional>

#include "common/error.h"
#include "engine/rope.h"

namespace nibble::engine {
namespace {

std::string layer_name(std::int64_t layer, const char* suffix) { return fmt::format("model.layers.{}.{}", layer, suffix); }

void check_shape(const TensorView& tensor, std::vector<std::int64_t> expected) {
  if (tensor.shape != expected) {
    TensorView want;
    want.shape = std::move(expected);
    fail("tensor '{}' has shape {} but the config implies {}", tensor.name, tensor.shape_string(), want.shape_string());
  }
}

// Widens a small tensor (norm weights, biases) to float32; large matrices never
// take this path.
TensorView to_f32(const TensorView& tensor) {
  if (tensor.dtype == DType::F32) return tensor;
  if (tensor.dtype != DType::F16 && tensor.dtype != DType::BF16) {
    fail("tensor '{}': dtype {} is not supported here", tensor.name, dtype_name(tensor.dtype));
  }
  const kernels::Matrix stored{tensor.dtype, 1, tensor.numel(), tensor.bytes.data()};
  std::vector<float> values(static_cast<std::size_t>(tensor.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = kernels::matrix_element(stored, static_cast<std::int64_t>(i));
  return make_owned_f32(tensor.name, tensor.shape, std::move(values));
}

void check_shape(const QuantizedMatrix& quantized, const std::string& module, std::int64_t rows, std::int64_t cols) {
  if (quantized.rows != rows || quantized.cols != cols) {
    fail("quantized weight '{}' is [{}, {}] but the config implies [{}, {}]", module, quantized.rows, quantized.cols,
         rows, cols);
  }
}

}  // namespace

LlamaModel::LlamaModel(const ModelSource& source, kernels::Backend& backend, const LoadProgress& progress)
    : LlamaModel(source, backend, Options{}, progress) {}

LlamaModel::LlamaModel(const ModelSource& source, kernels::Backend& backend, const Options& options,
                       const LoadProgress& progress)
    : config_(source.config), backend_(backend), options_(options) {
  const WeightSource& weights = *source.weights;
  const auto d = config_.hidden_size;
  embedding_ = linear(weights, "model.embed_tokens", config_.vocab_size, d);
  final_norm_ = vector(weights, "model.norm.weight", d);
  const bool separate_head = weights.contains("lm_head.weight") || weights.has_quantized("lm_head");
  if (config_.tie_word_embeddings && !separate_head) {
    lm_head_ = embedding_;
  } else {
    lm_head_ = linear(weights, "lm_head", config_.vocab_size, d);
  }
  // What linears() returned: one stacked linear, or one per module in order.
  const auto bind = [](std::vector<Linear> prepared, Linear& stacked, std::initializer_list<Linear*> separate) {
    if (prepared.size() == 1) {
      stacked = std::move(prepared.front());
      return;
    }
    auto next = prepared.begin();
    for (Linear* part : separate) *part = std::move(*next++);
  };
  layers_.reserve(static_cast<std::size_t>(config_.num_layers));
  for (std::int64_t i = 0; i < config_.num_layers; ++i) {
    Layer layer{};
    layer.attn_norm = vector(weights, layer_name(i, "input_layernorm.weight"), d);
    layer.ffn_norm = vector(weights, layer_name(i, "post_attention_layernorm.weight"), d);
    const std::array<Module, 3> qkv{{{layer_name(i, "self_attn.q_proj"), config_.q_dim()},
                                     {layer_name(i, "self_attn.k_proj"), config_.kv_dim()},
                                     {layer_name(i, "self_attn.v_proj"), config_.kv_dim()}}};
    bind(linears(weights, qkv, d), layer.qkv, {&layer.q, &layer.k, &layer.v});
    layer.o = linear(weights, layer_name(i, "self_attn.o_proj"), d, config_.q_dim());
    const std::array<Module, 2> gate_up{{{layer_name(i, "mlp.gate_proj"), config_.intermediate_size},
                                         {layer_name(i, "mlp.up_proj"), config_.intermediate_size}}};
    bind(linears(weights, gate_up, d), layer.gate_up, {&layer.gate, &layer.up});
    layer.down = linear(weights, layer_name(i, "mlp.down_proj"), d, config_.intermediate_size);
    if (config_.attention_bias) {
      layer.q_bias = vector(weights, layer_name(i, "self_attn.q_proj.bias"), config_.q_dim());
      layer.k_bias = vector(weights, layer_name(i, "self_attn.k_proj.bias"), config_.kv_dim());
      layer.v_bias = vector(weights, layer_name(i, "self_attn.v_proj.bias"), config_.kv_dim());
      if (layer.qkv) layer.qkv_bias = stacked_vector({layer.q_bias, layer.k_bias, layer.v_bias}, qkv);
    }
    layers_.push_back(layer);
    if (progress) progress(i + 1, config_.num_layers);
  }
  inv_freq_ = rope_inv_freq(config_.head_dim, config_.rope_theta, config_.rope_scaling);
}

LlamaModel::Linear LlamaModel::linear(const WeightSource& weights, const std::string& module, std::int64_t rows,
                                      std::int64_t cols) {
  std::optional<QuantizedMatrix> quantized = weights.load_quantized(module);
  if (quantized) return quantized_linear(std::move(*quantized), module, rows, cols, 1);
  const std::string name = module + ".weight";
  TensorView tensor = weights.load(name);
  check_shape(tensor, {rows, cols});
  if (tensor.dtype != DType::F32 && tensor.dtype != DType::F16 && tensor.dtype != DType::BF16) {
    fail("tensor '{}': dtype {} is not supported for matrices (F32, F16, BF16)", name, dtype_name(tensor.dtype));
  }
  const kernels::Matrix m{tensor.dtype, rows, cols, tensor.bytes.data()};
  // The token table is only ever looked up by row, never multiplied sparsely.
  const bool lookup_only = module == "model.embed_tokens" && !config_.tie_word_embeddings;
  Linear prepared = backend_.prepare_linear(m, lookup_only ? kernels::SparseChoice::Dense : options_.sparse);
  if (prepared->views_source()) {
    memory_.total += tensor.bytes.size();
    held_.push_back(std::move(tensor));
  } else {
    ++memory_.sparse_layers;
  }
  memory_.total += prepared->resident_bytes();
  ++linear_kinds_[prepared->describe()];
  return prepared;
}

LlamaModel::Linear LlamaModel::quantized_linear(QuantizedMatrix quantized, const std::string& module,
                                                std::int64_t rows, std::int64_t cols, int modules) {
  check_shape(quantized, module, rows, cols);
  Linear prepared;
  if (options_.expand_quantized) {
    std::vector<float> values(static_cast<std::size_t>(rows * cols));
    for (std::int64_t n = 0; n < rows; ++n) {
      for (std::int64_t k = 0; k < cols; ++k) values[static_cast<std::size_t>(n * cols + k)] = quantized.value(n, k);
    }
    TensorView tensor = make_owned_f32(module + ".weight", {rows, cols}, std::move(values));
    prepared = backend_.prepare_linear(kernels::Matrix{DType::F32, rows, cols, tensor.bytes.data()},
                                       kernels::SparseChoice::Dense);
    memory_.total += tensor.bytes.size();
    held_.push_back(std::move(tensor));
  } else {
    prepared = backend_.prepare_linear(quantized);
    memory_.quantized_file += quantized.stored_bytes;
    memory_.quantized_resident += prepared->resident_bytes();
    memory_.quantized_layers += modules;
  }
  memory_.total += prepared->resident_bytes();
  linear_kinds_[prepared->describe()] += modules;
  return prepared;
}

std::vector<LlamaModel::Linear> LlamaModel::linears(const WeightSource& weights, std::span<const Module> modules,
                                                    std::int64_t cols) {
  const bool all_quantized = std::ranges::all_of(modules, [&](const Module& m) { return weights.has_quantized(m.name); });
  if (options_.stack_linears && !options_.expand_quantized && all_quantized) {
    std::vector<QuantizedMatrix> parts;
    std::string name;
    for (const auto& module : modules) {
      std::optional<QuantizedMatrix> part = weights.load_quantized(module.name);
      if (!part) fail("quantized weight '{}' is listed but could not be loaded", module.name);
      check_shape(*part, module.name, module.rows, cols);
      name += (name.empty() ? "" : "+") + module.name;
      parts.push_back(std::move(*part));
    }
    if (auto stacked = stack_rows(parts, name)) {
      parts.clear();
      const std::int64_t rows = stacked->rows;
      ++memory_.stacked_linears;
      return {quantized_linear(std::move(*stacked), name, rows, cols, static_cast<int>(modules.size()))};
    }
    // Formats differ (a GGUF Q4_K_M keeps some projections at higher precision):
    // the parts already loaded run alone.
    std::vector<Linear> prepared;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      prepared.push_back(quantized_linear(std::move(parts[i]), modules[i].name, modules[i].rows, cols, 1));
    }
    return prepared;
  }
  std::vector<Linear> prepared;
  for (const auto& module : modules) prepared.push_back(linear(weights, module.name, module.rows, cols));
  return prepared;
}

const float* LlamaModel::stacked_vector(std::initializer_list<const float*> parts, std::span<const Module> modules) {
  std::vector<float> values;
  std::size_t i = 0;
  for (const float* part : parts) {
    values.insert(values.end(), part, part + modules[i++].rows);
  }
  const auto size = static_cast<std::int64_t>(values.size());
  TensorView tensor = make_owned_f32(modules.front().name + ".stacked_bias", {size}, std::move(values));
  memory_.total += tensor.bytes.size();
  const auto* data = tensor.as<float>().data();
  held_.push_back(std::move(tensor));
  return data;
}

const float* LlamaModel::vector(const WeightSource& weights, const std::string& name, std::int64_t size) {
  TensorView tensor = to_f32(weights.load(name));
  check_shape(tensor, {size});
  memory_.total += tensor.bytes.size();
  const auto* data = tensor.as<float>().data();
  held_.push_back(std::move(tensor));
  return data;
}

void LlamaModel::ensure_scratch(std::int64_t rows) {
  if (rows <= scratch_rows_) return;
  const auto size = [rows](std::int64_t width) { return static_cast<std::size_t>(rows * width); };
  x_.resize(size(config_.hidden_size));
  h_.resize(size(config_.hidden_size));
  q_.resize(size(config_.q_dim()));
  k_.resize(size(config_.kv_dim()));
  v_.resize(size(config_.kv_dim()));
  attn_.resize(size(config_.q_dim()));
  gate_.resize(size(config_.intermediate_size));
  up_.resize(size(config_.intermediate_size));
  scratch_rows_ = rows;
}

void LlamaModel::run_stacked(const kernels::LinearWeights& stacked, const float* bias, std::int64_t rows,
                             std::initializer_list<Output> outputs) {
  std::int64_t width = 0;
  for (const auto& output : outputs) width += output.width;
  if (stacked_.size() < static_cast<std::size_t>(rows * width)) stacked_.resize(static_cast<std::size_t>(rows * width));
  backend_.linear(h_.data(), rows, stacked, bias, stacked_.data());
  // Each row holds every output's columns side by side; the ops after want them apart.
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = stacked_.data() + r * width;
    for (const auto& output : outputs) {
      std::copy_n(row, output.width, output.data + r * output.width);
      row += output.width;
    }
  }
}

void LlamaModel::forward(std::span<const TokenId> tokens, std::int64_t start, KvCache& cache, Logits mode,
                         std::span<float> logits) {
  const auto rows = static_cast<std::int64_t>(tokens.size());
  if (rows == 0) fail("forward: no tokens");
  if (start + rows > cache.capacity()) {
    fail("sequence of {} tokens exceeds the KV cache capacity of {}", start + rows, cache.capacity());
  }
  const Segment segment{0, rows, start, mode};
  forward_segments(
      tokens, std::span(&segment, 1),
      [&](std::int64_t layer, std::size_t, const float* keys, const float* values) {
        cache.store(layer, start, rows, keys, values);
      },
      [&](std::int64_t layer, std::size_t) { return cache.layer(layer); }, logits);
}

void LlamaModel::forward_batch(std::span<const BatchEntry> batch, PagedKvCache& cache, std::span<float> logits) {
  if (batch.empty()) fail("forward_batch: an empty batch");
  std::vector<TokenId> tokens;
  std::vector<Segment> segments;
  for (const auto& entry : batch) {
    const auto rows = static_cast<std::int64_t>(entry.tokens.size());
    if (rows == 0) fail("forward_batch: an entry without tokens");
    if (entry.start + rows > static_cast<std::int64_t>(entry.block_table.size()) * cache.block_size()) {
      fail("forward_batch: positions up to {} exceed the entry's {} blocks", entry.start + rows,
           entry.block_table.size());
    }
    segments.push_back({static_cast<std::int64_t>(tokens.size()), rows, entry.start, entry.logits});
    tokens.insert(tokens.end(), entry.tokens.begin(), entry.tokens.end());
  }
  forward_segments(
      tokens, segments,
      [&](std::int64_t layer, std::size_t s, const float* keys, const float* values) {
        cache.store(layer, batch[s].block_table, batch[s].start, segments[s].rows, keys, values);
      },
      [&](std::int64_t layer, std::size_t s) { return cache.layer(layer, batch[s].block_table); }, logits);
}

void LlamaModel::forward_segments(std::span<const TokenId> tokens, std::span<const Segment> segments,
                                  const StoreKv& store, const ViewKv& view, std::span<float> logits) {
  const auto rows = static_cast<std::int64_t>(tokens.size());
  std::int64_t out_rows = 0;
  for (const auto& segment : segments) out_rows += segment.logits == Logits::AllRows ? segment.rows : 1;
  if (static_cast<std::int64_t>(logits.size()) < out_rows * config_.vocab_size) fail("forward: logits buffer too small");
  ensure_scratch(rows);
  positions_.resize(static_cast<std::size_t>(rows));
  for (const auto& segment : segments) {
    for (std::int64_t i = 0; i < segment.rows; ++i) {
      positions_[static_cast<std::size_t>(segment.first_row + i)] = static_cast<std::int32_t>(segment.start + i);
    }
  }

  const auto d = config_.hidden_size;
  const auto eps = static_cast<float>(config_.rms_norm_eps);
  const kernels::AttentionShape attention_shape{config_.num_heads, config_.num_kv_heads, config_.head_dim,
                                                config_.sliding_window};
  const auto q_dim = config_.q_dim(), kv_dim = config_.kv_dim();
  backend_.embedding(*embedding_, tokens, x_.data());
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    const auto layer_index = static_cast<std::int64_t>(i);
    backend_.rms_norm(x_.data(), rows, d, layer.attn_norm, eps, h_.data());
    if (layer.qkv) {
      run_stacked(*layer.qkv, layer.qkv_bias, rows, {{q_.data(), q_dim}, {k_.data(), kv_dim}, {v_.data(), kv_dim}});
    } else {
      backend_.linear(h_.data(), rows, *layer.q, layer.q_bias, q_.data());
      backend_.linear(h_.data(), rows, *layer.k, layer.k_bias, k_.data());
      backend_.linear(h_.data(), rows, *layer.v, layer.v_bias, v_.data());
    }
    backend_.rope(q_.data(), rows, config_.num_heads, config_.head_dim, positions_, inv_freq_);
    backend_.rope(k_.data(), rows, config_.num_kv_heads, config_.head_dim, positions_, inv_freq_);
    // Every sequence stores its keys and values, then all attend over their own in
    // one call (a sequence only ever writes its own blocks, so the order is free).
    attention_segments_.clear();
    for (std::size_t s = 0; s < segments.size(); ++s) {
      const auto& segment = segments[s];
      store(layer_index, s, k_.data() + segment.first_row * kv_dim, v_.data() + segment.first_row * kv_dim);
      attention_segments_.push_back(
          {q_.data() + segment.first_row * q_dim, segment.rows,
           std::span(positions_).subspan(static_cast<std::size_t>(segment.first_row),
                                         static_cast<std::size_t>(segment.rows)),
           view(layer_index, s), attn_.data() + segment.first_row * q_dim});
    }
    backend_.attention_batch(attention_segments_, attention_shape);
    backend_.linear(attn_.data(), rows, *layer.o, nullptr, h_.data());
    backend_.add(h_.data(), rows * d, x_.data());

    backend_.rms_norm(x_.data(), rows, d, layer.ffn_norm, eps, h_.data());
    if (layer.gate_up) {
      const auto width = config_.intermediate_size;
      run_stacked(*layer.gate_up, nullptr, rows, {{gate_.data(), width}, {up_.data(), width}});
    } else {
      backend_.linear(h_.data(), rows, *layer.gate, nullptr, gate_.data());
      backend_.linear(h_.data(), rows, *layer.up, nullptr, up_.data());
    }
    backend_.swiglu(gate_.data(), up_.data(), rows * config_.intermediate_size, gate_.data());
    backend_.linear(gate_.data(), rows, *layer.down, nullptr, h_.data());
    backend_.add(h_.data(), rows * d, x_.data());
  }
  // The rows whose logits are wanted, gathered so lm_head runs once over them.
  std::int64_t out = 0;
  for (const auto& segment : segments) {
    const std::int64_t first = segment.logits == Logits::AllRows ? segment.first_row : segment.first_row + segment.rows - 1;
    const std::int64_t count = segment.logits == Logits::AllRows ? segment.rows : 1;
    backend_.rms_norm(x_.data() + first * d, count, d, final_norm_, eps, h_.data() + out * d);
    out += count;
  }
  backend_.linear(h_.data(), out_rows, *lm_head_, nullptr, logits.data());
}

}  // namespace nibble::engine
