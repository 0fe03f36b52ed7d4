#include "loader/gptq.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "common/error.h"
#include "loader/quant_unpack.h"

namespace nibble {
namespace {

using quant::expect_shape;
using quant::Packing;
using quant::require;

// AutoAWQ packs output columns [0..7] of each block into nibble slots in the order
// 0,2,4,6,1,3,5,7 (awq/modules/linear/gemm.py, order_map); column c sits in slot kAwqSlot[c].
constexpr std::array<int, 8> kAwqSlot = {0, 4, 1, 5, 2, 6, 3, 7};

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

struct ModuleTensors {
  TensorView qweight, qzeros, scales;
  std::optional<TensorView> g_idx;

  std::vector<TensorView> all() const {
    std::vector<TensorView> out{qweight, qzeros, scales};
    if (g_idx) out.push_back(*g_idx);
    return out;
  }
};

class GptqWeights final : public WeightSource {
 public:
  GptqWeights(std::unique_ptr<SafetensorsWeights> base, QuantizationConfig quantization, ModelConfig model)
      : base_(std::move(base)), quantization_(std::move(quantization)), model_(std::move(model)) {
    if (quantization_.method != QuantMethod::Gptq && quantization_.method != QuantMethod::Awq) {
      fail("make_gptq_weights: quantization method {} is neither gptq nor awq",
           quant_method_name(quantization_.method));
    }
  }

  std::vector<StoredTensorInfo> list() const override { return base_->list(); }

  bool contains(const std::string& name) const override {
    if (const auto module = quantized_module_of(name)) return false;
    return base_->contains(name);
  }

  TensorView load(const std::string& name) const override {
    if (const auto module = quantized_module_of(name)) {
      fail(
          "'{}' is not a plain tensor: module '{}' is stored {}-quantized ('{}.qweight'); read it with "
          "load_quantized(\"{}\")",
          name, *module, quant_method_name(quantization_.method), *module, *module);
    }
    return base_->load(name);
  }

  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (!has_quantized(module)) return std::nullopt;
    const auto scheme = quantization_.module(module);
    if (!scheme) {
      fail(
          "module '{}' is stored packed ('{}.qweight') but the quantization config leaves it unquantized (check "
          "lm_head, '-:' dynamic rules and modules_to_not_convert)",
          module, module);
    }
    ModuleTensors tensors{require(*base_, module + ".qweight", {DType::I32}),
                          require(*base_, module + ".qzeros", {DType::I32}),
                          require(*base_, module + ".scales", {DType::F16, DType::BF16, DType::F32}), std::nullopt};
    for (const auto* t : {&tensors.qweight, &tensors.qzeros, &tensors.scales}) {
      if (t->shape.size() != 2)
        fail("tensor '{}': expected 2 dimensions, got {}", t->name, quant::shape_text(t->shape));
    }
    if (quantization_.method == QuantMethod::Gptq && base_->contains(module + ".g_idx")) {
      tensors.g_idx = require(*base_, module + ".g_idx", {DType::I32});
    }
    QuantizedMatrix m = quantization_.method == QuantMethod::Gptq ? unpack_gptq(module, *scheme, tensors)
                                                                  : unpack_awq(module, *scheme, tensors);
    m.scale_dtype = tensors.scales.dtype;
    m.stored_bytes = quant::stored_bytes(tensors.all());
    m.validate();
    quant::release(tensors.all());
    return m;
  }

  bool has_quantized(const std::string& module) const override { return base_->contains(module + ".qweight"); }

  std::uint64_t file_bytes() const override { return base_->file_bytes(); }

 private:
  // "x.weight" of a module stored packed: the module name.
  std::optional<std::string> quantized_module_of(const std::string& name) const {
    if (!name.ends_with(".weight")) return std::nullopt;
    std::string module = name.substr(0, name.size() - 7);
    if (!has_quantized(module)) return std::nullopt;
    return module;
  }

  // [N, K] from the model config when it knows the module, otherwise from the tensors.
  std::array<std::int64_t, 2> weight_shape(const std::string& module, std::int64_t n, std::int64_t k) const {
    if (const auto shape = linear_module_shape(model_, module)) return *shape;
    return {n, k};
  }

  std::int64_t group_count(const ModuleQuantization& q, std::int64_t k) const {
    return q.group_size > 0 ? ceil_div(k, q.group_size) : 1;
  }

  static void check_packable(const TensorView& tensor, std::int64_t features, int bits, const char* dim) {
    if (features * bits % 32 != 0) {
      fail("tensor '{}': {} {} features do not fill whole int32 words at {} bits", tensor.name, features, dim, bits);
    }
  }

  // Scales [groups, N] in the file -> [N][groups].
  static std::vector<float> transpose_scales(const TensorView& scales, std::int64_t n, std::int64_t groups) {
    const std::vector<float> stored = quant::to_floats(scales);
    std::vector<float> out(stored.size());
    for (std::int64_t g = 0; g < groups; ++g) {
      for (std::int64_t row = 0; row < n; ++row) {
        out[static_cast<std::size_t>(row * groups + g)] = stored[static_cast<std::size_t>(g * n + row)];
      }
    }
    return out;
  }

  QuantizedMatrix unpack_gptq(const std::string& module, const ModuleQuantization& q, const ModuleTensors& t) const {
    const int bits = q.bits;
    const auto [n, k] = weight_shape(module, t.scales.shape[1], t.qweight.shape[0] * 32 / bits);
    check_packable(t.qweight, k, bits, "input");
    check_packable(t.qzeros, n, bits, "output");
    const std::int64_t groups = group_count(q, k);
    const std::string what = fmt::format("{}-bit GPTQ weight [{}, {}], group size {}", bits, n, k, q.group_size);
    expect_shape(t.qweight, {k * bits / 32, n}, "codes packed along the input dim of a " + what);
    expect_shape(t.scales, {groups, n}, what);
    expect_shape(t.qzeros, {groups, n * bits / 32}, "zero points packed along the output dim of a " + what);

    QuantizedMatrix m;
    m.name = module;
    m.rows = n;
    m.cols = k;
    m.bits = bits;
    m.groups = groups;
    if (t.g_idx) {
      expect_shape(*t.g_idx, {k}, "one group index per input column of a " + what);
      const auto stored = t.g_idx->as<std::int32_t>();
      m.group_of_col.assign(stored.begin(), stored.end());
      for (std::int64_t col = 0; col < k; ++col) {
        const auto g = m.group_of_col[static_cast<std::size_t>(col)];
        if (g < 0 || g >= groups)
          fail("tensor '{}': entry {} is group {}, outside [0, {})", t.g_idx->name, col, g, groups);
      }
    } else {
      m.group_of_col = contiguous_groups(k, q.group_size);
    }

    m.codes.resize(static_cast<std::size_t>(n * k));
    const std::size_t column_stride = static_cast<std::size_t>(n) * 4;
    for (std::int64_t row = 0; row < n; ++row) {
      // Output column `row` of qweight is one bit stream down its int32 rows.
      quant::unpack_codes(t.qweight.bytes.data() + row * 4, column_stride, k, bits, Packing::Stream,
                          m.codes.data() + row * k);
    }

    // v1 ("gptq") stores zero - 1 in each field; the +1 is applied per field, as
    // the GPTQ kernels do, so a stored all-ones field means 2^bits.
    const int zero_offset = q.format == "gptq" ? 1 : 0;
    m.zeros.resize(static_cast<std::size_t>(n * groups));
    std::vector<std::uint8_t> zero_row(static_cast<std::size_t>(n));
    const std::size_t zero_row_bytes = static_cast<std::size_t>(n * bits / 32) * 4;
    for (std::int64_t g = 0; g < groups; ++g) {
      quant::unpack_codes(t.qzeros.bytes.data() + g * zero_row_bytes, 4, n, bits, Packing::Stream, zero_row.data());
      for (std::int64_t row = 0; row < n; ++row) {
        const int zero = zero_row[static_cast<std::size_t>(row)] + zero_offset;
        if (zero > 255) {
          fail(
              "tensor '{}': group {}, column {} holds a v1 zero point of {} (stored {} + 1), which 8-bit codes "
              "cannot use; re-export the checkpoint as gptq_v2",
              t.qzeros.name, g, row, zero, zero - 1);
        }
        m.zeros[static_cast<std::size_t>(row * groups + g)] = static_cast<std::uint8_t>(zero);
      }
    }
    m.scales = transpose_scales(t.scales, n, groups);
    return m;
  }

  QuantizedMatrix unpack_awq(const std::string& module, const ModuleQuantization& q, const ModuleTensors& t) const {
    const int bits = q.bits;
    // Plain variables, not a structured binding: the lambdas below use n, and
    // clang before 16 cannot capture bindings (the fuzz build uses clang 14).
    const auto shape = weight_shape(module, t.scales.shape[1], t.qweight.shape[0]);
    const std::int64_t n = shape[0], k = shape[1];
    check_packable(t.qweight, n, bits, "output");
    const std::int64_t groups = group_count(q, k);
    const std::string what = fmt::format("{}-bit AWQ weight [{}, {}], group size {}", bits, n, k, q.group_size);
    expect_shape(t.qweight, {k, n * bits / 32}, "codes packed along the output dim of a " + what);
    expect_shape(t.scales, {groups, n}, what);
    expect_shape(t.qzeros, {groups, n * bits / 32}, "zero points packed along the output dim of a " + what);

    // One packed row -> codes in natural output-column order. 4-bit rows use
    // AutoAWQ's nibble interleave; GPTQModel writes other widths as a plain stream.
    std::vector<std::uint8_t> stored(static_cast<std::size_t>(n));
    std::vector<std::uint8_t> natural(static_cast<std::size_t>(n));
    const std::size_t row_bytes = static_cast<std::size_t>(n * bits / 32) * 4;
    const auto unpack_row = [&](const std::byte* words) {
      quant::unpack_codes(words, 4, n, bits, Packing::Stream, stored.data());
      if (bits != 4) return stored.data();
      for (std::int64_t col = 0; col < n; ++col) {
        natural[static_cast<std::size_t>(col)] = stored[static_cast<std::size_t>(col / 8 * 8 + kAwqSlot[col % 8])];
      }
      return natural.data();
    };

    QuantizedMatrix m;
    m.name = module;
    m.rows = n;
    m.cols = k;
    m.bits = bits;
    m.groups = groups;
    m.group_of_col = contiguous_groups(k, q.group_size);
    m.codes.resize(static_cast<std::size_t>(n * k));
    // qweight rows are input columns: unpack a tile of them, then transpose it so
    // the writes into codes [n][k] stay contiguous.
    constexpr std::int64_t kTile = 32;
    std::vector<std::uint8_t> tile(static_cast<std::size_t>(kTile * n));
    for (std::int64_t col0 = 0; col0 < k; col0 += kTile) {
      const std::int64_t cols = std::min(kTile, k - col0);
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::uint8_t* row = unpack_row(t.qweight.bytes.data() + (col0 + c) * row_bytes);
        std::copy(row, row + n, tile.begin() + c * n);
      }
      for (std::int64_t out = 0; out < n; ++out) {
        std::uint8_t* dst = m.codes.data() + out * k + col0;
        for (std::int64_t c = 0; c < cols; ++c) dst[c] = tile[static_cast<std::size_t>(c * n + out)];
      }
    }
    m.zeros.resize(static_cast<std::size_t>(n * groups));
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::uint8_t* row = unpack_row(t.qzeros.bytes.data() + g * row_bytes);
      for (std::int64_t out = 0; out < n; ++out) m.zeros[static_cast<std::size_t>(out * groups + g)] = row[out];
    }
    m.scales = transpose_scales(t.scales, n, groups);
    return m;
  }

  std::unique_ptr<SafetensorsWeights> base_;
  QuantizationConfig quantization_;
  ModelConfig model_;
};

}  // namespace

std::unique_ptr<WeightSource> make_gptq_weights(std::unique_ptr<SafetensorsWeights> base,
                                                QuantizationConfig quantization, ModelConfig model) {
  return std::make_unique<GptqWeights>(std::move(base), std::move(quantization), std::move(model));
}

}  // namespace nibble
