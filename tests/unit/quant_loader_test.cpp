// Quantized checkpoints: GPTQ, AWQ, compressed-tensors and GGUF blocks read back as
// QuantizedMatrix. Every checkpoint here is built in a temp folder by a packer
// written in this file from known codes, scales and zero points (bit by bit, from
// the tools' own descriptions), independently of the readers; values must come
// back exactly. The last test replays real checkpoints made by the tools
// themselves (tests/quant/fixtures, when present).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/half.h"
#include "loader/architecture.h"
#include "loader/fused_weights.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/model_source.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // key order matters for GPTQModel dynamic rules
using testing::expect_error;
using testing::TempDir;
using testing::write_file;

// ---- A tiny Llama: hidden 64, mlp 256, 4 heads (2 kv) of 16, vocab 64.

constexpr std::int64_t kHidden = 64;
constexpr std::int64_t kMlp = 256;
constexpr std::int64_t kKv = 32;
constexpr std::int64_t kVocab = 64;

json llama_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", kVocab},
          {"hidden_size", kHidden},
          {"intermediate_size", kMlp},
          {"num_hidden_layers", 1},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5},
          {"torch_dtype", "float16"}};
}

const std::string kUp = "model.layers.0.mlp.up_proj";      // [256, 64]
const std::string kDown = "model.layers.0.mlp.down_proj";  // [64, 256]
const std::string kGate = "model.layers.0.mlp.gate_proj";  // [256, 64]
const std::string kK = "model.layers.0.self_attn.k_proj";  // [32, 64]
const std::string kQ = "model.layers.0.self_attn.q_proj";  // [64, 64]

std::pair<std::int64_t, std::int64_t> shape_of(const std::string& module) {
  if (module == kUp || module == kGate) return {kMlp, kHidden};
  if (module == kDown) return {kHidden, kMlp};
  if (module == kK) return {kKv, kHidden};
  return {kHidden, kHidden};  // q, o, lm_head, embed_tokens
}

// ---- Safetensors checkpoints assembled in memory.

class Checkpoint {
 public:
  template <typename T>
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape, const std::vector<T>& values) {
    auto bytes = std::make_shared<std::vector<std::byte>>(values.size() * sizeof(T));
    std::memcpy(bytes->data(), values.data(), bytes->size());
    storage_.push_back(bytes);
    tensors_.push_back(TensorView{name, dtype, std::move(shape), std::span<const std::byte>(*bytes), bytes});
  }
  void erase(const std::string& name) {
    std::erase_if(tensors_, [&](const TensorView& t) { return t.name == name; });
  }
  // Writes config.json (with `quantization` as quantization_config unless null) and model.safetensors.
  void write(const fs::path& folder, const json& quantization, json config = llama_config()) const {
    if (!quantization.is_null()) config["quantization_config"] = quantization;
    write_file(folder / "config.json", config.dump(2));
    write_safetensors(folder / "model.safetensors", tensors_);
  }

 private:
  std::vector<std::shared_ptr<std::vector<std::byte>>> storage_;
  std::vector<TensorView> tensors_;
};

// ---- Reference quantized matrices with known codes.

struct Reference {
  std::int64_t n = 0, k = 0, groups = 1;
  int bits = 4;
  std::vector<std::int32_t> group_of_col;
  std::vector<std::uint32_t> codes;   // [n][k], unsigned codes
  std::vector<int> zeros;             // [n][groups], true zero points (in code units)
  std::vector<std::uint16_t> scales;  // [n][groups], as stored (F16 or BF16 bits)
  DType scale_dtype = DType::F16;
  bool per_tensor = false;  // one scale for the whole tensor (compressed-tensors "tensor")

  float scale(std::int64_t row, std::int64_t g) const {
    const auto bits16 = scales[static_cast<std::size_t>(row * groups + g)];
    return scale_dtype == DType::BF16 ? bf16_to_f32(bits16) : f16_to_f32(bits16);
  }
  int zero(std::int64_t row, std::int64_t g) const { return zeros[static_cast<std::size_t>(row * groups + g)]; }
  std::uint32_t code(std::int64_t row, std::int64_t col) const {
    return codes[static_cast<std::size_t>(row * k + col)];
  }
  // What the tools compute: (q - zero) * scale, in float.
  float expected(std::int64_t row, std::int64_t col) const {
    const auto g = group_of_col[static_cast<std::size_t>(col)];
    return static_cast<float>(static_cast<int>(code(row, col)) - zero(row, g)) * scale(row, g);
  }
};

struct RefOptions {
  int bits = 4;
  std::int64_t group_size = 128;  // -1 one group per row, 0 one scale for the tensor
  bool sym = true;
  bool act_order = false;
  DType scale_dtype = DType::F16;
  int min_zero = 0;  // v1 cannot store a zero of 0
  unsigned seed = 1;
};

Reference make_reference(const std::string& module, const RefOptions& o) {
  std::mt19937 rng(o.seed);
  Reference r;
  std::tie(r.n, r.k) = shape_of(module);
  r.bits = o.bits;
  r.scale_dtype = o.scale_dtype;
  r.per_tensor = o.group_size == 0;
  r.groups = o.group_size > 0 ? (r.k + o.group_size - 1) / o.group_size : 1;
  r.group_of_col.resize(static_cast<std::size_t>(r.k));
  std::vector<std::int64_t> order(static_cast<std::size_t>(r.k));
  std::iota(order.begin(), order.end(), 0);
  if (o.act_order) std::shuffle(order.begin(), order.end(), rng);  // GPTQ desc_act: groups follow a permutation
  for (std::int64_t col = 0; col < r.k; ++col) {
    r.group_of_col[static_cast<std::size_t>(col)] =
        o.group_size > 0 ? static_cast<std::int32_t>(order[static_cast<std::size_t>(col)] / o.group_size) : 0;
  }
  const int levels = 1 << o.bits;
  std::uniform_int_distribution<int> code(0, levels - 1);
  std::uniform_int_distribution<int> zero(o.min_zero, levels - 1);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (std::int64_t i = 0; i < r.n * r.k; ++i) r.codes.push_back(static_cast<std::uint32_t>(code(rng)));
  const float tensor_scale = scale(rng);
  for (std::int64_t i = 0; i < r.n * r.groups; ++i) {
    r.zeros.push_back(o.sym ? levels / 2 : zero(rng));
    const float s = o.group_size == 0 ? tensor_scale : scale(rng);
    r.scales.push_back(o.scale_dtype == DType::BF16 ? f32_to_bf16(s) : f32_to_f16(s));
  }
  return r;
}

void expect_matches(const QuantizedMatrix& m, const Reference& r) {
  ASSERT_EQ(m.rows, r.n);
  ASSERT_EQ(m.cols, r.k);
  EXPECT_EQ(m.bits, r.bits);
  EXPECT_EQ(m.groups, r.groups);
  EXPECT_EQ(m.group_of_col, r.group_of_col);
  EXPECT_EQ(m.scale_dtype, r.scale_dtype);
  EXPECT_EQ(m.offset, QuantizedMatrix::Offset::ZeroPoint);
  int mismatches = 0;
  for (std::int64_t row = 0; row < r.n; ++row) {
    for (std::int64_t col = 0; col < r.k; ++col) {
      if (m.codes[static_cast<std::size_t>(row * r.k + col)] != r.code(row, col) ||
          std::bit_cast<std::uint32_t>(m.value(row, col)) != std::bit_cast<std::uint32_t>(r.expected(row, col))) {
        if (++mismatches <= 5) {
          ADD_FAILURE() << m.name << " (" << row << ", " << col << "): code " << int(m.codes[row * r.k + col]) << " vs "
                        << r.code(row, col) << ", value " << m.value(row, col) << " vs " << r.expected(row, col);
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// ---- The packer: LSB-first bit streams of 32-bit words, one bit at a time.

std::vector<std::int32_t> pack_stream(const std::vector<std::uint32_t>& values, int bits) {
  std::vector<std::uint32_t> words((values.size() * static_cast<std::size_t>(bits) + 31) / 32, 0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    for (int b = 0; b < bits; ++b) {
      if ((values[i] >> b) & 1u) {
        const std::size_t bit = i * static_cast<std::size_t>(bits) + static_cast<std::size_t>(b);
        words[bit / 32] |= 1u << (bit % 32);
      }
    }
  }
  return {words.begin(), words.end()};
}

// compressed-tensors before 0.18: floor(32/bits) values per word, high bits unused.
std::vector<std::int32_t> pack_per_word(const std::vector<std::uint32_t>& values, int bits) {
  const std::size_t per_word = 32 / static_cast<std::size_t>(bits);
  std::vector<std::uint32_t> words((values.size() + per_word - 1) / per_word, 0);
  for (std::size_t i = 0; i < values.size(); ++i) words[i / per_word] |= values[i] << ((i % per_word) * bits);
  return {words.begin(), words.end()};
}

// Packs each row of a [rows][cols] matrix; returns [rows][words].
std::vector<std::int32_t> pack_rows(const std::vector<std::uint32_t>& matrix, std::int64_t rows, std::int64_t cols,
                                    int bits, bool per_word = false) {
  std::vector<std::int32_t> out;
  for (std::int64_t row = 0; row < rows; ++row) {
    std::vector<std::uint32_t> values(matrix.begin() + row * cols, matrix.begin() + (row + 1) * cols);
    const auto words = per_word ? pack_per_word(values, bits) : pack_stream(values, bits);
    out.insert(out.end(), words.begin(), words.end());
  }
  return out;
}

// Packs each column of a [rows][cols] matrix down the rows; returns [words][cols].
std::vector<std::int32_t> pack_columns(const std::vector<std::uint32_t>& matrix, std::int64_t rows, std::int64_t cols,
                                       int bits) {
  std::vector<std::uint32_t> transposed(matrix.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) transposed[c * rows + r] = matrix[r * cols + c];
  }
  const auto packed = pack_rows(transposed, cols, rows, bits);  // [cols][words]
  const std::int64_t words = static_cast<std::int64_t>(packed.size()) / cols;
  std::vector<std::int32_t> out(packed.size());
  for (std::int64_t c = 0; c < cols; ++c) {
    for (std::int64_t w = 0; w < words; ++w) out[w * cols + c] = packed[c * words + w];
  }
  return out;
}

template <typename T>
std::vector<T> transpose(const std::vector<T>& matrix, std::int64_t rows, std::int64_t cols) {
  std::vector<T> out(matrix.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows + r] = matrix[r * cols + c];
  }
  return out;
}

// ---- GPTQ: qweight [K*bits/32, N] (input dim packed per output column),
// qzeros [groups, N*bits/32], scales [groups, N], g_idx [K].

void add_gptq(Checkpoint& ckpt, const std::string& module, const Reference& r, bool v1, bool with_g_idx = true) {
  std::vector<std::uint32_t> codes_kn = transpose(r.codes, r.n, r.k);  // [K][N]
  ckpt.add(module + ".qweight", DType::I32, {r.k * r.bits / 32, r.n}, pack_columns(codes_kn, r.k, r.n, r.bits));
  std::vector<std::uint32_t> stored_zeros;  // [groups][N]
  for (std::int64_t g = 0; g < r.groups; ++g) {
    for (std::int64_t row = 0; row < r.n; ++row) {
      const int zero = r.zero(row, g) - (v1 ? 1 : 0);
      stored_zeros.push_back(static_cast<std::uint32_t>(zero) & ((1u << r.bits) - 1));
    }
  }
  ckpt.add(module + ".qzeros", DType::I32, {r.groups, r.n * r.bits / 32},
           pack_rows(stored_zeros, r.groups, r.n, r.bits));
  ckpt.add(module + ".scales", r.scale_dtype, {r.groups, r.n}, transpose(r.scales, r.n, r.groups));
  if (with_g_idx) ckpt.add(module + ".g_idx", DType::I32, {r.k}, r.group_of_col);
}

json gptq_config(int bits, std::int64_t group_size, bool sym, bool desc_act, const std::string& format) {
  return {{"quant_method", "gptq"},   {"bits", bits},
          {"group_size", group_size}, {"sym", sym},
          {"desc_act", desc_act},     {"checkpoint_format", format}};
}

struct GptqCase {
  int bits;
  std::int64_t group_size;
  bool sym;
  bool v1;
  bool act_order;
};

void PrintTo(const GptqCase& c, std::ostream* out) {
  *out << c.bits << "-bit group " << c.group_size << (c.sym ? " sym" : " asym") << (c.v1 ? " v1" : " v2")
       << (c.act_order ? " act-order" : "");
}

std::string case_name(const ::testing::TestParamInfo<GptqCase>& info) {
  const auto& c = info.param;
  return fmt::format("b{}_g{}_{}_{}{}", c.bits, c.group_size < 0 ? std::string("all") : std::to_string(c.group_size),
                     c.sym ? "sym" : "asym", c.v1 ? "v1" : "v2", c.act_order ? "_actorder" : "");
}

class GptqRoundTrip : public ::testing::TestWithParam<GptqCase> {};

TEST_P(GptqRoundTrip, UnpacksEveryModuleExactly) {
  const GptqCase c = GetParam();
  TempDir dir;
  Checkpoint ckpt;
  std::map<std::string, Reference> refs;
  unsigned seed = 10;
  for (const auto& module : {kUp, kDown, kK}) {
    RefOptions o{c.bits, c.group_size, c.sym, c.act_order, DType::F16, c.v1 ? 1 : 0, seed++};
    refs[module] = make_reference(module, o);
    add_gptq(ckpt, module, refs[module], c.v1, /*with_g_idx=*/c.act_order || seed % 2 == 0);
  }
  ckpt.add(kUp + ".bias", DType::F32, {kMlp}, std::vector<float>(kMlp, 0.5f));
  ckpt.write(dir.path(), gptq_config(c.bits, c.group_size, c.sym, c.act_order, c.v1 ? "gptq" : "gptq_v2"));

  const ModelSource source = open_model(dir.path());
  ASSERT_TRUE(source.quantization.has_value());
  EXPECT_EQ(source.quantization->method, QuantMethod::Gptq);
  for (const auto& [module, ref] : refs) {
    SCOPED_TRACE(module);
    EXPECT_TRUE(source.weights->has_quantized(module));
    EXPECT_FALSE(source.weights->contains(module + ".weight"));
    const auto m = source.weights->load_quantized(module);
    ASSERT_TRUE(m.has_value());
    expect_matches(*m, ref);
    const auto [n, k] = shape_of(module);
    const std::uint64_t expected_bytes =
        static_cast<std::uint64_t>(k * c.bits / 32 * n * 4 + ref.groups * n * c.bits / 32 * 4 + ref.groups * n * 2) +
        (source.weights->contains(module + ".g_idx") ? k * 4 : 0);
    EXPECT_EQ(m->stored_bytes, expected_bytes);
    // The packed tensors stay readable after their pages were released.
    EXPECT_EQ(source.weights->load(module + ".scales").numel(), ref.groups * n);
  }
  EXPECT_EQ(source.weights->load(kUp + ".bias").as<float>()[3], 0.5f);
}

INSTANTIATE_TEST_SUITE_P(Variants, GptqRoundTrip,
                         ::testing::Values(GptqCase{4, 128, true, true, false}, GptqCase{4, 128, false, true, false},
                                           GptqCase{4, 32, false, false, false}, GptqCase{4, -1, true, false, false},
                                           GptqCase{4, 64, false, true, true}, GptqCase{4, 32, true, false, true},
                                           GptqCase{2, 32, false, true, false}, GptqCase{2, 64, true, false, true},
                                           GptqCase{3, 32, false, true, false}, GptqCase{3, 128, true, false, false},
                                           GptqCase{3, 64, false, false, true}, GptqCase{3, -1, false, true, false},
                                           GptqCase{8, 32, false, true, false}, GptqCase{8, 128, true, false, true},
                                           GptqCase{8, -1, false, false, false}),
                         case_name);

TEST(Gptq, ThreeBitCodesStraddleWordsAsGptqModelPacksThem) {
  // Codes 0..31 of one column, 3 bits each: code 10 takes bits 30-31 of word 0 and
  // bit 0 of word 1; code 21 takes bit 31 of word 1 and bits 0-1 of word 2.
  std::vector<std::uint32_t> codes(32);
  for (std::uint32_t i = 0; i < 32; ++i) codes[i] = (i * 5 + 3) % 8;
  const auto words = pack_stream(codes, 3);
  ASSERT_EQ(words.size(), 3u);
  const auto w = [&](int i) { return static_cast<std::uint32_t>(words[static_cast<std::size_t>(i)]); };
  EXPECT_EQ(((w(0) >> 30) & 3u) | ((w(1) & 1u) << 2), codes[10]);
  EXPECT_EQ(((w(1) >> 31) & 1u) | ((w(2) & 3u) << 1), codes[21]);
  EXPECT_EQ((w(2) >> 29) & 7u, codes[31]);
}

TEST(Gptq, V1AllOnesZeroFieldMeansTwoToTheBits) {
  // v1 stores zero - 1 per field; a stored 15 (4-bit) is read as 16, as the GPTQ
  // kernels read it, not wrapped to 0.
  TempDir dir;
  Checkpoint ckpt;
  Reference r = make_reference(kK, {4, 32, false, false, DType::F16, 1, 3});
  r.zeros[0] = 16;
  r.zeros[5] = 16;
  add_gptq(ckpt, kK, r, /*v1=*/true, false);
  ckpt.write(dir.path(), gptq_config(4, 32, false, false, "gptq"));
  const auto m = open_model(dir.path()).weights->load_quantized(kK);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->zeros[0], 16);
  expect_matches(*m, r);
}

TEST(Gptq, GptqModelFormatKeysAndV2Zeros) {
  // GPTQModel writes format + checkpoint_format + method + meta; v2 zeros may be 0.
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_reference(kUp, {4, 64, false, false, DType::F16, 0, 4});
  add_gptq(ckpt, kUp, r, false);
  ckpt.write(dir.path(), {{"bits", 4},
                          {"group_size", 64},
                          {"desc_act", false},
                          {"sym", false},
                          {"lm_head", false},
                          {"method", "gptq"},
                          {"quant_method", "gptq"},
                          {"format", "gptq_v2"},
                          {"checkpoint_format", "gptq_v2"},
                          {"pack_dtype", "int32"},
                          {"meta", {{"quantizer", {"gptqmodel:7.7.0"}}, {"damp_percent", 0.05}}}});
  const ModelSource source = open_model(dir.path());
  EXPECT_EQ(source.quantization->format, "gptq_v2");
  expect_matches(*source.weights->load_quantized(kUp), r);
}

TEST(Gptq, SeparateQuantizeConfigJson) {
  // AutoGPTQ: quantize_config.json next to a config.json without quantization_config.
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_reference(kDown, {4, 128, true, false, DType::F16, 1, 5});
  add_gptq(ckpt, kDown, r, true);
  ckpt.write(dir.path(), nullptr);
  write_file(dir / "quantize_config.json",
             R"({"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": false, "static_groups": false,
                 "sym": true, "true_sequential": true, "model_name_or_path": null, "model_file_base_name": null})");
  const ModelSource source = open_model(dir.path());
  ASSERT_TRUE(source.quantization);
  EXPECT_EQ(source.quantization->format, "gptq");
  expect_matches(*source.weights->load_quantized(kDown), r);
}

TEST(Gptq, DynamicOverridesAndSkips) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference down = make_reference(kDown, {8, 32, false, false, DType::F16, 1, 6});
  const Reference up = make_reference(kUp, {4, 128, true, false, DType::F16, 1, 7});
  const Reference k = make_reference(kK, {2, 64, false, false, DType::F16, 1, 8});
  add_gptq(ckpt, kDown, down, true);
  add_gptq(ckpt, kUp, up, true);
  add_gptq(ckpt, kK, k, true);
  ckpt.add(kGate + ".weight", DType::F16, {kMlp, kHidden}, std::vector<std::uint16_t>(kMlp * kHidden, 0x3c00));
  json config = gptq_config(4, 128, true, false, "gptq");
  // First match wins: down_proj -> 8-bit/32 asym, gate_proj skipped, k_proj (bare key = "+:") 2-bit/64.
  config["dynamic"] = json::parse(R"({
    "+:.*down_proj": {"bits": 8, "group_size": 32, "sym": false},
    "-:.*gate_proj$": {},
    "model\\.layers\\.\\d+\\.self_attn\\.k_proj": {"bits": 2, "group_size": 64, "sym": false},
    "+:.*\\.mlp\\.up_proj": {"bits": 4, "group_size": 128}
  })");
  ckpt.write(dir.path(), config);
  const ModelSource source = open_model(dir.path());
  expect_matches(*source.weights->load_quantized(kDown), down);
  expect_matches(*source.weights->load_quantized(kUp), up);
  expect_matches(*source.weights->load_quantized(kK), k);
  EXPECT_FALSE(source.weights->load_quantized(kGate).has_value());
  EXPECT_FALSE(source.weights->has_quantized(kGate));
  EXPECT_TRUE(source.weights->contains(kGate + ".weight"));
  EXPECT_EQ(source.weights->load(kGate + ".weight").dtype, DType::F16);
  const auto rule = source.quantization->module(kGate);
  EXPECT_FALSE(rule.has_value());
  EXPECT_EQ(source.quantization->module(kDown)->bits, 8);
  EXPECT_EQ(source.quantization->module("model.layers.0.self_attn.q_proj")->bits, 4);  // no rule: the defaults
}

TEST(Gptq, LmHeadQuantizedOnlyWhenDeclared) {
  for (const bool quantized_head : {false, true}) {
    SCOPED_TRACE(quantized_head);
    TempDir dir;
    Checkpoint ckpt;
    const Reference head = make_reference("lm_head", {4, 32, true, false, DType::F16, 1, 9});
    if (quantized_head) {
      add_gptq(ckpt, "lm_head", head, true);
    } else {
      ckpt.add("lm_head.weight", DType::F16, {kVocab, kHidden}, std::vector<std::uint16_t>(kVocab * kHidden, 0x3800));
    }
    json config = gptq_config(4, 32, true, false, "gptq");
    config["lm_head"] = quantized_head;
    ckpt.write(dir.path(), config);
    const ModelSource source = open_model(dir.path());
    EXPECT_EQ(source.weights->has_quantized("lm_head"), quantized_head);
    EXPECT_EQ(source.weights->contains("lm_head.weight"), !quantized_head);
    const auto m = source.weights->load_quantized("lm_head");
    if (quantized_head) {
      ASSERT_TRUE(m);
      expect_matches(*m, head);
      expect_error([&] { source.weights->load("lm_head.weight"); }, {"lm_head", "quantized", "load_quantized"});
    } else {
      EXPECT_FALSE(m.has_value());
      EXPECT_EQ(source.weights->load("lm_head.weight").shape, (std::vector<std::int64_t>{kVocab, kHidden}));
    }
  }
}

TEST(Gptq, PlainWeightOfAQuantizedModuleIsAnError) {
  TempDir dir;
  Checkpoint ckpt;
  add_gptq(ckpt, kUp, make_reference(kUp, {4, 64, true, false, DType::F16, 1, 11}), true);
  ckpt.write(dir.path(), gptq_config(4, 64, true, false, "gptq"));
  const ModelSource source = open_model(dir.path());
  expect_error([&] { source.weights->load(kUp + ".weight"); },
               {kUp + ".weight", "stored gptq-quantized", "load_quantized(\"" + kUp + "\")"});
  // Missing modules are simply absent.
  EXPECT_FALSE(source.weights->load_quantized(kGate).has_value());
  expect_error([&] { source.weights->load(kGate + ".weight"); }, {kGate + ".weight", "missing"});
}

// ---- Bad GPTQ inputs.

class GptqErrors : public ::testing::Test {
 protected:
  // A valid 4-bit g32 asym v1 up_proj, then `edit` breaks it.
  std::string error_after(const std::function<void(Checkpoint&, json&)>& edit) {
    TempDir dir;
    Checkpoint ckpt;
    const Reference r = make_reference(kUp, {4, 32, false, false, DType::F16, 1, 12});
    add_gptq(ckpt, kUp, r, true);
    json config = gptq_config(4, 32, false, false, "gptq");
    edit(ckpt, config);
    ckpt.write(dir.path(), config);
    try {
      const ModelSource source = open_model(dir.path());
      source.weights->load_quantized(kUp);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "expected an error";
    return {};
  }
};

TEST_F(GptqErrors, TruncatedOrMisShapedTensorsNameTheTensorAndBothShapes) {
  std::string message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".qweight");
    c.add(kUp + ".qweight", DType::I32, {7, kMlp}, std::vector<std::int32_t>(7 * kMlp));
  });
  EXPECT_NE(message.find(kUp + ".qweight"), std::string::npos) << message;
  EXPECT_NE(message.find("[7, 256]"), std::string::npos) << message;
  EXPECT_NE(message.find("[8, 256]"), std::string::npos) << message;

  message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".scales");
    c.add(kUp + ".scales", DType::F16, {3, kMlp}, std::vector<std::uint16_t>(3 * kMlp, 0x3c00));
  });
  EXPECT_NE(message.find(kUp + ".scales"), std::string::npos) << message;
  EXPECT_NE(message.find("[3, 256]"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 256]"), std::string::npos) << message;

  message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".qzeros");
    c.add(kUp + ".qzeros", DType::I32, {2, 16}, std::vector<std::int32_t>(32));
  });
  EXPECT_NE(message.find(kUp + ".qzeros"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 32]"), std::string::npos) << message;

  message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".g_idx");
    c.add(kUp + ".g_idx", DType::I32, {kHidden}, std::vector<std::int32_t>(kHidden, 2));
  });
  EXPECT_NE(message.find("g_idx"), std::string::npos) << message;
  EXPECT_NE(message.find("outside [0, 2)"), std::string::npos) << message;

  // A 2-bit config over 4-bit tensors: the packed shapes disagree.
  message = error_after([](Checkpoint&, json& q) { q["bits"] = 2; });
  EXPECT_NE(message.find("qweight"), std::string::npos) << message;
  EXPECT_NE(message.find("[4, 256]"), std::string::npos) << message;
}

TEST_F(GptqErrors, WrongDtypes) {
  std::string message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".qweight");
    c.add(kUp + ".qweight", DType::F32, {8, kMlp}, std::vector<float>(8 * kMlp));
  });
  EXPECT_NE(message.find("has dtype F32, expected I32"), std::string::npos) << message;
  message = error_after([](Checkpoint& c, json&) {
    c.erase(kUp + ".scales");
    c.add(kUp + ".scales", DType::I32, {2, kMlp}, std::vector<std::int32_t>(2 * kMlp));
  });
  EXPECT_NE(message.find(kUp + ".scales"), std::string::npos) << message;
  EXPECT_NE(message.find("expected F16 or BF16 or F32"), std::string::npos) << message;
}

TEST_F(GptqErrors, BadConfigs) {
  const auto check = [&](const std::function<void(json&)>& edit, std::initializer_list<std::string> fragments) {
    const std::string message = error_after([&](Checkpoint&, json& q) { edit(q); });
    for (const auto& fragment : fragments) EXPECT_NE(message.find(fragment), std::string::npos) << message;
  };
  check([](json& q) { q["bits"] = 5; }, {"config.json", "5-bit weights are not supported"});
  check([](json& q) { q["group_size"] = 0; }, {"group_size 0 is invalid"});
  // Integers too long for 64 bits arrive as doubles (a fuzzer's find: the cast
  // was undefined behaviour); whole doubles in range are still integers.
  check([](json& q) { q["bits"] = json::parse("333333333333333333333333333333333333333334"); },
        {"'bits' must be an integer"});
  check([](json& q) { q["bits"] = 1e300; }, {"'bits' must be an integer"});
  check([](json& q) { q["bits"] = 4.5; }, {"'bits' must be an integer"});
  check([](json& q) { q["group_size"] = std::uint64_t{1} << 63; }, {"'group_size' is out of range"});
  check([](json& q) { q["bits"] = 5.0; }, {"5-bit weights are not supported"});
  check([](json& q) { q["checkpoint_format"] = "marlin"; }, {"GPTQ checkpoint format 'marlin' is not supported"});
  check([](json& q) { q["format"] = "gptq_v2"; }, {"'format' is 'gptq_v2' but 'checkpoint_format' is 'gptq'"});
  check([](json& q) { q["is_marlin_format"] = true; }, {"is_marlin_format"});
  check([](json& q) { q["pack_dtype"] = "int16"; }, {"pack_dtype 'int16'"});
  check([](json& q) { q["dynamic"] = {{"+:.*(up", {{"bits", 8}}}}; }, {"dynamic rule", "invalid regex"});
  check([](json& q) { q["dynamic"] = {{"+:.*up_proj", {{"bits", 6}}}}; }, {"dynamic rule", "6-bit"});
  check([](json& q) { q["quant_method"] = "bitsandbytes"; }, {"quantization method 'bitsandbytes' is not supported"});
  // Packed tensors for a module the config skips.
  check([](json& q) { q["dynamic"] = {{"-:.*up_proj", json::object()}}; }, {kUp, "leaves it unquantized"});
}

TEST(Gptq, EightBitV1ZeroOfTwoFiftySixIsRejected) {
  TempDir dir;
  Checkpoint ckpt;
  Reference r = make_reference(kK, {8, 32, false, false, DType::F16, 1, 13});
  r.zeros[3] = 256;  // stored 255
  add_gptq(ckpt, kK, r, true);
  ckpt.write(dir.path(), gptq_config(8, 32, false, false, "gptq"));
  const ModelSource source = open_model(dir.path());
  expect_error([&] { source.weights->load_quantized(kK); }, {kK + ".qzeros", "zero point of 256", "gptq_v2"});
}

// ---- AWQ GEMM: qweight [K, N*bits/32] packed along the output dim; for 4 bits
// nibble slot i of a word holds output column order[i] of its block of 8
// (AutoAWQ's order_map), zeros likewise; scales [groups, N]; true zeros.

constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

std::vector<std::int32_t> pack_awq_rows(const std::vector<std::uint32_t>& matrix, std::int64_t rows, std::int64_t cols,
                                        int bits) {
  if (bits != 4) return pack_rows(matrix, rows, cols, bits);  // GPTQModel: plain stream for other widths
  std::vector<std::int32_t> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t block = 0; block < cols / 8; ++block) {
      std::uint32_t word = 0;
      for (int slot = 0; slot < 8; ++slot) word |= matrix[r * cols + block * 8 + kAwqOrder[slot]] << (4 * slot);
      out.push_back(static_cast<std::int32_t>(word));
    }
  }
  return out;
}

void add_awq(Checkpoint& ckpt, const std::string& module, const Reference& r) {
  ckpt.add(module + ".qweight", DType::I32, {r.k, r.n * r.bits / 32},
           pack_awq_rows(transpose(r.codes, r.n, r.k), r.k, r.n, r.bits));
  std::vector<std::uint32_t> zeros;
  for (std::int64_t g = 0; g < r.groups; ++g) {
    for (std::int64_t row = 0; row < r.n; ++row) zeros.push_back(static_cast<std::uint32_t>(r.zero(row, g)));
  }
  ckpt.add(module + ".qzeros", DType::I32, {r.groups, r.n * r.bits / 32}, pack_awq_rows(zeros, r.groups, r.n, r.bits));
  ckpt.add(module + ".scales", r.scale_dtype, {r.groups, r.n}, transpose(r.scales, r.n, r.groups));
}

TEST(Awq, GemmInterleaveRoundTrips) {
  for (const std::int64_t group_size : {32, 64, -1}) {
    SCOPED_TRACE(group_size);
    TempDir dir;
    Checkpoint ckpt;
    const Reference up = make_reference(kUp, {4, group_size, false, false, DType::F16, 0, 20});
    const Reference down = make_reference(kDown, {4, group_size, false, false, DType::F16, 0, 21});
    add_awq(ckpt, kUp, up);
    add_awq(ckpt, kDown, down);
    ckpt.add("lm_head.weight", DType::F16, {kVocab, kHidden}, std::vector<std::uint16_t>(kVocab * kHidden, 0x3c00));
    ckpt.write(dir.path(), {{"quant_method", "awq"},
                            {"w_bit", 4},
                            {"q_group_size", group_size},
                            {"zero_point", true},
                            {"version", "GEMM"}});
    const ModelSource source = open_model(dir.path());
    EXPECT_EQ(source.quantization->method, QuantMethod::Awq);
    expect_matches(*source.weights->load_quantized(kUp), up);
    expect_matches(*source.weights->load_quantized(kDown), down);
    EXPECT_FALSE(source.weights->load_quantized("lm_head").has_value());
    expect_error([&] { source.weights->load(kUp + ".weight"); }, {"awq", "load_quantized"});
  }
}

// ---- Fused modules (Phi-3's gate_up_proj) in GPTQ and AWQ checkpoints: the loader
// splits the unpacked matrix by output rows; every field is per row, so each part
// is exactly its rows of the fused module (act-order's g_idx shared by all).

// Rows [first, first + count) of a reference.
Reference reference_rows(const Reference& r, std::int64_t first, std::int64_t count) {
  Reference part = r;
  part.n = count;
  const auto rows = [&]<typename T>(const std::vector<T>& values, std::int64_t per_row) {
    return std::vector<T>(values.begin() + first * per_row, values.begin() + (first + count) * per_row);
  };
  part.codes = rows(r.codes, r.k);
  part.zeros = rows(r.zeros, r.groups);
  part.scales = rows(r.scales, r.groups);
  return part;
}

// A Phi-3 whose gate_up_proj [2 x 128, 64] has kUp's shape.
json phi3_config() {
  json config = llama_config();
  config["architectures"] = {"Phi3ForCausalLM"};
  config["model_type"] = "phi3";
  config["intermediate_size"] = kMlp / 2;
  return config;
}

TEST(FusedQuantized, GptqAndAwqGateUpSplitIntoTheirRows) {
  const std::string fused = "model.layers.0.mlp.gate_up_proj";
  for (const bool awq : {false, true}) {
    SCOPED_TRACE(awq ? "awq" : "gptq act-order");
    TempDir dir;
    Checkpoint ckpt;
    const Reference ref = make_reference(kUp, {4, 32, false, /*act_order=*/!awq, DType::F16, 1, 30});
    if (awq) {
      add_awq(ckpt, fused, ref);
      ckpt.write(dir.path(), {{"quant_method", "awq"}, {"w_bit", 4}, {"q_group_size", 32}, {"zero_point", true},
                              {"version", "GEMM"}}, phi3_config());
    } else {
      add_gptq(ckpt, fused, ref, /*v1=*/true);
      ckpt.write(dir.path(), gptq_config(4, 32, false, true, "gptq"), phi3_config());
    }
    const ModelSource source = open_model(dir.path());
    EXPECT_TRUE(source.weights->has_quantized(kGate));
    EXPECT_TRUE(source.weights->has_quantized(kUp));
    const auto gate = source.weights->load_quantized(kGate);
    const auto up = source.weights->load_quantized(kUp);
    ASSERT_TRUE(gate && up);
    EXPECT_EQ(gate->name, kGate);
    expect_matches(*gate, reference_rows(ref, 0, kMlp / 2));
    expect_matches(*up, reference_rows(ref, kMlp / 2, kMlp / 2));
    EXPECT_EQ(gate->stored_bytes + up->stored_bytes, source.weights->load_quantized(fused)->stored_bytes);
  }
}

// A quantized source holding one fused qkv_proj, counting how often it is unpacked.
class CountingFusedSource final : public WeightSource {
 public:
  explicit CountingFusedSource(QuantizedMatrix fused) : fused_(std::move(fused)) {}
  std::vector<StoredTensorInfo> list() const override { return {}; }
  bool contains(const std::string&) const override { return false; }
  TensorView load(const std::string& name) const override { fail("no tensor '{}'", name); }
  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (module != fused_.name) return std::nullopt;
    ++loads;
    return fused_;
  }
  bool has_quantized(const std::string& module) const override { return module == fused_.name; }
  std::uint64_t file_bytes() const override { return 0; }
  mutable int loads = 0;

 private:
  QuantizedMatrix fused_;
};

TEST(FusedQuantized, AFusedMatrixIsUnpackedOnceForAllItsParts) {
  const ModelConfig config = parse_hf_config(phi3_config());
  const std::string attn = "model.layers.0.self_attn.";
  const Reference ref = make_reference(kQ, {8, 32, false, false, DType::F16, 0, 40});  // [64, 64]
  QuantizedMatrix fused;
  fused.name = attn + "qkv_proj";
  fused.rows = 2 * kHidden;  // q 64 + k 32 + v 32
  fused.cols = kHidden;
  fused.bits = 8;
  fused.groups = ref.groups;
  fused.group_of_col = ref.group_of_col;
  for (int copy = 0; copy < 2; ++copy) {
    fused.codes.insert(fused.codes.end(), ref.codes.begin(), ref.codes.end());
    for (std::int64_t i = 0; i < ref.n * ref.groups; ++i) {
      fused.scales.push_back(ref.scale(i / ref.groups, i % ref.groups));
      fused.zeros.push_back(static_cast<std::uint8_t>(ref.zeros[static_cast<std::size_t>(i)]));
    }
  }
  auto base = std::make_unique<CountingFusedSource>(fused);
  const CountingFusedSource& counter = *base;
  const auto split = split_fused_weights(std::move(base), architecture_of("Phi3ForCausalLM"), config);
  for (const char* part : {"q_proj", "k_proj", "v_proj"}) ASSERT_TRUE(split->load_quantized(attn + part));
  EXPECT_EQ(counter.loads, 1) << "q, k and v sliced from one unpacked matrix";
  const auto v = split->load_quantized(attn + "v_proj");
  EXPECT_EQ(counter.loads, 2) << "released once every part was taken, so a later ask reads the file again";
  ASSERT_TRUE(v);
  EXPECT_EQ(v->rows, kKv);
  EXPECT_EQ(v->value(3, 5), fused.value(kHidden + kKv + 3, 5));
}

TEST(FusedQuantized, AFusedTensorWhoseRowsAreNotItsPartsIsNamed) {
  TempDir dir;
  Checkpoint ckpt;
  // gate_up_proj needs 2 x 128 rows; 200 is neither.
  ckpt.add("model.layers.0.mlp.gate_up_proj.weight", DType::F16, {200, kHidden},
           std::vector<std::uint16_t>(200 * kHidden, 0x3c00));
  ckpt.write(dir.path(), nullptr, phi3_config());
  const ModelSource source = open_model(dir.path());
  EXPECT_TRUE(source.weights->contains(kUp + ".weight"));
  expect_error([&] { source.weights->load(kUp + ".weight"); },
               {"model.layers.0.mlp.gate_up_proj.weight", "[200, 64]", "256 rows"});
}

TEST(Awq, InterleaveMatchesAutoAwqWordByWord) {
  // Columns 0..7 with codes 0..7: AutoAWQ's word is slots [0,2,4,6,1,3,5,7] = 0x75316420.
  const std::vector<std::uint32_t> row = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(static_cast<std::uint32_t>(pack_awq_rows(row, 1, 8, 4)[0]), 0x75316420u);
}

TEST(Awq, GptqModelOtherWidthsAndModulesToNotConvert) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference up = make_reference(kUp, {8, 64, true, false, DType::F16, 0, 22});
  add_awq(ckpt, kUp, up);
  ckpt.add(kDown + ".weight", DType::F16, {kHidden, kMlp}, std::vector<std::uint16_t>(kHidden * kMlp, 0x3c00));
  ckpt.write(dir.path(), {{"quant_method", "awq"},
                          {"bits", 8},
                          {"group_size", 64},
                          {"sym", true},
                          {"format", "gemm"},
                          {"modules_to_not_convert", {"down_proj"}}});
  const ModelSource source = open_model(dir.path());
  expect_matches(*source.weights->load_quantized(kUp), up);
  EXPECT_FALSE(source.weights->load_quantized(kDown).has_value());
  EXPECT_EQ(source.weights->load(kDown + ".weight").dtype, DType::F16);
}

TEST(Awq, RejectsOtherLayoutsAndActOrder) {
  const json base = {
      {"quant_method", "awq"}, {"w_bit", 4}, {"q_group_size", 128}, {"zero_point", true}, {"version", "gemm"}};
  for (const char* layout : {"gemv", "gemv_fast", "marlin", "exllama"}) {
    json q = base;
    q["version"] = layout;
    expect_error([&] { parse_quantization_config(q); },
                 {fmt::format("AWQ layout '{}' is not supported", layout), "gemm"});
  }
  json q = base;
  q["desc_act"] = true;
  expect_error([&] { parse_quantization_config(q); }, {"AWQ", "desc_act"});
  q = base;
  q["w_bit"] = 5;
  expect_error([&] { parse_quantization_config(q); }, {"5-bit"});
  q = base;
  q["bits"] = 8;
  expect_error([&] { parse_quantization_config(q); }, {"'w_bit' is 4 but 'bits' is 8"});
}

TEST(Awq, MisShapedQweight) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference up = make_reference(kUp, {4, 32, false, false, DType::F16, 0, 23});
  add_awq(ckpt, kUp, up);
  ckpt.erase(kUp + ".qweight");
  ckpt.add(kUp + ".qweight", DType::I32, {kHidden, 16}, std::vector<std::int32_t>(kHidden * 16));
  ckpt.write(dir.path(),
             {{"quant_method", "awq"}, {"w_bit", 4}, {"q_group_size", 32}, {"zero_point", true}, {"version", "gemm"}});
  const ModelSource source = open_model(dir.path());
  expect_error([&] { source.weights->load_quantized(kUp); }, {kUp + ".qweight", "[64, 16]", "[64, 32]"});
}

// ---- compressed-tensors pack-quantized: weight_packed [N, ceil(K*bits/32)] with
// codes q + 2^(bits-1) LSB first along K; zero points (asym) packed along N.

struct CtOptions {
  bool legacy_per_word = false;  // compressed-tensors < 0.18 (only differs for 3-bit)
  bool with_g_idx = false;
};

void add_ct_packed(Checkpoint& ckpt, const std::string& module, const Reference& r, bool sym, CtOptions o = {}) {
  ckpt.add(module + ".weight_packed", DType::I32,
           {r.n, o.legacy_per_word ? (r.k + 32 / r.bits - 1) / (32 / r.bits) : (r.k * r.bits + 31) / 32},
           pack_rows(r.codes, r.n, r.k, r.bits, o.legacy_per_word));
  ckpt.add(module + ".weight_shape", DType::I64, {2}, std::vector<std::int64_t>{r.n, r.k});
  if (r.per_tensor) {
    ckpt.add(module + ".weight_scale", r.scale_dtype, {1}, std::vector<std::uint16_t>{r.scales[0]});
  } else {
    ckpt.add(module + ".weight_scale", r.scale_dtype, {r.n, r.groups}, r.scales);
  }
  if (!sym) {
    std::vector<std::uint32_t> zeros(r.zeros.begin(), r.zeros.end());  // zp + 2^(bits-1) = the unsigned zero
    const auto packed = pack_columns(zeros, r.n, r.groups, r.bits);    // (the legacy cases here are symmetric)
    ckpt.add(module + ".weight_zero_point", DType::I32, {static_cast<std::int64_t>(packed.size()) / r.groups, r.groups},
             packed);
  }
  if (o.with_g_idx) ckpt.add(module + ".weight_g_idx", DType::I32, {r.k}, r.group_of_col);
}

json ct_group(int bits, std::int64_t group_size, bool sym, const std::string& strategy, json targets = {"Linear"}) {
  json weights = {{"num_bits", bits},     {"type", "int"},    {"symmetric", sym},
                  {"strategy", strategy}, {"dynamic", false}, {"observer", "minmax"}};
  weights["group_size"] = group_size > 0 ? json(group_size) : json(nullptr);
  return {{"targets", targets}, {"weights", weights}, {"input_activations", nullptr}, {"output_activations", nullptr}};
}

json ct_config(const json& groups, const std::string& format = "pack-quantized") {
  return {{"quant_method", "compressed-tensors"},
          {"format", format},
          {"config_groups", groups},
          {"ignore", {"lm_head"}},
          {"quantization_status", "compressed"},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", json::object()},
          {"version", "0.20.0"}};
}

TEST(CompressedTensors, PackQuantizedSymAsymAndScaleDtypes) {
  struct Case {
    int bits;
    std::int64_t group_size;
    bool sym;
    DType scale_dtype;
    std::string strategy;
  };
  for (const Case& c : {Case{4, 32, true, DType::F16, "group"}, Case{4, 64, false, DType::F16, "group"},
                        Case{4, 128, true, DType::BF16, "group"}, Case{8, -1, true, DType::BF16, "channel"},
                        Case{8, 32, false, DType::F16, "group"}, Case{2, 32, false, DType::BF16, "group"},
                        Case{3, 32, true, DType::F16, "group"}, Case{4, -1, false, DType::F16, "channel"},
                        Case{4, 0, true, DType::F16, "tensor"}}) {
    SCOPED_TRACE(fmt::format("{}-bit {} {} {}", c.bits, c.strategy, c.sym ? "sym" : "asym", dtype_name(c.scale_dtype)));
    TempDir dir;
    Checkpoint ckpt;
    const Reference up = make_reference(kUp, {c.bits, c.group_size, c.sym, false, c.scale_dtype, 0, 30});
    const Reference down = make_reference(kDown, {c.bits, c.group_size, c.sym, false, c.scale_dtype, 0, 31});
    add_ct_packed(ckpt, kUp, up, c.sym);
    add_ct_packed(ckpt, kDown, down, c.sym);
    ckpt.add("lm_head.weight", DType::BF16, {kVocab, kHidden}, std::vector<std::uint16_t>(kVocab * kHidden, 0x3f80));
    ckpt.write(dir.path(), ct_config({{"group_0", ct_group(c.bits, c.group_size, c.sym, c.strategy)}}));
    const ModelSource source = open_model(dir.path());
    EXPECT_EQ(source.quantization->method, QuantMethod::CompressedTensors);
    expect_matches(*source.weights->load_quantized(kUp), up);
    expect_matches(*source.weights->load_quantized(kDown), down);
    EXPECT_FALSE(source.weights->load_quantized("lm_head").has_value());  // ignored
    EXPECT_EQ(source.weights->load("lm_head.weight").dtype, DType::BF16);
    expect_error([&] { source.weights->load(kUp + ".weight"); },
                 {"compressed-tensors pack-quantized", "load_quantized"});
  }
}

TEST(CompressedTensors, SymmetricCodesAreSignedValuesPlusOffset) {
  // A symmetric int4 value q in [-8, 7] is stored as q + 8: value -8 packs as 0, 7 as 15, 0 as 8.
  TempDir dir;
  Checkpoint ckpt;
  Reference r = make_reference(kK, {4, 64, true, false, DType::F16, 0, 32});
  r.codes[0] = 0;
  r.codes[1] = 15;
  r.codes[2] = 8;
  add_ct_packed(ckpt, kK, r, true);
  ckpt.write(dir.path(), ct_config({{"group_0", ct_group(4, 64, true, "group")}}));
  const auto m = open_model(dir.path()).weights->load_quantized(kK);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->zeros[0], 8);
  EXPECT_EQ(m->value(0, 0), -8 * r.scale(0, 0));
  EXPECT_EQ(m->value(0, 1), 7 * r.scale(0, 0));
  EXPECT_EQ(m->value(0, 2), 0.0f);
  expect_matches(*m, r);
}

TEST(CompressedTensors, ThreeBitDenseAndLegacyPacking) {
  for (const bool legacy : {false, true}) {
    SCOPED_TRACE(legacy ? "0.12 (10 codes per word)" : "0.20 (dense stream)");
    TempDir dir;
    Checkpoint ckpt;
    const Reference r = make_reference(kUp, {3, 32, true, false, DType::F16, 0, 33});
    add_ct_packed(ckpt, kUp, r, true, {legacy, false});
    json config = ct_config({{"group_0", ct_group(3, 32, true, "group")}});
    config["version"] = legacy ? "0.12.2" : "0.20.0";
    ckpt.write(dir.path(), config);
    expect_matches(*open_model(dir.path()).weights->load_quantized(kUp), r);
  }
}

TEST(CompressedTensors, ActOrderGroupUsesStoredGIdx) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_reference(kDown, {4, 64, false, true, DType::BF16, 0, 34});
  add_ct_packed(ckpt, kDown, r, false, {false, true});
  json group = ct_group(4, 64, false, "group");
  group["weights"]["actorder"] = "group";
  ckpt.write(dir.path(), ct_config({{"group_0", group}}));
  const ModelSource source = open_model(dir.path());
  EXPECT_TRUE(source.quantization->defaults.act_order);
  expect_matches(*source.weights->load_quantized(kDown), r);
}

TEST(CompressedTensors, TargetsRegexesAndMixedPrecision) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference down = make_reference(kDown, {8, -1, true, false, DType::F16, 0, 35});
  const Reference up = make_reference(kUp, {4, 32, false, false, DType::F16, 0, 36});
  add_ct_packed(ckpt, kDown, down, true);
  add_ct_packed(ckpt, kUp, up, false);
  ckpt.add(kK + ".weight", DType::F16, {kKv, kHidden}, std::vector<std::uint16_t>(kKv * kHidden, 0x3c00));
  // An exact name beats a regex, which beats the class name "Linear".
  json config = ct_config({{"group_0", ct_group(8, -1, true, "channel", {"re:.*down_proj$"})},
                           {"group_1", ct_group(4, 32, false, "group", {"Linear"})},
                           {"group_2", ct_group(2, 32, true, "group", {"model.layers.0.mlp.gate_proj"})}},
                          "mixed-precision");
  config["config_groups"]["group_0"]["format"] = "pack-quantized";
  config["config_groups"]["group_1"]["format"] = "pack-quantized";
  config["config_groups"]["group_2"]["format"] = "pack-quantized";
  config["ignore"] = {"lm_head", "re:.*self_attn\\.k_proj"};
  ckpt.write(dir.path(), config);
  const ModelSource source = open_model(dir.path());
  expect_matches(*source.weights->load_quantized(kDown), down);
  expect_matches(*source.weights->load_quantized(kUp), up);
  EXPECT_EQ(source.quantization->module(kGate)->bits, 2);
  EXPECT_FALSE(source.quantization->module(kK).has_value());
  EXPECT_FALSE(source.weights->load_quantized(kK).has_value());
  EXPECT_FALSE(source.quantization->module("model.embed_tokens").has_value());  // "Linear" is no embedding
}

TEST(CompressedTensors, IntQuantizedEightBit) {
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_reference(kUp, {8, -1, true, false, DType::BF16, 0, 37});
  std::vector<std::int8_t> values;
  for (const auto code : r.codes) values.push_back(static_cast<std::int8_t>(static_cast<int>(code) - 128));
  ckpt.add(kUp + ".weight", DType::I8, {r.n, r.k}, values);
  ckpt.add(kUp + ".weight_scale", DType::BF16, {r.n, 1}, r.scales);
  ckpt.write(dir.path(), ct_config({{"group_0", ct_group(8, -1, true, "channel")}}, "int-quantized"));
  const ModelSource source = open_model(dir.path());
  EXPECT_TRUE(source.weights->has_quantized(kUp));
  EXPECT_FALSE(source.weights->contains(kUp + ".weight"));
  expect_matches(*source.weights->load_quantized(kUp), r);
  expect_error([&] { source.weights->load(kUp + ".weight"); }, {"int-quantized", "load_quantized"});
}

// 2:4-pruned references: in every aligned run of 4 columns two codes equal the zero point.
Reference make_sparse_24(const std::string& module, const RefOptions& o) {
  Reference r = make_reference(module, o);
  std::mt19937 rng(o.seed + 100);
  for (std::int64_t row = 0; row < r.n; ++row) {
    for (std::int64_t col = 0; col < r.k; col += 4) {
      const int keep_a = static_cast<int>(rng() % 4);
      const int keep_b = (keep_a + 1 + static_cast<int>(rng() % 3)) % 4;
      for (int j = 0; j < 4; ++j) {
        if (j == keep_a || j == keep_b) continue;
        const auto g = r.group_of_col[static_cast<std::size_t>(col + j)];
        r.codes[static_cast<std::size_t>(row * r.k + col + j)] = static_cast<std::uint32_t>(r.zero(row, g));
      }
    }
  }
  return r;
}

json sparse_24_config() {
  return {{"format", "sparse-24-bitmask"}, {"sparsity_structure", "2:4"}, {"targets", {"Linear"}},
          {"ignore", {"lm_head"}},         {"global_sparsity", 0.5},      {"registry_requires_subclass", false}};
}

TEST(CompressedTensors, TwoFourWithW4A16IsPackedAndFlagged) {
  // compressed-tensors runs the quantization compressor first; the sparsity
  // compressor then only sees `*.weight` names, so W4A16 modules stay
  // weight_packed and the sparsity config declares their 2:4 pattern.
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_sparse_24(kUp, {4, 32, true, false, DType::F16, 0, 40});
  add_ct_packed(ckpt, kUp, r, true);
  json config = ct_config({{"group_0", ct_group(4, 32, true, "group")}});
  config["sparsity_config"] = sparse_24_config();
  ckpt.write(dir.path(), config);
  const ModelSource source = open_model(dir.path());
  const auto m = source.weights->load_quantized(kUp);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->sparse_2_4);
  expect_matches(*m, r);

  // Codes that break the declared pattern are caught.
  TempDir bad_dir;
  Checkpoint bad;
  const Reference dense = make_reference(kUp, {4, 32, true, false, DType::F16, 0, 41});
  add_ct_packed(bad, kUp, dense, true);
  bad.write(bad_dir.path(), config);
  expect_error([&] { open_model(bad_dir.path()).weights->load_quantized(kUp); }, {kUp, "2:4"});
}

TEST(CompressedTensors, TwoFourOverDenseStorageIsUsedOnlyWhereTheCodesFollowIt) {
  // llm-compressor 0.10 saves SparseGPT 2:4 + W4A16 as pack-quantized with
  // sparsity_config {"format": "dense", "sparsity_structure": "2:4"}: a statement
  // about the data, which nibble checks instead of trusting (or rejecting).
  json config = ct_config({{"group_0", ct_group(4, 32, true, "group")}});
  config["sparsity_config"] = sparse_24_config();
  config["sparsity_config"]["format"] = "dense";

  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_sparse_24(kUp, {4, 32, true, false, DType::F16, 0, 42});
  add_ct_packed(ckpt, kUp, r, true);
  ckpt.write(dir.path(), config);
  const auto m = open_model(dir.path()).weights->load_quantized(kUp);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->sparse_2_4);
  expect_matches(*m, r);

  TempDir other_dir;
  Checkpoint other;
  const Reference dense = make_reference(kUp, {4, 32, true, false, DType::F16, 0, 43});
  add_ct_packed(other, kUp, dense, true);
  other.write(other_dir.path(), config);
  const auto plain = open_model(other_dir.path()).weights->load_quantized(kUp);
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->sparse_2_4);
  expect_matches(*plain, dense);
}

// sparse-24-bitmask / sparse-bitmask storage of a dense [n, k] matrix.
template <typename T>
void add_bitmask(Checkpoint& ckpt, const std::string& module, DType dtype, const std::vector<T>& dense, std::int64_t n,
                 std::int64_t k, bool two_four) {
  std::vector<T> values;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n * ((k + 7) / 8)), 0);
  std::vector<std::int64_t> offsets;
  for (std::int64_t row = 0; row < n; ++row) {
    offsets.push_back(static_cast<std::int64_t>(values.size()));
    for (std::int64_t col = 0; col < k; ++col) {
      const T value = dense[static_cast<std::size_t>(row * k + col)];
      bool keep = value != T{};
      if (two_four) {  // exactly the two largest of each 4 are kept, zeros included
        int larger = 0;
        for (std::int64_t j = col / 4 * 4; j < col / 4 * 4 + 4; ++j) {
          const T other = dense[static_cast<std::size_t>(row * k + j)];
          larger += (std::abs(static_cast<double>(other)) > std::abs(static_cast<double>(value)) ||
                     (std::abs(static_cast<double>(other)) == std::abs(static_cast<double>(value)) && j < col))
                        ? 1
                        : 0;
        }
        keep = larger < 2;
      }
      if (!keep) continue;
      values.push_back(value);
      mask[static_cast<std::size_t>(row * ((k + 7) / 8) + col / 8)] |= static_cast<std::uint8_t>(1u << (col % 8));
    }
  }
  if (two_four) {
    ckpt.add(module + ".compressed", dtype, {n, k / 2}, values);
    ckpt.add(module + ".shape", DType::I64, {2, 1}, std::vector<std::int64_t>{n, k});
  } else {
    ckpt.add(module + ".compressed", dtype, {static_cast<std::int64_t>(values.size())}, values);
    ckpt.add(module + ".shape", DType::I64, {2}, std::vector<std::int64_t>{n, k});
    ckpt.add(module + ".row_offsets", DType::I64, {n}, offsets);
  }
  ckpt.add(module + ".bitmask", DType::U8, {n, (k + 7) / 8}, mask);
}

TEST(CompressedTensors, SparseTwoFourAloneRebuildsDenseWeights) {
  TempDir dir;
  Checkpoint ckpt;
  std::mt19937 rng(42);
  std::vector<float> dense(static_cast<std::size_t>(kMlp * kHidden));
  for (std::size_t i = 0; i < dense.size(); i += 4) {
    const int zero_a = static_cast<int>(rng() % 4);
    for (int j = 0; j < 4; ++j) {
      dense[i + j] =
          (j == zero_a || j == (zero_a + 2) % 4) ? 0.0f : std::ldexp(static_cast<float>(rng() % 1000) - 500.0f, -9);
    }
  }
  add_bitmask(ckpt, kUp, DType::F32, dense, kMlp, kHidden, true);
  json q = {{"quant_method", "compressed-tensors"},
            {"format", "dense"},
            {"sparsity_config", sparse_24_config()},
            {"version", "0.12.2"}};
  ckpt.write(dir.path(), q);
  const ModelSource source = open_model(dir.path());
  EXPECT_FALSE(source.weights->load_quantized(kUp).has_value());
  EXPECT_TRUE(source.weights->contains(kUp + ".weight"));
  const TensorView w = source.weights->load(kUp + ".weight");
  EXPECT_EQ(w.dtype, DType::F32);
  EXPECT_EQ(w.shape, (std::vector<std::int64_t>{kMlp, kHidden}));
  EXPECT_EQ(std::vector<float>(w.as<float>().begin(), w.as<float>().end()), dense);
}

TEST(CompressedTensors, SparseBitmaskRebuildsInTheStoredDtype) {
  TempDir dir;
  Checkpoint ckpt;
  std::mt19937 rng(43);
  std::vector<std::uint16_t> dense(static_cast<std::size_t>(kHidden * kMlp), 0);
  for (auto& v : dense) {
    if (rng() % 3 == 0) v = f32_to_bf16(static_cast<float>(static_cast<int>(rng() % 200) - 100) / 64.0f);
  }
  // Sparse packer over bf16 bit patterns (0 = +0.0 is the only "empty" value here).
  add_bitmask(ckpt, kDown, DType::BF16, dense, kHidden, kMlp, false);
  json q = {{"quant_method", "compressed-tensors"},
            {"format", "dense"},
            {"sparsity_config",
             {{"format", "sparse-bitmask"}, {"sparsity_structure", "unstructured"}, {"targets", {"Linear"}}}}};
  ckpt.write(dir.path(), q);
  const ModelSource source = open_model(dir.path());
  const TensorView w = source.weights->load(kDown + ".weight");
  EXPECT_EQ(w.dtype, DType::BF16);
  EXPECT_EQ(w.shape, (std::vector<std::int64_t>{kHidden, kMlp}));
  EXPECT_EQ(std::vector<std::uint16_t>(w.as<std::uint16_t>().begin(), w.as<std::uint16_t>().end()), dense);
  EXPECT_NE(w.owner, nullptr);

  // Row offsets that disagree with the bitmask are caught.
  TempDir bad_dir;
  Checkpoint bad;
  add_bitmask(bad, kDown, DType::BF16, dense, kHidden, kMlp, false);
  bad.erase(kDown + ".row_offsets");
  bad.add(kDown + ".row_offsets", DType::I64, {kHidden}, std::vector<std::int64_t>(kHidden, 0));
  bad.write(bad_dir.path(), q);
  expect_error([&] { open_model(bad_dir.path()).weights->load(kDown + ".weight"); }, {"row_offsets", "row 1"});
}

TEST(CompressedTensors, SparseTwoFourOverInt8Codes) {
  // W8A8 int + 2:4: quantization first (int8 `weight`), then the sparsity
  // compressor packs those int8 values.
  TempDir dir;
  Checkpoint ckpt;
  const Reference r = make_sparse_24(kUp, {8, -1, true, false, DType::F16, 0, 44});
  std::vector<std::int8_t> values;
  for (const auto code : r.codes) values.push_back(static_cast<std::int8_t>(static_cast<int>(code) - 128));
  add_bitmask(ckpt, kUp, DType::I8, values, r.n, r.k, true);
  ckpt.add(kUp + ".weight_scale", DType::F16, {r.n, 1}, r.scales);
  json config = ct_config({{"group_0", ct_group(8, -1, true, "channel")}}, "int-quantized");
  config["sparsity_config"] = sparse_24_config();
  ckpt.write(dir.path(), config);
  const ModelSource source = open_model(dir.path());
  const auto m = source.weights->load_quantized(kUp);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->sparse_2_4);
  expect_matches(*m, r);
}

TEST(CompressedTensors, BadInputs) {
  const auto error_of = [](const std::function<void(Checkpoint&, json&)>& edit) -> std::string {
    TempDir dir;
    Checkpoint ckpt;
    const Reference r = make_reference(kUp, {4, 32, false, false, DType::F16, 0, 50});
    add_ct_packed(ckpt, kUp, r, false);
    json config = ct_config({{"group_0", ct_group(4, 32, false, "group")}});
    edit(ckpt, config);
    ckpt.write(dir.path(), config);
    try {
      open_model(dir.path()).weights->load_quantized(kUp);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  const auto expect_in = [](const std::string& message, std::initializer_list<std::string> fragments) {
    for (const auto& fragment : fragments) EXPECT_NE(message.find(fragment), std::string::npos) << message;
  };
  expect_in(error_of([](Checkpoint&, json& q) { q["format"] = "nvfp4-pack-quantized"; }),
            {"format 'nvfp4-pack-quantized' is not supported", "pack-quantized"});
  expect_in(error_of([](Checkpoint&, json& q) { q["config_groups"]["group_0"]["weights"]["num_bits"] = 5; }),
            {"group_0", "5-bit"});
  expect_in(error_of([](Checkpoint&, json& q) { q["config_groups"]["group_0"]["weights"]["type"] = "float"; }),
            {"weight type 'float'"});
  expect_in(error_of([](Checkpoint&, json& q) { q["config_groups"]["group_0"]["weights"]["strategy"] = "block"; }),
            {"strategy 'block'"});
  expect_in(error_of([](Checkpoint&, json& q) { q["config_groups"]["group_0"]["weights"]["group_size"] = 0; }),
            {"positive group_size"});
  expect_in(error_of([](Checkpoint&, json& q) {
              q["sparsity_config"] = {{"format", "marlin-24"}};
            }),
            {"sparsity format 'marlin-24'"});
  expect_in(error_of([](Checkpoint&, json& q) {
              q["format"] = "int-quantized";
              q["config_groups"]["group_0"]["weights"]["actorder"] = "group";
            }),
            {"actorder 'group'", "int-quantized"});
  expect_in(error_of([](Checkpoint& c, json&) {
              c.erase(kUp + ".weight_packed");
              c.add(kUp + ".weight_packed", DType::I32, {kMlp, 7}, std::vector<std::int32_t>(kMlp * 7));
            }),
            {kUp + ".weight_packed", "[256, 7]", "[256, 8]"});
  expect_in(error_of([](Checkpoint& c, json&) {
              c.erase(kUp + ".weight_shape");
              c.add(kUp + ".weight_shape", DType::I64, {2}, std::vector<std::int64_t>{kMlp, 32});
            }),
            {"weight_shape", "[256, 32]", "[256, 64]"});
  expect_in(error_of([](Checkpoint& c, json&) {
              c.erase(kUp + ".weight_scale");
              c.add(kUp + ".weight_scale", DType::I8, {kMlp, 2}, std::vector<std::int8_t>(kMlp * 2));
            }),
            {"weight_scale", "dtype I8"});
  expect_in(error_of([](Checkpoint& c, json&) { c.erase(kUp + ".weight_zero_point"); }),
            {"weight_zero_point", "missing"});
  // A per-tensor zero point outside the signed 4-bit range.
  expect_in(error_of([](Checkpoint& c, json& q) {
              c.erase(kUp + ".weight_zero_point");
              c.erase(kUp + ".weight_scale");
              c.add(kUp + ".weight_scale", DType::F16, {1}, std::vector<std::uint16_t>{0x2000});
              c.add(kUp + ".weight_zero_point", DType::I8, {1}, std::vector<std::int8_t>{9});
              q["config_groups"]["group_0"]["weights"]["strategy"] = "tensor";
              q["config_groups"]["group_0"]["weights"]["group_size"] = nullptr;
            }),
            {"zero point 9 is outside the 4-bit range [-8, 7]"});
  expect_in(error_of([](Checkpoint&, json& q) { q["config_groups"]["group_0"]["targets"] = {"re:.*down_proj"}; }),
            {kUp, "no config group targets it"});
}

TEST(CompressedTensors, SparseTwoFourValuesMustFitThePattern) {
  TempDir dir;
  Checkpoint ckpt;
  std::vector<float> dense(static_cast<std::size_t>(kMlp * kHidden), 1.0f);
  add_bitmask(ckpt, kUp, DType::F32, dense, kMlp, kHidden, true);
  // Set a third bit in the first run of 4.
  ckpt.erase(kUp + ".bitmask");
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(kMlp * kHidden / 8), 0x33);
  mask[0] = 0x37;
  ckpt.add(kUp + ".bitmask", DType::U8, {kMlp, kHidden / 8}, mask);
  ckpt.write(dir.path(),
             {{"quant_method", "compressed-tensors"}, {"format", "dense"}, {"sparsity_config", sparse_24_config()}});
  expect_error([&] { open_model(dir.path()).weights->load(kUp + ".weight"); },
               {kUp + ".bitmask", "row 0 columns 0..3 keep 3"});
}

// ---- Config summaries for `nibble inspect`.

TEST(QuantizationConfig, SummaryForInspect) {
  QuantizationConfig gptq = parse_quantization_config(gptq_config(4, 128, true, true, "gptq"));
  EXPECT_EQ(gptq.describe(), "gptq 4-bit, group 128, sym, act-order, format gptq (v1 zeros: stored zero - 1)");
  const json j = gptq.to_json();
  EXPECT_EQ(j["method"], "gptq");
  EXPECT_EQ(j["bits"], 4);
  EXPECT_EQ(j["group_size"], 128);
  EXPECT_EQ(j["sym"], true);
  EXPECT_EQ(j["act_order"], true);
  EXPECT_EQ(j["format"], "gptq");

  const QuantizationConfig awq = parse_quantization_config(
      {{"quant_method", "awq"}, {"w_bit", 4}, {"q_group_size", 128}, {"zero_point", true}, {"version", "gemm"}});
  EXPECT_EQ(awq.describe(), "awq 4-bit, group 128, asym, format gemm");

  json ct = ct_config({{"group_0", ct_group(4, 128, true, "group")}});
  ct["sparsity_config"] = sparse_24_config();
  const QuantizationConfig c = parse_quantization_config(ct);
  EXPECT_EQ(c.describe(),
            "compressed-tensors, format pack-quantized; group_0: pack-quantized 4-bit, group 128, sym; sparsity "
            "sparse-24-bitmask (2:4)");
  EXPECT_EQ(c.to_json()["sparsity"]["format"], "sparse-24-bitmask");
  EXPECT_TRUE(c.module(kUp)->sparse_2_4);
}

TEST(QuantizationConfig, PlainCheckpointHasNone) {
  TempDir dir;
  Checkpoint ckpt;
  ckpt.add(kUp + ".weight", DType::F16, {kMlp, kHidden}, std::vector<std::uint16_t>(kMlp * kHidden, 0x3c00));
  ckpt.write(dir.path(), nullptr);
  const ModelSource source = open_model(dir.path());
  EXPECT_FALSE(source.quantization.has_value());
  EXPECT_FALSE(source.weights->load_quantized(kUp).has_value());
  EXPECT_EQ(source.weights->load(kUp + ".weight").dtype, DType::F16);
}

// ---- GGUF Q4_0 / Q4_1 / Q8_0 blocks: 32 weights per block along a row.

class GgufWriter {
 public:
  void kv_string(const std::string& key, const std::string& value) {
    key_header(key, 8);
    string(meta_, value);
    ++kv_count_;
  }
  void kv_u32(const std::string& key, std::uint32_t value) {
    key_header(key, 4);
    put(meta_, value);
    ++kv_count_;
  }
  void kv_f32(const std::string& key, float value) {
    key_header(key, 6);
    put(meta_, value);
    ++kv_count_;
  }
  void tensor(const std::string& name, GgmlType type, std::vector<std::int64_t> shape, const std::string& bytes) {
    tensors_.push_back({name, type, std::move(shape), bytes});
  }
  std::string finish() const {
    std::string out = "GGUF";
    put(out, std::uint32_t{3});
    put(out, static_cast<std::uint64_t>(tensors_.size()));
    put(out, kv_count_);
    out += meta_;
    std::uint64_t offset = 0;
    std::string data;
    for (const auto& t : tensors_) {
      string(out, t.name);
      put(out, static_cast<std::uint32_t>(t.shape.size()));
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put(out, static_cast<std::uint64_t>(*it));
      put(out, static_cast<std::uint32_t>(t.type));
      put(out, offset);
      data += t.bytes;
      data.append((32 - data.size() % 32) % 32, '\0');
      offset = data.size();
    }
    out.append((32 - out.size() % 32) % 32, '\0');
    return out + data;
  }

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<std::int64_t> shape;
    std::string bytes;
  };
  template <typename T>
  static void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  static void string(std::string& out, const std::string& text) {
    put(out, static_cast<std::uint64_t>(text.size()));
    out += text;
  }
  void key_header(const std::string& key, std::uint32_t type) {
    string(meta_, key);
    put(meta_, type);
  }
  std::string meta_;
  std::uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
};

// Reference rows in HF order: per row and block a scale (and Q4_1 min), 32 codes.
struct BlockRef {
  GgmlType type;
  std::int64_t rows, cols;
  std::vector<std::uint32_t> codes;         // [rows][cols], unsigned (Q8_0: q + 128)
  std::vector<std::uint16_t> scales, mins;  // [rows][cols/32] f16 bits

  float expected(std::int64_t r, std::int64_t c) const {
    const auto b = static_cast<std::size_t>(r * (cols / 32) + c / 32);
    const float d = f16_to_f32(scales[b]);
    const auto q = static_cast<int>(codes[static_cast<std::size_t>(r * cols + c)]);
    if (type == GgmlType::Q4_1) {
      const volatile float product = static_cast<float>(q) * d;  // rounded before adding the min
      return product + f16_to_f32(mins[b]);
    }
    return static_cast<float>(q - (type == GgmlType::Q8_0 ? 128 : 8)) * d;
  }
  // Blocks of one stored row (HF row `r`).
  std::string row_bytes(std::int64_t r) const {
    std::string out;
    for (std::int64_t b = 0; b < cols / 32; ++b) {
      const auto i = static_cast<std::size_t>(r * (cols / 32) + b);
      out.append(reinterpret_cast<const char*>(&scales[i]), 2);
      if (type == GgmlType::Q4_1) out.append(reinterpret_cast<const char*>(&mins[i]), 2);
      const std::uint32_t* q = &codes[static_cast<std::size_t>(r * cols + b * 32)];
      if (type == GgmlType::Q8_0) {
        for (int j = 0; j < 32; ++j)
          out.push_back(static_cast<char>(static_cast<std::int8_t>(static_cast<int>(q[j]) - 128)));
      } else {
        for (int j = 0; j < 16; ++j) out.push_back(static_cast<char>(q[j] | (q[j + 16] << 4)));
      }
    }
    return out;
  }
};

BlockRef make_block_ref(GgmlType type, std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  BlockRef r{type, rows, cols, {}, {}, {}};
  const std::uint32_t levels = type == GgmlType::Q8_0 ? 256 : 16;
  for (std::int64_t i = 0; i < rows * cols; ++i) r.codes.push_back(rng() % levels);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f), min(-0.5f, 0.0f);
  for (std::int64_t i = 0; i < rows * cols / 32; ++i) {
    r.scales.push_back(f32_to_f16(scale(rng)));
    r.mins.push_back(f32_to_f16(min(rng)));
  }
  return r;
}

// llama.cpp's q/k permutation: stored row (h, i, j) holds HF row (h, j, i).
std::string permuted_rows(const BlockRef& r, std::int64_t heads) {
  const std::int64_t head_rows = r.rows / heads, half = head_rows / 2;
  std::string out;
  for (std::int64_t h = 0; h < heads; ++h) {
    for (std::int64_t i = 0; i < half; ++i) {
      for (std::int64_t j = 0; j < 2; ++j) out += r.row_bytes(h * head_rows + j * half + i);
    }
  }
  return out;
}

std::string all_rows(const BlockRef& r) {
  std::string out;
  for (std::int64_t row = 0; row < r.rows; ++row) out += r.row_bytes(row);
  return out;
}

void expect_blocks(const QuantizedMatrix& m, const BlockRef& r) {
  ASSERT_EQ(m.rows, r.rows);
  ASSERT_EQ(m.cols, r.cols);
  EXPECT_EQ(m.bits, r.type == GgmlType::Q8_0 ? 8 : 4);
  EXPECT_EQ(m.groups, r.cols / 32);
  EXPECT_EQ(m.scale_dtype, DType::F16);
  EXPECT_EQ(m.offset, r.type == GgmlType::Q4_1 ? QuantizedMatrix::Offset::Min : QuantizedMatrix::Offset::ZeroPoint);
  int mismatches = 0;
  for (std::int64_t row = 0; row < r.rows; ++row) {
    for (std::int64_t col = 0; col < r.cols; ++col) {
      const bool code_ok = m.codes[static_cast<std::size_t>(row * r.cols + col)] ==
                           r.codes[static_cast<std::size_t>(row * r.cols + col)];
      const bool value_ok =
          std::bit_cast<std::uint32_t>(m.value(row, col)) == std::bit_cast<std::uint32_t>(r.expected(row, col));
      if ((!code_ok || !value_ok) && ++mismatches <= 5) {
        ADD_FAILURE() << m.name << " (" << row << ", " << col << "): " << m.value(row, col) << " vs "
                      << r.expected(row, col);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(GgufQuantized, BlocksUnpackInHfRowOrderAndMatchLoad) {
  TempDir dir;
  const BlockRef embed = make_block_ref(GgmlType::Q4_0, kVocab, kHidden, 60);
  const BlockRef q = make_block_ref(GgmlType::Q4_0, kHidden, kHidden, 61);
  const BlockRef k = make_block_ref(GgmlType::Q8_0, kKv, kHidden, 62);
  const BlockRef up = make_block_ref(GgmlType::Q4_1, kMlp, kHidden, 63);
  const BlockRef down = make_block_ref(GgmlType::Q8_0, kHidden, kMlp, 64);
  const BlockRef head = make_block_ref(GgmlType::Q4_1, kVocab, kHidden, 65);
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_u32("llama.embedding_length", kHidden);
  w.kv_u32("llama.feed_forward_length", kMlp);
  w.kv_u32("llama.block_count", 1);
  w.kv_u32("llama.attention.head_count", 4);
  w.kv_u32("llama.attention.head_count_kv", 2);
  w.kv_u32("llama.context_length", 128);
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<float> norm(kHidden, 1.0f);
  w.tensor("token_embd.weight", GgmlType::Q4_0, {kVocab, kHidden}, all_rows(embed));
  w.tensor("blk.0.attn_q.weight", GgmlType::Q4_0, {kHidden, kHidden}, permuted_rows(q, 4));
  w.tensor("blk.0.attn_k.weight", GgmlType::Q8_0, {kKv, kHidden}, permuted_rows(k, 2));
  w.tensor("blk.0.ffn_up.weight", GgmlType::Q4_1, {kMlp, kHidden}, all_rows(up));
  w.tensor("blk.0.ffn_down.weight", GgmlType::Q8_0, {kHidden, kMlp}, all_rows(down));
  w.tensor("output.weight", GgmlType::Q4_1, {kVocab, kHidden}, all_rows(head));
  w.tensor("output_norm.weight", GgmlType::F32, {kHidden},
           std::string(reinterpret_cast<const char*>(norm.data()), norm.size() * 4));
  write_file(dir / "tiny.gguf", w.finish());

  const ModelSource source = open_model(dir / "tiny.gguf");
  EXPECT_FALSE(source.quantization.has_value());
  const std::vector<std::pair<std::string, const BlockRef*>> modules = {
      {"model.embed_tokens", &embed}, {kQ, &q}, {kK, &k}, {kUp, &up}, {kDown, &down}, {"lm_head", &head}};
  for (const auto& [module, ref] : modules) {
    SCOPED_TRACE(module);
    EXPECT_TRUE(source.weights->has_quantized(module));
    const auto m = source.weights->load_quantized(module);
    ASSERT_TRUE(m);
    expect_blocks(*m, *ref);
    EXPECT_EQ(m->stored_bytes,
              static_cast<std::uint64_t>(ref->rows * ref->cols / 32) * (ref->type == GgmlType::Q4_0   ? 18u
                                                                        : ref->type == GgmlType::Q4_1 ? 20u
                                                                                                      : 34u));
    // load() still dequantizes to F32, and agrees bit for bit.
    const TensorView dense = source.weights->load(module + ".weight");
    ASSERT_EQ(dense.dtype, DType::F32);
    int mismatches = 0;
    for (std::int64_t i = 0; i < m->rows * m->cols; ++i) {
      mismatches += std::bit_cast<std::uint32_t>(dense.as<float>()[static_cast<std::size_t>(i)]) !=
                    std::bit_cast<std::uint32_t>(m->value(i / m->cols, i % m->cols));
    }
    EXPECT_EQ(mismatches, 0);
  }
  EXPECT_FALSE(source.weights->has_quantized("model.norm"));
  EXPECT_FALSE(source.weights->load_quantized("model.norm").has_value());
  EXPECT_FALSE(source.weights->load_quantized(kGate).has_value());  // absent
}

TEST(GgufQuantized, ExistingFixtureQ8_0KeyProjectionMatchesLoad) {
  const auto gguf =
      std::make_shared<const GgufFile>(fs::path(NIBBLE_SOURCE_DIR) / "tests" / "gguf" / "fixtures" / "tiny_llama.gguf");
  const auto weights = make_gguf_weights(gguf, config_from_gguf(*gguf));
  const auto m = weights->load_quantized("model.layers.0.self_attn.k_proj");
  ASSERT_TRUE(m);
  const TensorView dense = weights->load("model.layers.0.self_attn.k_proj.weight");
  for (std::int64_t i = 0; i < m->rows * m->cols; ++i) {
    EXPECT_EQ(dense.as<float>()[static_cast<std::size_t>(i)], m->value(i / m->cols, i % m->cols)) << i;
  }
  EXPECT_FALSE(weights->load_quantized("model.layers.0.self_attn.q_proj").has_value());  // F16: plain
}

// ---- Real checkpoints made by GPTQModel / llm-compressor / AutoAWQ.
//
// tests/quant/fixtures/manifest.json (written by tests/quant/make_tool_fixtures.py):
//   {"fixtures": [{"name": "gptq_w4_g32_sym", "folder": "gptq_w4_g32_sym",
//                  "dequant": {"module": "model.layers.0.self_attn.k_proj",
//                              "file": "dequant_model.layers.0.self_attn.k_proj.f32",
//                              "shape": [N, K]}, ...}, ...]}
// `folder` is relative to the manifest and `dequant.file` to the folder; the file is
// the tool's own float32 weights, row-major [N, K]. Modules stored dense or sparse
// come back through load().

std::vector<float> floats_of(const TensorView& t) {
  std::vector<float> out;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const auto at = static_cast<std::size_t>(i);
    switch (t.dtype) {
      case DType::F32:
        out.push_back(t.as<float>()[at]);
        break;
      case DType::F16:
        out.push_back(f16_to_f32(t.as<std::uint16_t>()[at]));
        break;
      case DType::BF16:
        out.push_back(bf16_to_f32(t.as<std::uint16_t>()[at]));
        break;
      default:
        ADD_FAILURE() << t.name << ": unexpected dtype " << dtype_name(t.dtype);
        return out;
    }
  }
  return out;
}

TEST(QuantFixtures, ReproduceTheToolsDequantizedWeights) {
  // NIBBLE_QUANT_FIXTURES points at another fixture folder with the same manifest.
  const char* override_root = std::getenv("NIBBLE_QUANT_FIXTURES");
  const fs::path root =
      override_root != nullptr ? fs::path(override_root) : fs::path(NIBBLE_SOURCE_DIR) / "tests" / "quant" / "fixtures";
  const fs::path manifest_path = root / "manifest.json";
  // The manifest is committed with the fixtures: a missing one is a failure, not a skip.
  ASSERT_TRUE(fs::exists(manifest_path)) << manifest_path << " not found (made by tests/quant/make_tool_fixtures.py)";
  const json manifest = json::parse(testing::read_file(manifest_path));
  const json& fixtures = manifest.at("fixtures");
  ASSERT_FALSE(fixtures.empty());
  for (const auto& fixture : fixtures) {
    const std::string name = fixture.at("name").get<std::string>();
    SCOPED_TRACE(name);
    const fs::path folder = root / fixture.at("folder").get<std::string>();
    const json& dequant_record = fixture.at("dequant");
    const std::string module = dequant_record.at("module").get<std::string>();
    const fs::path dequant = folder / dequant_record.at("file").get<std::string>();
    ASSERT_TRUE(fs::exists(dequant)) << dequant;
    const std::vector<float> expected = testing::read_f32_file(dequant);

    const ModelSource source = open_model(folder);
    std::vector<float> actual;
    std::vector<std::int64_t> shape;
    if (const auto m = source.weights->load_quantized(module)) {
      shape = {m->rows, m->cols};
      for (std::int64_t n = 0; n < m->rows; ++n) {
        for (std::int64_t k = 0; k < m->cols; ++k) actual.push_back(m->value(n, k));
      }
    } else {
      const TensorView w = source.weights->load(module + ".weight");
      shape = w.shape;
      actual = floats_of(w);
    }
    EXPECT_EQ(shape, dequant_record.at("shape").get<std::vector<std::int64_t>>());
    ASSERT_EQ(actual.size(), expected.size());
    int mismatches = 0;
    double worst = 0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
      const double diff = std::abs(static_cast<double>(actual[i]) - expected[i]);
      const double relative = diff / std::max(std::abs(static_cast<double>(expected[i])), 1e-30);
      if (diff > 0 && relative > 1e-6) {
        worst = std::max(worst, relative);
        if (++mismatches <= 5) {
          ADD_FAILURE() << name << " element " << i << " (" << i / static_cast<std::size_t>(shape.back()) << ", "
                        << i % static_cast<std::size_t>(shape.back()) << "): " << actual[i] << " vs " << expected[i];
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << name << ": worst relative error " << worst;
  }
}

}  // namespace
}  // namespace nibble
