// The compressor's driver, evaluation and calibration input on the real stories260K
// model: what compress_model writes equals the per-module algorithms applied to the
// source weights, evaluation agrees with a plain log-softmax over one forward pass,
// and bad inputs are refused with clear errors.
#include <gtest/gtest.h>

#include <cmath>

#include "common/half.h"
#include "quant/calibration.h"
#include "quant/compressor.h"
#include "quant/evaluate.h"
#include "stories_model.h"

namespace nibble::quant {
namespace {

using testing::StoriesModel;
using testing::TempDir;

std::vector<float> floats_of(const TensorView& tensor) {
  EXPECT_EQ(tensor.dtype, DType::F32);  // stories260K converts to float32
  const auto values = tensor.as<float>();
  return {values.begin(), values.end()};
}

const std::vector<std::string> kModuleSuffixes = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                  "mlp.down_proj"};

EvalOptions sliding(std::int64_t window, std::int64_t stride, std::optional<std::int64_t> max_tokens = {}) {
  EvalOptions options;
  options.window = window;
  options.stride = stride;
  options.max_tokens = max_tokens;
  return options;
}

std::vector<std::int32_t> some_tokens(const StoriesModel& stories, std::size_t count) {
  // Real text through the model's own tokenizer, repeated to the length wanted.
  const auto ids = stories.tokenizer->encode(
      "Once upon a time there was a little girl named Lily. She loved to play in the park with her dog. ", false);
  std::vector<std::int32_t> out;
  while (out.size() < count) out.insert(out.end(), ids.begin(), ids.end());
  out.resize(count);
  return out;
}

TEST(Compressor, RtnWritesExactlyWhatRoundToNearestGivesForEveryModule) {
  StoriesModel stories;
  TempDir out;
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.method = "rtn";
  settings.bits = 4;
  settings.group_size = 32;
  CompressionOptions options;
  options.quantize = QuantMethod::Rtn;
  options.spec = QuantSpec{.bits = 4, .group_size = 32, .sym = true, .min_zero = 0};
  kernels::CpuBackend backend(1);
  {
    CheckpointWriter writer(stories.source, out / "rtn", settings);
    const auto report = compress_model(stories.source, options, {}, backend, writer);
    EXPECT_EQ(report.modules, 7 * stories.source.config.num_layers);
    EXPECT_EQ(report.calibration_tokens, 0);
    writer.finish();
  }
  const ModelSource written = open_model(out / "rtn");
  for (std::int64_t layer = 0; layer < stories.source.config.num_layers; ++layer) {
    for (const auto& suffix : kModuleSuffixes) {
      const std::string module = fmt::format("model.layers.{}.{}", layer, suffix);
      SCOPED_TRACE(module);
      const auto original = stories.source.weights->load(module + ".weight");
      const auto rows = original.shape[0], cols = original.shape[1];
      const auto expected = round_to_nearest(floats_of(original), rows, cols, options.spec);
      const auto matrix = written.weights->load_quantized(module);
      ASSERT_TRUE(matrix.has_value());
      std::int64_t mismatches = 0;
      for (std::int64_t n = 0; n < rows; ++n) {
        for (std::int64_t k = 0; k < cols; ++k) {
          mismatches += matrix->value(n, k) != expected.weights[static_cast<std::size_t>(n * cols + k)] ? 1 : 0;
        }
      }
      EXPECT_EQ(mismatches, 0);
    }
  }
  // Everything else is the source's, unchanged.
  EXPECT_EQ(floats_of(written.weights->load("model.embed_tokens.weight")),
            floats_of(stories.source.weights->load("model.embed_tokens.weight")));
}

TEST(Compressor, QuantizedEmbeddingsMatchTheirDequantizedReferenceInBothFormats) {
  StoriesModel stories;
  const auto& config = stories.source.config;
  ASSERT_TRUE(config.tie_word_embeddings);  // one tensor serves the lookup and the lm_head
  TempDir out;
  kernels::CpuBackend backend(1);
  struct Case {
    CheckpointFormat format;
    QuantSpec spec;
    int embedding_bits;  // 0: spec.bits
    const char* name;
  };
  // GPTQ packs whole int32 words: stories260K's 172-wide MLP needs 8 bits there.
  // Embeddings at other bits than the layers are a second compressed-tensors scheme
  // and a GPTQ "+:" dynamic rule.
  const std::vector<Case> cases{
      {CheckpointFormat::CompressedTensors, QuantSpec{4, 32, false, 0, ScaleChoice::Search}, 0, "ct"},
      {CheckpointFormat::CompressedTensors, QuantSpec{4, 32, true, 0, ScaleChoice::Search}, 8, "ct-8bit-embedding"},
      {CheckpointFormat::Gptq, QuantSpec{8, 32, true, 1, ScaleChoice::Search}, 0, "gptq"},
      {CheckpointFormat::Gptq, QuantSpec{8, 32, false, 1, ScaleChoice::Search}, 4, "gptq-4bit-embedding"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    CheckpointSettings settings;
    settings.format = c.format;
    settings.method = "rtn";
    settings.bits = c.spec.bits;
    settings.group_size = c.spec.group_size;
    settings.sym = c.spec.sym;
    settings.embedding_bits = c.embedding_bits;
    CompressionOptions options;
    options.quantize = QuantMethod::Rtn;
    options.spec = c.spec;
    options.quantize_embeddings = true;
    options.embedding_bits = c.embedding_bits;
    {
      CheckpointWriter writer(stories.source, out / c.name, settings);
      EXPECT_EQ(compress_model(stories.source, options, {}, backend, writer).modules, 7 * config.num_layers + 1);
      writer.finish();
    }
    const ModelSource written = open_model(out / c.name);
    EXPECT_FALSE(written.weights->contains("model.embed_tokens.weight"));
    EXPECT_FALSE(written.weights->contains("lm_head.weight"));  // still tied: one tensor
    const auto matrix = written.weights->load_quantized("model.embed_tokens");
    ASSERT_TRUE(matrix.has_value());
    const auto original = floats_of(stories.source.weights->load("model.embed_tokens.weight"));
    QuantSpec embedding_spec = c.spec;
    if (c.embedding_bits != 0) embedding_spec.bits = c.embedding_bits;
    EXPECT_EQ(matrix->bits, embedding_spec.bits);
    const auto expected = round_to_nearest(original, config.vocab_size, config.hidden_size, embedding_spec);
    std::int64_t mismatches = 0;
    for (std::int64_t n = 0; n < config.vocab_size; ++n) {
      for (std::int64_t k = 0; k < config.hidden_size; ++k) {
        mismatches += matrix->value(n, k) != expected.weights[static_cast<std::size_t>(n * config.hidden_size + k)];
      }
    }
    EXPECT_EQ(mismatches, 0);

    // Served quantized (rows dequantized by the lookup, the tied lm_head through the
    // quantized kernel), the model matches itself with every matrix expanded to float32.
    engine::DecoderModel quantized(written, backend);
    EXPECT_EQ(quantized.weight_memory().quantized_layers, 7 * config.num_layers + 1);
    engine::ModelOptions expand;
    expand.expand_quantized = true;
    engine::DecoderModel reference(written, backend, expand);
    const auto result = evaluate(quantized, &reference, some_tokens(stories, 96), sliding(96, 48));
    EXPECT_LT(*result.mean_kl, 1e-7);
    EXPECT_NEAR(result.perplexity, *result.base_perplexity, 1e-4 * result.perplexity);
    EXPECT_EQ(*result.top1_agreement, 1.0);
  }
}

TEST(Compressor, RtnWithCalibrationWeightsTheSearchByActivationMoments) {
  StoriesModel stories;
  TempDir out;
  const auto stream = some_tokens(stories, 2 * 64);
  const CalibrationRuns runs{{stream.begin(), stream.begin() + 64}, {stream.begin() + 64, stream.end()}};
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.method = "rtn";
  settings.bits = 4;
  settings.group_size = 32;
  CompressionOptions options;
  options.quantize = QuantMethod::Rtn;
  options.spec = QuantSpec{4, 32, true, 0, ScaleChoice::Search};
  options.rtn_importance = true;
  ASSERT_TRUE(options.needs_calibration());
  kernels::CpuBackend backend(1);
  // The first group the compressor sees (layer 0's q/k/v input) and what it wrote for q_proj.
  std::vector<double> moments;
  const auto observe = [&](std::span<const std::string> modules, std::span<const float> inputs, std::int64_t rows) {
    if (moments.empty() && modules.front() == "model.layers.0.self_attn.q_proj") {
      moments = column_second_moments(inputs, rows, static_cast<std::int64_t>(inputs.size()) / rows);
    }
  };
  {
    CheckpointWriter writer(stories.source, out / "rtn", settings);
    const auto report = compress_model(stories.source, options, runs, backend, writer, {}, observe);
    EXPECT_EQ(report.calibration_tokens, 128);
    writer.finish();
  }
  ASSERT_FALSE(moments.empty());
  const ModelSource written = open_model(out / "rtn");
  const std::string module = "model.layers.0.self_attn.q_proj";
  const auto original = stories.source.weights->load(module + ".weight");
  const auto rows = original.shape[0], cols = original.shape[1];
  const auto weighted = round_to_nearest(floats_of(original), rows, cols, options.spec, moments);
  const auto blind = round_to_nearest(floats_of(original), rows, cols, options.spec);
  ASSERT_NE(weighted.quantized->scales, blind.quantized->scales);  // the weighting changes choices
  const auto matrix = written.weights->load_quantized(module);
  ASSERT_TRUE(matrix.has_value());
  EXPECT_EQ(matrix->scales, weighted.quantized->scales);
  EXPECT_EQ(matrix->codes, weighted.quantized->codes);
}

TEST(Compressor, GptqLowersEveryLayersProxyLossBelowRtnAndRunsInTheEngine) {
  StoriesModel stories;
  TempDir out;
  const auto calibration_stream = some_tokens(stories, 4 * 64);
  CalibrationRuns runs;
  for (std::size_t i = 0; i < 4; ++i) {
    runs.emplace_back(calibration_stream.begin() + static_cast<std::ptrdiff_t>(i * 64),
                      calibration_stream.begin() + static_cast<std::ptrdiff_t>((i + 1) * 64));
  }
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.bits = 3;
  settings.group_size = -1;
  CompressionOptions options;
  options.quantize = QuantMethod::Gptq;
  options.spec = QuantSpec{.bits = 3, .group_size = -1, .sym = true, .min_zero = 0};
  kernels::CpuBackend backend(1);
  CheckpointWriter writer(stories.source, out / "gptq", settings);
  const auto report = compress_model(stories.source, options, runs, backend, writer);
  writer.finish();
  EXPECT_EQ(report.calibration_tokens, 4 * 64);
  EXPECT_EQ(report.modules, 35);
  EXPECT_GT(report.proxy_loss, 0.0);
  EXPECT_TRUE(std::isfinite(report.proxy_loss));

  const ModelSource written = open_model(out / "gptq");
  engine::DecoderModel model(written, backend);
  EXPECT_EQ(model.weight_memory().quantized_layers, 35);
  const auto eval_tokens = some_tokens(stories, 96);
  const auto result = evaluate(model, &stories.model, eval_tokens, sliding(96, 48));
  EXPECT_GT(*result.mean_kl, 0.0);
  EXPECT_TRUE(std::isfinite(result.perplexity));
}

TEST(Compressor, RefusesWhatItCannotDo) {
  StoriesModel stories;
  TempDir out;
  kernels::CpuBackend backend(1);
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  CompressionOptions gptq;
  gptq.quantize = QuantMethod::Gptq;
  {
    CheckpointWriter writer(stories.source, out / "a", settings);
    testing::expect_error([&] { compress_model(stories.source, gptq, {}, backend, writer); }, {"calibration"});
  }
  {
    CheckpointWriter writer(stories.source, out / "b", settings);
    testing::expect_error([&] { compress_model(stories.source, gptq, {{1, 2, 100000}}, backend, writer); },
                          {"100000", "vocabulary"});
  }
  {
    CheckpointWriter writer(stories.source, out / "c", settings);
    testing::expect_error([&] { compress_model(stories.source, CompressionOptions{}, {}, backend, writer); },
                          {"nothing to do"});
  }
}

TEST(Evaluate, PerplexityEqualsAPlainLogSoftmaxOverOneForwardPass) {
  StoriesModel stories;
  const auto tokens = some_tokens(stories, 80);
  // The plain computation: one forward over everything, float64 log-softmax per row.
  engine::SequenceCache cache(stories.model, 80);
  const auto vocab = static_cast<std::size_t>(stories.model.vocab_size());
  std::vector<float> logits(80 * vocab);
  stories.model.forward(tokens, 0, cache, engine::Logits::AllRows, logits);
  double nll = 0;
  for (std::size_t t = 1; t < tokens.size(); ++t) {
    const float* row = logits.data() + (t - 1) * vocab;
    double max = row[0], sum = 0;
    for (std::size_t v = 0; v < vocab; ++v) max = std::max(max, static_cast<double>(row[v]));
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
    nll -= row[tokens[t]] - max - std::log(sum);
  }
  const double expected = std::exp(nll / 79.0);

  const auto whole = evaluate(stories.model, nullptr, tokens, sliding(80, 40));
  EXPECT_EQ(whole.tokens_scored, 79);
  EXPECT_NEAR(whole.perplexity / expected, 1.0, 1e-9);
  EXPECT_FALSE(whole.mean_kl.has_value());

  // A sliding window still scores every token but the first exactly once; with less
  // context each token can only be predicted less well on average, never NaN.
  const auto windowed = evaluate(stories.model, nullptr, tokens, sliding(32, 8));
  EXPECT_EQ(windowed.tokens_scored, 79);
  EXPECT_TRUE(std::isfinite(windowed.perplexity));
  const auto capped = evaluate(stories.model, nullptr, tokens, sliding(80, 40, 50));
  EXPECT_EQ(capped.tokens_scored, 49);
}

TEST(Evaluate, AModelAgainstItselfHasNoDivergence) {
  StoriesModel stories;
  StoriesModel same;
  const auto tokens = some_tokens(stories, 64);
  const auto result = evaluate(stories.model, &same.model, tokens, sliding(32, 16));
  EXPECT_LT(*result.mean_kl, 1e-9);
  EXPECT_LT(*result.p99_kl, 1e-9);
  EXPECT_EQ(*result.top1_agreement, 1.0);
  EXPECT_DOUBLE_EQ(*result.base_perplexity, result.perplexity);
}

TEST(Evaluate, RefusesNonsense) {
  StoriesModel stories;
  const std::vector<std::int32_t> one = {1};
  testing::expect_error([&] { evaluate(stories.model, nullptr, one, EvalOptions{}); }, {"at least 2 tokens"});
  const std::vector<std::int32_t> bad = {1, 2, 9999};
  testing::expect_error([&] { evaluate(stories.model, nullptr, bad, EvalOptions{}); }, {"9999", "vocabulary"});
  const std::vector<std::int32_t> fine = {1, 2, 3};
  testing::expect_error([&] { evaluate(stories.model, nullptr, fine, sliding(8, 9)); },
                        {"stride"});
}

TEST(Calibration, TextIsCutIntoConsecutiveRunsAndIdsAreCheckedAgainstTheVocabulary) {
  StoriesModel stories;
  TempDir dir;
  std::string text;
  for (int i = 0; i < 20; ++i) text += "The cat sat on the mat and looked at the little bird in the tree. ";
  testing::write_file(dir / "calib.txt", text);
  const auto all = stories.tokenizer->encode(text, false);
  const auto runs = read_calibration_runs(dir / "calib.txt", *stories.tokenizer, 3, 16);
  ASSERT_EQ(runs.size(), 3u);
  for (std::size_t r = 0; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r], std::vector<std::int32_t>(all.begin() + static_cast<std::ptrdiff_t>(r * 16),
                                                 all.begin() + static_cast<std::ptrdiff_t>((r + 1) * 16)));
  }
  testing::write_file(dir / "ids.json", "[[1, 2, 3, 4, 5], [6, 7], []]");
  const auto id_runs = read_calibration_runs(dir / "ids.json", *stories.tokenizer, 10, 4);
  EXPECT_EQ(id_runs, (std::vector<std::vector<std::int32_t>>{{1, 2, 3, 4}, {6, 7}}));

  testing::write_file(dir / "bad.json", "[[1, 2, \"x\"]]");
  testing::expect_error([&] { read_calibration_runs(dir / "bad.json", *stories.tokenizer, 1, 4); }, {"not an integer"});
  testing::write_file(dir / "broken.json", "[[1, 2");
  testing::expect_error([&] { read_calibration_runs(dir / "broken.json", *stories.tokenizer, 1, 4); }, {"not valid JSON"});
  testing::write_file(dir / "oov.json", "[[1, 512]]");
  testing::expect_error([&] { read_calibration_runs(dir / "oov.json", *stories.tokenizer, 1, 4); },
                        {"512", "vocabulary"});
  testing::write_file(dir / "short.txt", "Hi.");
  testing::expect_error([&] { read_calibration_runs(dir / "short.txt", *stories.tokenizer, 1, 64); },
                        {"fewer than one run"});
  testing::expect_error([&] { read_calibration_runs(dir / "missing.txt", *stories.tokenizer, 1, 4); }, {"cannot read"});
}

}  // namespace
}  // namespace nibble::quant
