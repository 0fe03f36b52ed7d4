#include "quant/gguf_writer.h"

#include <fmt/format.h>

#include <map>

#include "common/error.h"
#include "loader/gguf_model.h"
#include "quant/block_codec.h"
#include "quant/gguf_file_writer.h"

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
    if (entry.name == name) return GgufRecipe{name, entry.base, entry.mixed};
    known += fmt::format("{}{}", known.empty() ? "" : ", ", entry.name);
  }
  fail("unknown GGUF type '{}' (choose one of {})", name, known);
}

std::uint32_t GgufRecipe::file_type() const {
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
  if (source.format != ModelFormat::Gguf) {
    fail("GGUF output reads a GGUF source (F16/BF16/F32, as llama.cpp's convert_hf_to_gguf.py writes it); "
         "{} is a Hugging Face folder",
         source.path.string());
  }
  if (std::filesystem::exists(out) && !std::filesystem::is_regular_file(out)) {
    fail("{} exists and is not a file", out.string());
  }
  State& s = *state_;
  s.source = &source;
  s.out = std::move(out);
  s.recipe = std::move(recipe);
  s.tool_version = std::move(tool_version);
  s.arch = &architecture_of(source.config.architecture);
  s.gguf = std::make_shared<GgufFile>(source.path);
  s.tied = s.gguf->find_tensor("output.weight") == nullptr;
}

GgufWriter::~GgufWriter() = default;

std::optional<GgmlType> GgufWriter::block_type(const std::string& module, std::int64_t /*rows*/,
                                               std::int64_t cols) const {
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

void GgufWriter::finish() {
  State& s = *state_;
  if (s.finished) fail("GGUF writer finished twice");
  const GgufFile& gguf = *s.gguf;
  const ModelConfig& config = s.source->config;
  GgufFileWriter file;
  for (const auto& [key, value] : gguf.metadata()) {
    if (key == "general.alignment" || key == "general.file_type" || key == "general.quantization_version") continue;
    file.set(key, value);
  }
  file.set("general.file_type", s.recipe.file_type());
  file.set("general.quantization_version", std::uint32_t{2});
  if (!s.tool_version.empty()) file.set("general.quantized_by", fmt::format("nibble {}", s.tool_version));

  std::size_t used = 0;
  for (const GgufTensor& tensor : gguf.tensors()) {
    const auto hf = hf_tensor_of_gguf(*s.arch, tensor.name);
    const std::string module = hf && hf->name.ends_with(".weight") ? hf->name.substr(0, hf->name.size() - 7) : "";
    auto encoded = module.empty() ? s.modules.end() : s.modules.find(module);
    if (encoded != s.modules.end()) {
      State::Encoded& e = encoded->second;
      if (tensor.shape != std::vector<std::int64_t>{e.rows, e.cols}) {
        fail("module '{}' was encoded as [{}, {}] but the source tensor '{}' has another shape", module, e.rows,
             e.cols, tensor.name);
      }
      std::vector<std::byte> data = std::move(e.blocks);
      if (s.arch->gguf_rope_rows_interleaved && (hf->role == TensorRole::Query || hf->role == TensorRole::Key)) {
        std::vector<std::byte> permuted(data.size());
        halves_to_interleaved_rope_rows(data, permuted, e.rows,
                                        hf->role == TensorRole::Query ? config.num_heads : config.num_kv_heads);
        data = std::move(permuted);
      }
      file.add_tensor(tensor.name, e.type, tensor.shape, std::move(data));
      ++used;
      continue;
    }
    const bool matrix = hf && (hf->role == TensorRole::TokenEmbedding || hf->role == TensorRole::LmHead) &&
                        tensor.shape.size() == 2;
    if (matrix) {
      const GgmlType type = s.recipe.type_for(hf->role, 0, config.num_layers, tensor.shape[1], s.tied);
      if (type != GgmlType::F16) {
        std::vector<float> values(static_cast<std::size_t>(tensor.numel()));
        dequantize_to_f32(tensor, values);
        file.add_tensor(tensor.name, type, tensor.shape,
                        encode_rows(BlockCodec(type), values, tensor.shape[0], tensor.shape[1]));
        continue;
      }
    }
    file.add_tensor(tensor.name, tensor.type, tensor.shape, {tensor.data.begin(), tensor.data.end()});
  }
  if (used != s.modules.size()) {
    for (const auto& [module, e] : s.modules) {
      if (!e.blocks.empty()) fail("module '{}' has no tensor in {}", module, gguf.path().string());
    }
  }
  file.write(s.out);
  s.finished = true;
}

}  // namespace nibble::quant
