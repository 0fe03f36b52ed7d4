// llama2.c import: the real stories260K checkpoint becomes a Hugging Face folder.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "loader/llama2c.h"
#include "loader/safetensors.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

const fs::path kStories = fs::path(NIBBLE_SHARED_DIR) / "models" / "stories260K";
const fs::path kModel = kStories / "stories260K.bin";
const fs::path kTokenizer = kStories / "tok512.bin";
const fs::path kLlama2Tokenizer = fs::path(NIBBLE_SHARED_DIR) / "models" / "llama2c-tokenizer" / "tokenizer.bin";

// stories260K's header: dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads, vocab 512, seq 512.
constexpr std::int64_t kDim = 64, kHidden = 172, kLayers = 5, kHeads = 8, kKvHeads = 4, kVocab = 512, kSeq = 512;
constexpr std::int64_t kKvDim = kDim / kHeads * kKvHeads;

void require_data() {
  ASSERT_TRUE(fs::exists(kModel) && fs::exists(kTokenizer)) << "missing " << kModel << " or " << kTokenizer;
}

json read_json(const fs::path& path) { return json::parse(read_file(path)); }

// The legacy checkpoint's float arrays, located independently of the converter.
struct Raw {
  std::vector<float> all;
  std::size_t embedding = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0, w1 = 0, w2 = 0, w3 = 0,
              rms_final = 0, end = 0;

  static Raw load() {
    const std::string bytes = read_file(kModel);
    Raw raw;
    raw.all.resize((bytes.size() - 28) / 4);
    std::memcpy(raw.all.data(), bytes.data() + 28, raw.all.size() * 4);
    std::size_t at = 0;
    const auto next = [&](std::int64_t count) { const auto start = at; at += static_cast<std::size_t>(count); return start; };
    raw.embedding = next(kVocab * kDim);
    raw.rms_att = next(kLayers * kDim);
    raw.wq = next(kLayers * kDim * kDim);
    raw.wk = next(kLayers * kKvDim * kDim);
    raw.wv = next(kLayers * kKvDim * kDim);
    raw.wo = next(kLayers * kDim * kDim);
    raw.rms_ffn = next(kLayers * kDim);
    raw.w1 = next(kLayers * kHidden * kDim);
    raw.w2 = next(kLayers * kDim * kHidden);
    raw.w3 = next(kLayers * kHidden * kDim);
    raw.rms_final = next(kDim);
    raw.end = at;
    return raw;
  }
  std::vector<float> range(std::size_t start, std::int64_t count) const {
    return {all.begin() + static_cast<std::ptrdiff_t>(start), all.begin() + static_cast<std::ptrdiff_t>(start + count)};
  }
};

std::vector<float> values(const TensorView& view) { return {view.as<float>().begin(), view.as<float>().end()}; }

// The Hugging Face permutation, written as in transformers' convert_llama_weights_to_hf.py:
// w.view(n_heads, rows / n_heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols).
std::vector<float> hf_permute(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, std::int64_t heads) {
  std::vector<float> out(w.size());
  const std::int64_t half = rows / heads / 2;
  std::int64_t dst = 0;
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t j = 0; j < 2; ++j)
      for (std::int64_t i = 0; i < half; ++i, ++dst)
        std::copy_n(w.begin() + ((h * half + i) * 2 + j) * cols, cols, out.begin() + dst * cols);
  return out;
}

std::string header_bytes(std::int32_t vocab_field) {
  std::string out(28, '\0');
  const std::int32_t fields[7] = {kDim, kHidden, kLayers, kHeads, kKvHeads, vocab_field, kSeq};
  std::memcpy(out.data(), fields, 28);
  return out;
}

std::string floats_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
}

TEST(Llama2c, ConvertsStories260KToAHuggingFaceFolder) {
  require_data();
  TempDir out;
  convert_llama2c(kModel, kTokenizer, out.path());
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                           "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(out / file)) << file;
  }

  const json config = read_json(out / "config.json");
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["hidden_size"], kDim);
  EXPECT_EQ(config["intermediate_size"], kHidden);
  EXPECT_EQ(config["num_hidden_layers"], kLayers);
  EXPECT_EQ(config["num_attention_heads"], kHeads);
  EXPECT_EQ(config["num_key_value_heads"], kKvHeads);
  EXPECT_EQ(config["vocab_size"], kVocab);
  EXPECT_EQ(config["max_position_embeddings"], kSeq);
  EXPECT_DOUBLE_EQ(config["rms_norm_eps"].get<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(config["rope_theta"].get<double>(), 10000.0);
  EXPECT_EQ(config["tie_word_embeddings"], true);
  EXPECT_EQ(config["bos_token_id"], 1);
  EXPECT_EQ(config["eos_token_id"], 2);

  const json generation = read_json(out / "generation_config.json");
  EXPECT_EQ(generation["bos_token_id"], 1);
  EXPECT_EQ(generation["eos_token_id"], 2);
}

TEST(Llama2c, WeightsAreTheCheckpointInHfLayout) {
  require_data();
  TempDir out;
  convert_llama2c(kModel, kTokenizer, out.path());
  const SafetensorsFile file(out / "model.safetensors");
  EXPECT_EQ(file.tensors().size(), static_cast<std::size_t>(2 + 9 * kLayers));
  EXPECT_EQ(file.find("lm_head.weight"), nullptr);  // tied
  const Raw raw = Raw::load();
  ASSERT_EQ(raw.end + 2 * kSeq * (kDim / kHeads / 2), raw.all.size());

  const auto expect_tensor = [&](const std::string& name, std::vector<std::int64_t> shape, std::vector<float> want) {
    SCOPED_TRACE(name);
    const TensorView* view = file.find(name);
    ASSERT_NE(view, nullptr);
    EXPECT_EQ(view->dtype, DType::F32);
    EXPECT_EQ(view->shape, shape);
    EXPECT_EQ(values(*view), want);
  };
  expect_tensor("model.embed_tokens.weight", {kVocab, kDim}, raw.range(raw.embedding, kVocab * kDim));
  expect_tensor("model.norm.weight", {kDim}, raw.range(raw.rms_final, kDim));
  for (std::int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto at = [&](std::size_t base, std::int64_t per_layer) { return raw.range(base + l * per_layer, per_layer); };
    expect_tensor(p + "input_layernorm.weight", {kDim}, at(raw.rms_att, kDim));
    expect_tensor(p + "self_attn.q_proj.weight", {kDim, kDim}, hf_permute(at(raw.wq, kDim * kDim), kDim, kDim, kHeads));
    expect_tensor(p + "self_attn.k_proj.weight", {kKvDim, kDim},
                  hf_permute(at(raw.wk, kKvDim * kDim), kKvDim, kDim, kKvHeads));
    expect_tensor(p + "self_attn.v_proj.weight", {kKvDim, kDim}, at(raw.wv, kKvDim * kDim));
    expect_tensor(p + "self_attn.o_proj.weight", {kDim, kDim}, at(raw.wo, kDim * kDim));
    expect_tensor(p + "post_attention_layernorm.weight", {kDim}, at(raw.rms_ffn, kDim));
    expect_tensor(p + "mlp.gate_proj.weight", {kHidden, kDim}, at(raw.w1, kHidden * kDim));
    expect_tensor(p + "mlp.down_proj.weight", {kDim, kHidden}, at(raw.w2, kDim * kHidden));
    expect_tensor(p + "mlp.up_proj.weight", {kHidden, kDim}, at(raw.w3, kHidden * kDim));
  }
}

TEST(Llama2c, SeparateClassifierBecomesLmHead) {
  require_data();
  const Raw raw = Raw::load();
  std::vector<float> body = raw.all;
  std::vector<float> classifier(static_cast<std::size_t>(kVocab * kDim));
  for (std::size_t i = 0; i < classifier.size(); ++i) classifier[i] = static_cast<float>(i % 97) * 0.25f;
  body.insert(body.end(), classifier.begin(), classifier.end());
  TempDir dir;
  write_file(dir / "untied.bin", header_bytes(-kVocab) + floats_bytes(body));
  convert_llama2c(dir / "untied.bin", kTokenizer, dir / "out");
  EXPECT_EQ(read_json(dir / "out" / "config.json")["tie_word_embeddings"], false);
  const SafetensorsFile file(dir / "out" / "model.safetensors");
  ASSERT_NE(file.find("lm_head.weight"), nullptr);
  EXPECT_EQ(values(*file.find("lm_head.weight")), classifier);
}

// The "ak42" exports: 256-byte header, norms first, no RoPE tables.
std::string versioned_header(std::int32_t version, std::int32_t group_size) {
  std::string out(256, '\0');
  const std::uint32_t magic = 0x616b3432;
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 4);
  std::memcpy(out.data() + 8, header_bytes(kVocab).data(), 28);
  out[36] = 1;  // shared classifier
  if (version == 2) std::memcpy(out.data() + 37, &group_size, 4);
  return out;
}

TEST(Llama2c, ReadsVersion1Export) {
  require_data();
  const Raw raw = Raw::load();
  const auto section = [&](std::size_t start, std::size_t end) { return raw.range(start, static_cast<std::int64_t>(end - start)); };
  std::string bytes = versioned_header(1, 0);
  bytes += floats_bytes(raw.range(raw.rms_att, kLayers * kDim)) + floats_bytes(raw.range(raw.rms_ffn, kLayers * kDim)) +
           floats_bytes(raw.range(raw.rms_final, kDim)) + floats_bytes(raw.range(raw.embedding, kVocab * kDim)) +
           floats_bytes(section(raw.wq, raw.rms_ffn)) + floats_bytes(section(raw.w1, raw.rms_final));
  TempDir dir;
  write_file(dir / "v1.bin", bytes);
  convert_llama2c(dir / "v1.bin", kTokenizer, dir / "v1");
  convert_llama2c(kModel, kTokenizer, dir / "legacy");
  EXPECT_EQ(read_file(dir / "v1" / "model.safetensors"), read_file(dir / "legacy" / "model.safetensors"));
  EXPECT_EQ(read_json(dir / "v1" / "config.json"), read_json(dir / "legacy" / "config.json"));
}

TEST(Llama2c, ReadsVersion2Int8Export) {
  require_data();
  const Raw raw = Raw::load();
  constexpr std::int64_t kGroup = 32;
  std::vector<float> expected_embedding;
  // Quantizes one matrix like llama2.c's export.py (q = round(w / scale), scale = max|w| / 127).
  const auto quantize = [&](const std::vector<float>& w, std::vector<float>* decoded) {
    std::string q(w.size(), '\0');
    std::vector<float> scales(w.size() / kGroup);
    for (std::size_t g = 0; g < scales.size(); ++g) {
      float max = 0;
      for (std::int64_t i = 0; i < kGroup; ++i) max = std::max(max, std::abs(w[g * kGroup + i]));
      scales[g] = max / 127.0f;
      for (std::int64_t i = 0; i < kGroup; ++i) {
        const auto value = static_cast<std::int8_t>(std::lround(w[g * kGroup + i] / scales[g]));
        q[g * kGroup + i] = static_cast<char>(value);
        if (decoded != nullptr) decoded->push_back(static_cast<float>(value) * scales[g]);
      }
    }
    return q + floats_bytes(scales);
  };
  std::string bytes = versioned_header(2, kGroup);
  bytes += floats_bytes(raw.range(raw.rms_att, kLayers * kDim)) + floats_bytes(raw.range(raw.rms_ffn, kLayers * kDim)) +
           floats_bytes(raw.range(raw.rms_final, kDim));
  bytes += quantize(raw.range(raw.embedding, kVocab * kDim), &expected_embedding);
  const std::pair<std::size_t, std::int64_t> matrices[] = {
      {raw.wq, kDim * kDim}, {raw.wk, kKvDim * kDim}, {raw.wv, kKvDim * kDim}, {raw.wo, kDim * kDim},
      {raw.w1, kHidden * kDim}, {raw.w2, kDim * kHidden}, {raw.w3, kHidden * kDim}};
  for (const auto& [start, per_layer] : matrices) {
    for (std::int64_t l = 0; l < kLayers; ++l) bytes += quantize(raw.range(start + l * per_layer, per_layer), nullptr);
  }
  TempDir dir;
  write_file(dir / "v2.bin", bytes);
  convert_llama2c(dir / "v2.bin", kTokenizer, dir / "v2");
  const SafetensorsFile file(dir / "v2" / "model.safetensors");
  EXPECT_EQ(values(*file.find("model.embed_tokens.weight")), expected_embedding);
  EXPECT_EQ(values(*file.find("model.norm.weight")), raw.range(raw.rms_final, kDim));
  const auto q = values(*file.find("model.layers.3.self_attn.q_proj.weight"));
  const auto want = hf_permute(raw.range(raw.wq + 3 * kDim * kDim, kDim * kDim), kDim, kDim, kHeads);
  ASSERT_EQ(q.size(), want.size());
  for (std::size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(q[i], want[i], 0.01f) << i;
}

TEST(Llama2c, TruncatedOrInconsistentFilesGiveClearErrors) {
  require_data();
  const std::string bytes = read_file(kModel);
  TempDir dir;
  const auto convert = [&](const std::string& content) {
    write_file(dir / "bad.bin", content);
    return [&] { convert_llama2c(dir / "bad.bin", kTokenizer, dir / "out"); };
  };
  expect_error(convert(""), {"bad.bin", "truncated"});
  expect_error(convert(bytes.substr(0, 10)), {"bad.bin", "truncated", "header"});
  for (const std::size_t length : {std::size_t{28}, std::size_t{1000}, bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE(length);
    expect_error(convert(bytes.substr(0, length)), {"bad.bin", "truncated", "1056540 bytes"});
  }
  expect_error(convert(bytes + "abcd"), {"bad.bin", "oversized"});
  std::string bad = bytes;
  const std::int32_t zero_heads = 0;
  std::memcpy(bad.data() + 12, &zero_heads, 4);
  expect_error(convert(bad), {"bad.bin", "invalid llama2.c header", "n_heads"});
  bad = bytes;
  const std::int32_t odd_heads = 3;
  std::memcpy(bad.data() + 12, &odd_heads, 4);
  expect_error(convert(bad), {"bad.bin", "invalid llama2.c header"});
  bad = versioned_header(3, 0);
  expect_error(convert(bad), {"bad.bin", "version 3 is not supported"});
  EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
}

TEST(Llama2c, TokenizerMustMatchTheModel) {
  require_data();
  ASSERT_TRUE(fs::exists(kLlama2Tokenizer)) << "missing " << kLlama2Tokenizer;
  TempDir dir;
  expect_error([&] { convert_llama2c(kModel, kLlama2Tokenizer, dir.path()); }, {"32000 tokens", "vocab_size 512"});
  const std::string tokens = read_file(kTokenizer);
  write_file(dir / "cut.bin", tokens.substr(0, tokens.size() - 3));
  expect_error([&] { convert_llama2c(kModel, dir / "cut.bin", dir.path()); }, {"cut.bin", "truncated", "token 511"});
}

TEST(Llama2c, TokenizerJsonIsSentencePieceStyleBpe) {
  require_data();
  TempDir out;
  convert_llama2c(kModel, kTokenizer, out.path());
  const json tokenizer = read_json(out / "tokenizer.json");
  const json& model = tokenizer["model"];
  EXPECT_EQ(model["type"], "BPE");
  EXPECT_EQ(model["byte_fallback"], true);
  EXPECT_EQ(model["fuse_unk"], true);
  EXPECT_EQ(model["unk_token"], "<unk>");
  ASSERT_EQ(model["vocab"].size(), static_cast<std::size_t>(kVocab));
  EXPECT_EQ(model["vocab"]["<unk>"], 0);
  EXPECT_EQ(model["vocab"]["<s>"], 1);
  EXPECT_EQ(model["vocab"]["</s>"], 2);
  EXPECT_EQ(model["vocab"]["<0x0A>"], 13);
  EXPECT_EQ(model["vocab"]["\xe2\x96\x81t"], 259);  // " t", the highest-scoring merge
  ASSERT_FALSE(model["merges"].empty());
  EXPECT_EQ(model["merges"][0], "\xe2\x96\x81 t");
  for (const auto& merge : model["merges"]) {
    EXPECT_EQ(merge.get<std::string>().find("<0x"), std::string::npos) << "byte tokens never merge";
  }
  ASSERT_EQ(tokenizer["added_tokens"].size(), 3u);
  EXPECT_EQ(tokenizer["added_tokens"][1]["content"], "<s>");
  EXPECT_EQ(tokenizer["added_tokens"][1]["special"], true);
  EXPECT_EQ(tokenizer["normalizer"]["normalizers"][0]["type"], "Prepend");
  EXPECT_TRUE(tokenizer["pre_tokenizer"].is_null());
  EXPECT_EQ(tokenizer["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
  EXPECT_EQ(tokenizer["decoder"]["decoders"].size(), 4u);

  const json config = read_json(out / "tokenizer_config.json");
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["model_max_length"], kSeq);
}

// Writes the Llama 2 tokenizer.bin as tokenizer.json. tests/llama2c/check_tokenizer.py
// runs this with NIBBLE_LLAMA2C_TOKENIZER_OUT set and compares it with SentencePiece.
TEST(Llama2c, ConvertsTheLlama2Tokenizer) {
  ASSERT_TRUE(fs::exists(kLlama2Tokenizer)) << "missing " << kLlama2Tokenizer;
  TempDir scratch;
  const char* requested = std::getenv("NIBBLE_LLAMA2C_TOKENIZER_OUT");
  const fs::path out = requested != nullptr ? fs::path(requested) : scratch.path();
  convert_llama2c_tokenizer(kLlama2Tokenizer, out, 4096);
  const json tokenizer = read_json(out / "tokenizer.json");
  EXPECT_EQ(tokenizer["model"]["vocab"].size(), 32000u);
  EXPECT_EQ(tokenizer["model"]["vocab"]["\xe2\x96\x81\xe2\x96\x81"], 259);
  EXPECT_GT(tokenizer["model"]["merges"].size(), 30000u);
  EXPECT_EQ(read_json(out / "tokenizer_config.json")["model_max_length"], 4096);
}

}  // namespace
}  // namespace nibble
