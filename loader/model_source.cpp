#include "loader/model_source.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "loader/architecture.h"
#include "loader/compressed_tensors.h"
#include "loader/fp8.h"
#include "loader/fused_weights.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/gptq.h"
#include "loader/json_file.h"
#include "loader/safetensors.h"

namespace nibble {
namespace {

using json = nlohmann::json;

std::optional<std::string> chat_template_from(const json& tokenizer_config) {
  if (!tokenizer_config.contains("chat_template")) return std::nullopt;
  const auto& value = tokenizer_config["chat_template"];
  if (value.is_string()) return value.get<std::string>();
  // Some models ship a list of named templates; "default" is the one chat uses.
  if (value.is_array()) {
    for (const auto& entry : value) {
      if (entry.value("name", "") == "default" && entry.contains("template")) return entry["template"].get<std::string>();
    }
  }
  return std::nullopt;
}

ModelSource open_gguf(const std::filesystem::path& path) {
  auto gguf = std::make_shared<const GgufFile>(path);
  ModelSource source;
  source.path = path;
  source.format = ModelFormat::Gguf;
  source.config = config_from_gguf(*gguf);
  source.generation.eos_token_ids = source.config.eos_token_ids;
  source.chat_template = gguf->find_string("tokenizer.chat_template");
  source.weights = make_gguf_weights(gguf, source.config);
  return source;
}

ModelSource open_hf_folder(const std::filesystem::path& folder) {
  ModelSource source;
  source.path = folder;
  source.format = ModelFormat::HuggingFace;
  const json config = read_json_file(folder / "config.json");
  try {
    source.config = parse_hf_config(config);
  } catch (const Error& e) {
    fail("{}: {}", folder.string(), e.what());
  }
  source.quantization = read_quantization_config(folder);
  if (std::filesystem::exists(folder / "generation_config.json")) {
    source.generation = parse_generation_config(read_json_file(folder / "generation_config.json"));
  }
  if (source.generation.eos_token_ids.empty()) source.generation.eos_token_ids = source.config.eos_token_ids;
  if (std::filesystem::exists(folder / "tokenizer_config.json")) {
    source.chat_template = chat_template_from(read_json_file(folder / "tokenizer_config.json"));
  }
  auto weights = SafetensorsWeights::open_folder(folder);
  if (!source.quantization) {
    source.weights = std::move(weights);
  } else if (source.quantization->method == QuantMethod::Fp8) {
    source.weights = make_fp8_weights(std::move(weights), *source.quantization, source.config);
  } else if (source.quantization->method == QuantMethod::CompressedTensors) {
    source.weights = make_compressed_tensors_weights(std::move(weights), *source.quantization, source.config);
  } else {
    source.weights = make_gptq_weights(std::move(weights), *source.quantization, source.config);
  }
  return source;
}

ModelSource open_any(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) fail("model path {} does not exist", path.string());
  if (std::filesystem::is_regular_file(path)) {
    if (path.extension() == ".gguf") return open_gguf(path);
    fail("{}: a model file must be .gguf; for safetensors pass the model folder", path.string());
  }
  if (std::filesystem::exists(path / "config.json")) return open_hf_folder(path);
  std::vector<std::filesystem::path> ggufs;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
  }
  if (ggufs.size() == 1) return open_gguf(ggufs.front());
  if (ggufs.size() > 1) fail("{}: holds several .gguf files; pass the one to load", path.string());
  fail("{}: not a model folder (no config.json and no .gguf file)", path.string());
}

}  // namespace

ModelSource open_model(const std::filesystem::path& path) {
  ModelSource source = open_any(path);
  // Whatever the format, fused tensors (Phi-3) reach the engine as their parts.
  const Architecture& arch = architecture_of(source.config.architecture);
  if (arch.has_fused()) source.weights = split_fused_weights(std::move(source.weights), arch, source.config);
  return source;
}

}  // namespace nibble
