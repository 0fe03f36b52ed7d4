// CheckpointWriter: compressed models written as GPTQ (v1) and compressed-tensors
// folders must read back through nibble's own readers (loader/gptq.cpp,
// loader/compressed_tensors.cpp, which were checked against the tools' real
// checkpoints) exactly: the same codes, zero points, scales, groups and pruned
// weights, every other tensor byte for byte, configs that parse as what was
// written, and a model that runs. Set NIBBLE_KEEP_WRITTEN_CHECKPOINTS=DIR to keep
// every written folder (for tests/quant/check_written_checkpoint.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/half.h"
#include "engine/model.h"
#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"
#include "quant/checkpoint_writer.h"
#include "test_util.h"

namespace nibble::quant {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;
using testing::TempDir;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

// ---- A tiny random Llama source: hidden 128, mlp 256, 4 heads (2 KV) of 32, 2 layers.

constexpr std::int64_t kHidden = 128;
constexpr std::int64_t kMlp = 256;
constexpr std::int64_t kKv = 64;
constexpr std::int64_t kVocab = 96;
constexpr int kLayers = 2;

const std::vector<std::string> kSideFiles = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                             "generation_config.json", "chat_template.jinja"};

std::vector<std::string> decoder_modules() {
  std::vector<std::string> out;
  for (int layer = 0; layer < kLayers; ++layer) {
    for (const char* part : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      out.push_back(fmt::format("model.layers.{}.{}", layer, part));
    }
  }
  return out;
}

std::pair<std::int64_t, std::int64_t> shape_of(const std::string& module) {
  if (module == "lm_head") return {kVocab, kHidden};
  if (module.ends_with("k_proj") || module.ends_with("v_proj")) return {kKv, kHidden};
  if (module.ends_with("gate_proj") || module.ends_with("up_proj")) return {kMlp, kHidden};
  if (module.ends_with("down_proj")) return {kHidden, kMlp};
  return {kHidden, kHidden};
}

const char* torch_dtype_name(DType dtype) {
  return dtype == DType::F16 ? "float16" : dtype == DType::BF16 ? "bfloat16" : "float32";
}

std::vector<std::byte> encode(const std::vector<float>& values, DType dtype) {
  std::vector<std::byte> out(values.size() * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) {
      std::memcpy(out.data() + i * 4, &values[i], 4);
    } else {
      const std::uint16_t h = dtype == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
      std::memcpy(out.data() + i * 2, &h, 2);
    }
  }
  return out;
}

std::vector<float> decode(const TensorView& t) {
  std::vector<float> out(at(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.dtype == DType::F32) {
      std::memcpy(&out[i], t.bytes.data() + i * 4, 4);
    } else {
      std::uint16_t h = 0;
      std::memcpy(&h, t.bytes.data() + i * 2, 2);
      out[i] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return out;
}

struct SourceOptions {
  DType dtype = DType::F16;
  bool bias = false;  // Qwen2 with q/k/v biases
  bool tied = false;
  unsigned seed = 7;
};

void write_source(const fs::path& folder, const SourceOptions& o) {
  fs::create_directories(folder);
  json config = {{"architectures", {o.bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
                 {"model_type", o.bias ? "qwen2" : "llama"},
                 {"vocab_size", kVocab},
                 {"hidden_size", kHidden},
                 {"intermediate_size", kMlp},
                 {"num_hidden_layers", kLayers},
                 {"num_attention_heads", 4},
                 {"num_key_value_heads", 2},
                 {"max_position_embeddings", 64},
                 {"rms_norm_eps", 1e-5},
                 {"rope_theta", 10000.0},
                 {"tie_word_embeddings", o.tied},
                 {"bos_token_id", 1},
                 {"eos_token_id", 2},
                 {"torch_dtype", torch_dtype_name(o.dtype)}};
  if (o.bias) config["attention_bias"] = true;
  testing::write_file(folder / "config.json", config.dump(2));

  std::mt19937 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<TensorView> tensors;
  const auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float center) {
    std::int64_t numel = 1;
    for (const auto d : shape) numel *= d;
    std::vector<float> values(at(numel));
    for (auto& v : values) v = center + normal(rng);
    tensors.push_back(make_owned_tensor(name, o.dtype, std::move(shape), encode(values, o.dtype)));
  };
  add("model.embed_tokens.weight", {kVocab, kHidden}, 0);
  for (int layer = 0; layer < kLayers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    add(p + "input_layernorm.weight", {kHidden}, 1);
    add(p + "post_attention_layernorm.weight", {kHidden}, 1);
    if (o.bias) {
      add(p + "self_attn.q_proj.bias", {kHidden}, 0);
      add(p + "self_attn.k_proj.bias", {kKv}, 0);
      add(p + "self_attn.v_proj.bias", {kKv}, 0);
    }
  }
  for (const auto& module : decoder_modules()) {
    const auto [n, k] = shape_of(module);
    add(module + ".weight", {n, k}, 0);
  }
  add("model.norm.weight", {kHidden}, 1);
  if (!o.tied) add("lm_head.weight", {kVocab, kHidden}, 0);
  write_safetensors(folder / "model.safetensors", tensors, {{"format", "pt"}});

  testing::write_file(folder / "tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE"}})");
  testing::write_file(folder / "tokenizer_config.json", R"({"chat_template": "{{ messages }}", "bos_token": "<s>"})");
  testing::write_file(folder / "special_tokens_map.json", R"({"bos_token": "<s>"})");
  testing::write_file(folder / "generation_config.json", R"({"eos_token_id": 2, "temperature": 0.7})");
  testing::write_file(folder / "chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}");
}

// ---- Random quantized matrices with known codes, scales and zero points.

struct QuantOptions {
  int bits = 4;
  std::int64_t group_size = 128;
  bool sym = true;
  bool act_order = false;
  int min_zero = 0;    // GPTQ v1 cannot store 0
  int max_zero = 255;
  bool two_four = false;
  unsigned seed = 1;
};

QuantizedMatrix random_matrix(const std::string& module, const QuantOptions& o) {
  std::mt19937 rng(o.seed);
  QuantizedMatrix m;
  m.name = module;
  std::tie(m.rows, m.cols) = shape_of(module);
  m.bits = o.bits;
  m.groups = o.group_size > 0 ? (m.cols + o.group_size - 1) / o.group_size : 1;
  // Act-order: GPTQ's g_idx[perm[i]] = i / group_size, non-monotone in the column.
  std::vector<std::int64_t> order(at(m.cols));
  std::iota(order.begin(), order.end(), 0);
  if (o.act_order) std::shuffle(order.begin(), order.end(), rng);
  m.group_of_col.resize(at(m.cols));
  for (std::int64_t col = 0; col < m.cols; ++col) {
    m.group_of_col[at(order[at(col)])] = o.group_size > 0 ? static_cast<std::int32_t>(col / o.group_size) : 0;
  }
  const int levels = 1 << o.bits;
  std::uniform_int_distribution<int> code(0, levels - 1);
  std::uniform_int_distribution<int> zero(o.min_zero, std::min(o.max_zero, 255));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (std::int64_t i = 0; i < m.rows * m.groups; ++i) {
    m.zeros.push_back(static_cast<std::uint8_t>(o.sym ? levels / 2 : zero(rng)));
    m.scales.push_back(f16_to_f32(f32_to_f16(scale(rng))));
  }
  for (std::int64_t i = 0; i < m.rows * m.cols; ++i) m.codes.push_back(static_cast<std::uint8_t>(code(rng)));
  if (o.two_four) {
    // Two of every aligned 4 at the zero point (value 0), at random places.
    std::uniform_int_distribution<int> pick(0, 5);
    constexpr int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    for (std::int64_t row = 0; row < m.rows; ++row) {
      for (std::int64_t col = 0; col < m.cols; col += 4) {
        for (const int j : kPairs[pick(rng)]) {
          const std::int64_t c = col + j;
          m.codes[at(row * m.cols + c)] = m.zeros[at(row * m.groups + m.group(c))];
        }
      }
    }
    m.sparse_2_4 = true;
  }
  return m;
}

// Adds a fresh random matrix for every decoder module not in `skip` (each from the
// next seed of `q`) and returns what was added, by module.
std::map<std::string, QuantizedMatrix> add_random_modules(CheckpointWriter& writer, QuantOptions& q,
                                                          const std::vector<std::string>& skip = {}) {
  std::map<std::string, QuantizedMatrix> added;
  for (const auto& module : decoder_modules()) {
    if (std::find(skip.begin(), skip.end(), module) != skip.end()) continue;
    q.seed += 1;
    added[module] = random_matrix(module, q);
    writer.add_quantized(module, added[module]);
  }
  return added;
}

void expect_same_matrix(const QuantizedMatrix& got, const QuantizedMatrix& want) {
  SCOPED_TRACE(want.name);
  ASSERT_EQ(got.rows, want.rows);
  ASSERT_EQ(got.cols, want.cols);
  EXPECT_EQ(got.bits, want.bits);
  EXPECT_EQ(got.groups, want.groups);
  EXPECT_EQ(got.group_of_col, want.group_of_col);
  EXPECT_EQ(got.offset, QuantizedMatrix::Offset::ZeroPoint);
  EXPECT_EQ(got.scale_dtype, DType::F16);
  EXPECT_EQ(got.codes, want.codes);
  EXPECT_EQ(got.zeros, want.zeros);
  EXPECT_EQ(got.scales, want.scales);
  int mismatches = 0;
  for (std::int64_t n = 0; n < want.rows; ++n) {
    for (std::int64_t k = 0; k < want.cols; ++k) {
      if (std::bit_cast<std::uint32_t>(got.value(n, k)) != std::bit_cast<std::uint32_t>(want.value(n, k))) {
        ++mismatches;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// ---- Folder checks.

// The files a writer must keep with the model, byte for byte.
void expect_side_files_copied(const fs::path& source, const fs::path& out) {
  for (const auto& name : kSideFiles) {
    ASSERT_TRUE(fs::exists(out / name)) << name;
    EXPECT_EQ(testing::read_file(out / name), testing::read_file(source / name)) << name;
  }
}

// Every source tensor that is not a replaced module weight, byte for byte.
void expect_untouched_copied(const ModelSource& source, const ModelSource& written,
                             const std::set<std::string>& replaced) {
  for (const auto& info : source.weights->list()) {
    if (info.name.ends_with(".weight") && replaced.contains(info.name.substr(0, info.name.size() - 7))) continue;
    SCOPED_TRACE(info.name);
    const TensorView a = source.weights->load(info.name);
    const TensorView b = written.weights->load(info.name);
    EXPECT_EQ(b.dtype, a.dtype);
    EXPECT_EQ(b.shape, a.shape);
    ASSERT_EQ(b.bytes.size(), a.bytes.size());
    EXPECT_EQ(std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()), 0);
  }
}

std::map<std::string, const TensorView*> file_tensors(const SafetensorsFile& file) {
  std::map<std::string, const TensorView*> out;
  for (const auto& t : file.tensors()) out[t.name] = &t;
  return out;
}

json read_json(const fs::path& path) { return json::parse(testing::read_file(path)); }

// Copies `folder` to $NIBBLE_KEEP_WRITTEN_CHECKPOINTS/<test name>/<label>, if set.
void keep(const fs::path& folder, const std::string& label) {
  const char* root = std::getenv("NIBBLE_KEEP_WRITTEN_CHECKPOINTS");
  if (root == nullptr || *root == '\0') return;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = fmt::format("{}.{}", info->test_suite_name(), info->name());
  std::replace(name.begin(), name.end(), '/', '_');
  const fs::path target = fs::path(root) / name / label;
  fs::remove_all(target);
  fs::create_directories(target.parent_path());
  fs::copy(folder, target, fs::copy_options::recursive);
}

// A source folder and its opened model in a temp dir; `out` is where the writer writes.
class WriterTest : public ::testing::Test {
 protected:
  void make_source(const SourceOptions& options = {}) {
    write_source(dir_ / "source", options);
    source_.emplace(open_model(dir_ / "source"));
  }
  const ModelSource& source() const { return *source_; }
  fs::path out() const { return dir_ / "out"; }
  ModelSource written(const std::string& label = "out") {
    keep(out(), label);
    return open_model(out());
  }

  TempDir dir_;
  std::optional<ModelSource> source_;
};

CheckpointSettings gptq_settings(const QuantOptions& q) {
  CheckpointSettings s;
  s.format = CheckpointFormat::Gptq;
  s.bits = q.bits;
  s.group_size = q.group_size;
  s.sym = q.sym;
  s.desc_act = q.act_order;
  s.damp = 0.05;
  s.tool_version = "test";
  return s;
}

CheckpointSettings ct_settings(const QuantOptions& q) {
  CheckpointSettings s = gptq_settings(q);
  s.format = CheckpointFormat::CompressedTensors;
  return s;
}

// ---- GPTQ round trips.

struct RoundTripCase {
  int bits;
  std::int64_t group_size;
  bool sym;
  bool act_order;
  DType dtype;
};

void PrintTo(const RoundTripCase& c, std::ostream* os) {
  *os << fmt::format("{{bits {}, group {}, {}, act_order {}, {}}}", c.bits, c.group_size, c.sym ? "sym" : "asym",
                     c.act_order, torch_dtype_name(c.dtype));
}

std::string case_name(const ::testing::TestParamInfo<RoundTripCase>& info) {
  const auto& c = info.param;
  return fmt::format("w{}_g{}_{}{}_{}", c.bits, c.group_size > 0 ? std::to_string(c.group_size) : "all",
                     c.sym ? "sym" : "asym", c.act_order ? "_actorder" : "", torch_dtype_name(c.dtype));
}

class GptqRoundTrip : public WriterTest, public ::testing::WithParamInterface<RoundTripCase> {};

TEST_P(GptqRoundTrip, LoaderReadsBackExactlyWhatWasWritten) {
  const auto& c = GetParam();
  make_source({c.dtype, false, false, 7});
  QuantOptions q{c.bits, c.group_size, c.sym, c.act_order, 1, (1 << c.bits) - 1, false, 1};
  CheckpointWriter writer(source(), out(), gptq_settings(q));
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q);
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization.has_value());
  EXPECT_EQ(w.quantization->method, QuantMethod::Gptq);
  EXPECT_EQ(w.quantization->format, "gptq");
  EXPECT_EQ(w.quantization->defaults.bits, c.bits);
  EXPECT_EQ(w.quantization->defaults.group_size, c.group_size);
  EXPECT_EQ(w.quantization->defaults.sym, c.sym);
  EXPECT_EQ(w.quantization->defaults.act_order, c.act_order);
  EXPECT_FALSE(w.quantization->lm_head);
  EXPECT_TRUE(w.quantization->dynamic.empty());

  std::set<std::string> replaced;
  for (const auto& [module, matrix] : added) {
    replaced.insert(module);
    EXPECT_FALSE(w.weights->contains(module + ".weight")) << module;
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
  }
  EXPECT_FALSE(w.weights->load_quantized("lm_head").has_value());
  expect_untouched_copied(source(), w, replaced);
  expect_side_files_copied(dir_ / "source", out());

  // The stored tensors are exactly GPTQModel's: qweight/qzeros/g_idx int32, scales fp16.
  const SafetensorsFile file(out() / "model.safetensors");
  const auto tensors = file_tensors(file);
  const std::string m = "model.layers.1.mlp.down_proj";  // [128, 256]
  const std::int64_t groups = c.group_size > 0 ? kMlp / c.group_size : 1;
  ASSERT_TRUE(tensors.contains(m + ".qweight"));
  EXPECT_EQ(tensors.at(m + ".qweight")->dtype, DType::I32);
  EXPECT_EQ(tensors.at(m + ".qweight")->shape, (std::vector<std::int64_t>{kMlp * c.bits / 32, kHidden}));
  EXPECT_EQ(tensors.at(m + ".qzeros")->shape, (std::vector<std::int64_t>{groups, kHidden * c.bits / 32}));
  EXPECT_EQ(tensors.at(m + ".scales")->dtype, DType::F16);
  EXPECT_EQ(tensors.at(m + ".scales")->shape, (std::vector<std::int64_t>{groups, kHidden}));
  EXPECT_EQ(tensors.at(m + ".g_idx")->dtype, DType::I32);
  EXPECT_EQ(file.metadata().at("format"), "pt");

  // quantize_config.json and config.json's quantization_config are the same object.
  const json config = read_json(out() / "config.json");
  const json quantize_config = read_json(out() / "quantize_config.json");
  EXPECT_EQ(config["quantization_config"], quantize_config);
  EXPECT_EQ(config["torch_dtype"], "float16");
  EXPECT_EQ(quantize_config["checkpoint_format"], "gptq");
  EXPECT_EQ(quantize_config["format"], "gptq");
  EXPECT_EQ(quantize_config["quant_method"], "gptq");
  EXPECT_EQ(quantize_config["pack_dtype"], "int32");
  EXPECT_EQ(quantize_config["damp_percent"], 0.05);
  EXPECT_EQ(quantize_config["static_groups"], false);
  EXPECT_EQ(quantize_config["true_sequential"], true);
  EXPECT_EQ(quantize_config["meta"]["quantizer"], json::array({"nibble:test"}));
  EXPECT_EQ(quantize_config["meta"]["method"], "gptq");
  // The rest of the source config is kept.
  const json source_config = read_json(dir_ / "source" / "config.json");
  for (const auto& [key, value] : source_config.items()) {
    if (key != "torch_dtype") {
      EXPECT_EQ(config[key], value) << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Settings, GptqRoundTrip,
    ::testing::Values(RoundTripCase{4, 32, true, false, DType::F16}, RoundTripCase{4, 64, false, true, DType::F16},
                      RoundTripCase{4, 128, false, false, DType::BF16}, RoundTripCase{4, -1, true, false, DType::F32},
                      RoundTripCase{3, 32, false, false, DType::F16}, RoundTripCase{3, 128, true, true, DType::F16},
                      RoundTripCase{2, 32, false, false, DType::F16}, RoundTripCase{2, -1, false, false, DType::F16},
                      RoundTripCase{8, 128, true, false, DType::F16}, RoundTripCase{8, 64, false, true, DType::F32}),
    case_name);

// ---- compressed-tensors pack-quantized round trips.

class CompressedTensorsRoundTrip : public WriterTest, public ::testing::WithParamInterface<RoundTripCase> {};

TEST_P(CompressedTensorsRoundTrip, LoaderReadsBackExactlyWhatWasWritten) {
  const auto& c = GetParam();
  make_source({c.dtype, false, false, 7});
  QuantOptions q{c.bits, c.group_size, c.sym, c.act_order, 0, (1 << c.bits) - 1, false, 1};
  CheckpointWriter writer(source(), out(), ct_settings(q));
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q);
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization.has_value());
  EXPECT_EQ(w.quantization->method, QuantMethod::CompressedTensors);
  EXPECT_EQ(w.quantization->format, "pack-quantized");
  EXPECT_EQ(w.quantization->defaults.bits, c.bits);
  EXPECT_EQ(w.quantization->defaults.group_size, c.group_size);
  EXPECT_EQ(w.quantization->defaults.sym, c.sym);
  EXPECT_EQ(w.quantization->defaults.act_order, c.act_order);
  EXPECT_FALSE(w.quantization->sparsity.has_value());
  EXPECT_EQ(w.quantization->ignore, std::vector<std::string>{"lm_head"});

  std::set<std::string> replaced;
  for (const auto& [module, matrix] : added) {
    replaced.insert(module);
    EXPECT_FALSE(w.weights->contains(module + ".weight")) << module;
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
    EXPECT_FALSE(loaded->sparse_2_4);
  }
  EXPECT_FALSE(w.weights->load_quantized("lm_head").has_value());
  expect_untouched_copied(source(), w, replaced);
  expect_side_files_copied(dir_ / "source", out());
  EXPECT_FALSE(fs::exists(out() / "quantize_config.json"));

  const SafetensorsFile file(out() / "model.safetensors");
  const auto tensors = file_tensors(file);
  const std::string m = "model.layers.0.self_attn.k_proj";  // [64, 128]
  const std::int64_t groups = c.group_size > 0 ? kHidden / c.group_size : 1;
  EXPECT_EQ(tensors.at(m + ".weight_packed")->shape, (std::vector<std::int64_t>{kKv, (kHidden * c.bits + 31) / 32}));
  EXPECT_EQ(tensors.at(m + ".weight_scale")->shape, (std::vector<std::int64_t>{kKv, groups}));
  EXPECT_EQ(tensors.at(m + ".weight_shape")->dtype, DType::I64);
  EXPECT_EQ(tensors.contains(m + ".weight_zero_point"), !c.sym);
  if (!c.sym) {
    EXPECT_EQ(tensors.at(m + ".weight_zero_point")->shape, (std::vector<std::int64_t>{(kKv * c.bits + 31) / 32, groups}));
  }
  EXPECT_EQ(tensors.contains(m + ".weight_g_idx"), c.act_order);

  // llm-compressor's keys, as in tests/quant/fixtures/ct_w4a16_*.
  const json q_config = read_json(out() / "config.json")["quantization_config"];
  EXPECT_EQ(q_config["quant_method"], "compressed-tensors");
  EXPECT_EQ(q_config["quantization_status"], "compressed");
  EXPECT_EQ(q_config["version"], "0.19.0");
  EXPECT_EQ(q_config["sparsity_config"], json::object());
  const json& weights = q_config["config_groups"]["group_0"]["weights"];
  EXPECT_EQ(q_config["config_groups"]["group_0"]["targets"], json::array({"Linear"}));
  EXPECT_EQ(weights["num_bits"], c.bits);
  EXPECT_EQ(weights["type"], "int");
  EXPECT_EQ(weights["symmetric"], c.sym);
  EXPECT_EQ(weights["strategy"], c.group_size > 0 ? "group" : "channel");
  EXPECT_EQ(weights["dynamic"], false);
  EXPECT_EQ(weights["actorder"], c.act_order ? json("group") : json(nullptr));
}

INSTANTIATE_TEST_SUITE_P(
    Settings, CompressedTensorsRoundTrip,
    ::testing::Values(RoundTripCase{4, 128, true, false, DType::F16}, RoundTripCase{4, 32, false, false, DType::F16},
                      RoundTripCase{4, 64, false, true, DType::BF16}, RoundTripCase{4, -1, true, false, DType::F32},
                      RoundTripCase{3, 64, false, false, DType::F16}, RoundTripCase{3, 32, true, true, DType::F16},
                      RoundTripCase{2, -1, false, false, DType::F16}, RoundTripCase{2, 32, true, false, DType::F16},
                      RoundTripCase{8, 128, true, false, DType::F16}, RoundTripCase{8, 32, false, true, DType::F16}),
    case_name);

// ---- Pruned fp16 modules: sparse-24-bitmask and sparse-bitmask.

// The source weights of `module` with `keep(row, col, value)` false set to zero.
template <typename Keep>
std::vector<float> pruned_weights(const ModelSource& source, const std::string& module, Keep keep_weight) {
  const TensorView t = source.weights->load(module + ".weight");
  std::vector<float> w = decode(t);
  const std::int64_t cols = t.shape[1];
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (!keep_weight(static_cast<std::int64_t>(i) / cols, static_cast<std::int64_t>(i) % cols, w, i)) w[i] = 0.0f;
  }
  return w;
}

// Magnitude 2:4, and every 5th run pruned to a single weight (the writer must still flag two).
std::vector<float> prune_2_4(const ModelSource& source, const std::string& module) {
  return pruned_weights(source, module, [](std::int64_t row, std::int64_t col, const std::vector<float>& w,
                                           std::size_t i) {
    const std::size_t first = i - static_cast<std::size_t>(col % 4);
    int larger = 0;
    for (std::size_t j = first; j < first + 4; ++j) {
      larger += std::abs(w[j]) > std::abs(w[i]) || (std::abs(w[j]) == std::abs(w[i]) && j < i);
    }
    const bool lonely_run = (row * 7 + col / 4) % 5 == 0;
    return larger < (lonely_run ? 1 : 2);
  });
}

std::vector<float> prune_unstructured(const ModelSource& source, const std::string& module, unsigned seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution drop(0.6);
  return pruned_weights(source, module, [&](std::int64_t row, std::int64_t, const std::vector<float>&, std::size_t) {
    return row != 3 && !drop(rng);  // row 3 pruned entirely: an empty row in the values
  });
}

class SparseFp : public WriterTest, public ::testing::WithParamInterface<DType> {};

TEST_P(SparseFp, Sparse24BitmaskRebuildsThePrunedWeights) {
  make_source({GetParam(), false, false, 11});
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.sparsity_structure = "2:4";
  settings.pruning_method = "magnitude";
  settings.sparsity = 0.5;
  CheckpointWriter writer(source(), out(), settings);
  std::map<std::string, std::vector<float>> pruned;
  for (const auto& module : decoder_modules()) {
    pruned[module] = prune_2_4(source(), module);
    const auto [n, k] = shape_of(module);
    writer.add_pruned(module, pruned[module], n, k);
  }
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization && w.quantization->sparsity);
  EXPECT_EQ(w.quantization->sparsity->format, "sparse-24-bitmask");
  EXPECT_EQ(w.quantization->sparsity->structure, "2:4");
  std::set<std::string> replaced;
  for (const auto& [module, values] : pruned) {
    replaced.insert(module);
    EXPECT_FALSE(w.weights->load_quantized(module).has_value());
    ASSERT_TRUE(w.weights->contains(module + ".weight"));
    const TensorView dense = w.weights->load(module + ".weight");
    EXPECT_EQ(dense.dtype, GetParam());
    const std::vector<std::byte> expected = encode(values, GetParam());
    ASSERT_EQ(dense.bytes.size(), expected.size());
    EXPECT_EQ(std::memcmp(dense.bytes.data(), expected.data(), expected.size()), 0) << module;
  }
  expect_untouched_copied(source(), w, replaced);

  // compressed-tensors' tensors: values [N, K/2] in the source dtype, bitmask [N, K/8], shape [2, 1].
  const SafetensorsFile file(out() / "model.safetensors");
  const auto tensors = file_tensors(file);
  const std::string m = "model.layers.0.mlp.up_proj";  // [256, 128]
  EXPECT_EQ(tensors.at(m + ".compressed")->shape, (std::vector<std::int64_t>{kMlp, kHidden / 2}));
  EXPECT_EQ(tensors.at(m + ".compressed")->dtype, GetParam());
  EXPECT_EQ(tensors.at(m + ".bitmask")->shape, (std::vector<std::int64_t>{kMlp, kHidden / 8}));
  EXPECT_EQ(tensors.at(m + ".shape")->shape, (std::vector<std::int64_t>{2, 1}));
  EXPECT_FALSE(tensors.contains(m + ".row_offsets"));
  EXPECT_FALSE(tensors.contains(m + ".weight"));

  const json q_config = read_json(out() / "config.json")["quantization_config"];
  EXPECT_EQ(q_config["version"], "0.14.0.1");
  EXPECT_FALSE(q_config.contains("config_groups"));
  const json& s = q_config["sparsity_config"];
  EXPECT_EQ(s["targets"], json::array({"Linear"}));
  EXPECT_EQ(s["ignore"], json::array({"lm_head"}));
  EXPECT_EQ(s["registry_requires_subclass"], false);
  EXPECT_GT(s["global_sparsity"].get<double>(), 0.3);
  EXPECT_LT(s["global_sparsity"].get<double>(), 0.6);
}

TEST_P(SparseFp, SparseBitmaskRebuildsUnstructuredWeights) {
  make_source({GetParam(), false, false, 12});
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.sparsity_structure = "unstructured";
  CheckpointWriter writer(source(), out(), settings);
  std::map<std::string, std::vector<float>> pruned;
  unsigned seed = 3;
  for (const auto& module : decoder_modules()) {
    pruned[module] = prune_unstructured(source(), module, ++seed);
    const auto [n, k] = shape_of(module);
    writer.add_pruned(module, pruned[module], n, k);
  }
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization && w.quantization->sparsity);
  EXPECT_EQ(w.quantization->sparsity->format, "sparse-bitmask");
  EXPECT_EQ(w.quantization->sparsity->structure, "unstructured");
  std::set<std::string> replaced;
  for (const auto& [module, values] : pruned) {
    replaced.insert(module);
    const TensorView dense = w.weights->load(module + ".weight");
    const std::vector<std::byte> expected = encode(values, GetParam());
    ASSERT_EQ(dense.bytes.size(), expected.size());
    EXPECT_EQ(std::memcmp(dense.bytes.data(), expected.data(), expected.size()), 0) << module;
  }
  expect_untouched_copied(source(), w, replaced);

  const SafetensorsFile file(out() / "model.safetensors");
  const auto tensors = file_tensors(file);
  const std::string m = "model.layers.1.self_attn.o_proj";
  EXPECT_EQ(tensors.at(m + ".compressed")->shape.size(), 1u);
  EXPECT_EQ(tensors.at(m + ".shape")->shape, (std::vector<std::int64_t>{2}));
  EXPECT_EQ(tensors.at(m + ".row_offsets")->dtype, DType::I64);
  EXPECT_EQ(tensors.at(m + ".row_offsets")->shape, (std::vector<std::int64_t>{kHidden}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SparseFp, ::testing::Values(DType::F16, DType::BF16, DType::F32),
                         [](const ::testing::TestParamInfo<DType>& param_info) { return torch_dtype_name(param_info.param); });

// ---- 2:4 + W4A16: pack-quantized modules with a "dense" 2:4 sparsity_config.

TEST_F(WriterTest, Sparse24W4A16DeclaresTheStructureAndRunsOnTheSparseKernel) {
  make_source();
  QuantOptions q{4, 128, true, false, 0, 15, true, 5};
  CheckpointSettings settings = ct_settings(q);
  settings.sparsity_structure = "2:4";
  settings.pruning_method = "sparsegpt";
  settings.sparsity = 0.5;
  CheckpointWriter writer(source(), out(), settings);
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q);
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization && w.quantization->sparsity);
  EXPECT_EQ(w.quantization->format, "pack-quantized");
  EXPECT_EQ(w.quantization->sparsity->format, "dense");
  EXPECT_EQ(w.quantization->sparsity->structure, "2:4");
  for (const auto& [module, matrix] : added) {
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
    EXPECT_TRUE(loaded->sparse_2_4) << module;
  }
  const json s = read_json(out() / "config.json")["quantization_config"]["sparsity_config"];
  EXPECT_EQ(s["format"], "dense");
  EXPECT_EQ(s["targets"], json::array({"Linear"}));
  EXPECT_GT(s["global_sparsity"].get<double>(), 0.3);

  kernels::CpuBackend backend(2);
  engine::DecoderModel model(w, backend);
  int sparse_kernels = 0;
  for (const auto& [kind, count] : model.linear_kinds()) {
    if (kind.find("int4 2:4-sparse") != std::string::npos) sparse_kernels += count;
  }
  EXPECT_EQ(sparse_kernels, static_cast<int>(added.size()));
}

// Pruned-only modules beside quantized ones are stored plainly (compressed-tensors
// declares 2:4 over dense storage once anything is pack-quantized).
TEST_F(WriterTest, PrunedOnlyModulesBesideQuantizedOnesAreStoredDense) {
  make_source({DType::BF16, false, false, 9});
  QuantOptions q{4, 64, false, false, 0, 15, true, 21};
  CheckpointSettings settings = ct_settings(q);
  settings.sparsity_structure = "2:4";
  CheckpointWriter writer(source(), out(), settings);
  const std::string plain = "model.layers.1.mlp.down_proj";
  const std::vector<float> pruned = prune_2_4(source(), plain);
  writer.add_pruned(plain, pruned, kHidden, kMlp);
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q, {plain});
  writer.finish();
  const ModelSource w = written();

  const json q_config = read_json(out() / "config.json")["quantization_config"];
  EXPECT_EQ(q_config["ignore"], json::array({"lm_head", plain}));
  EXPECT_EQ(q_config["sparsity_config"]["format"], "dense");
  EXPECT_EQ(q_config["sparsity_config"]["ignore"], json::array({"lm_head"}));
  EXPECT_FALSE(w.weights->load_quantized(plain).has_value());
  const TensorView dense = w.weights->load(plain + ".weight");
  const std::vector<std::byte> expected = encode(pruned, DType::BF16);
  ASSERT_EQ(dense.bytes.size(), expected.size());
  EXPECT_EQ(std::memcmp(dense.bytes.data(), expected.data(), expected.size()), 0);
  for (const auto& [module, matrix] : added) {
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
    EXPECT_TRUE(loaded->sparse_2_4);
  }
}

// ---- Partial quantization: lm_head quantized, one decoder module left plain.

TEST_F(WriterTest, GptqRecordsLmHeadAndModulesLeftPlain) {
  make_source({DType::F16, true, false, 4});  // Qwen2: q/k/v biases are copied as they are
  QuantOptions q{4, 32, false, true, 1, 15, false, 40};
  CheckpointWriter writer(source(), out(), gptq_settings(q));
  const std::string plain = "model.layers.0.mlp.gate_proj";
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q, {plain});
  added["lm_head"] = random_matrix("lm_head", q);
  writer.add_quantized("lm_head", added["lm_head"]);
  writer.finish();
  const ModelSource w = written();

  ASSERT_TRUE(w.quantization);
  EXPECT_TRUE(w.quantization->lm_head);
  ASSERT_EQ(w.quantization->dynamic.size(), 1u);
  EXPECT_TRUE(w.quantization->dynamic[0].skip);
  EXPECT_FALSE(w.quantization->module(plain).has_value());
  EXPECT_TRUE(w.quantization->module("model.layers.0.mlp.up_proj").has_value());
  EXPECT_EQ(read_json(out() / "quantize_config.json")["dynamic"],
            json::parse(R"({"-:^model\\.layers\\.0\\.mlp\\.gate_proj$": {}})"));
  for (const auto& [module, matrix] : added) {
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
  }
  EXPECT_FALSE(w.weights->load_quantized(plain).has_value());
  std::set<std::string> replaced;
  for (const auto& [module, matrix] : added) replaced.insert(module);
  expect_untouched_copied(source(), w, replaced);  // includes the plain module and the biases

  kernels::CpuBackend backend(2);
  engine::DecoderModel model(w, backend);
  EXPECT_EQ(model.weight_memory().quantized_layers, static_cast<std::int64_t>(added.size()));
}

TEST_F(WriterTest, CompressedTensorsIgnoresModulesLeftPlain) {
  make_source({DType::F16, false, false, 5});
  QuantOptions q{8, 64, true, false, 0, 255, false, 60};
  CheckpointWriter writer(source(), out(), ct_settings(q));
  const std::vector<std::string> plain = {"model.layers.1.self_attn.v_proj", "model.layers.0.mlp.down_proj"};
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q, plain);
  added["lm_head"] = random_matrix("lm_head", q);
  writer.add_quantized("lm_head", added["lm_head"]);
  writer.finish();
  const ModelSource w = written();

  EXPECT_EQ(read_json(out() / "config.json")["quantization_config"]["ignore"],
            json::array({"model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj"}));
  for (const auto& module : plain) EXPECT_FALSE(w.weights->load_quantized(module).has_value()) << module;
  for (const auto& [module, matrix] : added) {
    const auto loaded = w.weights->load_quantized(module);
    ASSERT_TRUE(loaded.has_value()) << module;
    expect_same_matrix(*loaded, matrix);
  }
  std::set<std::string> replaced;
  for (const auto& [module, matrix] : added) replaced.insert(module);
  expect_untouched_copied(source(), w, replaced);
}

// ---- The written model runs like the source with the dequantized weights in place.

// Writes the source again with each added module's weight replaced by its
// dequantized values (float32): what the packed model must compute.
void write_dequantized(const ModelSource& source, const fs::path& folder,
                       const std::map<std::string, QuantizedMatrix>& added) {
  fs::create_directories(folder);
  std::vector<TensorView> tensors;
  for (const auto& info : source.weights->list()) {
    const std::string module = info.name.substr(0, info.name.size() - 7);
    if (info.name.ends_with(".weight") && added.contains(module)) {
      const QuantizedMatrix& m = added.at(module);
      std::vector<float> values(at(m.rows * m.cols));
      for (std::int64_t n = 0; n < m.rows; ++n) {
        for (std::int64_t k = 0; k < m.cols; ++k) values[at(n * m.cols + k)] = m.value(n, k);
      }
      tensors.push_back(make_owned_f32(info.name, {m.rows, m.cols}, std::move(values)));
    } else {
      TensorView view = source.weights->load(info.name);
      view.name = info.name;
      tensors.push_back(view);
    }
  }
  write_safetensors(folder / "model.safetensors", tensors);
  fs::copy_file(source.path / "config.json", folder / "config.json");
}

std::vector<float> all_logits(engine::Model& model) {
  const std::vector<TokenId> tokens = {1, 17, 42, 5, 88, 63, 9, 30, 71, 2, 54, 13};
  engine::SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<std::size_t>(model.vocab_size()));
  model.forward(tokens, 0, cache, engine::Logits::AllRows, logits);
  return logits;
}

class RunsLikeDequantized : public WriterTest, public ::testing::WithParamInterface<CheckpointFormat> {};

TEST_P(RunsLikeDequantized, PackedLogitsMatchTheDequantizedSource) {
  make_source({DType::F16, false, false, 13});
  const bool gptq = GetParam() == CheckpointFormat::Gptq;
  QuantOptions q{gptq ? 4 : 3, 32, false, gptq, 1, (1 << (gptq ? 4 : 3)) - 1, false, 70};
  CheckpointWriter writer(source(), out(), gptq ? gptq_settings(q) : ct_settings(q));
  std::map<std::string, QuantizedMatrix> added = add_random_modules(writer, q);
  writer.finish();
  const ModelSource w = written();
  write_dequantized(source(), dir_ / "reference", added);
  const ModelSource reference = open_model(dir_ / "reference");

  kernels::CpuBackend backend(2);
  engine::DecoderModel packed(w, backend);
  engine::DecoderModel dense(reference, backend);
  EXPECT_EQ(packed.weight_memory().quantized_layers, static_cast<std::int64_t>(added.size()));
  int packed_kinds = 0;
  for (const auto& [kind, count] : packed.linear_kinds()) {
    if (kind.starts_with(fmt::format("int{} ", q.bits))) packed_kinds += count;
  }
  EXPECT_EQ(packed_kinds, static_cast<int>(added.size()));
  EXPECT_LE(testing::relative_error(all_logits(packed), all_logits(dense)), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Formats, RunsLikeDequantized,
                         ::testing::Values(CheckpointFormat::Gptq, CheckpointFormat::CompressedTensors),
                         [](const ::testing::TestParamInfo<CheckpointFormat>& param_info) {
                           return param_info.param == CheckpointFormat::Gptq ? "gptq" : "compressed_tensors";
                         });

// ---- Errors.

TEST_F(WriterTest, RefusesAnOccupiedDestination) {
  make_source();
  fs::create_directories(out());
  testing::write_file(out() / "keep.txt", "mine");
  expect_error([&] { CheckpointWriter(source(), out(), CheckpointSettings{}); }, {out().string(), "not empty"});
  EXPECT_EQ(testing::read_file(out() / "keep.txt"), "mine");
}

TEST_F(WriterTest, WritesIntoAnEmptyFolderAndLeavesNoTemporary) {
  make_source();
  fs::create_directories(out());
  QuantOptions q;
  CheckpointWriter writer(source(), out() / "", gptq_settings(q));
  writer.add_quantized("model.layers.0.mlp.up_proj", random_matrix("model.layers.0.mlp.up_proj", q));
  writer.finish();
  EXPECT_TRUE(fs::exists(out() / "model.safetensors"));
  for (const auto& entry : fs::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
  expect_error([&] { writer.finish(); }, {"already written"});
  expect_error([&] { writer.add_quantized("model.layers.0.mlp.down_proj", random_matrix("model.layers.0.mlp.down_proj", q)); },
               {"already written"});
}

TEST_F(WriterTest, AFailedFinishLeavesNothingBehind) {
  make_source();
  QuantOptions q;
  CheckpointWriter writer(source(), out(), gptq_settings(q));
  writer.add_quantized("model.layers.0.mlp.up_proj", random_matrix("model.layers.0.mlp.up_proj", q));
  fs::create_directories(out());
  testing::write_file(out() / "other.txt", "someone else's");
  expect_error([&] { writer.finish(); }, {"not empty"});
  fs::remove_all(out());
  // The source vanishing mid-write (config.json missing) fails inside the temporary folder.
  fs::rename(dir_ / "source" / "config.json", dir_ / "config.json.away");
  expect_error([&] { writer.finish(); }, {"config.json"});
  EXPECT_FALSE(fs::exists(out()));
  for (const auto& entry : fs::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
}

TEST_F(WriterTest, RejectsModulesThatDoNotFit) {
  make_source({DType::F16, false, true, 7});  // tied: no lm_head.weight
  QuantOptions q{4, 32, false, false, 1, 15, false, 1};
  CheckpointWriter writer(source(), out(), gptq_settings(q));
  const std::string up = "model.layers.0.mlp.up_proj";
  writer.add_quantized(up, random_matrix(up, q));
  expect_error([&] { writer.add_quantized(up, random_matrix(up, q)); }, {up, "added twice"});
  expect_error([&] { writer.add_quantized("model.layers.5.mlp.up_proj", random_matrix(up, q)); },
               {"model.layers.5.mlp.up_proj", "no tensor"});
  expect_error([&] { writer.add_quantized("lm_head", random_matrix("lm_head", q)); }, {"lm_head", "no tensor"});
  expect_error([&] { writer.add_quantized("model.norm", random_matrix("lm_head", q)); },
               {"model.norm", "not a linear module or the token embedding"});
  // The embedding may be quantized (quant_pipeline_test reads it back), at its own shape only.
  expect_error([&] { writer.add_quantized("model.embed_tokens", random_matrix(up, q)); },
               {"model.embed_tokens", "[256, 128]"});
  // up_proj's matrix [256, 128] under down_proj's name ([128, 256]).
  expect_error([&] { writer.add_quantized("model.layers.0.mlp.down_proj", random_matrix(up, q)); },
               {"model.layers.0.mlp.down_proj", "[256, 128]", "[128, 256]"});

  const std::string gate = "model.layers.0.mlp.gate_proj";
  QuantOptions other = q;
  other.bits = 8;
  other.max_zero = 255;
  expect_error([&] { writer.add_quantized(gate, random_matrix(gate, other)); }, {gate, "8-bit", "4 bits"});
  other = q;
  other.group_size = 64;
  expect_error([&] { writer.add_quantized(gate, random_matrix(gate, other)); }, {gate, "2 groups", "makes 4"});
  other = q;
  other.act_order = true;
  expect_error([&] { writer.add_quantized(gate, random_matrix(gate, other)); }, {gate, "act-order", "desc_act"});
  QuantizedMatrix bad_zero = random_matrix(gate, q);
  bad_zero.zeros[5] = 0;
  expect_error([&] { writer.add_quantized(gate, bad_zero); }, {gate, "zero point 0", "GPTQ v1"});
  bad_zero.zeros[5] = 16;  // stored as all ones: read differently by different tools
  expect_error([&] { writer.add_quantized(gate, bad_zero); }, {gate, "zero point 16", "[1, 15]"});
  QuantizedMatrix bad_scale = random_matrix(gate, q);
  bad_scale.scales[3] = 0.0123456789f;
  expect_error([&] { writer.add_quantized(gate, bad_scale); }, {gate, "fp16"});
  QuantizedMatrix bad_code = random_matrix(gate, q);
  bad_code.codes[0] = 16;
  expect_error([&] { writer.add_quantized(gate, bad_code); }, {gate, "does not fit in 4 bits"});
  QuantizedMatrix claimed = random_matrix(gate, q);
  claimed.sparse_2_4 = true;
  expect_error([&] { writer.add_quantized(gate, claimed); }, {gate, "2:4"});
  // The failed adds left no trace: the module can still be added.
  writer.add_quantized(gate, random_matrix(gate, q));
}

TEST_F(WriterTest, RejectsSymmetricZerosThatAreNotCentered) {
  make_source();
  QuantOptions q{4, 128, true, false, 0, 15, false, 3};
  CheckpointWriter writer(source(), out(), ct_settings(q));
  QuantizedMatrix m = random_matrix("model.layers.0.self_attn.q_proj", q);
  m.zeros[2] = 7;
  expect_error([&] { writer.add_quantized("model.layers.0.self_attn.q_proj", m); }, {"symmetric", "zero point 7"});
}

TEST_F(WriterTest, RejectsCombinationsTheFormatsCannotStore) {
  make_source();
  const std::string up = "model.layers.0.mlp.up_proj";
  const auto [n, k] = shape_of(up);
  const std::vector<float> zeros(at(n * k), 0.0f);

  CheckpointSettings gptq;
  gptq.format = CheckpointFormat::Gptq;
  gptq.sparsity_structure = "2:4";
  CheckpointWriter gptq_writer(source(), out(), gptq);
  expect_error([&] { gptq_writer.add_pruned(up, zeros, n, k); }, {up, "GPTQ", "CompressedTensors"});

  CheckpointSettings unstructured;
  unstructured.format = CheckpointFormat::CompressedTensors;
  unstructured.sparsity_structure = "unstructured";
  CheckpointWriter ct_writer(source(), out(), unstructured);
  QuantOptions q;
  expect_error([&] { ct_writer.add_quantized(up, random_matrix(up, q)); }, {up, "unstructured"});

  CheckpointSettings two_four = unstructured;
  two_four.sparsity_structure = "2:4";
  CheckpointWriter sparse_writer(source(), out(), two_four);
  std::vector<float> dense = prune_2_4(source(), up);
  dense[1] = dense[2] = dense[3] = 0.5f;  // row 0, columns 0..3: three kept
  dense[0] = 0.25f;
  expect_error([&] { sparse_writer.add_pruned(up, dense, n, k); }, {up, "row 0 columns 0..3", "2:4"});
  expect_error([&] { sparse_writer.add_pruned(up, zeros, n, k - 4); }, {up, "[256, 124]"});

  CheckpointSettings not_pruned;
  not_pruned.format = CheckpointFormat::CompressedTensors;
  CheckpointWriter plain_writer(source(), out(), not_pruned);
  expect_error([&] { plain_writer.add_pruned(up, zeros, n, k); }, {up, "no sparsity structure"});
  expect_error([&] { plain_writer.finish(); }, {"no module was added"});

  CheckpointSettings bad;
  bad.bits = 5;
  expect_error([&] { CheckpointWriter(source(), out(), bad); }, {"5-bit"});
  bad = CheckpointSettings{};
  bad.group_size = 0;
  expect_error([&] { CheckpointWriter(source(), out(), bad); }, {"group size 0"});
  bad = CheckpointSettings{};
  bad.format = CheckpointFormat::CompressedTensors;
  bad.desc_act = true;
  bad.group_size = -1;
  expect_error([&] { CheckpointWriter(source(), out(), bad); }, {"act-order"});
  bad = CheckpointSettings{};
  bad.sparsity_structure = "4:8";
  expect_error([&] { CheckpointWriter(source(), out(), bad); }, {"4:8"});
}

TEST_F(WriterTest, RefusesAQuantizedSource) {
  make_source();
  QuantOptions q;
  {
    CheckpointWriter writer(source(), out(), gptq_settings(q));
    writer.add_quantized("model.layers.0.mlp.up_proj", random_matrix("model.layers.0.mlp.up_proj", q));
    writer.finish();
  }
  const ModelSource quantized = open_model(out());
  expect_error([&] { CheckpointWriter(quantized, dir_ / "again", CheckpointSettings{}); }, {"already quantized"});
}

}  // namespace
}  // namespace nibble::quant
