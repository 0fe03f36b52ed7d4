#pragma once
// Random weights for a mixture-of-experts layer, as a WeightSource: fp16 tensors
// for every module the config implies (router, shared expert), and the routed
// experts (and an optional dense MLP "dense.{gate,up,down}_proj") in fp16, 4-bit
// GPTQ-style groups or GGUF Q4_K blocks. Shared by the grouped-experts tests and
// bench/moe_layer_bench.cpp.
#include <array>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/block_format.h"
#include "common/error.h"
#include "common/half.h"
#include "loader/architecture.h"
#include "loader/model_config.h"
#include "loader/weight_source.h"
#include "random_quantized.h"

namespace nibble::testing {

enum class ExpertFormat {
  F16,
  Int4,           // 4-bit codes, fp16 scales and zero points per group of 128 inputs
  Q4K,            // GGUF Q4_K blocks (Q5_0 where the inputs are not a multiple of 256)
  Int4GateOnly,   // gate 4-bit, up and down fp16: gate and up cannot be stacked
};

// Random GGUF blocks with finite scales: any codes and sub-block scales are valid.
inline QuantizedMatrix random_blocks(std::mt19937& rng, std::int64_t rows, std::int64_t cols) {
  const BlockFormat format = cols % 256 == 0 ? BlockFormat::Q4_K : BlockFormat::Q5_0;
  const BlockFormatInfo& info = block_format_info(format);
  QuantizedMatrix m;
  m.name = std::string(info.name);
  m.rows = rows;
  m.cols = cols;
  m.block_format = format;
  const std::int64_t blocks = rows * (cols / info.elements);
  m.blocks.resize(static_cast<std::size_t>(blocks * info.bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : m.blocks) b = static_cast<std::byte>(byte(rng));
  // Q4_K: d and dmin lead the block (weight = d * scale * q - dmin * min, scales
  // and minimums 6-bit, q 4-bit); Q5_0: d leads (weight = d * (q - 16), q 5-bit).
  const std::vector<std::size_t> scale_offsets = format == BlockFormat::Q4_K ? std::vector<std::size_t>{0, 2}
                                                                             : std::vector<std::size_t>{0};
  const float step = format == BlockFormat::Q4_K ? 1e-4f : 3e-3f;
  const std::uint16_t half = f32_to_f16(step);
  for (std::int64_t b = 0; b < blocks; ++b) {
    for (const std::size_t offset : scale_offsets) {
      std::memcpy(m.blocks.data() + static_cast<std::size_t>(b * info.bytes) + offset, &half, 2);
    }
  }
  m.stored_bytes = m.blocks.size();
  return m;
}

class RandomMoeWeights final : public WeightSource {
 public:
  RandomMoeWeights(const ModelConfig& config, ExpertFormat format, std::int64_t dense_width = 0)
      : config_(config), format_(format), dense_width_(dense_width) {}
  std::vector<StoredTensorInfo> list() const override { return {}; }
  bool contains(const std::string&) const override { return true; }
  TensorView load(const std::string& name) const override {
    const auto shape = shape_of(name.substr(0, name.rfind('.')));
    std::mt19937 rng(seed(name));
    std::normal_distribution<float> normal(0.0f, 0.05f);
    const std::int64_t count = shape[0] * shape[1];
    std::vector<std::byte> bytes(static_cast<std::size_t>(count) * 2);
    for (std::int64_t i = 0; i < count; ++i) {
      const std::uint16_t half = f32_to_f16(normal(rng));
      std::memcpy(bytes.data() + 2 * i, &half, 2);
    }
    return make_owned_tensor(name, DType::F16, {shape[0], shape[1]}, std::move(bytes));
  }
  bool has_quantized(const std::string& module) const override {
    const bool expert = module.find(".experts.") != std::string::npos || module.starts_with("dense.");
    if (!expert || format_ == ExpertFormat::F16) return false;
    if (format_ == ExpertFormat::Int4GateOnly) return module.ends_with(".w1") || module.ends_with("gate_proj");
    return true;
  }
  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (!has_quantized(module)) return std::nullopt;
    const auto shape = shape_of(module);
    std::mt19937 rng(seed(module));
    if (format_ == ExpertFormat::Q4K) return random_blocks(rng, shape[0], shape[1]);
    QuantizedMatrix m = random_quantized(rng, {shape[0], shape[1], 4, 128});
    m.stored_bytes = static_cast<std::uint64_t>(shape[0] * shape[1] / 2);
    return m;
  }
  std::uint64_t file_bytes() const override { return 0; }

 private:
  static std::uint32_t seed(const std::string& name) {
    return static_cast<std::uint32_t>(std::hash<std::string>{}(name));
  }
  std::array<std::int64_t, 2> shape_of(const std::string& module) const {
    if (module.starts_with("dense.")) {
      return module == "dense.down_proj" ? std::array{config_.hidden_size, dense_width_}
                                         : std::array{dense_width_, config_.hidden_size};
    }
    if (const auto implied = linear_module_shape(config_, module)) return *implied;
    fail("no tensor for module '{}'", module);
  }

  ModelConfig config_;
  ExpertFormat format_;
  std::int64_t dense_width_;
};

}  // namespace nibble::testing
