#include "engine/weight_binder.h"

#include <algorithm>
#include <optional>

#include "common/error.h"

namespace nibble::engine {
namespace {

void check_shape(const TensorView& tensor, std::vector<std::int64_t> expected) {
  if (tensor.shape != expected) {
    TensorView want;
    want.shape = std::move(expected);
    fail("tensor '{}' has shape {} but the config implies {}", tensor.name, tensor.shape_string(), want.shape_string());
  }
}

void check_shape(const QuantizedMatrix& quantized, const std::string& module, std::int64_t rows, std::int64_t cols) {
  if (quantized.rows != rows || quantized.cols != cols) {
    fail("quantized weight '{}' is [{}, {}] but the config implies [{}, {}]", module, quantized.rows, quantized.cols,
         rows, cols);
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

}  // namespace

WeightBinder::WeightBinder(const WeightSource& weights, const ModelConfig& config, kernels::Backend& backend,
                           const ModelOptions& options)
    : weights_(weights), config_(config), backend_(backend), options_(options) {}

bool WeightBinder::contains(const std::string& name) const { return weights_.contains(name); }
bool WeightBinder::has_quantized(const std::string& module) const { return weights_.has_quantized(module); }

Linear WeightBinder::linear(const std::string& module, std::int64_t rows, std::int64_t cols, bool lookup_only) {
  std::optional<QuantizedMatrix> quantized = weights_.load_quantized(module);
  if (quantized) return quantized_linear(std::move(*quantized), module, rows, cols, 1);
  const std::string name = module + ".weight";
  TensorView tensor = weights_.load(name);
  check_shape(tensor, {rows, cols});
  if (tensor.dtype != DType::F32 && tensor.dtype != DType::F16 && tensor.dtype != DType::BF16) {
    fail("tensor '{}': dtype {} is not supported for matrices (F32, F16, BF16)", name, dtype_name(tensor.dtype));
  }
  const kernels::Matrix m{tensor.dtype, rows, cols, tensor.bytes.data()};
  Linear out{module, backend_.prepare_linear(m, lookup_only ? kernels::SparseChoice::Dense : options_.sparse), {}};
  if (out.weights->views_source()) {
    memory_.total += tensor.bytes.size();
    held_.push_back(std::move(tensor));
  } else {
    ++memory_.sparse_layers;
  }
  memory_.total += out.weights->resident_bytes();
  ++linear_kinds_[out.weights->describe()];
  return out;
}

Linear WeightBinder::quantized_linear(QuantizedMatrix quantized, const std::string& module, std::int64_t rows,
                                      std::int64_t cols, int modules) {
  check_shape(quantized, module, rows, cols);
  Linear out{module, nullptr, {}};
  if (options_.expand_quantized) {
    std::vector<float> values(static_cast<std::size_t>(rows * cols));
    for (std::int64_t n = 0; n < rows; ++n) quantized.dequantize_row(n, values.data() + n * cols);
    TensorView tensor = make_owned_f32(module + ".weight", {rows, cols}, std::move(values));
    out.weights = backend_.prepare_linear(kernels::Matrix{DType::F32, rows, cols, tensor.bytes.data()},
                                          kernels::SparseChoice::Dense);
    memory_.total += tensor.bytes.size();
    held_.push_back(std::move(tensor));
  } else {
    out.weights = backend_.prepare_linear(quantized);
    memory_.quantized_file += quantized.stored_bytes;
    memory_.quantized_resident += out.weights->resident_bytes();
    memory_.quantized_layers += modules;
  }
  memory_.total += out.weights->resident_bytes();
  linear_kinds_[out.weights->describe()] += modules;
  return out;
}

LinearGroup WeightBinder::group(std::span<const Module> modules, std::int64_t cols, bool bias) {
  std::vector<std::string> names;
  std::vector<std::int64_t> widths;
  for (const auto& module : modules) {
    names.push_back(module.name);
    widths.push_back(module.rows);
  }
  // Host copies first: a stacked matrix takes their concatenation.
  std::vector<TensorView> biases;
  if (bias) {
    for (const auto& module : modules) {
      biases.push_back(to_f32(weights_.load(module.name + ".bias")));
      check_shape(biases.back(), {module.rows});
    }
  }
  std::vector<Linear> linears;
  const bool all_quantized = std::ranges::all_of(modules, [&](const Module& m) { return weights_.has_quantized(m.name); });
  if (options_.stack_linears && !options_.expand_quantized && all_quantized) {
    std::vector<QuantizedMatrix> parts;
    std::string name;
    for (const auto& module : modules) {
      std::optional<QuantizedMatrix> part = weights_.load_quantized(module.name);
      if (!part) fail("quantized weight '{}' is listed but could not be loaded", module.name);
      check_shape(*part, module.name, module.rows, cols);
      name += (name.empty() ? "" : "+") + module.name;
      parts.push_back(std::move(*part));
    }
    if (auto stacked = stack_rows(parts, name)) {
      parts.clear();
      const std::int64_t rows = stacked->rows;
      ++memory_.stacked_linears;
      linears.push_back(quantized_linear(std::move(*stacked), name, rows, cols, static_cast<int>(modules.size())));
      if (bias) {
        // The modules' biases one after another, for their stacked matrix. The
        // parts count as held too (as when they run alone): the account of
        // weight memory does not depend on stacking.
        std::vector<float> joined;
        for (auto& part : biases) {
          const auto values = part.as<float>();
          joined.insert(joined.end(), values.begin(), values.end());
          memory_.total += part.bytes.size();
          held_.push_back(std::move(part));
        }
        const auto size = static_cast<std::int64_t>(joined.size());
        linears.front().bias = upload(make_owned_f32(modules.front().name + ".stacked_bias", {size}, std::move(joined)));
      }
      return LinearGroup(std::move(names), std::move(widths), std::move(linears));
    }
    // Formats differ (a GGUF Q4_K_M keeps some projections at higher precision):
    // the parts already loaded run alone.
    for (std::size_t i = 0; i < modules.size(); ++i) {
      linears.push_back(quantized_linear(std::move(parts[i]), modules[i].name, modules[i].rows, cols, 1));
    }
  } else {
    for (const auto& module : modules) linears.push_back(linear(module.name, module.rows, cols));
  }
  for (std::size_t i = 0; i < biases.size(); ++i) linears[i].bias = upload(std::move(biases[i]));
  return LinearGroup(std::move(names), std::move(widths), std::move(linears));
}

kernels::Buffer WeightBinder::vector(const std::string& name, std::int64_t size, float offset) {
  TensorView tensor = to_f32(weights_.load(name));
  check_shape(tensor, {size});
  if (offset != 0.0f) {
    std::vector<float> values(tensor.as<float>().begin(), tensor.as<float>().end());
    for (auto& value : values) value += offset;
    tensor = make_owned_f32(tensor.name, tensor.shape, std::move(values));
  }
  return upload(std::move(tensor));
}

std::vector<float> WeightBinder::host_matrix(const std::string& module, std::int64_t rows, std::int64_t cols) {
  std::vector<float> values(static_cast<std::size_t>(rows * cols));
  if (std::optional<QuantizedMatrix> quantized = weights_.load_quantized(module)) {
    check_shape(*quantized, module, rows, cols);
    for (std::int64_t n = 0; n < rows; ++n) quantized->dequantize_row(n, values.data() + n * cols);
    return values;
  }
  const TensorView tensor = weights_.load(module + ".weight");
  check_shape(tensor, {rows, cols});
  if (tensor.dtype != DType::F32 && tensor.dtype != DType::F16 && tensor.dtype != DType::BF16) {
    fail("tensor '{}.weight': dtype {} is not supported for matrices (F32, F16, BF16)", module, dtype_name(tensor.dtype));
  }
  const kernels::Matrix stored{tensor.dtype, rows, cols, tensor.bytes.data()};
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = kernels::matrix_element(stored, static_cast<std::int64_t>(i));
  return values;
}

std::vector<float> WeightBinder::host_vector(const std::string& name, std::int64_t size) {
  const TensorView tensor = to_f32(weights_.load(name));
  check_shape(tensor, {size});
  memory_.total += tensor.bytes.size();
  const auto values = tensor.as<float>();
  return {values.begin(), values.end()};
}

kernels::Buffer WeightBinder::upload_f32(const std::string& name, std::vector<std::int64_t> shape,
                                         std::vector<float> values) {
  return upload(make_owned_f32(name, std::move(shape), std::move(values)));
}

kernels::Buffer WeightBinder::upload(TensorView tensor) {
  memory_.total += tensor.bytes.size();
  kernels::Buffer buffer = backend_.upload(tensor.bytes.data(), DType::F32, tensor.shape, tensor.owner);
  // A view of host memory (the CPU backend) needs the tensor kept alive with the model.
  held_.push_back(std::move(tensor));
  return buffer;
}

}  // namespace nibble::engine
