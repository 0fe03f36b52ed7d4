#include "loader/compressed_tensors.h"

#include <array>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "loader/fp8.h"
#include "loader/quant_unpack.h"

namespace nibble {
namespace {

using quant::expect_shape;
using quant::Packing;
using quant::require;
using quant::shape_text;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// compressed-tensors before 0.18 packed floor(32/bits) codes per word; 0.18 made
// the packing a dense bit stream. Only 3-bit differs; "" (unknown) counts as new.
bool version_before(const std::string& version, int major, int minor) {
  int v_major = 0, v_minor = 0;
  if (std::sscanf(version.c_str(), "%d.%d", &v_major, &v_minor) != 2) return false;
  return v_major != major ? v_major < major : v_minor < minor;
}

// An integer vector tensor (weight_shape, shape): I64 or I32, any rank.
std::vector<std::int64_t> int_values(const TensorView& tensor) {
  std::vector<std::int64_t> out;
  if (tensor.dtype == DType::I64) {
    for (const auto v : tensor.as<std::int64_t>()) out.push_back(v);
  } else {
    for (const auto v : tensor.as<std::int32_t>()) out.push_back(v);
  }
  return out;
}

// Signed zero points [n][groups] from either layout compressed-tensors uses:
// int32 packed along the output dim (group/channel strategies), or raw integers
// ([n, groups], or one value for the tensor strategy).
std::vector<int> zero_points(const TensorView& zp, std::int64_t n, std::int64_t groups, int bits, Packing packing) {
  const int offset = 1 << (bits - 1);
  std::vector<int> out(static_cast<std::size_t>(n * groups));
  const std::int64_t words = quant::packed_words(n, bits, packing);
  if (zp.dtype == DType::I32 && zp.shape == std::vector<std::int64_t>{words, groups} && n > 1) {
    std::vector<std::uint8_t> column(static_cast<std::size_t>(n));
    for (std::int64_t g = 0; g < groups; ++g) {
      quant::unpack_codes(zp.bytes.data() + g * 4, static_cast<std::size_t>(groups) * 4, n, bits, packing,
                          column.data());
      for (std::int64_t row = 0; row < n; ++row) {
        out[static_cast<std::size_t>(row * groups + g)] = column[static_cast<std::size_t>(row)] - offset;
      }
    }
    return out;
  }
  std::vector<std::int64_t> raw;
  switch (zp.dtype) {
    case DType::I8:
      for (const auto v : zp.as<std::int8_t>()) raw.push_back(v);
      break;
    case DType::I32:
      for (const auto v : zp.as<std::int32_t>()) raw.push_back(v);
      break;
    case DType::I64:
      for (const auto v : zp.as<std::int64_t>()) raw.push_back(v);
      break;
    default:
      fail("tensor '{}' has dtype {}, expected I8, I32 or I64 zero points", zp.name, dtype_name(zp.dtype));
  }
  if (raw.size() != out.size() && raw.size() != 1) {
    fail("tensor '{}': shape {}, expected [{}, {}] zero points (or {} packed int32 rows)", zp.name,
         shape_text(zp.shape), n, groups, words);
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::int64_t value = raw[raw.size() == 1 ? 0 : i];
    if (value < -offset || value >= offset) {
      fail("tensor '{}': zero point {} is outside the {}-bit range [{}, {}]", zp.name, value, bits, -offset,
           offset - 1);
    }
    out[i] = static_cast<int>(value);
  }
  return out;
}

class CompressedTensorsWeights final : public WeightSource {
 public:
  CompressedTensorsWeights(std::unique_ptr<SafetensorsWeights> base, QuantizationConfig quantization, ModelConfig model)
      : base_(std::move(base)), quantization_(std::move(quantization)), model_(std::move(model)) {
    if (quantization_.method != QuantMethod::CompressedTensors) {
      fail("make_compressed_tensors_weights: quantization method is {}", quant_method_name(quantization_.method));
    }
  }

  std::vector<StoredTensorInfo> list() const override { return base_->list(); }

  bool contains(const std::string& name) const override {
    if (const auto module = module_of_weight(name)) {
      if (has_quantized(*module)) return false;
      if (sparse(*module)) return true;
    }
    return base_->contains(name);
  }

  TensorView load(const std::string& name) const override {
    if (const auto module = module_of_weight(name)) {
      if (has_quantized(*module)) {
        fail(
            "'{}' is not a plain tensor: module '{}' is stored quantized (compressed-tensors {}); read it with "
            "load_quantized(\"{}\")",
            name, *module, stored_format(*module), *module);
      }
      if (sparse(*module)) return densify(*module);
    }
    TensorView tensor = base_->load(name);
    if (tensor.dtype == DType::F8_E4M3 || tensor.dtype == DType::F8_E5M2) {
      fail("tensor '{}' is {} but no float-quantized config group with a 'weight_scale' covers it; FP8 weights need "
           "their scales",
           name, dtype_name(tensor.dtype));
    }
    return tensor;
  }

  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    const auto scheme = quantization_.module(module);
    if (base_->contains(module + ".weight_packed")) {
      if (!scheme) {
        fail("module '{}' is stored packed ('{}.weight_packed') but no config group targets it (or it is ignored)",
             module, module);
      }
      if (scheme->format != "pack-quantized") {
        fail("module '{}' is stored pack-quantized but its config group says format '{}'", module, scheme->format);
      }
      return unpack_packed(module, *scheme);
    }
    if (float_quantized(module, scheme)) {
      const TensorView weight = base_->load(module + ".weight");
      const TensorView scale = base_->load(module + ".weight_scale");
      QuantizedMatrix m = fp8_matrix(module, weight, scale, fp8_scale_blocks(*scheme), linear_module_shape(model_, module));
      quant::release({weight, scale});  // copied into the matrix
      return m;
    }
    if (!int_quantized(module, scheme)) return std::nullopt;
    return unpack_int8(module, *scheme);
  }

  bool has_quantized(const std::string& module) const override {
    const auto scheme = quantization_.module(module);
    return base_->contains(module + ".weight_packed") || int_quantized(module, scheme) || float_quantized(module, scheme);
  }

  std::uint64_t file_bytes() const override { return base_->file_bytes(); }

 private:
  static std::optional<std::string> module_of_weight(const std::string& name) {
    if (!name.ends_with(".weight")) return std::nullopt;
    return name.substr(0, name.size() - 7);
  }

  std::string stored_format(const std::string& module) const {
    if (base_->contains(module + ".weight_packed")) return "pack-quantized";
    return float_quantized(module, quantization_.module(module)) ? "float-quantized" : "int-quantized";
  }

  // The sparsity compressor replaced `weight` by values + bitmask.
  bool sparse(const std::string& module) const {
    return base_->contains(module + ".bitmask") && base_->contains(module + ".compressed");
  }

  // int-quantized: the int8 codes sit in `weight` (or in sparse values).
  bool int_quantized(const std::string& module, const std::optional<ModuleQuantization>& scheme) const {
    if (!scheme || scheme->format != "int-quantized") return false;
    if (sparse(module)) return true;
    return base_->contains(module + ".weight") && base_->load(module + ".weight").dtype == DType::I8;
  }

  // float-quantized: FP8 e4m3 codes in `weight`, scales in `weight_scale`.
  bool float_quantized(const std::string& module, const std::optional<ModuleQuantization>& scheme) const {
    return scheme && scheme->format == "float-quantized" && base_->contains(module + ".weight") &&
           base_->contains(module + ".weight_scale");
  }

  std::array<std::int64_t, 2> checked_shape(const std::string& module, const TensorView& shape_tensor) const {
    const auto values = int_values(shape_tensor);
    if (values.size() != 2 || values[0] <= 0 || values[1] <= 0) {
      fail("tensor '{}' must hold a 2-D shape, got {}", shape_tensor.name, fmt::join(values, ", "));
    }
    if (const auto expected = linear_module_shape(model_, module);
        expected && (values[0] != (*expected)[0] || values[1] != (*expected)[1])) {
      fail("tensor '{}' says the weight is [{}, {}] but the model config implies [{}, {}]", shape_tensor.name,
           values[0], values[1], (*expected)[0], (*expected)[1]);
    }
    return {values[0], values[1]};
  }

  // Dense weight from sparse-24-bitmask / sparse-bitmask storage, in the stored dtype.
  TensorView densify(const std::string& module) const {
    const TensorView values = base_->load(module + ".compressed");
    const TensorView bitmask = require(*base_, module + ".bitmask", {DType::U8});
    // Not a structured binding: is_set uses k, and clang before 16 cannot capture
    // bindings (the fuzz build uses clang 14).
    const auto shape = checked_shape(module, require(*base_, module + ".shape", {DType::I64, DType::I32}));
    const std::int64_t n = shape[0], k = shape[1];
    expect_shape(bitmask, {n, ceil_div(k, 8)}, "one bit per weight, LSB first, rows padded to bytes");
    const bool two_four = !base_->contains(module + ".row_offsets");
    const std::size_t element = dtype_size(values.dtype);
    const auto mask = bitmask.as<std::uint8_t>();
    const auto is_set = [&](std::int64_t row, std::int64_t col) {
      return (mask[static_cast<std::size_t>(row * ceil_div(k, 8) + col / 8)] >> (col % 8)) & 1;
    };
    if (two_four) {
      if (k % 4 != 0)
        fail("tensor '{}': 2:4 sparsity needs a multiple of 4 columns, the weight has {}", bitmask.name, k);
      expect_shape(values, {n, k / 2}, "the two kept values of every 4 (sparse-24-bitmask)");
      for (std::int64_t row = 0; row < n; ++row) {
        for (std::int64_t col = 0; col < k; col += 4) {
          const int kept = is_set(row, col) + is_set(row, col + 1) + is_set(row, col + 2) + is_set(row, col + 3);
          if (kept != 2) {
            fail("tensor '{}': row {} columns {}..{} keep {} weights, not 2 of 4", bitmask.name, row, col, col + 3,
                 kept);
          }
        }
      }
    } else {
      if (values.shape.size() != 1)
        fail("tensor '{}': expected a 1-D list of values, got {}", values.name, shape_text(values.shape));
      const TensorView offsets = require(*base_, module + ".row_offsets", {DType::I64, DType::I32});
      expect_shape(offsets, {n}, "where each row starts in the values");
      const auto starts = int_values(offsets);
      std::int64_t count = 0;
      for (std::int64_t row = 0; row < n; ++row) {
        if (starts[static_cast<std::size_t>(row)] != count) {
          fail("tensor '{}': row {} starts at {} but the bitmask puts it at {}", offsets.name, row,
               starts[static_cast<std::size_t>(row)], count);
        }
        for (std::int64_t col = 0; col < k; ++col) count += is_set(row, col);
      }
      if (count != values.numel()) {
        fail("tensor '{}' holds {} values but the bitmask sets {}", values.name, values.numel(), count);
      }
    }
    std::vector<std::byte> dense(static_cast<std::size_t>(n * k) * element);  // zero bits = +0 in every dtype
    std::int64_t next = 0;
    for (std::int64_t row = 0; row < n; ++row) {
      for (std::int64_t col = 0; col < k; ++col) {
        if (!is_set(row, col)) continue;
        std::memcpy(dense.data() + static_cast<std::size_t>(row * k + col) * element,
                    values.bytes.data() + static_cast<std::size_t>(next) * element, element);
        ++next;
      }
    }
    quant::release({values, bitmask});  // copied into `dense`
    return make_owned_tensor(module + ".weight", values.dtype, {n, k}, std::move(dense));
  }

  // Scales [n][groups] for the module's strategy, and the group count.
  static std::vector<float> scales_for(const TensorView& scale, const ModuleQuantization& q, std::int64_t n,
                                       std::int64_t groups) {
    const std::string why = q.group_size > 0   ? fmt::format("one scale per group of {} input columns", q.group_size)
                            : q.group_size < 0 ? std::string("one scale per output row (channel)")
                                               : std::string("one scale for the tensor");
    if (q.group_size == 0) {
      if (scale.numel() != 1)
        fail("tensor '{}': shape {}, expected a single value ({})", scale.name, shape_text(scale.shape), why);
      return std::vector<float>(static_cast<std::size_t>(n), quant::to_floats(scale)[0]);
    }
    expect_shape(scale, {n, groups}, why);
    return quant::to_floats(scale);
  }

  // Fills scales, zeros and groups of `m` (rows, cols, bits set) from the module's tensors.
  void fill_groups(QuantizedMatrix& m, const std::string& module, const ModuleQuantization& q, Packing packing,
                   std::vector<TensorView>& used) const {
    const std::int64_t groups = q.group_size > 0 ? ceil_div(m.cols, q.group_size) : 1;
    m.groups = groups;
    const TensorView scale = require(*base_, module + ".weight_scale", {DType::F16, DType::BF16, DType::F32});
    used.push_back(scale);
    m.scales = scales_for(scale, q, m.rows, groups);
    m.scale_dtype = scale.dtype;
    const int offset = 1 << (m.bits - 1);
    m.zeros.assign(static_cast<std::size_t>(m.rows * groups), static_cast<std::uint8_t>(offset));
    if (base_->contains(module + ".weight_zero_point")) {
      const TensorView zp = base_->load(module + ".weight_zero_point");
      used.push_back(zp);
      const std::vector<int> signed_zeros = zero_points(zp, m.rows, groups, m.bits, packing);
      for (std::size_t i = 0; i < signed_zeros.size(); ++i) {
        if (q.sym && signed_zeros[i] != 0) {
          fail("tensor '{}': symmetric quantization needs zero points of 0, found {}", zp.name, signed_zeros[i]);
        }
        m.zeros[i] = static_cast<std::uint8_t>(signed_zeros[i] + offset);
      }
    } else if (!q.sym) {
      fail("module '{}' is asymmetric but '{}.weight_zero_point' is missing", module, module);
    }
    if (base_->contains(module + ".weight_g_idx")) {
      const TensorView g_idx = require(*base_, module + ".weight_g_idx", {DType::I32, DType::I64});
      used.push_back(g_idx);
      expect_shape(g_idx, {m.cols}, "one group index per input column");
      const auto values = int_values(g_idx);
      m.group_of_col.resize(values.size());
      for (std::size_t col = 0; col < values.size(); ++col) {
        if (values[col] < 0 || values[col] >= groups) {
          fail("tensor '{}': entry {} is group {}, outside [0, {})", g_idx.name, col, values[col], groups);
        }
        m.group_of_col[col] = static_cast<std::int32_t>(values[col]);
      }
    } else if (q.act_order) {
      fail("module '{}': the config declares actorder 'group' but '{}.weight_g_idx' is missing", module, module);
    } else {
      m.group_of_col = contiguous_groups(m.cols, q.group_size);
    }
  }

  // `used`: every file tensor the matrix was read from (all mapped views).
  static QuantizedMatrix finish(QuantizedMatrix m, const ModuleQuantization& q, bool stored_2_4,
                                const std::vector<TensorView>& used) {
    // A 2:4 structure declared over dense storage is a claim about the data; keep the
    // flag (and so the sparse kernel) only where the codes bear it out.
    m.sparse_2_4 = q.sparse_2_4 || stored_2_4 || (q.sparse_2_4_unchecked && m.follows_2_4());
    m.stored_bytes = quant::stored_bytes(used);
    m.validate();
    quant::release(used);
    return m;
  }

  QuantizedMatrix unpack_packed(const std::string& module, const ModuleQuantization& q) const {
    const TensorView packed = require(*base_, module + ".weight_packed", {DType::I32});
    const TensorView shape = require(*base_, module + ".weight_shape", {DType::I64, DType::I32});
    const auto [n, k] = checked_shape(module, shape);
    if (packed.shape.size() != 2)
      fail("tensor '{}': expected 2 dimensions, got {}", packed.name, shape_text(packed.shape));
    // 3-bit rows are ceil(3K/32) words since 0.18 and ceil(K/10) before; the
    // width tells them apart, and the recorded version when both agree.
    Packing packing = Packing::Stream;
    if (32 % q.bits != 0) {
      const auto stream = quant::packed_words(k, q.bits, Packing::Stream);
      const auto per_word = quant::packed_words(k, q.bits, Packing::PerWord);
      const auto width = packed.shape[1];
      if ((width == per_word && width != stream) ||
          (width == per_word && version_before(quantization_.version, 0, 18))) {
        packing = Packing::PerWord;
      }
    }
    const auto words = quant::packed_words(k, q.bits, packing);
    expect_shape(packed, {n, words},
                 fmt::format("{}-bit codes of a [{}, {}] weight packed along the input dim", q.bits, n, k));
    QuantizedMatrix m;
    m.name = module;
    m.rows = n;
    m.cols = k;
    m.bits = q.bits;
    m.codes.resize(static_cast<std::size_t>(n * k));
    for (std::int64_t row = 0; row < n; ++row) {
      quant::unpack_codes(packed.bytes.data() + static_cast<std::size_t>(row * words) * 4, 4, k, q.bits, packing,
                          m.codes.data() + row * k);
    }
    std::vector<TensorView> used{packed, shape};
    fill_groups(m, module, q, packing, used);
    return finish(std::move(m), q, false, used);
  }

  QuantizedMatrix unpack_int8(const std::string& module, const ModuleQuantization& q) const {
    const bool is_sparse = sparse(module);
    TensorView weight = is_sparse ? densify(module) : base_->load(module + ".weight");
    if (weight.dtype != DType::I8)
      fail("tensor '{}' has dtype {}, expected I8 codes", weight.name, dtype_name(weight.dtype));
    const auto [n, k] = [&] {
      if (const auto expected = linear_module_shape(model_, module)) {
        expect_shape(weight, {(*expected)[0], (*expected)[1]}, "int-quantized weight");
        return *expected;
      }
      if (weight.shape.size() != 2)
        fail("tensor '{}': expected 2 dimensions, got {}", weight.name, shape_text(weight.shape));
      return std::array<std::int64_t, 2>{weight.shape[0], weight.shape[1]};
    }();
    QuantizedMatrix m;
    m.name = module;
    m.rows = n;
    m.cols = k;
    m.bits = q.bits;
    const int offset = 1 << (q.bits - 1);
    const auto stored = weight.as<std::int8_t>();
    m.codes.resize(stored.size());
    for (std::size_t i = 0; i < stored.size(); ++i) {
      if (stored[i] < -offset || stored[i] >= offset) {
        fail("tensor '{}': value {} at {} is outside the {}-bit range [{}, {}]", weight.name, stored[i], i, q.bits,
             -offset, offset - 1);
      }
      m.codes[i] = static_cast<std::uint8_t>(stored[i] + offset);
    }
    // The file tensors behind the codes: the sparse parts, or `weight` itself (the
    // densified copy is owned, not mapped).
    std::vector<TensorView> used;
    if (is_sparse) {
      for (const char* part : {".compressed", ".bitmask", ".shape", ".row_offsets"}) {
        if (base_->contains(module + part)) used.push_back(base_->load(module + part));
      }
    } else {
      used.push_back(weight);
    }
    fill_groups(m, module, q, Packing::Stream, used);
    const bool stored_2_4 = is_sparse && !base_->contains(module + ".row_offsets");
    return finish(std::move(m), q, stored_2_4, used);
  }

  std::unique_ptr<SafetensorsWeights> base_;
  QuantizationConfig quantization_;
  ModelConfig model_;
};

}  // namespace

std::unique_ptr<WeightSource> make_compressed_tensors_weights(std::unique_ptr<SafetensorsWeights> base,
                                                              QuantizationConfig quantization, ModelConfig model) {
  return std::make_unique<CompressedTensorsWeights>(std::move(base), std::move(quantization), std::move(model));
}

}  // namespace nibble
