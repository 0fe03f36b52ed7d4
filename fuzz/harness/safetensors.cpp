// A Hugging Face model folder from untrusted bytes. The first input byte picks the
// file the rest of the input becomes:
//   0: model.safetensors  (header JSON, offsets, dtypes, shapes)
//   1: config.json        (the model config; its quantization_config too)
//   2: quantize_config.json beside an empty config.json (GPTQ/AWQ settings)
// Every rejection must be a nibble::Error naming what is wrong.
#include <cstdint>
#include <filesystem>
#include <string>

#include "common/error.h"
#include "fuzz_util.h"
#include "loader/json_file.h"
#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"

namespace {

const std::filesystem::path& folder() {
  static const std::filesystem::path path = [] {
    auto p = nibble::fuzz::scratch_file(".model");
    std::filesystem::create_directories(p);
    return p;
  }();
  return path;
}

void check_safetensors(const std::filesystem::path& path) {
  const nibble::SafetensorsFile file(path);
  for (const auto& tensor : file.tensors()) {
    const auto* begin = tensor.bytes.data();
    if (tensor.numel() < 0) nibble::fuzz::violated("negative numel");
    if (file.find(tensor.name) != &tensor) nibble::fuzz::violated("find() disagrees with tensors()");
    // Touch the first and last byte: the reader promised they lie inside the mapping.
    if (!tensor.bytes.empty()) {
      volatile auto first = begin[0];
      volatile auto last = begin[tensor.bytes.size() - 1];
      (void)first, (void)last;
    }
  }
}

void check_config(const std::filesystem::path& dir) {
  const auto json = nibble::read_json_file(dir / "config.json");
  const auto config = nibble::parse_hf_config(json);
  for (const char* module : {"lm_head", "model.embed_tokens", "model.layers.0.self_attn.q_proj",
                             "model.layers.0.mlp.down_proj", "model.layers.99999999999.mlp.up_proj"}) {
    (void)nibble::linear_module_shape(config, module);
  }
  // What nibble writes for a config it accepted must be accepted again.
  try {
    (void)nibble::parse_hf_config(nibble::to_hf_config(config));
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    nibble::fuzz::violated("to_hf_config() of an accepted config is rejected");
  }
  (void)nibble::read_quantization_config(dir);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto mode = data[0] % 3;
  ++data, --size;
  const auto& dir = folder();
  try {
    if (mode == 0) {
      nibble::fuzz::write_file(dir / "model.safetensors", data, size);
      check_safetensors(dir / "model.safetensors");
    } else if (mode == 1) {
      std::filesystem::remove(dir / "quantize_config.json");
      nibble::fuzz::write_file(dir / "config.json", data, size);
      check_config(dir);
    } else {
      static const std::uint8_t empty_object[] = {'{', '}'};
      nibble::fuzz::write_file(dir / "config.json", empty_object, sizeof empty_object);
      nibble::fuzz::write_file(dir / "quantize_config.json", data, size);
      (void)nibble::read_quantization_config(dir);
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
