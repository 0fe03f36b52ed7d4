#pragma once
// The JSON side files of a checkpoint (config.json, quantize_config.json,
// model.safetensors.index.json, ...), read with errors that name the file.
#include <filesystem>

#include <nlohmann/json.hpp>

namespace nibble {

// Throws nibble::Error when the file cannot be read or is not valid JSON.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace nibble
