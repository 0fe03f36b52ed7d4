// GGUF reader and GGUF-as-model tests. Fixtures come from tests/gguf/make_fixtures.py
// (gguf-py's writer and dequantizer); corrupt variants are derived from them here.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using json = nlohmann::json;

const fs::path kFixtures = fs::path(NIBBLE_SOURCE_DIR) / "tests" / "gguf" / "fixtures";

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

json read_json(const fs::path& path) { return json::parse(read_bytes(path)); }

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("nibble-gguf-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& bytes) const {
    const fs::path file = path_ / name;
    std::ofstream(file, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return file;
  }

 private:
  fs::path path_;
};

std::string error_of(const fs::path& path) {
  try {
    GgufFile file(path);
  } catch (const Error& error) {
    return error.what();
  }
  return "<no error>";
}

template <typename T>
void patch(std::string& bytes, std::size_t offset, T value) {
  ASSERT_LE(offset + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

// Offset just past a GGUF string (u64 length + bytes) with this exact content.
std::size_t after_string(const std::string& bytes, const std::string& text) {
  std::string encoded(8, '\0');
  const std::uint64_t length = text.size();
  std::memcpy(encoded.data(), &length, 8);
  encoded += text;
  const auto at = bytes.find(encoded);
  EXPECT_NE(at, std::string::npos) << text;
  return at + encoded.size();
}

std::vector<std::uint32_t> bits_of(std::span<const float> values) {
  std::vector<std::uint32_t> out;
  for (const float v : values) out.push_back(std::bit_cast<std::uint32_t>(v));
  return out;
}

std::vector<float> dequantized(const GgufTensor& tensor) {
  std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
  dequantize_to_f32(tensor, out);
  return out;
}

// ---- Reader on well-formed files.

TEST(GgufReader, ReadsEveryMetadataType) {
  const GgufFile gguf(kFixtures / "types.gguf");
  const auto& meta = gguf.metadata();
  EXPECT_EQ(gguf.get_string("general.architecture"), "test");
  EXPECT_EQ(gguf.get_int("general.alignment"), 64);
  EXPECT_EQ(std::get<std::uint8_t>(meta.at("test.u8")), 200);
  EXPECT_EQ(std::get<std::int8_t>(meta.at("test.i8")), -100);
  EXPECT_EQ(std::get<std::uint16_t>(meta.at("test.u16")), 60000);
  EXPECT_EQ(std::get<std::int16_t>(meta.at("test.i16")), -30000);
  EXPECT_EQ(std::get<std::uint32_t>(meta.at("test.u32")), 4000000000u);
  EXPECT_EQ(std::get<std::int32_t>(meta.at("test.i32")), -2000000000);
  EXPECT_EQ(std::get<std::uint64_t>(meta.at("test.u64")), 10000000000000000000ull);
  EXPECT_EQ(std::get<std::int64_t>(meta.at("test.i64")), -9000000000000000000ll);
  EXPECT_EQ(std::get<float>(meta.at("test.f32")), 0.15625f);
  EXPECT_EQ(std::get<double>(meta.at("test.f64")), -2.5e-300);
  EXPECT_TRUE(gguf.get_bool("test.bool_true"));
  EXPECT_FALSE(gguf.get_bool("test.bool_false"));
  EXPECT_EQ(gguf.get_string("test.string"), "h\xc3\xa9llo \xe2\x96\x81w\xc3\xb6rld");
  EXPECT_EQ(gguf.get_string("test.empty_string"), "");

  // Integer getters widen every integer type.
  EXPECT_EQ(gguf.get_int("test.u8"), 200);
  EXPECT_EQ(gguf.get_int("test.i16"), -30000);
  EXPECT_EQ(gguf.get_int("test.u32"), 4000000000ll);
  EXPECT_EQ(gguf.get_int("test.i64"), -9000000000000000000ll);
  EXPECT_DOUBLE_EQ(gguf.get_float("test.f32"), 0.15625);
  EXPECT_EQ(gguf.find_int("test.missing"), std::nullopt);
  EXPECT_EQ(gguf.find_string("test.string"), gguf.get_string("test.string"));

  EXPECT_EQ(gguf.get_string_array("test.strings"), (std::vector<std::string>{"a", "", "\xe2\x96\x81" "b c"}));
  EXPECT_EQ(gguf.get_int_array("test.i16s"), (std::vector<std::int64_t>{-1, 2, -3}));
  EXPECT_EQ(gguf.get_int_array("test.u64s"), (std::vector<std::int64_t>{1, 1ll << 40}));
  EXPECT_EQ(gguf.get_float_array("test.f32s"), (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(gguf.get_float_array("test.f64s"), (std::vector<float>{0.1f}));
  const auto& bools = std::get<std::shared_ptr<GgufArray>>(meta.at("test.bools"))->values;
  ASSERT_EQ(bools.size(), 3u);
  EXPECT_TRUE(std::get<bool>(bools[0]));
  EXPECT_FALSE(std::get<bool>(bools[1]));

  const auto& nested = std::get<std::shared_ptr<GgufArray>>(meta.at("test.nested"))->values;
  ASSERT_EQ(nested.size(), 3u);
  const auto& third = std::get<std::shared_ptr<GgufArray>>(nested[2])->values;
  ASSERT_EQ(third.size(), 3u);
  EXPECT_EQ(std::get<std::int32_t>(third[2]), 6);
  const auto& strings = std::get<std::shared_ptr<GgufArray>>(meta.at("test.nested_strings"))->values;
  EXPECT_EQ(std::get<std::string>(std::get<std::shared_ptr<GgufArray>>(strings[1])->values[0]), "z");
}

TEST(GgufReader, TypedGettersNameTheKey) {
  const GgufFile gguf(kFixtures / "types.gguf");
  const auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& error) {
      return error.what();
    }
    return "<no error>";
  };
  EXPECT_THAT(message([&] { gguf.get_int("test.nope"); }), HasSubstr("'test.nope' is missing"));
  EXPECT_THAT(message([&] { gguf.get_int("test.string"); }), HasSubstr("'test.string' is not an integer"));
  EXPECT_THAT(message([&] { gguf.get_int("test.u64"); }), HasSubstr("'test.u64' is not an integer"));
  EXPECT_THAT(message([&] { gguf.get_string("test.u8"); }), HasSubstr("'test.u8' is not a string"));
  EXPECT_THAT(message([&] { gguf.get_bool("test.u8"); }), HasSubstr("'test.u8' is not a bool"));
  EXPECT_THAT(message([&] { gguf.get_string_array("test.i16s"); }), HasSubstr("'test.i16s' is not an array of strings"));
  EXPECT_THAT(message([&] { gguf.get_float("test.strings"); }), HasSubstr("types.gguf"));
}

TEST(GgufReader, ShapesAreRowMajorAndDataAligned) {
  const GgufFile gguf(kFixtures / "types.gguf");
  ASSERT_EQ(gguf.tensors().size(), 6u);
  const GgufTensor* f16 = gguf.find_tensor("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->type, GgmlType::F16);
  EXPECT_EQ(f16->shape, (std::vector<std::int64_t>{2, 3, 8}));
  EXPECT_EQ(f16->numel(), 48);
  EXPECT_EQ(f16->data.size(), 96u);
  const GgufTensor* q8 = gguf.find_tensor("q8_0");
  ASSERT_NE(q8, nullptr);
  EXPECT_EQ(q8->shape, (std::vector<std::int64_t>{2, 2, 64}));
  EXPECT_EQ(q8->data.size(), 8u * 34u);
  EXPECT_EQ(gguf.find_tensor("nope"), nullptr);
  EXPECT_EQ(gguf.data_offset() % 64, 0u);
  const std::byte* base = gguf.tensors().front().data.data();
  for (const auto& tensor : gguf.tensors()) EXPECT_EQ((tensor.data.data() - base) % 64, 0) << tensor.name;
  EXPECT_EQ(ggml_type_name(GgmlType::Q4_1), "Q4_1");
  EXPECT_EQ(ggml_type_name(GgmlType::BF16), "BF16");
}

TEST(GgufReader, DequantizesBitExactlyLikeGgufPy) {
  const GgufFile gguf(kFixtures / "types.gguf");
  const json expected = read_json(kFixtures / "types.expected.json");
  ASSERT_EQ(expected["tensors"].size(), 6u);
  for (const auto& want : expected["tensors"]) {
    const auto name = want["name"].get<std::string>();
    SCOPED_TRACE(name);
    const GgufTensor* tensor = gguf.find_tensor(name);
    ASSERT_NE(tensor, nullptr);
    EXPECT_EQ(ggml_type_name(tensor->type), want["type"].get<std::string>());
    EXPECT_EQ(tensor->shape, want["shape"].get<std::vector<std::int64_t>>());
    EXPECT_EQ(bits_of(dequantized(*tensor)), want["bits"].get<std::vector<std::uint32_t>>());
  }
}

TEST(GgufReader, DequantizeChecksTheOutputSize) {
  const GgufFile gguf(kFixtures / "types.gguf");
  std::vector<float> wrong(5);
  EXPECT_THROW(dequantize_to_f32(*gguf.find_tensor("q4_0"), wrong), Error);
}

// ---- Reader on damaged files: one clear nibble::Error, never a crash.

TEST(GgufReader, EveryTruncationIsACleanError) {
  const std::string bytes = read_bytes(kFixtures / "types.gguf");
  const GgufFile whole(kFixtures / "types.gguf");
  const auto& last = whole.tensors().back();
  const std::size_t data_end =
      whole.data_offset() + static_cast<std::size_t>(last.data.data() + last.data.size() - whole.tensors().front().data.data());
  ASSERT_LE(data_end, bytes.size());
  TempDir dir;
  for (std::size_t length = 0; length < data_end; ++length) {
    const auto path = dir.write("cut.gguf", bytes.substr(0, length));
    const std::string message = error_of(path);
    SCOPED_TRACE(length);
    EXPECT_THAT(message, HasSubstr("cut.gguf"));
    EXPECT_TRUE(message.find("truncated") != std::string::npos || message.find("past the end") != std::string::npos ||
                message.find("not a GGUF file") != std::string::npos || message.find("remain") != std::string::npos)
        << message;
  }
}

TEST(GgufReader, NamesTheProblemInCorruptFiles) {
  const std::string good = read_bytes(kFixtures / "types.gguf");
  TempDir dir;
  const auto check = [&](const std::string& bytes, const std::string& expected) {
    EXPECT_THAT(error_of(dir.write("bad.gguf", bytes)), HasSubstr(expected));
  };

  std::string bad = good;
  bad[0] = 'X';
  check(bad, "not a GGUF file: bad magic");
  check("", "not a GGUF file");

  for (const std::uint32_t version : {1u, 2u}) {
    bad = good;
    patch<std::uint32_t>(bad, 4, version);
    check(bad, fmt::format("GGUF version {} is not supported", version));
  }
  bad = good;
  patch<std::uint32_t>(bad, 4, 4);
  check(bad, "unknown GGUF version 4");

  bad = good;
  patch<std::uint64_t>(bad, 16, 1ull << 60);
  check(bad, "more than the file can hold");

  bad = good;  // the first key's length
  patch<std::uint64_t>(bad, 24, 1ull << 62);
  check(bad, "metadata key #0 claims a string of 4611686018427387904 bytes");

  bad = good;  // value type, element type, count
  const auto strings_value = after_string(good, "test.strings");
  patch<std::uint64_t>(bad, strings_value + 8, 1ull << 60);
  check(bad, "key 'test.strings' claims 1152921504606846976 array elements");

  bad = good;
  patch<std::uint32_t>(bad, strings_value, 99);
  check(bad, "key 'test.strings' has unknown value type 99");

  bad = good;
  patch<std::uint8_t>(bad, after_string(good, "test.bool_true") + 4, 7);
  check(bad, "key 'test.bool_true' holds bool byte 7");

  bad = good;
  patch<std::uint32_t>(bad, after_string(good, "general.alignment") + 4, 48);
  check(bad, "general.alignment must be a power-of-two");

  // Tensor info: u32 rank, u64 extents, u32 type, u64 offset.
  const auto f32_info = after_string(good, "f32");
  bad = good;
  patch<std::uint32_t>(bad, f32_info + 4 + 16, 16);
  check(bad, "tensor 'f32' has ggml type 16 (IQ2_XXS), which nibble does not support");

  bad = good;
  patch<std::uint32_t>(bad, f32_info, 7);
  check(bad, "tensor 'f32' has 7 dimensions");

  bad = good;
  patch<std::uint64_t>(bad, f32_info + 4, 0);
  check(bad, "tensor 'f32' has an invalid extent 0");

  bad = good;
  patch<std::uint64_t>(bad, f32_info + 4 + 16 + 4, 1ull << 40);
  check(bad, "tensor 'f32' data (96 bytes at offset");
  check(bad, "extends past the end of the file");

  bad = good;
  patch<std::uint64_t>(bad, f32_info + 4 + 16 + 4, 3);
  check(bad, "tensor 'f32' data offset 3 is not a multiple of the alignment 64");

  bad = good;
  patch<std::uint64_t>(bad, after_string(good, "q4_0") + 4, 48);
  check(bad, "tensor 'q4_0' has 48 columns, not a multiple of the Q4_0 block size 32");

  bad = good;  // two tensors with one name
  std::memcpy(bad.data() + after_string(good, "f16") - 3, "f32", 3);
  check(bad, "duplicate tensor 'f32'");
}

// A metadata-only GGUF whose one key "deep" holds `depth` nested single-element arrays around a u8.
std::string nested_arrays(int depth) {
  std::string out;
  const auto put = [&](auto value) { out.append(reinterpret_cast<const char*>(&value), sizeof(value)); };
  out += "GGUF";
  put(std::uint32_t{3});
  put(std::uint64_t{0});  // tensors
  put(std::uint64_t{1});  // keys
  put(std::uint64_t{4});
  out += "deep";
  put(std::uint32_t{9});
  for (int level = 1; level < depth; ++level) {
    put(std::uint32_t{9});
    put(std::uint64_t{1});
  }
  put(std::uint32_t{0});
  put(std::uint64_t{1});
  put(std::uint8_t{7});
  return out;
}

TEST(GgufReader, BoundsArrayNesting) {
  TempDir dir;
  const GgufFile shallow(dir.write("shallow.gguf", nested_arrays(3)));
  EXPECT_TRUE(shallow.tensors().empty());
  const GgufValue* value = &shallow.metadata().at("deep");
  for (int level = 0; level < 3; ++level) value = &std::get<std::shared_ptr<GgufArray>>(*value)->values.at(0);
  EXPECT_EQ(std::get<std::uint8_t>(*value), 7);
  EXPECT_THAT(error_of(dir.write("deep.gguf", nested_arrays(100000))), HasSubstr("key 'deep' nests arrays deeper than 16"));
}

TEST(GgufReader, MissingFileNamesThePath) {
  EXPECT_THAT(error_of("/nonexistent/model.gguf"), HasSubstr("/nonexistent/model.gguf"));
}

// ---- GGUF as a model.

TEST(GgufModel, LlamaConfigFromMetadata) {
  const GgufFile gguf(kFixtures / "tiny_llama.gguf");
  const ModelConfig config = config_from_gguf(gguf);
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.model_type, "llama");
  EXPECT_EQ(config.hidden_size, 32);
  EXPECT_EQ(config.intermediate_size, 64);
  EXPECT_EQ(config.num_layers, 1);
  EXPECT_EQ(config.num_heads, 4);
  EXPECT_EQ(config.num_kv_heads, 2);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.vocab_size, 16);
  EXPECT_EQ(config.max_position_embeddings, 128);
  EXPECT_FLOAT_EQ(static_cast<float>(config.rms_norm_eps), 1e-5f);
  EXPECT_EQ(config.rope_theta, 10000.0);
  EXPECT_EQ(config.rope_scaling.kind, RopeScaling::Kind::None);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_FALSE(config.attention_bias);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_ids, (std::vector<std::int32_t>{2}));
}

TEST(GgufModel, LlamaWeightsUnderHfNamesInHfLayout) {
  const auto gguf = std::make_shared<const GgufFile>(kFixtures / "tiny_llama.gguf");
  const auto weights = make_gguf_weights(gguf, config_from_gguf(*gguf));
  EXPECT_EQ(weights->file_bytes(), fs::file_size(kFixtures / "tiny_llama.gguf"));

  const auto list = weights->list();
  ASSERT_EQ(list.size(), gguf->tensors().size());
  std::map<std::string, StoredTensorInfo> by_name;
  for (const auto& info : list) by_name[info.name] = info;
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
                           "model.norm.weight", "lm_head.weight"}) {
    EXPECT_TRUE(by_name.contains(name)) << name;
    EXPECT_TRUE(weights->contains(name)) << name;
  }
  EXPECT_EQ(by_name["model.layers.0.self_attn.k_proj.weight"].stored_type, "Q8_0");
  EXPECT_EQ(by_name["model.layers.0.self_attn.k_proj.weight"].stored_bytes, 16u * 34u);
  EXPECT_EQ(by_name["model.layers.0.mlp.gate_proj.weight"].shape, (std::vector<std::int64_t>{64, 32}));

  // q (F16) and k (Q8_0) come back in HF row order, matching gguf-py's values.
  const json expected = read_json(kFixtures / "tiny_llama.expected.json");
  for (const auto& want : expected["tensors"]) {
    const auto name = want["name"].get<std::string>();
    SCOPED_TRACE(name);
    const TensorView view = weights->load(name);
    EXPECT_EQ(view.shape, want["shape"].get<std::vector<std::int64_t>>());
    std::vector<float> values;
    if (view.dtype == DType::F16) {
      for (const auto h : view.as<std::uint16_t>()) values.push_back(f16_to_f32(h));
    } else {
      ASSERT_EQ(view.dtype, DType::F32);
      values.assign(view.as<float>().begin(), view.as<float>().end());
    }
    EXPECT_EQ(bits_of(values), want["bits"].get<std::vector<std::uint32_t>>());
    EXPECT_NE(view.owner, nullptr);
  }

  // Plain tensors in canonical layout are views of the mapping.
  const TensorView embed = weights->load("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::F32);
  EXPECT_EQ(embed.owner.get(), gguf.get()) << "a mapped view keeps its file alive";
  EXPECT_EQ(embed.bytes.data(), gguf->find_tensor("token_embd.weight")->data.data());
  const TensorView gate = weights->load("model.layers.0.mlp.gate_proj.weight");
  EXPECT_EQ(gate.dtype, DType::BF16);
  EXPECT_EQ(gate.bytes.data(), gguf->find_tensor("blk.0.ffn_gate.weight")->data.data());

  // Quantized, unpermuted: plain dequantization.
  const TensorView v = weights->load("model.layers.0.self_attn.v_proj.weight");
  EXPECT_EQ(v.dtype, DType::F32);
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(bits_of(v.as<float>()), bits_of(dequantized(*gguf->find_tensor("blk.0.attn_v.weight"))));

  try {
    weights->load("model.layers.7.mlp.up_proj.weight");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("model.layers.7.mlp.up_proj.weight"));
    EXPECT_THAT(error.what(), HasSubstr("tiny_llama.gguf"));
  }
}

TEST(GgufModel, Qwen2HasBiasesTiedEmbeddingsAndNoPermutation) {
  const auto gguf = std::make_shared<const GgufFile>(kFixtures / "tiny_qwen2.gguf");
  const ModelConfig config = config_from_gguf(*gguf);
  EXPECT_EQ(config.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(config.model_type, "qwen2");
  EXPECT_TRUE(config.attention_bias);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.rope_theta, 1000000.0);
  EXPECT_EQ(config.max_position_embeddings, 4096);
  EXPECT_EQ(config.eos_token_ids, (std::vector<std::int32_t>{2, 5}));
  EXPECT_EQ(config.torch_dtype, "float16");

  const auto weights = make_gguf_weights(gguf, config);
  EXPECT_FALSE(weights->contains("lm_head.weight"));
  const TensorView q = weights->load("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.dtype, DType::F16);
  EXPECT_EQ(q.owner.get(), gguf.get()) << "a mapped view keeps its file alive";
  EXPECT_EQ(q.bytes.data(), gguf->find_tensor("blk.0.attn_q.weight")->data.data());
  const TensorView k_bias = weights->load("model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(k_bias.shape, (std::vector<std::int64_t>{16}));
  EXPECT_EQ(k_bias.bytes.data(), gguf->find_tensor("blk.0.attn_k.bias")->data.data());
}

// Metadata no real model has used to pass and overflow sizes computed from it later.
TEST(GgufModel, RejectsAbsurdMetadataNamingTheFileAndTheField) {
  const std::string good = read_bytes(kFixtures / "tiny_llama.gguf");
  TempDir dir;
  const auto error_with = [&](const std::string& key, auto value) {
    std::string bad = good;
    patch(bad, after_string(good, key) + 4, value);  // past the u32 value type
    const fs::path path = dir.write("absurd.gguf", bad);
    try {
      config_from_gguf(GgufFile(path));
    } catch (const Error& error) {
      EXPECT_THAT(error.what(), HasSubstr(path.string()));
      return std::string(error.what());
    }
    ADD_FAILURE() << key << " was accepted";
    return std::string();
  };
  EXPECT_THAT(error_with("llama.context_length", std::uint32_t{0xFFFFFFFF}),
              HasSubstr("max_position_embeddings must be between 1 and 1073741824 (got 4294967295)"));
  EXPECT_THAT(error_with("llama.block_count", std::uint32_t{0xFFFFFFFF}), HasSubstr("num_hidden_layers"));
  EXPECT_THAT(error_with("llama.rope.freq_base", std::numeric_limits<float>::infinity()), HasSubstr("rope_theta"));
  EXPECT_THAT(error_with("llama.attention.layer_norm_rms_epsilon", std::numeric_limits<float>::quiet_NaN()),
              HasSubstr("rms_norm_eps"));
}

TEST(GgufModel, RejectsUnknownArchitecture) {
  const GgufFile gguf(kFixtures / "types.gguf");
  try {
    config_from_gguf(gguf);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("architecture 'test' is not supported"));
  }
}

TEST(GgufModel, RopeRowReorderMatchesTheHfPermutation) {
  // 2 heads of 4 rows: interleaved order (h, i, j) -> halves order (h, j, i).
  const std::vector<float> interleaved = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<float> halves(8);
  interleaved_rope_rows_to_halves(std::as_bytes(std::span<const float>(interleaved)),
                                  std::as_writable_bytes(std::span(halves)), 8, 2);
  EXPECT_EQ(halves, (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_THROW(interleaved_rope_rows_to_halves(std::as_bytes(std::span<const float>(interleaved)),
                                               std::as_writable_bytes(std::span(halves)), 8, 3),
               Error);
}

// ---- The real SmolLM2-135M-Instruct Q4_1 GGUF, which scripts/get-model puts in the model cache.

const fs::path kSmolLm2 = fs::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";

TEST(GgufSmolLm2, ConfigMatchesTheModelCard) {
  ASSERT_TRUE(fs::exists(kSmolLm2)) << "missing " << kSmolLm2 << ": run scripts/get-model to install it";
  const GgufFile gguf(kSmolLm2);
  const ModelConfig config = config_from_gguf(gguf);
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.hidden_size, 576);
  EXPECT_EQ(config.num_layers, 30);
  EXPECT_EQ(config.num_heads, 9);
  EXPECT_EQ(config.num_kv_heads, 3);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.vocab_size, 49152);
  EXPECT_EQ(config.intermediate_size, 1536);
  EXPECT_EQ(config.rope_theta, 100000.0);
  EXPECT_EQ(config.max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(static_cast<float>(config.rms_norm_eps), 1e-5f);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_ids, (std::vector<std::int32_t>{2}));
  EXPECT_EQ(gguf.tensors().size(), 272u);
}

TEST(GgufSmolLm2, DequantizedWeightsMatchGgufPy) {
  ASSERT_TRUE(fs::exists(kSmolLm2)) << "missing " << kSmolLm2 << ": run scripts/get-model to install it";
  const auto gguf = std::make_shared<const GgufFile>(kSmolLm2);
  const auto weights = make_gguf_weights(gguf, config_from_gguf(*gguf));
  const json reference = read_json(fs::path(NIBBLE_SOURCE_DIR) / "tests" / "gguf" / "smollm2_reference.json");
  ASSERT_FALSE(reference.empty());
  for (const auto& [name, want] : reference.items()) {
    SCOPED_TRACE(name);
    const TensorView view = weights->load(name);
    EXPECT_EQ(view.shape, want["shape"].get<std::vector<std::int64_t>>());
    ASSERT_EQ(view.dtype, DType::F32);
    const auto values = view.as<float>();
    double sum = 0;
    for (const float v : values) sum += v;
    EXPECT_NEAR(sum, want["sum"].get<double>(), 1e-9 * std::max(1.0, std::abs(sum)) + 1e-6);
    for (const auto& [index, expected_bits] : want["elements"].items()) {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(values[std::stoul(index)]), expected_bits.get<std::uint32_t>())
          << "element " << index;
    }
  }
  for (const auto& info : weights->list()) {
    if (info.name == "model.embed_tokens.weight") {
      EXPECT_EQ(info.stored_type, "Q8_0");
    } else if (info.name == "model.layers.0.self_attn.q_proj.weight") {
      EXPECT_EQ(info.stored_type, "Q4_1");
    }
  }
}

}  // namespace
}  // namespace nibble
