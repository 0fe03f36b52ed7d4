// FP8 checkpoints' configs (DeepSeek's quant_method "fp8", compressed-tensors
// float-quantized) and fp8_matrix, which turns an F8_E4M3 weight and its scale
// grid into the format-neutral matrix: every grid shape the two families write,
// and the refusals, each naming what is wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include <nlohmann/json.hpp>

#include "common/fp8.h"
#include "loader/fp8.h"
#include "loader/quantization_config.h"
#include "test_util.h"

namespace nibble {
namespace {

QuantizationConfig parse(const char* text) { return parse_quantization_config(nlohmann::ordered_json::parse(text)); }

TEST(Fp8Config, DeepSeekBlocksCoverTheDecoderLinearsOnly) {
  const QuantizationConfig q = parse(R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                         "weight_block_size": [128, 64], "modules_to_not_convert": ["mlp.gate."]})");
  EXPECT_EQ(q.method, QuantMethod::Fp8);
  EXPECT_EQ(q.describe(), "fp8 e4m3, block 128x64, 1 modules kept plain");
  const auto up = q.module("model.layers.3.mlp.up_proj");
  ASSERT_TRUE(up.has_value());
  EXPECT_TRUE(up->fp8());
  EXPECT_EQ(up->block_rows, 128);
  EXPECT_EQ(up->group_size, 64);
  const Fp8ScaleBlocks blocks = fp8_scale_blocks(*up);
  EXPECT_EQ(blocks.block_rows, 128);
  EXPECT_EQ(blocks.block_cols, 64);
  EXPECT_FALSE(q.module("lm_head").has_value());
  EXPECT_FALSE(q.module("model.embed_tokens").has_value());
  EXPECT_FALSE(q.module("model.layers.3.mlp.gate.").has_value());
  EXPECT_EQ(q.to_json()["block_rows"], 128);
}

TEST(Fp8Config, RefusesWhatItCannotHonour) {
  testing::expect_error([] { parse(R"({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]})"); },
                        {"fmt 'e5m2'", "only e4m3"});
  testing::expect_error([] { parse(R"({"quant_method": "fp8", "fmt": "e4m3"})"); }, {"no weight_block_size"});
  testing::expect_error([] { parse(R"({"quant_method": "fp8", "weight_block_size": [128, 0]})"); },
                        {"weight_block_size", "two positive integers", "[128,0]"});
  testing::expect_error([] { parse(R"({"quant_method": "fp8", "weight_block_size": [128, 128],
                                      "activation_scheme": "weird"})"); },
                        {"activation_scheme 'weird'"});
}

std::string ct_config(const char* weights, const char* format = "float-quantized") {
  return std::string(R"({"quant_method": "compressed-tensors", "format": ")") + format +
         R"(", "config_groups": {"group_0": {"targets": ["Linear"], "weights": )" + weights + R"(}}, "ignore": ["lm_head"]})";
}

TEST(Fp8Config, CompressedTensorsFloatStrategies) {
  struct Case {
    const char* weights;
    std::int64_t block_rows, block_cols;
    const char* text;
  };
  for (const Case& c : {Case{R"({"num_bits": 8, "type": "float", "strategy": "tensor"})", 0, 0, "per tensor"},
                        Case{R"({"num_bits": 8, "type": "float", "strategy": "channel"})", 1, 0, "per channel"},
                        Case{R"({"num_bits": 8, "type": "float", "strategy": "group", "group_size": 32})", 1, 32,
                             "group 32"},
                        Case{R"({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]})",
                             128, 128, "block 128x128"}}) {
    const QuantizationConfig q = parse(ct_config(c.weights).c_str());
    const auto module = q.module("model.layers.0.self_attn.o_proj");
    ASSERT_TRUE(module.has_value()) << c.weights;
    EXPECT_EQ(module->format, "float-quantized");
    const Fp8ScaleBlocks blocks = fp8_scale_blocks(*module);
    EXPECT_EQ(blocks.block_rows, c.block_rows) << c.weights;
    EXPECT_EQ(blocks.block_cols, c.block_cols) << c.weights;
    EXPECT_NE(q.describe().find(std::string("float-quantized fp8 e4m3, ") + c.text), std::string::npos) << q.describe();
    EXPECT_FALSE(q.module("lm_head").has_value());
  }
  testing::expect_error([] { parse(ct_config(R"({"num_bits": 4, "type": "float"})").c_str()); },
                        {"float weights of 4 bits", "only 8"});
  testing::expect_error([] { parse(ct_config(R"({"num_bits": 8, "type": "float", "symmetric": false})").c_str()); },
                        {"asymmetric FP8"});
  testing::expect_error([] { parse(ct_config(R"({"num_bits": 8, "type": "float"})", "pack-quantized").c_str()); },
                        {"weight type 'float' (FP8) needs format float-quantized", "pack-quantized"});
  testing::expect_error([] { parse(ct_config(R"({"num_bits": 8, "type": "float", "strategy": "block"})").c_str()); },
                        {"block_structure"});
  testing::expect_error([] { parse(ct_config(R"({"num_bits": 8, "type": "int"})").c_str()); },
                        {"float-quantized needs weight type 'float'"});
}

TensorView tensor(const char* name, DType dtype, std::vector<std::int64_t> shape, const void* data) {
  std::int64_t count = 1;
  for (const auto d : shape) count *= d;
  std::vector<std::byte> bytes(static_cast<std::size_t>(count) * dtype_size(dtype));
  std::memcpy(bytes.data(), data, bytes.size());
  return make_owned_tensor(name, dtype, std::move(shape), std::move(bytes));
}

TEST(Fp8Matrix, ExpandsEveryGridShapeToRowScales) {
  std::mt19937 rng(9);
  std::vector<std::uint8_t> codes(5 * 300);
  for (auto& c : codes) c = static_cast<std::uint8_t>(rng() % 0x7e);
  const TensorView weight = tensor("m.weight", DType::F8_E4M3, {5, 300}, codes.data());
  // Blocks of 2 rows x 128 columns: a [3, 3] grid with partial last blocks.
  std::vector<float> grid(9);
  for (std::size_t i = 0; i < grid.size(); ++i) grid[i] = 0.001f * static_cast<float>(i + 1);
  const QuantizedMatrix m = fp8_matrix("m", weight, tensor("m.weight_scale_inv", DType::F32, {3, 3}, grid.data()),
                                       {2, 128}, std::array<std::int64_t, 2>{5, 300});
  EXPECT_EQ(m.code_dtype, DType::F8_E4M3);
  EXPECT_EQ(m.groups, 3);
  EXPECT_EQ(m.stored_bytes, 5u * 300u + 9u * 4u);
  for (std::int64_t n = 0; n < 5; ++n) {
    for (const std::int64_t k : {0, 127, 128, 255, 256, 299}) {
      const float scale = grid[static_cast<std::size_t>(n / 2 * 3 + k / 128)];
      EXPECT_EQ(m.value(n, k), scale * e4m3_to_f32(codes[static_cast<std::size_t>(n * 300 + k)])) << n << " " << k;
    }
  }
  // Per tensor ([1] or a scalar) and per channel ([N] or [N, 1]), BF16 scales.
  const std::uint16_t one = 0x3f80, rows[5] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0};
  for (const auto& shape : {std::vector<std::int64_t>{1}, std::vector<std::int64_t>{}}) {
    const QuantizedMatrix t = fp8_matrix("m", weight, tensor("s", DType::BF16, shape, &one), {0, 0}, std::nullopt);
    EXPECT_EQ(t.value(4, 299), e4m3_to_f32(codes[4 * 300 + 299]));
    EXPECT_EQ(t.scale_dtype, DType::BF16);
  }
  for (const auto& shape : {std::vector<std::int64_t>{5}, std::vector<std::int64_t>{5, 1}}) {
    const QuantizedMatrix c = fp8_matrix("m", weight, tensor("s", DType::BF16, shape, rows), {1, 0}, std::nullopt);
    EXPECT_EQ(c.value(3, 10), 4.0f * e4m3_to_f32(codes[3 * 300 + 10]));
  }
}

TEST(Fp8Matrix, RefusesMismatchedTensorsByName) {
  std::vector<std::uint8_t> codes(4 * 130, 0x38);
  std::vector<float> grid(4, 1.0f);
  const TensorView weight = tensor("m.weight", DType::F8_E4M3, {4, 130}, codes.data());
  testing::expect_error(
      [&] { fp8_matrix("m", weight, tensor("m.weight_scale_inv", DType::F32, {1, 1}, grid.data()), {128, 128}, std::nullopt); },
      {"m.weight_scale_inv", "[1, 1]", "expected [1, 2]", "128x128"});
  testing::expect_error(
      [&] { fp8_matrix("m", weight, tensor("s", DType::F32, {1, 2}, grid.data()), {128, 128}, std::array<std::int64_t, 2>{4, 128}); },
      {"m.weight", "expected [4, 128]"});
  testing::expect_error(
      [&] { fp8_matrix("m", tensor("m.weight", DType::U8, {4, 130}, codes.data()), tensor("s", DType::F32, {1, 2}, grid.data()),
                       {128, 128}, std::nullopt); },
      {"m.weight", "dtype U8", "F8_E4M3"});
  testing::expect_error(
      [&] { fp8_matrix("m", weight, tensor("s", DType::I32, {1, 2}, grid.data()), {128, 128}, std::nullopt); },
      {"'s'", "I32", "scales"});
  grid[1] = NAN;
  testing::expect_error(
      [&] { fp8_matrix("m", weight, tensor("s", DType::F32, {1, 2}, grid.data()), {128, 128}, std::nullopt); },
      {"'s'", "scale 1 is nan"});
}

}  // namespace
}  // namespace nibble
