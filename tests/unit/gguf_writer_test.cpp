// GGUF output (issue 23): the block encoders against the loader's reference
// decoder, their search against plain absmax encoding, GPTQ's sweep in blocks
// against round-to-nearest, the GGUF file writer against the reader, and a tiny
// F32 llama GGUF compressed end to end and read back.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/model_source.h"
#include "quant/block_codec.h"
#include "quant/compressor.h"
#include "quant/gguf_file_writer.h"
#include "quant/gguf_writer.h"
#include "quant/hessian.h"
#include "quant/obs_sweep.h"
#include "test_util.h"

namespace nibble::quant {
namespace {

using nibble::testing::expect_error;
using nibble::testing::TempDir;

constexpr GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                               GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// Random blocks of several shapes real weights take: Gaussian, heavy-tailed with
// outliers, all positive, constant, all zero, tiny (fp16 subnormal scales).
std::vector<float> random_block(std::mt19937& rng, int n, int kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(2.0f);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (auto& v : x) {
    switch (kind % 6) {
      case 0: v = 0.02f * normal(rng); break;
      case 1: v = 0.05f * heavy(rng); break;
      case 2: v = std::abs(normal(rng)) + 0.5f; break;
      case 3: v = 0.25f; break;
      case 4: v = 0.0f; break;
      default: v = 1e-6f * normal(rng); break;
    }
  }
  return x;
}

std::vector<float> random_importance(std::mt19937& rng, int n) {
  std::lognormal_distribution<float> lognormal(0.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& v : w) v = lognormal(rng);
  return w;
}

double weighted_error(std::span<const float> x, std::span<const float> y, std::span<const float> w) {
  double e = 0;
  for (std::size_t i = 0; i < x.size(); ++i) e += (w.empty() ? 1.0 : w[i]) * (x[i] - y[i]) * (x[i] - y[i]);
  return e;
}

// Encodes with `p` and decodes through the loader's reference decoder.
std::vector<float> roundtrip(const BlockCodec& codec, std::span<const float> x, const BlockCodec::Params& p,
                             std::vector<std::uint8_t>* codes_out = nullptr) {
  std::vector<std::uint8_t> codes(x.size());
  for (int e = 0; e < codec.elements(); ++e) codes[static_cast<std::size_t>(e)] = codec.quantize(x[static_cast<std::size_t>(e)], e, p);
  std::vector<std::byte> block(static_cast<std::size_t>(codec.bytes()));
  codec.pack(p, codes, block.data());
  if (codes_out != nullptr) *codes_out = codes;
  return decode_rows(codec.type(), block, 1, codec.elements());
}

TEST(BlockCodec, EncodesWhatTheReferenceDecoderReads) {
  std::mt19937 rng(23);
  for (const GgmlType type : kTypes) {
    const BlockCodec codec(type);
    for (int trial = 0; trial < 120; ++trial) {
      const auto x = random_block(rng, codec.elements(), trial);
      const auto p = codec.fit(x);
      std::vector<std::uint8_t> codes;
      const auto decoded = roundtrip(codec, x, p, &codes);
      double peak = 0, rms = 0;
      for (std::size_t i = 0; i < x.size(); ++i) {
        // The codec's own value of each code is what the decoder computes.
        const float mine = codec.value(codes[i], static_cast<int>(i), p);
        ASSERT_NEAR(mine, decoded[i], 1e-6f * std::max(1.0f, std::abs(decoded[i])))
            << ggml_type_name(type) << " trial " << trial << " element " << i;
        ASSERT_TRUE(std::isfinite(decoded[i]));
        peak = std::max(peak, static_cast<double>(std::abs(x[i])));
        rms += static_cast<double>(x[i]) * x[i];
      }
      rms = std::sqrt(rms / static_cast<double>(x.size()));
      const double err = std::sqrt(weighted_error(x, decoded, {}) / static_cast<double>(x.size()));
      // Error bound per format: the RMS error against the block's peak, by code bits
      // (Q4: 16 levels, Q5: 32, Q6: 64, Q8: 256) with room for the K-quants' 6-bit scales.
      const double bound = type == GgmlType::Q8_0 ? 0.004 : type == GgmlType::Q6_K ? 0.012
                           : (type == GgmlType::Q5_0 || type == GgmlType::Q5_1 || type == GgmlType::Q5_K) ? 0.025
                                                                                                          : 0.05;
      if (trial % 6 == 5) {
        // Weights near fp16's subnormal range: scales are coarse there, but the block
        // still keeps most of its signal rather than collapsing to zero.
        EXPECT_LE(err, 0.5 * rms) << ggml_type_name(type) << " trial " << trial;
      } else {
        EXPECT_LE(err, bound * peak + 1e-12) << ggml_type_name(type) << " trial " << trial << " rms " << rms;
      }
    }
  }
}

TEST(BlockCodec, SearchNeverLosesToAbsmax) {
  std::mt19937 rng(7);
  for (const GgmlType type : kTypes) {
    const BlockCodec codec(type);
    double searched = 0, plain = 0;
    for (int trial = 0; trial < 200; ++trial) {
      const auto x = random_block(rng, codec.elements(), trial % 3 == 2 ? 1 : 0);
      const auto w = trial % 2 == 0 ? random_importance(rng, codec.elements()) : std::vector<float>{};
      const auto fitted = roundtrip(codec, x, codec.fit(x, w));
      const auto baseline = roundtrip(codec, x, codec.fit_absmax(x));
      const double a = weighted_error(x, fitted, w), b = weighted_error(x, baseline, w);
      ASSERT_LE(a, b * (1 + 1e-9) + 1e-30) << ggml_type_name(type) << " trial " << trial;
      searched += a, plain += b;
    }
    // And the search is worth having: clearly better over many blocks.
    EXPECT_LT(searched, 0.97 * plain) << ggml_type_name(type);
  }
}

TEST(BlockCodec, RefusesNonFiniteAndBadSizes) {
  const BlockCodec codec(GgmlType::Q4_K);
  std::vector<float> x(256, 0.5f);
  x[17] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { codec.fit(x); }, {"cannot encode", "nan"});
  x[17] = std::numeric_limits<float>::infinity();
  expect_error([&] { codec.fit(x); }, {"cannot encode", "inf"});
  expect_error([&] { codec.fit(std::vector<float>(32, 0.0f)); }, {"holds 256 weights"});
  std::vector<float> ok(256, 0.5f), bad_importance(256, 1.0f);
  bad_importance[3] = -1.0f;
  expect_error([&] { codec.fit(ok, bad_importance); }, {"importance"});
  expect_error([] { BlockCodec(GgmlType::Q2_K); }, {"cannot write", "Q2_K"});
  expect_error([&] { encode_rows(codec, std::vector<float>(100, 0.0f), 1, 100); }, {"cannot encode"});
  // A NaN deep in a many-row matrix is a clean error from whichever thread meets it.
  std::vector<float> rows(64 * 256, 0.1f);
  rows[50 * 256 + 7] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { encode_rows(codec, rows, 64, 256); }, {"cannot encode", "nan"});
}

// X = Z A diag(s): correlated columns of uneven size, like real activations.
Hessian correlated_hessian(std::mt19937& rng, std::int64_t dim, kernels::Backend& backend) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::lognormal_distribution<float> lognormal(0.0f, 1.0f);
  const std::int64_t samples = 4 * dim;
  std::vector<float> a(static_cast<std::size_t>(dim * dim)), s(static_cast<std::size_t>(dim));
  for (auto& v : a) v = normal(rng) / std::sqrt(static_cast<float>(dim));
  for (auto& v : s) v = lognormal(rng);
  std::vector<float> x(static_cast<std::size_t>(samples * dim), 0.0f);
  for (std::int64_t n = 0; n < samples; ++n) {
    std::vector<float> z(static_cast<std::size_t>(dim));
    for (auto& v : z) v = normal(rng);
    for (std::int64_t j = 0; j < dim; ++j) {
      float sum = 0;
      for (std::int64_t k = 0; k < dim; ++k) sum += z[static_cast<std::size_t>(k)] * a[static_cast<std::size_t>(k * dim + j)];
      x[static_cast<std::size_t>(n * dim + j)] = sum * s[static_cast<std::size_t>(j)];
    }
  }
  Hessian h(dim);
  h.add(x, samples, backend);
  return h;
}

// tr((W - Q) H (W - Q)^T): the loss GPTQ minimizes.
double hessian_loss(std::span<const float> w, std::span<const float> q, std::int64_t rows, std::int64_t cols,
                    const Hessian& h) {
  double loss = 0;
  std::vector<double> d(static_cast<std::size_t>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) d[static_cast<std::size_t>(c)] = w[static_cast<std::size_t>(r * cols + c)] - q[static_cast<std::size_t>(r * cols + c)];
    for (std::int64_t i = 0; i < cols; ++i) {
      for (std::int64_t j = 0; j < cols; ++j) loss += d[static_cast<std::size_t>(i)] * h.values()[static_cast<std::size_t>(i * cols + j)] * d[static_cast<std::size_t>(j)];
    }
  }
  return loss;
}

TEST(BlockCodec, GptqInBlocksBeatsRoundToNearest) {
  std::mt19937 rng(11);
  kernels::CpuBackend backend(2);
  const std::int64_t rows = 24, cols = 512;
  const Hessian h = correlated_hessian(rng, cols, backend);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = normal(rng);
  std::vector<float> diag(static_cast<std::size_t>(cols));
  for (std::int64_t c = 0; c < cols; ++c) diag[static_cast<std::size_t>(c)] = static_cast<float>(h.values()[static_cast<std::size_t>(c * cols + c)]);
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    const BlockCodec codec(type);
    for (const bool gar : {false, true}) {
      SweepOptions options;
      options.block_codec = &codec;
      options.group_aware_order = gar;
      options.backend = &backend;
      const SweepResult gptq = obs_sweep(w, rows, cols, h, options);
      // The weights are exactly what the decoder reads back from the blocks.
      ASSERT_EQ(gptq.weights, decode_rows(type, gptq.blocks, rows, cols));
      const SweepResult rtn = round_to_nearest_blocks(w, rows, cols, codec);
      const SweepResult rtn_imp = round_to_nearest_blocks(w, rows, cols, codec, diag);
      const double l_gptq = hessian_loss(w, gptq.weights, rows, cols, h);
      const double l_rtn = hessian_loss(w, rtn.weights, rows, cols, h);
      const double l_imp = hessian_loss(w, rtn_imp.weights, rows, cols, h);
      EXPECT_LT(l_gptq, 0.8 * l_rtn) << ggml_type_name(type) << " gar " << gar;
      EXPECT_LT(l_imp, l_rtn) << ggml_type_name(type);  // importance-weighted fitting helps too
    }
  }
  const BlockCodec codec(GgmlType::Q4_K);
  SweepOptions options;
  options.block_codec = &codec;
  options.act_order = true;
  expect_error([&] { obs_sweep(w, rows, cols, h, options); }, {"act_order"});
  options.act_order = false;
  expect_error([&] { obs_sweep(std::span(w).first(static_cast<std::size_t>(rows * 96)), rows, 96, correlated_hessian(rng, 96, backend), options); },
               {"whole number of Q4_K blocks"});
}

TEST(GgufFileWriter, WritesWhatTheReaderReads) {
  TempDir dir;
  GgufFileWriter writer;
  writer.set("general.architecture", std::string("llama"));
  writer.set("a.u8", std::uint8_t{7});
  writer.set("a.i16", std::int16_t{-3});
  writer.set("a.u32", std::uint32_t{123456});
  writer.set("a.i64", std::int64_t{-9000000000});
  writer.set("a.f32", 1.5f);
  writer.set("a.f64", 2.25);
  writer.set("a.bool", true);
  auto tokens = std::make_shared<GgufArray>();
  tokens->values = {std::string("<s>"), std::string("hello")};
  writer.set("a.strings", tokens);
  writer.set("a.u32", std::uint32_t{654321});  // replaced in place
  std::vector<std::byte> f32(3 * 4 * 4);
  for (int i = 0; i < 12; ++i) {
    const float v = static_cast<float>(i) - 5.5f;
    std::memcpy(f32.data() + 4 * i, &v, 4);
  }
  writer.add_tensor("x.weight", GgmlType::F32, {3, 4}, f32);
  std::vector<float> values(2 * 256);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.1f * static_cast<float>(i));
  const auto blocks = encode_rows(BlockCodec(GgmlType::Q5_K), values, 2, 256);
  writer.add_tensor("y.weight", GgmlType::Q5_K, {2, 256}, blocks);
  expect_error([&] { writer.add_tensor("z", GgmlType::Q4_K, {2, 256}, std::vector<std::byte>(5)); }, {"5 bytes"});
  expect_error([&] { writer.add_tensor("x.weight", GgmlType::F32, {3, 4}, f32); }, {"added twice"});
  const auto path = dir.path() / "out.gguf";
  writer.write(path, 64);

  const GgufFile file(path);
  EXPECT_EQ(file.get_string("general.architecture"), "llama");
  EXPECT_EQ(file.get_int("a.u8"), 7);
  EXPECT_EQ(file.get_int("a.i16"), -3);
  EXPECT_EQ(file.get_int("a.u32"), 654321);
  EXPECT_EQ(file.get_int("a.i64"), -9000000000);
  EXPECT_EQ(file.get_float("a.f32"), 1.5);
  EXPECT_EQ(file.get_float("a.f64"), 2.25);
  EXPECT_TRUE(file.get_bool("a.bool"));
  EXPECT_EQ(file.get_string_array("a.strings"), (std::vector<std::string>{"<s>", "hello"}));
  EXPECT_EQ(file.get_int("general.alignment"), 64);
  ASSERT_EQ(file.tensors().size(), 2u);
  const GgufTensor* x = file.find_tensor("x.weight");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->shape, (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(std::memcmp(x->data.data(), f32.data(), f32.size()), 0);
  const GgufTensor* y = file.find_tensor("y.weight");
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y->type, GgmlType::Q5_K);
  EXPECT_EQ((file.data_offset() + static_cast<std::uint64_t>(y->data.data() - x->data.data())) % 64, file.data_offset() % 64);
  std::vector<float> back(512);
  dequantize_to_f32(*y, back);
  EXPECT_EQ(back, decode_rows(GgmlType::Q5_K, blocks, 2, 256));
}

// A tiny llama GGUF in F32 (hidden 256 so every module is whole K-quant blocks),
// written with the file writer the way llama.cpp's converter lays it out.
void write_tiny_llama(const std::filesystem::path& path, std::mt19937& rng) {
  const std::int64_t hidden = 256, ffn = 512, vocab = 64, layers = 2, heads = 4, kv_heads = 2;
  GgufFileWriter w;
  w.set("general.architecture", std::string("llama"));
  w.set("llama.context_length", std::uint32_t{128});
  w.set("llama.embedding_length", static_cast<std::uint32_t>(hidden));
  w.set("llama.block_count", static_cast<std::uint32_t>(layers));
  w.set("llama.feed_forward_length", static_cast<std::uint32_t>(ffn));
  w.set("llama.attention.head_count", static_cast<std::uint32_t>(heads));
  w.set("llama.attention.head_count_kv", static_cast<std::uint32_t>(kv_heads));
  w.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set("llama.rope.freq_base", 10000.0f);
  w.set("general.file_type", std::uint32_t{0});
  auto tokens = std::make_shared<GgufArray>();
  for (int i = 0; i < vocab; ++i) tokens->values.emplace_back(fmt::format("t{}", i));
  w.set("tokenizer.ggml.tokens", tokens);
  w.set("tokenizer.ggml.bos_token_id", std::uint32_t{1});
  w.set("tokenizer.ggml.eos_token_id", std::uint32_t{2});
  std::normal_distribution<float> normal(0.0f, 0.05f);
  const auto add = [&](const std::string& name, std::vector<std::int64_t> shape, bool ones) {
    std::int64_t n = 1;
    for (const auto e : shape) n *= e;
    std::vector<std::byte> data(static_cast<std::size_t>(4 * n));
    for (std::int64_t i = 0; i < n; ++i) {
      const float v = ones ? 1.0f : normal(rng);
      std::memcpy(data.data() + 4 * i, &v, 4);
    }
    w.add_tensor(name, GgmlType::F32, std::move(shape), std::move(data));
  };
  add("token_embd.weight", {vocab, hidden}, false);
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {hidden}, true);
    add(b + "attn_q.weight", {hidden, hidden}, false);
    add(b + "attn_k.weight", {hidden / heads * kv_heads, hidden}, false);
    add(b + "attn_v.weight", {hidden / heads * kv_heads, hidden}, false);
    add(b + "attn_output.weight", {hidden, hidden}, false);
    add(b + "ffn_norm.weight", {hidden}, true);
    add(b + "ffn_gate.weight", {ffn, hidden}, false);
    add(b + "ffn_up.weight", {ffn, hidden}, false);
    add(b + "ffn_down.weight", {hidden, ffn}, false);
  }
  add("output_norm.weight", {hidden}, true);
  add("output.weight", {vocab, hidden}, false);
  w.write(path);
}

// Forwards to the GGUF writer and keeps what the compressor produced.
class Recording : public ModuleWriter {
 public:
  explicit Recording(GgufWriter& inner) : inner_(inner) {}
  void add_quantized(const std::string& m, const QuantizedMatrix& q) override { inner_.add_quantized(m, q); }
  void add_pruned(const std::string& m, std::span<const float> w, std::int64_t r, std::int64_t c) override {
    inner_.add_pruned(m, w, r, c);
  }
  std::optional<GgmlType> block_type(const std::string& m, std::int64_t r, std::int64_t c) const override {
    return inner_.block_type(m, r, c);
  }
  void add_blocks(const std::string& m, GgmlType t, std::vector<std::byte> b, std::int64_t r, std::int64_t c) override {
    decoded[m] = decode_rows(t, b, r, c);
    types[m] = t;
    inner_.add_blocks(m, t, std::move(b), r, c);
  }
  bool reads_gguf_source() const override { return true; }
  void finish() override { inner_.finish(); }
  std::map<std::string, std::vector<float>> decoded;
  std::map<std::string, GgmlType> types;

 private:
  GgufWriter& inner_;
};

TEST(GgufWriter, CompressesATinyLlamaThatLoadsBack) {
  TempDir dir;
  std::mt19937 rng(5);
  const auto base_path = dir.path() / "tiny.f32.gguf";
  write_tiny_llama(base_path, rng);
  const ModelSource base = open_model(base_path);
  kernels::CpuBackend backend(2);
  for (const std::string type : {"Q4_K_M", "Q8_0", "Q5_1"}) {
    const auto out = dir.path() / ("tiny." + type + ".gguf");
    GgufWriter writer(base, out, GgufRecipe::parse(type), "test");
    Recording recording(writer);
    CompressionOptions options;
    options.quantize = QuantMethod::Rtn;
    const auto report = compress_model(base, options, {}, backend, recording);
    EXPECT_EQ(report.modules, 14);
    recording.finish();

    const GgufFile file(out);
    EXPECT_EQ(file.get_int("general.file_type"), GgufRecipe::parse(type).file_type());
    EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens").size(), 64u);
    EXPECT_EQ(file.get_int("llama.attention.head_count_kv"), 2);
    const ModelSource written = open_model(out);
    EXPECT_EQ(written.config.num_layers, 2);
    for (const auto& [module, values] : recording.decoded) {
      // What the loader reads (q/k rows back in HF order) is exactly what the compressor encoded.
      const TensorView view = written.weights->load(module + ".weight");
      std::vector<float> loaded(values.size());
      ASSERT_EQ(view.dtype, DType::F32) << module;
      std::memcpy(loaded.data(), view.bytes.data(), loaded.size() * 4);
      ASSERT_EQ(loaded, values) << type << " " << module;
      // ... and close to the source.
      const TensorView source = base.weights->load(module + ".weight");
      std::vector<float> original(values.size());
      std::memcpy(original.data(), source.bytes.data(), original.size() * 4);
      const double err = weighted_error(original, values, {}) / weighted_error(original, std::vector<float>(values.size()), {});
      EXPECT_LT(err, type == "Q8_0" ? 1e-4 : 0.02) << type << " " << module;
    }
    if (type == "Q4_K_M") {
      EXPECT_EQ(recording.types.at("model.layers.0.self_attn.v_proj"), GgmlType::Q6_K);
      EXPECT_EQ(recording.types.at("model.layers.0.self_attn.q_proj"), GgmlType::Q4_K);
      EXPECT_EQ(file.find_tensor("output.weight")->type, GgmlType::Q6_K);
      EXPECT_EQ(file.find_tensor("token_embd.weight")->type, GgmlType::Q4_K);
    }
    EXPECT_EQ(file.find_tensor("blk.0.attn_norm.weight")->type, GgmlType::F32);
  }
  expect_error([&] { GgufRecipe::parse("Q3_K_S"); }, {"unknown GGUF type", "Q4_K_M"});
}

TEST(GgufRecipe, FallsBackForRowsOfPartialSuperBlocks) {
  const GgufRecipe q4km = GgufRecipe::parse("Q4_K_M");
  EXPECT_EQ(q4km.type_for(TensorRole::Query, 5, 30, 576, false), GgmlType::Q5_0);
  EXPECT_EQ(q4km.type_for(TensorRole::Down, 5, 30, 1536, false), GgmlType::Q4_K);
  EXPECT_EQ(q4km.type_for(TensorRole::Down, 4, 30, 1536, false), GgmlType::Q6_K);
  EXPECT_EQ(q4km.type_for(TensorRole::Value, 0, 30, 576, false), GgmlType::Q8_0);
  EXPECT_EQ(q4km.type_for(TensorRole::TokenEmbedding, 0, 30, 576, true), GgmlType::Q8_0);
  EXPECT_EQ(q4km.type_for(TensorRole::TokenEmbedding, 0, 30, 576, false), GgmlType::Q5_0);
  EXPECT_EQ(q4km.type_for(TensorRole::Query, 0, 30, 100, false), GgmlType::F16);
}

}  // namespace
}  // namespace nibble::quant
