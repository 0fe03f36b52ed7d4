#include "quant/gguf_writer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include <map>

#include "common/error.h"
#include "common/half.h"
#include "loader/gguf_model.h"
#include "quant/block_codec.h"
#include "quant/gguf_file_writer.h"
#include "quant/gguf_hf_metadata.h"

namespace nibble::quant {
namespace {

struct RecipeEntry {
  std::string_view name;
  GgmlType base;
  bool mixed;
  std::uint32_t file_type;  // llama.cpp's LLAMA_FTYPE_MOSTLY_*
};
constexpr RecipeEntry kRecipes[] = {
    {"Q4_0", GgmlType::Q4_0, false, 2},  {"Q4_1", GgmlType::Q4_1, false, 3},  {"Q8_0", GgmlType::Q8_0, false, 7},
    {"Q5_0", GgmlType::Q5_0, false, 8},  {"Q5_1", GgmlType::Q5_1, false, 9},  {"Q4_K", GgmlType::Q4_K, false, 14},
    {"Q5_K", GgmlType::Q5_K, false, 16}, {"Q6_K", GgmlType::Q6_K, false, 18}, {"Q4_K_M", GgmlType::Q4_K, true, 15},
};

// A K-quant's stand-in for rows that are not whole super-blocks.
GgmlType fallback(GgmlType type, std::int64_t cols) {
  if (cols % 256 == 0) return type;
  switch (type) {
    case GgmlType::Q4_K: return GgmlType::Q5_0;
    case GgmlType::Q5_K: return GgmlType::Q5_1;
    case GgmlType::Q6_K: return GgmlType::Q8_0;
    default: return type;
  }
}

}  // namespace

GgufRecipe GgufRecipe::parse(const std::string& name) {
  std::string known;
  for (const auto& entry : kRecipes) {
    if (entry.name == name) return GgufRecipe{name, entry.base, entry.mixed, {}};
    known += fmt::format("{}{}", known.empty() ? "" : ", ", entry.name);
  }
  fail("unknown GGUF type '{}' (choose one of {})", name, known);
}

std::uint32_t GgufRecipe::file_type() const {
  if (!module_types.empty()) {
    std::map<GgmlType, int> counts;
    for (const auto& [module, type] : module_types) ++counts[type];
    const auto most = std::max_element(counts.begin(), counts.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
    for (const auto& entry : kRecipes) {
      if (!entry.mixed && entry.base == most->first) return entry.file_type;
    }
  }
  for (const auto& entry : kRecipes) {
    if (entry.name == name) return entry.file_type;
  }
  fail("unknown GGUF type '{}'", name);
}

GgmlType GgufRecipe::type_for(TensorRole role, std::int64_t layer, std::int64_t layers, std::int64_t cols,
                              bool tied) const {
  GgmlType type = base;
  const bool output = role == TensorRole::LmHead || (role == TensorRole::TokenEmbedding && tied);
  if (output) {
    type = base == GgmlType::Q8_0 ? GgmlType::Q8_0 : GgmlType::Q6_K;
  } else if (mixed && (role == TensorRole::Value || role == TensorRole::Down)) {
    const std::int64_t eighth = std::max<std::int64_t>(1, layers / 8);
    if (layer < eighth || layer >= layers - eighth || layer % 3 == 1) type = GgmlType::Q6_K;
  }
  type = fallback(type, cols);
  return cols % 32 == 0 ? type : GgmlType::F16;
}

struct GgufWriter::State {
  const ModelSource* source = nullptr;
  std::filesystem::path out;
  GgufRecipe recipe;
  std::string tool_version;
  const Architecture* arch = nullptr;
  std::shared_ptr<const GgufFile> gguf;
  struct Encoded {
    GgmlType type;
    std::int64_t rows, cols;
    std::vector<std::byte> blocks;
  };
  std::map<std::string, Encoded> modules;  // by HF module name
  bool tied = false;
  bool finished = false;
};

GgufWriter::GgufWriter(const ModelSource& source, std::filesystem::path out, GgufRecipe recipe,
                       std::string tool_version)
    : state_(std::make_unique<State>()) {
  if (std::filesystem::exists(out) && !std::filesystem::is_regular_file(out)) {
    fail("{} exists and is not a file", out.string());
  }
  State& s = *state_;
  s.source = &source;
  s.out = std::move(out);
  s.recipe = std::move(recipe);
  s.tool_version = std::move(tool_version);
  s.arch = &architecture_of(source.config.architecture);
  if (source.format == ModelFormat::Gguf) {
    s.gguf = std::make_shared<GgufFile>(source.path);
    s.tied = s.gguf->find_tensor("output.weight") == nullptr;
  } else {
    s.tied = !source.weights->contains("lm_head.weight");
  }
}

GgufWriter::~GgufWriter() = default;

std::optional<GgmlType> GgufWriter::block_type(const std::string& module, std::int64_t /*rows*/,
                                               std::int64_t cols) const {
  if (const auto chosen = state_->recipe.module_types.find(module); chosen != state_->recipe.module_types.end()) {
    return chosen->second;
  }
  const auto ref = state_->arch->parse_module(module);
  if (!ref) fail("'{}' is not a module of {}", module, state_->source->config.architecture);
  const GgmlType type = state_->recipe.type_for(ref->role, ref->layer, state_->source->config.num_layers, cols,
                                                state_->tied);
  if (type == GgmlType::F16) fail("module '{}' has {} input columns, not whole 32-weight blocks", module, cols);
  return type;
}

void GgufWriter::add_blocks(const std::string& module, GgmlType type, std::vector<std::byte> blocks, std::int64_t rows,
                            std::int64_t cols) {
  State& s = *state_;
  if (s.modules.contains(module)) fail("module '{}' added twice", module);
  const BlockCodec codec(type);
  if (cols % codec.elements() != 0 || blocks.size() != static_cast<std::size_t>(rows * cols / codec.elements() * codec.bytes())) {
    fail("module '{}': {} bytes are not [{}, {}] in {} blocks", module, blocks.size(), rows, cols, ggml_type_name(type));
  }
  s.modules.emplace(module, State::Encoded{type, rows, cols, std::move(blocks)});
}

void GgufWriter::add_quantized(const std::string& module, const QuantizedMatrix& /*matrix*/) {
  fail("module '{}': GGUF output stores GGUF block types only (the compressor encodes them through a block codec)",
       module);
}

void GgufWriter::add_pruned(const std::string& module, std::span<const float>, std::int64_t, std::int64_t) {
  fail("module '{}': pruned float modules have no GGUF form in nibble's writer", module);
}

namespace {

// One tensor of the source, under its GGUF name, in GGUF row order for anything
// copied as stored (GGUF sources) or as HF stores it (HF sources).
struct SourceTensor {
  std::string gguf_name;
  std::optional<HfTensor> hf;
  std::vector<std::int64_t> shape;
  const GgufTensor* gguf = nullptr;  // GGUF source
};

std::vector<float> widened(const TensorView& view) {
  std::vector<float> out(static_cast<std::size_t>(view.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    switch (view.dtype) {
      case DType::F32: std::memcpy(&out[i], view.bytes.data() + 4 * i, 4); break;
      case DType::F16: out[i] = f16_to_f32(view.as<std::uint16_t>()[i]); break;
      case DType::BF16: out[i] = bf16_to_f32(view.as<std::uint16_t>()[i]); break;
      default: fail("tensor '{}' is stored as {}; GGUF output starts from F32, F16 or BF16", view.name, dtype_name(view.dtype));
    }
  }
  return out;
}

std::vector<std::byte> bytes_of(const std::vector<float>& values, GgmlType type) {
  std::vector<std::byte> out(values.size() * (type == GgmlType::F32 ? 4 : 2));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (type == GgmlType::F32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const std::uint16_t h = f32_to_f16(values[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

}  // namespace

void GgufWriter::finish() {
  State& s = *state_;
  if (s.finished) fail("GGUF writer finished twice");
  const ModelConfig& config = s.source->config;
  const bool from_gguf = s.gguf != nullptr;
  GgufFileWriter file;
  std::vector<SourceTensor> tensors;
  if (from_gguf) {
    for (const auto& [key, value] : s.gguf->metadata()) {
      if (key == "general.alignment" || key == "general.file_type" || key == "general.quantization_version") continue;
      file.set(key, value);
    }
    for (const GgufTensor& tensor : s.gguf->tensors()) {
      tensors.push_back({tensor.name, hf_tensor_of_gguf(*s.arch, tensor.name), tensor.shape, &tensor});
    }
  } else {
    set_hf_metadata(*s.source, file);
    // llama.cpp's order: the embedding, each layer's tensors, then the rest.
    std::vector<std::pair<std::int64_t, SourceTensor>> keyed;
    for (const auto& info : s.source->weights->list()) {
      const auto name = gguf_tensor_name(*s.arch, info.name);
      if (!name) {
        spdlog::warn("gguf_skip tensor={} reason=\"no GGUF name in {}\"", info.name, config.architecture);
        continue;
      }
      auto hf = hf_tensor_of_gguf(*s.arch, *name);
      const std::int64_t key = name->starts_with("blk.") ? std::stoll(name->substr(4)) : (hf && hf->role == TensorRole::TokenEmbedding ? -1 : config.num_layers);
      keyed.push_back({key, SourceTensor{*name, std::move(hf), info.shape, nullptr}});
    }
    std::stable_sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [key, tensor] : keyed) tensors.push_back(std::move(tensor));
  }
  file.set("general.file_type", s.recipe.file_type());
  file.set("general.quantization_version", std::uint32_t{2});
  if (!s.tool_version.empty()) file.set("general.quantized_by", fmt::format("nibble {}", s.tool_version));

  // The tensor's values in HF row order (q/k un-permuted), as float32.
  const auto values_of = [&](const SourceTensor& t) {
    if (from_gguf) {
      std::vector<float> values(static_cast<std::size_t>(t.gguf->numel()));
      dequantize_to_f32(*t.gguf, values);
      return values;
    }
    return widened(s.source->weights->load(t.hf->name));
  };
  std::size_t used = 0;
  for (const SourceTensor& t : tensors) {
    const auto& hf = t.hf;
    const std::string module = hf && hf->name.ends_with(".weight") ? hf->name.substr(0, hf->name.size() - 7) : "";
    const bool rope_rows = s.arch->gguf_rope_rows_interleaved && hf &&
                           (hf->role == TensorRole::Query || hf->role == TensorRole::Key);
    const std::int64_t rope_heads = hf && hf->role == TensorRole::Query ? config.num_heads : config.num_kv_heads;
    // HF rows to llama.cpp's order where the architecture stores them interleaved.
    const auto gguf_rows = [&](std::vector<std::byte> data, std::int64_t rows) {
      if (!rope_rows) return data;
      std::vector<std::byte> permuted(data.size());
      halves_to_interleaved_rope_rows(data, permuted, rows, rope_heads);
      return permuted;
    };
    auto encoded = module.empty() ? s.modules.end() : s.modules.find(module);
    if (encoded != s.modules.end()) {
      State::Encoded& e = encoded->second;
      if (t.shape != std::vector<std::int64_t>{e.rows, e.cols}) {
        fail("module '{}' was encoded as [{}, {}] but the source tensor '{}' has another shape", module, e.rows,
             e.cols, t.gguf_name);
      }
      file.add_tensor(t.gguf_name, e.type, t.shape, gguf_rows(std::move(e.blocks), e.rows));
      ++used;
      continue;
    }
    const bool matrix = hf && (hf->role == TensorRole::TokenEmbedding || hf->role == TensorRole::LmHead) &&
                        t.shape.size() == 2;
    const GgmlType matrix_type =
        matrix ? s.recipe.type_for(hf->role, 0, config.num_layers, t.shape[1], s.tied) : GgmlType::F16;
    if (matrix && matrix_type != GgmlType::F16) {
      // Embedding and output rows are not q/k rows: no reordering either way.
      const auto values = values_of(t);
      file.add_tensor(t.gguf_name, matrix_type, t.shape, encode_rows(BlockCodec(matrix_type), values, t.shape[0], t.shape[1]));
    } else if (from_gguf) {
      file.add_tensor(t.gguf_name, t.gguf->type, t.shape, {t.gguf->data.begin(), t.gguf->data.end()});
    } else {
      // As llama.cpp's converter stores them: vectors (norms, biases) in F32, matrices in F16.
      const GgmlType type = t.shape.size() == 1 ? GgmlType::F32 : GgmlType::F16;
      file.add_tensor(t.gguf_name, type, t.shape, gguf_rows(bytes_of(values_of(t), type), t.shape[0]));
    }
  }
  if (used != s.modules.size()) {
    for (const auto& [module, e] : s.modules) {
      if (!e.blocks.empty()) fail("module '{}' has no tensor in {}", module, s.source->path.string());
    }
  }
  file.write(s.out);
  s.finished = true;
}

}  // namespace nibble::quant
