#include "quant/checkpoint_writer.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/half.h"
#include "loader/model_config.h"
#include "loader/safetensors.h"

namespace nibble::quant {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // keys in the order the tools write them

// The compressed-tensors release recorded in `version`. 0.19.0 wrote the newest
// fixtures; its 3-bit packing is the dense stream we write (nibble's reader picks
// the packing by version). The sparse-bitmask compressors were dropped after
// 0.14, so checkpoints that use them record the last release that reads them.
constexpr const char* kCtVersion = "0.19.0";
constexpr const char* kCtSparseVersion = "0.14.0.1";

// Side files the serving tools read next to the weights.
constexpr std::array kSideFiles = {"tokenizer.json",      "tokenizer_config.json", "special_tokens_map.json",
                                   "generation_config.json", "chat_template.jinja", "chat_template.json",
                                   "tokenizer.model",     "vocab.json",           "merges.txt",
                                   "vocab.txt",           "added_tokens.json"};

// The one non-linear module that may be quantized: its rows are dequantized by the
// lookup, and a tied lm_head multiplies by the same quantized matrix.
constexpr const char* kEmbedding = "model.embed_tokens";

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
std::size_t index(std::int64_t i) { return static_cast<std::size_t>(i); }

// ---- Packing: LSB-first bit streams in little-endian int32 words.

// Writes `count` values of `bits` bits as one stream; stream word j lands at
// words[j * stride] (1 for a row of words, N for a column of an [rows, N] tensor).
// 3-bit values straddle words, as GPTQ and compressed-tensors >= 0.18 pack them.
void pack_stream(const std::uint8_t* values, std::int64_t count, int bits, std::uint32_t* words, std::size_t stride) {
  for (std::int64_t i = 0; i < count; ++i) {
    const auto bit = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(bits);
    const std::size_t word = bit / 32;
    const unsigned shift = bit % 32;
    const std::uint32_t value = values[i];
    words[word * stride] |= value << shift;
    if (shift + static_cast<unsigned>(bits) > 32) words[(word + 1) * stride] |= value >> (32 - shift);
  }
}

template <typename T>
TensorView owned(std::string name, DType dtype, std::vector<std::int64_t> shape, const std::vector<T>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return make_owned_tensor(std::move(name), dtype, std::move(shape), std::move(bytes));
}

// Scales [N][G] as fp16 bits in [G][N] (GPTQ) or [N][G] (compressed-tensors) order.
std::vector<std::uint16_t> fp16_scales(const QuantizedMatrix& m, bool transpose) {
  std::vector<std::uint16_t> out(m.scales.size());
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t g = 0; g < m.groups; ++g) {
      const std::int64_t at = transpose ? g * m.rows + n : n * m.groups + g;
      out[index(at)] = f32_to_f16(m.scales[index(n * m.groups + g)]);
    }
  }
  return out;
}

// GPTQ v1 ("gptq"): qweight [K*bits/32, N] packs each output column down the
// input dim; qzeros [G, N*bits/32] packs zero - 1 along the output dim.
std::vector<TensorView> pack_gptq(const std::string& module, const QuantizedMatrix& m) {
  const std::int64_t n = m.rows, k = m.cols, g = m.groups;
  const int bits = m.bits;
  std::vector<std::uint32_t> qweight(index(k * bits / 32 * n), 0);
  for (std::int64_t row = 0; row < n; ++row) {
    pack_stream(m.codes.data() + row * k, k, bits, qweight.data() + row, index(n));
  }
  const std::int64_t zero_words = n * bits / 32;
  std::vector<std::uint32_t> qzeros(index(g * zero_words), 0);
  std::vector<std::uint8_t> stored(index(n));
  for (std::int64_t group = 0; group < g; ++group) {
    for (std::int64_t row = 0; row < n; ++row) {
      stored[index(row)] = static_cast<std::uint8_t>(m.zeros[index(row * g + group)] - 1);
    }
    pack_stream(stored.data(), n, bits, qzeros.data() + group * zero_words, 1);
  }
  return {owned(module + ".qweight", DType::I32, {k * bits / 32, n}, qweight),
          owned(module + ".qzeros", DType::I32, {g, zero_words}, qzeros),
          owned(module + ".scales", DType::F16, {g, n}, fp16_scales(m, true)),
          owned(module + ".g_idx", DType::I32, {k}, m.group_of_col)};
}

// compressed-tensors pack-quantized: weight_packed [N, ceil(K*bits/32)] holds the
// unsigned codes (the signed value + 2^(bits-1)); asymmetric zero points are
// packed the same way down each group's column, [ceil(N*bits/32), G].
std::vector<TensorView> pack_compressed_tensors(const std::string& module, const QuantizedMatrix& m, bool sym,
                                                bool act_order) {
  const std::int64_t n = m.rows, k = m.cols, g = m.groups;
  const std::int64_t words = ceil_div(k * m.bits, 32);
  std::vector<std::uint32_t> packed(index(n * words), 0);
  for (std::int64_t row = 0; row < n; ++row) {
    pack_stream(m.codes.data() + row * k, k, m.bits, packed.data() + row * words, 1);
  }
  std::vector<TensorView> out{owned(module + ".weight_packed", DType::I32, {n, words}, packed),
                              owned(module + ".weight_scale", DType::F16, {n, g}, fp16_scales(m, false)),
                              owned(module + ".weight_shape", DType::I64, {2}, std::vector<std::int64_t>{n, k})};
  if (!sym) {
    const std::int64_t zero_words = ceil_div(n * m.bits, 32);
    std::vector<std::uint32_t> zp(index(zero_words * g), 0);
    std::vector<std::uint8_t> column(index(n));
    for (std::int64_t group = 0; group < g; ++group) {
      for (std::int64_t row = 0; row < n; ++row) column[index(row)] = m.zeros[index(row * g + group)];
      pack_stream(column.data(), n, m.bits, zp.data() + group, index(g));
    }
    out.push_back(owned(module + ".weight_zero_point", DType::I32, {zero_words, g}, zp));
  }
  if (act_order) out.push_back(owned(module + ".weight_g_idx", DType::I32, {k}, m.group_of_col));
  return out;
}

// ---- Pruned float weights in the stored dtype.

std::vector<std::byte> to_dtype(std::span<const float> values, DType dtype) {
  std::vector<std::byte> out(values.size() * dtype_size(dtype));
  if (dtype == DType::F32) {
    if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
    return out;
  }
  std::vector<std::uint16_t> halves(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    halves[i] = dtype == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
  }
  std::memcpy(out.data(), halves.data(), out.size());
  return out;
}

// Whether element i of `bytes` (in `dtype`) is nonzero, as compressed-tensors'
// `tensor != 0` decides (so -0.0 counts as pruned).
bool nonzero(const std::vector<std::byte>& bytes, DType dtype, std::size_t i) {
  if (dtype == DType::F32) {
    float v = 0;
    std::memcpy(&v, bytes.data() + i * 4, 4);
    return v != 0.0f;
  }
  std::uint16_t h = 0;
  std::memcpy(&h, bytes.data() + i * 2, 2);
  return (h & 0x7fffu) != 0;  // +-0 in both fp16 and bf16
}

void set_bit(std::vector<std::uint8_t>& mask, std::int64_t row_bytes, std::int64_t row, std::int64_t col) {
  mask[index(row * row_bytes + col / 8)] |= static_cast<std::uint8_t>(1u << (col % 8));
}

// Which weights a pruned module keeps: its nonzeros, and for 2:4 exactly two of
// every aligned run of 4 (filled up with zeros, as compressed-tensors' top-2 mask
// does), since sparse-24-bitmask readers require exactly two bits per run.
std::vector<bool> kept_weights(const std::string& module, const std::vector<std::byte>& dense, DType dtype,
                               std::int64_t rows, std::int64_t cols, bool two_four) {
  std::vector<bool> keep(index(rows * cols));
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = nonzero(dense, dtype, i);
  if (!two_four) return keep;
  for (std::int64_t row = 0; row < rows; ++row) {
    for (std::int64_t col = 0; col < cols; col += 4) {
      const std::size_t at = index(row * cols + col);
      int kept = 0;
      for (std::size_t j = 0; j < 4; ++j) kept += keep[at + j];
      if (kept > 2) {
        fail("{}: row {} columns {}..{} keep {} nonzero weights, but the checkpoint declares 2:4 sparsity", module,
             row, col, col + 3, kept);
      }
      for (std::size_t j = 0; j < 4 && kept < 2; ++j) {
        if (!keep[at + j]) {
          keep[at + j] = true;
          ++kept;
        }
      }
    }
  }
  return keep;
}

// sparse-24-bitmask (compressed [N, K/2], shape [2, 1]) or sparse-bitmask
// (compressed 1-D, shape [2], row_offsets [N]); bitmask [N, ceil(K/8)], bit c % 8
// of byte c / 8 flags column c (numpy packbits, bitorder "little").
std::vector<TensorView> pack_sparse(const std::string& module, const std::vector<std::byte>& dense, DType dtype,
                                    std::int64_t rows, std::int64_t cols, bool two_four) {
  const std::vector<bool> keep = kept_weights(module, dense, dtype, rows, cols, two_four);
  const std::size_t element = dtype_size(dtype);
  const std::int64_t row_bytes = ceil_div(cols, 8);
  std::vector<std::uint8_t> mask(index(rows * row_bytes), 0);
  std::vector<std::byte> values;
  std::vector<std::int64_t> row_offsets(index(rows));
  std::int64_t count = 0;
  for (std::int64_t row = 0; row < rows; ++row) {
    row_offsets[index(row)] = count;
    for (std::int64_t col = 0; col < cols; ++col) {
      const std::size_t at = index(row * cols + col);
      if (!keep[at]) continue;
      set_bit(mask, row_bytes, row, col);
      values.insert(values.end(), dense.begin() + static_cast<std::ptrdiff_t>(at * element),
                    dense.begin() + static_cast<std::ptrdiff_t>((at + 1) * element));
      ++count;
    }
  }
  std::vector<TensorView> out;
  if (two_four) {
    out.push_back(make_owned_tensor(module + ".compressed", dtype, {rows, cols / 2}, std::move(values)));
    out.push_back(owned(module + ".shape", DType::I64, {2, 1}, std::vector<std::int64_t>{rows, cols}));
  } else {
    out.push_back(make_owned_tensor(module + ".compressed", dtype, {count}, std::move(values)));
    out.push_back(owned(module + ".shape", DType::I64, {2}, std::vector<std::int64_t>{rows, cols}));
    out.push_back(owned(module + ".row_offsets", DType::I64, {rows}, row_offsets));
  }
  out.push_back(owned(module + ".bitmask", DType::U8, {rows, row_bytes}, mask));
  return out;
}

// The dense `module.weight` back from pack_sparse's tensors, for a checkpoint that
// must store it plainly after all (pruned-only modules beside quantized ones).
TensorView unpack_sparse(const std::string& module, const std::vector<TensorView>& tensors, std::int64_t rows,
                         std::int64_t cols) {
  const auto find = [&](const std::string& suffix) {
    return *std::find_if(tensors.begin(), tensors.end(), [&](const TensorView& t) { return t.name == module + suffix; });
  };
  const TensorView values = find(".compressed");
  const auto mask = find(".bitmask").as<std::uint8_t>();
  const std::size_t element = dtype_size(values.dtype);
  const std::int64_t row_bytes = ceil_div(cols, 8);
  std::vector<std::byte> dense(index(rows * cols) * element);  // zero bits are +0 in every float dtype
  std::size_t next = 0;
  for (std::int64_t row = 0; row < rows; ++row) {
    for (std::int64_t col = 0; col < cols; ++col) {
      if (!((mask[index(row * row_bytes + col / 8)] >> (col % 8)) & 1)) continue;
      std::memcpy(dense.data() + index(row * cols + col) * element, values.bytes.data() + next * element, element);
      ++next;
    }
  }
  return make_owned_tensor(module + ".weight", values.dtype, {rows, cols}, std::move(dense));
}

// ---- Checks.

void check_settings(const CheckpointSettings& s) {
  if (s.bits != 2 && s.bits != 3 && s.bits != 4 && s.bits != 8) {
    fail("checkpoint settings: {}-bit weights cannot be written (supported: 2, 3, 4, 8)", s.bits);
  }
  if (s.embedding_bits != 0 && s.embedding_bits != 2 && s.embedding_bits != 3 && s.embedding_bits != 4 &&
      s.embedding_bits != 8) {
    fail("checkpoint settings: {}-bit embeddings cannot be written (supported: 2, 3, 4, 8)", s.embedding_bits);
  }
  if (s.group_size == 0 || s.group_size < -1) {
    fail("checkpoint settings: group size {} is invalid (-1 for one group per row, or a positive size)",
         s.group_size);
  }
  if (!s.sparsity_structure.empty() && s.sparsity_structure != "2:4" && s.sparsity_structure != "unstructured") {
    fail("checkpoint settings: sparsity structure '{}' cannot be written (supported: 2:4, unstructured)",
         s.sparsity_structure);
  }
  if (s.format == CheckpointFormat::CompressedTensors && s.desc_act && s.group_size <= 0) {
    fail("checkpoint settings: compressed-tensors stores act-order (actorder \"group\") only with grouped scales; "
         "set a positive group size or turn desc_act off");
  }
}

void check_destination_free(const fs::path& out) {
  if (!fs::exists(out)) return;
  if (!fs::is_directory(out)) fail("{} exists and is not a folder; choose a new output folder", out.string());
  if (!fs::is_empty(out)) fail("{} exists and is not empty; choose a new output folder", out.string());
}

void check_source(const ModelSource& source) {
  if (source.format != ModelFormat::HuggingFace) {
    fail("{}: only Hugging Face folders can be rewritten as quantized checkpoints (this is a GGUF file)",
         source.path.string());
  }
  if (source.quantization) {
    fail("{}: the source is already quantized ({}); compress an unquantized model", source.path.string(),
         source.quantization->describe());
  }
  if (!source.weights) fail("{}: the source has no weights", source.path.string());
}

// Every scale must survive the fp16 the formats store: a rounded scale would
// make the written model differ from the one the codes were chosen for.
void check_scales(const std::string& module, const QuantizedMatrix& m) {
  for (std::int64_t row = 0; row < m.rows; ++row) {
    for (std::int64_t g = 0; g < m.groups; ++g) {
      const float s = m.scales[index(row * m.groups + g)];
      if (f16_to_f32(f32_to_f16(s)) != s) {
        fail("{}: scale {} (row {}, group {}) is not exactly representable in fp16, which the checkpoint stores; "
             "round scales to fp16 before choosing codes",
             module, s, row, g);
      }
    }
  }
}

void check_zeros(const std::string& module, const QuantizedMatrix& m, const CheckpointSettings& s) {
  const int center = 1 << (m.bits - 1);
  const int limit = 1 << m.bits;
  for (std::int64_t row = 0; row < m.rows; ++row) {
    for (std::int64_t g = 0; g < m.groups; ++g) {
      const int zero = m.zeros[index(row * m.groups + g)];
      if (s.sym && zero != center) {
        fail("{}: the settings are symmetric but row {} group {} has zero point {} (symmetric {}-bit means {})",
             module, row, g, zero, m.bits, center);
      }
      // v1 stores zero - 1 in `bits` bits: 0 does not fit, and 2^bits (all ones) reads
      // as 2^bits in exllama/vLLM but carries into the next field in GPTQModel's
      // v1 -> v2 conversion, so only [1, 2^bits - 1] means the same to every reader.
      if (s.format == CheckpointFormat::Gptq && (zero < 1 || zero >= limit)) {
        fail("{}: row {} group {} has zero point {}, which GPTQ v1 (stored zero - 1 in {} bits) cannot represent "
             "for every reader; asymmetric v1 zero points must lie in [1, {}] (or write CompressedTensors)",
             module, row, g, zero, m.bits, limit - 1);
      }
      if (s.format == CheckpointFormat::CompressedTensors && zero >= limit) {
        fail("{}: row {} group {} has zero point {}, outside the {}-bit range compressed-tensors stores", module,
             row, g, zero, m.bits);
      }
    }
  }
}

// The embedding and lm_head may have their own bits (CheckpointSettings::embedding_bits).
bool embedding_like(const std::string& module) { return module == kEmbedding || module == "lm_head"; }

int bits_of(const std::string& module, const CheckpointSettings& s) {
  return embedding_like(module) && s.embedding_bits != 0 ? s.embedding_bits : s.bits;
}

void check_quantized(const std::string& module, const QuantizedMatrix& m, const CheckpointSettings& s) {
  m.validate();  // sizes, code range, group indices and a claimed 2:4 pattern
  if (m.offset != QuantizedMatrix::Offset::ZeroPoint) {
    fail("{}: GPTQ and compressed-tensors store zero points; a matrix with group minimums cannot be written", module);
  }
  if (m.bits != bits_of(module, s)) {
    fail("{}: {}-bit codes, but the checkpoint settings say {} bits for it", module, m.bits, bits_of(module, s));
  }
  const std::int64_t groups = s.group_size > 0 ? ceil_div(m.cols, s.group_size) : 1;
  if (m.groups != groups) {
    fail("{}: {} groups, but group size {} over {} input columns makes {}", module, m.groups, s.group_size, m.cols,
         groups);
  }
  if (!s.desc_act && m.group_of_col != contiguous_groups(m.cols, s.group_size)) {
    fail("{}: the columns are not in contiguous groups of {} (an act-order g_idx), but desc_act is off in the "
         "settings",
         module, s.group_size);
  }
  if (m.sparse_2_4 && s.sparsity_structure != "2:4") {
    fail("{}: marked 2:4-sparse, but the settings declare sparsity structure '{}'", module, s.sparsity_structure);
  }
  if (s.format == CheckpointFormat::CompressedTensors && s.sparsity_structure == "unstructured") {
    fail("{}: compressed-tensors cannot store a quantized module of an unstructured-pruned model (sparse-bitmask "
         "holds only unquantized weights); write GPTQ, prune 2:4, or do not quantize",
         module);
  }
  if (s.format == CheckpointFormat::Gptq && (m.cols * m.bits % 32 != 0 || m.rows * m.bits % 32 != 0)) {
    fail("{}: a [{}, {}] weight does not fill whole int32 words at {} bits, as GPTQ's qweight and qzeros need",
         module, m.rows, m.cols, m.bits);
  }
  check_scales(module, m);
  check_zeros(module, m, s);
}

std::int64_t zero_codes(const QuantizedMatrix& m) {
  std::int64_t zeros = 0;
  for (std::int64_t row = 0; row < m.rows; ++row) {
    for (std::int64_t col = 0; col < m.cols; ++col) {
      zeros += m.codes[index(row * m.cols + col)] == m.zeros[index(row * m.groups + m.group(col))];
    }
  }
  return zeros;
}

// "model.layers.0.mlp.up_proj" -> "^model\.layers\.0\.mlp\.up_proj$" (a GPTQModel dynamic key).
std::string exact_pattern(const std::string& module) {
  std::string out = "^";
  for (const char c : module) {
    if (c == '.') out += '\\';
    out += c;
  }
  return out + "$";
}

json read_ordered_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path.string());
  std::stringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

void write_json(const fs::path& path, const json& value) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << value.dump(2) << '\n';
  if (!out) fail("cannot write {}", path.string());
}

}  // namespace

// ---- State.

struct CheckpointWriter::State {
  // One module as it will be stored instead of `module.weight`.
  struct Module {
    bool quantized = false;
    bool sparse_2_4 = false;  // quantized: declared and checked 2:4; pruned: the 2:4 structure
    std::int64_t rows = 0, cols = 0;
    std::vector<TensorView> tensors;
  };

  const ModelSource& source;
  fs::path out;
  CheckpointSettings settings;
  std::map<std::string, StoredTensorInfo> stored;  // the source's tensors by name
  std::map<std::string, Module> modules;
  std::int64_t zero_weights = 0;  // pruned weights (zeros, or codes at the zero point), for global_sparsity
  bool finished = false;

  State(const ModelSource& source_in, fs::path out_in, CheckpointSettings settings_in)
      : source(source_in), out(std::move(out_in)), settings(std::move(settings_in)) {}

  bool gptq() const { return settings.format == CheckpointFormat::Gptq; }
  bool any_quantized() const {
    return std::any_of(modules.begin(), modules.end(), [](const auto& entry) { return entry.second.quantized; });
  }

  // Checks `module` may be added as a [rows, cols] weight; returns its stored dtype.
  DType claim(const std::string& module, std::int64_t rows, std::int64_t cols) const {
    if (finished) fail("{}: the checkpoint was already written (finish() was called)", module);
    if (modules.contains(module)) fail("{}: added twice", module);
    if (module != kEmbedding && !linear_module_shape(source.config, module)) {
      fail("{}: not a linear module or the token embedding of a {} model (norms stay unquantized)", module,
           source.config.architecture);
    }
    const auto it = stored.find(module + ".weight");
    if (it == stored.end()) fail("{}: the source has no tensor '{}.weight'", module, module);
    const auto& shape = it->second.shape;
    if (shape != std::vector<std::int64_t>{rows, cols}) {
      fail("{}: a [{}, {}] matrix was added, but the source's '{}.weight' is [{}]", module, rows, cols, module,
           fmt::join(shape, ", "));
    }
    const auto dtype = parse_dtype(it->second.stored_type);
    if (!dtype || (*dtype != DType::F32 && *dtype != DType::F16 && *dtype != DType::BF16)) {
      fail("{}: the source stores '{}.weight' as {}, not a float type", module, module, it->second.stored_type);
    }
    return *dtype;
  }

  // Linear modules the source holds weights for (decoder projections, an untied lm_head).
  std::vector<std::string> linear_modules() const {
    std::vector<std::string> out_modules;
    for (const auto& [name, info] : stored) {
      if (!name.ends_with(".weight")) continue;
      const std::string module = name.substr(0, name.size() - 7);
      if (module != kEmbedding && linear_module_shape(source.config, module)) out_modules.push_back(module);
    }
    return out_modules;
  }

  // compressed-tensors targets/ignore selecting exactly `chosen` among the linear
  // modules: "Linear" minus the rest, as llm-compressor writes (lm_head is always
  // named when not chosen, tied or not).
  json linear_selection_ignore(const std::set<std::string>& chosen) const {
    json ignore = json::array();
    if (!chosen.contains("lm_head")) ignore.push_back("lm_head");
    for (const auto& module : linear_modules()) {
      if (module != "lm_head" && !chosen.contains(module)) ignore.push_back(module);
    }
    return ignore;
  }

  double global_sparsity() const {
    std::int64_t total = 0;
    for (const auto& [name, info] : stored) {
      std::int64_t numel = 1;
      for (const auto d : info.shape) numel *= d;
      total += numel;
    }
    return total > 0 ? static_cast<double>(zero_weights) / static_cast<double>(total) : 0.0;
  }

  std::string quantizer() const {
    return settings.tool_version.empty() ? std::string("nibble") : "nibble:" + settings.tool_version;
  }

  json gptq_config() const;
  json compressed_tensors_config() const;
  std::vector<TensorView> output_tensors() const;
  void write_folder(const fs::path& folder) const;
};

// AutoGPTQ's keys (damp_percent, static_groups, true_sequential at the top level)
// and GPTQModel's (format, method, pack_dtype, meta), so both loaders, vLLM and
// transformers read it; config.json's quantization_config holds the same object.
json CheckpointWriter::State::gptq_config() const {
  const auto& s = settings;
  std::set<std::string> quantized;
  for (const auto& [module, entry] : modules) quantized.insert(module);
  json q;
  q["bits"] = s.bits;
  q["group_size"] = s.group_size;
  q["desc_act"] = s.desc_act;
  q["static_groups"] = s.static_groups;
  q["sym"] = s.sym;
  q["lm_head"] = quantized.contains("lm_head");
  // nibble's own key (GPTQ has no quantized embedding): only nibble reads such a folder.
  if (quantized.contains(kEmbedding)) q["embed_tokens"] = true;
  q["damp_percent"] = s.damp;
  q["true_sequential"] = true;
  q["method"] = "gptq";
  q["quant_method"] = "gptq";
  q["format"] = "gptq";
  q["checkpoint_format"] = "gptq";
  q["pack_dtype"] = "int32";
  // Decoder modules left plain are excluded by GPTQModel's "-:" dynamic rules,
  // which vLLM honours too; otherwise readers would expect their qweight.
  json dynamic = json::object();
  for (const auto& module : linear_modules()) {
    if (module != "lm_head" && !quantized.contains(module)) dynamic["-:" + exact_pattern(module)] = json::object();
  }
  if (s.embedding_bits != 0 && s.embedding_bits != s.bits) {
    for (const char* module : {kEmbedding, "lm_head"}) {
      if (quantized.contains(module)) dynamic["+:" + exact_pattern(module)] = {{"bits", s.embedding_bits}};
    }
  }
  if (!dynamic.empty()) q["dynamic"] = std::move(dynamic);
  json meta;
  meta["quantizer"] = json::array({quantizer()});
  meta["method"] = s.method;
  meta["damp_percent"] = s.damp;
  meta["static_groups"] = s.static_groups;
  meta["true_sequential"] = true;
  meta["act_group_aware"] = s.group_aware_order;
  if (!s.sparsity_structure.empty()) {
    meta["pruning"] = {{"method", s.pruning_method},
                       {"sparsity_structure", s.sparsity_structure},
                       {"sparsity", s.sparsity}};
  }
  q["meta"] = std::move(meta);
  return q;
}

// llm-compressor's layout (keys sorted, as transformers saves them): a single
// "group_0" W{bits}A16 scheme over Linear, and a sparsity_config when pruned.
json CheckpointWriter::State::compressed_tensors_config() const {
  const auto& s = settings;
  std::set<std::string> quantized, sparse;
  for (const auto& [module, entry] : modules) {
    if (entry.quantized) quantized.insert(module);
    if (!entry.quantized || entry.sparse_2_4) sparse.insert(module);
  }
  const bool has_quantized = !quantized.empty();
  // Pruned-only modules use the sparse compressors; beside quantized modules the
  // structure is only declared over dense storage (llm-compressor's 2:4 + W4A16).
  const std::string sparse_format = has_quantized ? "dense"
                                    : s.sparsity_structure == "2:4" ? "sparse-24-bitmask"
                                                                    : "sparse-bitmask";
  json sparsity = json::object();
  if (!sparse.empty()) {
    sparsity["format"] = sparse_format;
    sparsity["global_sparsity"] = global_sparsity();
    sparsity["ignore"] = linear_selection_ignore(sparse);
    sparsity["registry_requires_subclass"] = false;
    sparsity["sparsity_structure"] = s.sparsity_structure;
    sparsity["targets"] = json::array({"Linear"});
  }
  json q;
  if (!has_quantized) {
    q["quant_method"] = "compressed-tensors";
    q["sparsity_config"] = std::move(sparsity);
    q["transform_config"] = json::object();
    q["version"] = kCtSparseVersion;
    return q;
  }
  // A second scheme for the embedding and lm_head when they have their own bits.
  const bool own_embedding_scheme = s.embedding_bits != 0 && s.embedding_bits != s.bits &&
                                    (quantized.contains(kEmbedding) || quantized.contains("lm_head"));
  json weights;
  weights["actorder"] = s.desc_act ? json("group") : json(nullptr);
  weights["block_structure"] = nullptr;
  weights["dynamic"] = false;
  weights["group_size"] = s.group_size > 0 ? json(s.group_size) : json(nullptr);
  weights["num_bits"] = s.bits;
  weights["observer"] = "minmax";
  weights["observer_kwargs"] = json::object();
  weights["scale_dtype"] = nullptr;
  weights["strategy"] = s.group_size > 0 ? "group" : "channel";
  weights["symmetric"] = s.sym;
  weights["type"] = "int";
  weights["zp_dtype"] = s.sym ? json(nullptr) : json("torch.int8");
  json group;
  group["format"] = "pack-quantized";
  group["input_activations"] = nullptr;
  group["output_activations"] = nullptr;
  // compressed-tensors names the embedding by its module type, as llm-compressor's recipes do.
  group["targets"] = quantized.contains(kEmbedding) && !own_embedding_scheme ? json::array({"Linear", "Embedding"})
                                                                             : json::array({"Linear"});
  group["weights"] = std::move(weights);
  json embedding_group;
  if (own_embedding_scheme) {
    // The same scheme at other bits; lm_head named exactly, which outranks "Linear".
    embedding_group = group;
    embedding_group["targets"] = json::array();
    if (quantized.contains(kEmbedding)) embedding_group["targets"].push_back("Embedding");
    if (quantized.contains("lm_head")) embedding_group["targets"].push_back("lm_head");
    embedding_group["weights"]["num_bits"] = s.embedding_bits;
  }
  q["config_groups"] = {{"group_0", std::move(group)}};
  if (own_embedding_scheme) q["config_groups"]["group_1"] = std::move(embedding_group);
  q["format"] = "pack-quantized";
  q["global_compression_ratio"] = nullptr;
  q["ignore"] = linear_selection_ignore(quantized);
  q["kv_cache_scheme"] = nullptr;
  q["quant_method"] = "compressed-tensors";
  q["quantization_status"] = "compressed";
  q["sparsity_config"] = std::move(sparsity);
  q["transform_config"] = json::object();
  q["version"] = kCtVersion;
  return q;
}

// The source's tensors except replaced weights (mapped views, not copies), then
// each module's packed tensors.
std::vector<TensorView> CheckpointWriter::State::output_tensors() const {
  std::vector<TensorView> tensors;
  for (const auto& [name, info] : stored) {
    if (name.ends_with(".weight") && modules.contains(name.substr(0, name.size() - 7))) continue;
    TensorView view = source.weights->load(name);
    view.name = name;
    tensors.push_back(std::move(view));
  }
  const bool dense_pruned = !gptq() && any_quantized();
  for (const auto& [module, entry] : modules) {
    if (!entry.quantized && dense_pruned) {
      tensors.push_back(unpack_sparse(module, entry.tensors, entry.rows, entry.cols));
    } else {
      tensors.insert(tensors.end(), entry.tensors.begin(), entry.tensors.end());
    }
  }
  return tensors;
}

void CheckpointWriter::State::write_folder(const fs::path& folder) const {
  write_safetensors(folder / "model.safetensors", output_tensors(), {{"format", "pt"}});
  json config = read_ordered_json(source.path / "config.json");
  if (gptq()) {
    const json q = gptq_config();
    // The GPTQ kernels of vLLM and transformers run fp16 activations.
    config["torch_dtype"] = "float16";
    if (config.contains("dtype")) config["dtype"] = "float16";  // transformers 5's name for it
    config["quantization_config"] = q;
    write_json(folder / "quantize_config.json", q);
  } else {
    config["quantization_config"] = compressed_tensors_config();
  }
  write_json(folder / "config.json", config);
  for (const char* name : kSideFiles) {
    if (fs::exists(source.path / name)) fs::copy_file(source.path / name, folder / name);
  }
}

// ---- CheckpointWriter.

CheckpointWriter::CheckpointWriter(const ModelSource& source, std::filesystem::path out, CheckpointSettings settings) {
  check_settings(settings);
  check_source(source);
  out = out.lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "dir/" -> "dir"
  if (out.empty()) fail("checkpoint writer: empty output path");
  check_destination_free(out);
  state_ = std::make_unique<State>(source, std::move(out), std::move(settings));
  for (auto& info : source.weights->list()) state_->stored.emplace(info.name, std::move(info));
}

CheckpointWriter::~CheckpointWriter() = default;

void CheckpointWriter::add_quantized(const std::string& module, const QuantizedMatrix& matrix) {
  State& s = *state_;
  s.claim(module, matrix.rows, matrix.cols);
  check_quantized(module, matrix, s.settings);
  State::Module entry;
  entry.quantized = true;
  entry.sparse_2_4 = matrix.sparse_2_4;
  entry.rows = matrix.rows;
  entry.cols = matrix.cols;
  entry.tensors = s.gptq() ? pack_gptq(module, matrix)
                           : pack_compressed_tensors(module, matrix, s.settings.sym, s.settings.desc_act);
  if (!s.settings.sparsity_structure.empty()) s.zero_weights += zero_codes(matrix);
  s.modules.emplace(module, std::move(entry));
}

void CheckpointWriter::add_pruned(const std::string& module, std::span<const float> weights, std::int64_t rows,
                                  std::int64_t cols) {
  State& s = *state_;
  if (s.gptq()) {
    fail("{}: GPTQ checkpoints hold only quantized weights, so a pruned but unquantized module cannot be written; "
         "use the CompressedTensors format",
         module);
  }
  if (s.settings.sparsity_structure.empty()) {
    fail("{}: added as pruned, but the settings declare no sparsity structure (2:4 or unstructured)", module);
  }
  const DType dtype = s.claim(module, rows, cols);
  if (weights.size() != index(rows * cols)) {
    fail("{}: {} weights for a [{}, {}] matrix", module, weights.size(), rows, cols);
  }
  const bool two_four = s.settings.sparsity_structure == "2:4";
  if (two_four && cols % 4 != 0) fail("{}: 2:4 sparsity needs a multiple of 4 input columns, got {}", module, cols);
  const std::vector<std::byte> dense = to_dtype(weights, dtype);
  State::Module entry;
  entry.sparse_2_4 = two_four;
  entry.rows = rows;
  entry.cols = cols;
  entry.tensors = pack_sparse(module, dense, dtype, rows, cols, two_four);
  for (std::size_t i = 0; i < weights.size(); ++i) s.zero_weights += !nonzero(dense, dtype, i);
  s.modules.emplace(module, std::move(entry));
}

void CheckpointWriter::finish() {
  State& s = *state_;
  if (s.finished) fail("{}: the checkpoint was already written", s.out.string());
  if (s.modules.empty()) fail("{}: nothing to write: no module was added", s.out.string());
  check_destination_free(s.out);
  // Everything goes into a sibling folder renamed into place at the end, so a
  // failure (disk full, a bad module) never leaves a half-written model at `out`.
  const fs::path temporary = s.out.parent_path() / fmt::format("{}.tmp-{}", s.out.filename().string(), ::getpid());
  std::error_code ignored;
  try {
    fs::remove_all(temporary, ignored);
    fs::create_directories(temporary);
    s.write_folder(temporary);
    fs::rename(temporary, s.out);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temporary, ignored);
    fail("cannot write {}: {}", s.out.string(), e.what());
  } catch (...) {
    fs::remove_all(temporary, ignored);
    throw;
  }
  s.finished = true;
}

}  // namespace nibble::quant
