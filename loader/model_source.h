#pragma once
// Opens a model from a path: a Hugging Face folder (config.json + safetensors) or a
// single .gguf file. Everything above the loader works from this one description.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "loader/weight_source.h"

namespace nibble {

enum class ModelFormat { HuggingFace, Gguf };

struct ModelSource {
  std::filesystem::path path;
  ModelFormat format = ModelFormat::HuggingFace;
  ModelConfig config;
  GenerationDefaults generation;
  // What a Hugging Face folder's quantization config declares (GPTQ, AWQ,
  // compressed-tensors); `weights` then unpacks those modules. Empty for plain
  // checkpoints and for GGUF, whose block types are per tensor (see list()).
  std::optional<QuantizationConfig> quantization;
  std::unique_ptr<WeightSource> weights;
  std::optional<std::string> chat_template;
};

// Throws nibble::Error with a clear message for a missing path, missing config,
// unknown architecture or a corrupt weight file.
ModelSource open_model(const std::filesystem::path& path);

}  // namespace nibble
