#include "loader/fp8.h"

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "loader/quant_unpack.h"

namespace nibble {
namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

Fp8ScaleBlocks fp8_scale_blocks(const ModuleQuantization& q) {
  if (!q.fp8()) fail("format '{}' is not an FP8 format", q.format);
  if (q.block_rows > 0) return {q.block_rows, q.group_size};
  if (q.group_size == 0) return {0, 0};  // per tensor
  return {1, q.group_size > 0 ? q.group_size : 0};
}

QuantizedMatrix fp8_matrix(const std::string& module, const TensorView& weight, const TensorView& scale,
                           Fp8ScaleBlocks blocks, std::optional<std::array<std::int64_t, 2>> expected) {
  if (weight.dtype != DType::F8_E4M3) {
    fail("tensor '{}' has dtype {}, expected F8_E4M3 (FP8 e4m3 codes)", weight.name, dtype_name(weight.dtype));
  }
  if (weight.shape.size() != 2) {
    fail("tensor '{}': expected 2 dimensions, got {}", weight.name, quant::shape_text(weight.shape));
  }
  if (expected) quant::expect_shape(weight, {(*expected)[0], (*expected)[1]}, "the model config's [out, in]");
  const std::int64_t n = weight.shape[0], k = weight.shape[1];
  if (n <= 0 || k <= 0) fail("tensor '{}': empty weight {}", weight.name, quant::shape_text(weight.shape));
  const std::int64_t br = blocks.block_rows > 0 ? blocks.block_rows : n;
  const std::int64_t bc = blocks.block_cols > 0 ? blocks.block_cols : k;
  const std::int64_t grid_rows = ceil_div(n, br), grid_cols = ceil_div(k, bc);
  if (scale.dtype != DType::F32 && scale.dtype != DType::BF16 && scale.dtype != DType::F16) {
    fail("tensor '{}' has dtype {}, expected F32, BF16 or F16 scales", scale.name, dtype_name(scale.dtype));
  }
  // A grid of one row or one column may be stored squeezed ([1] per tensor, [N] per channel).
  const bool squeezed = (grid_cols == 1 && scale.shape == std::vector<std::int64_t>{grid_rows}) ||
                        (grid_rows == 1 && grid_cols == 1 && scale.shape.empty());
  if (!squeezed) {
    quant::expect_shape(scale, {grid_rows, grid_cols},
                        fmt::format("one scale per {}x{} block of the [{}, {}] weight, partial blocks included", br, bc,
                                    n, k));
  }
  const std::vector<float> grid = quant::to_floats(scale);
  for (std::size_t i = 0; i < grid.size(); ++i) {
    if (!std::isfinite(grid[i])) fail("tensor '{}': scale {} is {}", scale.name, i, grid[i]);
  }
  QuantizedMatrix m;
  m.name = module;
  m.rows = n;
  m.cols = k;
  m.bits = 8;
  m.code_dtype = DType::F8_E4M3;
  m.scale_dtype = scale.dtype;
  m.groups = grid_cols;
  m.group_of_col = contiguous_groups(k, bc);
  m.codes.resize(static_cast<std::size_t>(n * k));
  std::memcpy(m.codes.data(), weight.bytes.data(), m.codes.size());
  m.scales.resize(static_cast<std::size_t>(n * grid_cols));
  for (std::int64_t row = 0; row < n; ++row) {
    std::memcpy(m.scales.data() + row * grid_cols, grid.data() + row / br * grid_cols,
                static_cast<std::size_t>(grid_cols) * sizeof(float));
  }
  m.stored_bytes = quant::stored_bytes({weight, scale});
  m.validate();
  return m;
}

namespace {

class Fp8Weights final : public WeightSource {
 public:
  Fp8Weights(std::unique_ptr<SafetensorsWeights> base, QuantizationConfig quantization, ModelConfig model)
      : base_(std::move(base)), quantization_(std::move(quantization)), model_(std::move(model)) {
    if (quantization_.method != QuantMethod::Fp8) {
      fail("make_fp8_weights: quantization method is {}", quant_method_name(quantization_.method));
    }
  }

  std::vector<StoredTensorInfo> list() const override { return base_->list(); }

  bool contains(const std::string& name) const override {
    if (const auto module = module_of_weight(name); module && has_quantized(*module)) return false;
    return base_->contains(name);
  }

  TensorView load(const std::string& name) const override {
    if (const auto module = module_of_weight(name)) {
      if (has_quantized(*module)) {
        fail("'{}' is not a plain tensor: module '{}' is stored in FP8 with block scales; read it with "
             "load_quantized(\"{}\")",
             name, *module, *module);
      }
    }
    TensorView tensor = base_->load(name);
    if (tensor.dtype == DType::F8_E4M3 || tensor.dtype == DType::F8_E5M2) {
      fail("tensor '{}' is {} but has no '{}' beside it (or the quantization config leaves its module plain); FP8 "
           "weights need their scales",
           name, dtype_name(tensor.dtype), name + "_scale_inv");
    }
    return tensor;
  }

  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (!has_quantized(module)) return std::nullopt;
    const TensorView weight = base_->load(module + ".weight");
    const TensorView scale = base_->load(module + ".weight_scale_inv");
    QuantizedMatrix m = fp8_matrix(module, weight, scale, fp8_scale_blocks(*quantization_.module(module)),
                                   linear_module_shape(model_, module));
    quant::release({weight, scale});  // copied into the matrix
    return m;
  }

  bool has_quantized(const std::string& module) const override {
    return base_->contains(module + ".weight_scale_inv") && quantization_.module(module).has_value();
  }

  std::uint64_t file_bytes() const override { return base_->file_bytes(); }

 private:
  static std::optional<std::string> module_of_weight(const std::string& name) {
    if (!name.ends_with(".weight")) return std::nullopt;
    return name.substr(0, name.size() - 7);
  }

  std::unique_ptr<SafetensorsWeights> base_;
  QuantizationConfig quantization_;
  ModelConfig model_;
};

}  // namespace

std::unique_ptr<WeightSource> make_fp8_weights(std::unique_ptr<SafetensorsWeights> base,
                                               QuantizationConfig quantization, ModelConfig model) {
  return std::make_unique<Fp8Weights>(std::move(base), std::move(quantization), std::move(model));
}

}  // namespace nibble
