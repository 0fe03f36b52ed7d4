// The engine on real weights: the stories260K llama2.c model converted to a
// Hugging Face folder must reproduce its reference greedy output exactly.
#include <gtest/gtest.h>

#include <fstream>
#include <numbers>

#include <nlohmann/json.hpp>

#include "scheduler/generate.h"
#include "engine/decoder_model.h"
#include "engine/rope.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/llama2c.h"
#include "loader/model_source.h"
#include "loader/safetensors.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kStories = std::filesystem::path(NIBBLE_SHARED_DIR) / "models/stories260K";

// Line 1 of greedy_bos_128.txt is a JSON list of the 128 greedy token ids.
std::vector<TokenId> reference_greedy_ids() {
  std::ifstream in(kStories / "greedy_bos_128.txt");
  if (!in) ADD_FAILURE() << "missing " << (kStories / "greedy_bos_128.txt") << ": is ../shared beside the checkout?";
  std::string line;
  std::getline(in, line);
  return nlohmann::json::parse(line).get<std::vector<TokenId>>();
}

class Stories260K : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    convert_llama2c(kStories / "stories260K.bin", kStories / "tok512.bin", dir_->path());
  }
  static void TearDownTestSuite() { delete dir_; }
  static testing::TempDir* dir_;
};
testing::TempDir* Stories260K::dir_ = nullptr;

TEST_F(Stories260K, GreedyFromBosReproducesTheReference128Tokens) {
  const auto expected = reference_greedy_ids();
  ASSERT_EQ(expected.size(), 128u);
  const ModelSource source = open_model(dir_->path());
  for (const int threads : {1, 2}) {
    kernels::CpuBackend backend(threads);
    DecoderModel model(source, backend);
    scheduler::SequenceRequest request;
    request.prompt = {1};
    request.sampling.temperature = 0;
    request.max_tokens = 128;
    const scheduler::GenerationResult result = scheduler::generate(model, request);
    EXPECT_EQ(result.tokens, expected) << "threads=" << threads;
    EXPECT_EQ(result.finish, scheduler::FinishReason::Length);
  }
}

TEST_F(Stories260K, ChunkedPrefillAndTokenByTokenGiveTheSameLogits) {
  const ModelSource source = open_model(dir_->path());
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  const auto ids = reference_greedy_ids();
  const std::vector<TokenId> prompt(ids.begin(), ids.begin() + 40);
  const auto vocab = static_cast<std::size_t>(model.vocab_size());

  SequenceCache whole_cache(model, 64);
  std::vector<float> all(prompt.size() * vocab);
  model.forward(prompt, 0, whole_cache, Logits::AllRows, all);

  SequenceCache step_cache(model, 64);
  std::vector<float> step(vocab);
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    model.forward(std::span(&prompt[i], 1), static_cast<std::int64_t>(i), step_cache, Logits::LastRow, step);
    const std::span<const float> row(all.data() + i * vocab, vocab);
    ASSERT_LT(testing::relative_error(step, row), 1e-5) << "position " << i;
  }
}

TEST_F(Stories260K, SeededSamplingIsReproducible) {
  const ModelSource source = open_model(dir_->path());
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  scheduler::SequenceRequest request;
  request.prompt = {1, 365};
  request.sampling.temperature = 0.9;
  request.sampling.top_p = 0.95;
  request.sampling.seed = 1234;
  request.max_tokens = 40;
  const auto first = scheduler::generate(model, request).tokens;
  EXPECT_EQ(scheduler::generate(model, request).tokens, first);
  request.sampling.seed = 99;
  EXPECT_NE(scheduler::generate(model, request).tokens, first);
}

TEST_F(Stories260K, LogprobsAreTheModelsAndLogitBiasSteersSampling) {
  const ModelSource source = open_model(dir_->path());
  kernels::CpuBackend backend(1);
  DecoderModel model(source, backend);
  const auto expected = reference_greedy_ids();
  scheduler::SequenceRequest request;
  request.prompt = {1};
  request.sampling.temperature = 0;
  request.max_tokens = 8;
  request.top_logprobs = static_cast<int>(model.vocab_size());  // the whole distribution

  std::vector<TokenStep> steps;
  const auto record = [&](const TokenStep& step) {
    steps.push_back(step);
    return true;
  };
  scheduler::generate(model, request, record);
  ASSERT_EQ(steps.size(), 8u);
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const auto& step = steps[i];
    EXPECT_EQ(step.token, expected[i]);
    ASSERT_EQ(step.top.size(), static_cast<std::size_t>(model.vocab_size()));
    EXPECT_EQ(step.top[0].first, step.token);  // greedy picks the most likely
    EXPECT_FLOAT_EQ(step.top[0].second, step.logprob);
    double total = 0;
    for (std::size_t j = 0; j < step.top.size(); ++j) {
      total += std::exp(static_cast<double>(step.top[j].second));
      if (j > 0) {
        EXPECT_LE(step.top[j].second, step.top[j - 1].second);
      }
    }
    EXPECT_NEAR(total, 1.0, 1e-4);
  }

  // A +100 bias forces a token the model finds unlikely; its reported
  // log-probability stays the model's own, below the best one.
  const TokenId forced = steps[0].top.back().first;
  request.logit_bias = {{forced, 100.0f}};
  request.top_logprobs = 2;
  steps.clear();
  scheduler::generate(model, request, record);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps[0].token, forced);
  EXPECT_LT(steps[0].logprob, steps[0].top[0].second);
  EXPECT_EQ(steps[0].top.size(), 2u);

  request.logit_bias = {{static_cast<TokenId>(model.vocab_size()), 1.0f}};
  testing::expect_error([&] { scheduler::generate(model, request); }, {"logit_bias", "outside the vocabulary"});
}

TEST_F(Stories260K, PromptLogprobsEqualThoseOfTheSameTokensGenerated) {
  // Feeding back the greedy tokens as a prompt (prefilled 64 rows at a time)
  // must score each exactly as when it was generated one step at a time.
  const ModelSource source = open_model(dir_->path());
  kernels::CpuBackend backend(1);
  DecoderModel model(source, backend);
  scheduler::SequenceRequest request;
  request.prompt = {1};
  request.sampling.temperature = 0;
  request.max_tokens = 100;
  request.top_logprobs = 3;
  std::vector<TokenStep> generated;
  scheduler::generate(model, request, [&](const TokenStep& step) {
    generated.push_back(step);
    return true;
  });
  ASSERT_EQ(generated.size(), 100u);

  scheduler::SequenceRequest replay;
  replay.prompt = {1};
  for (const auto& step : generated) replay.prompt.push_back(step.token);
  replay.max_tokens = 1;
  replay.prompt_logprobs = 3;
  std::vector<TokenStep> scored;
  const auto result = scheduler::generate(model, replay, {}, [&](const std::vector<TokenStep>& steps) { scored = steps; });
  ASSERT_EQ(scored.size(), generated.size()) << "every prompt token but the first";
  for (std::size_t i = 0; i < scored.size(); ++i) {
    EXPECT_EQ(scored[i].token, generated[i].token);
    EXPECT_NEAR(scored[i].logprob, generated[i].logprob, 1e-4) << "token " << i;
    ASSERT_EQ(scored[i].top.size(), 3u);
    EXPECT_EQ(scored[i].top[0].first, generated[i].top[0].first);
  }
  EXPECT_EQ(result.tokens.size(), 1u) << "generation goes on after the prompt";
}

TEST_F(Stories260K, StopTokensAndCancellationEndGeneration) {
  const ModelSource source = open_model(dir_->path());
  kernels::CpuBackend backend(1);
  DecoderModel model(source, backend);
  const auto expected = reference_greedy_ids();
  scheduler::SequenceRequest request;
  request.prompt = {1};
  request.sampling.temperature = 0;
  request.max_tokens = 128;
  request.stop_tokens = {expected[5]};
  const auto stopped = scheduler::generate(model, request);
  EXPECT_EQ(stopped.finish, scheduler::FinishReason::Stop);
  EXPECT_EQ(stopped.tokens, std::vector<TokenId>(expected.begin(), expected.begin() + 6));

  request.stop_tokens.clear();
  int seen = 0;
  const auto cancelled = scheduler::generate(model, request, [&](const TokenStep&) { return ++seen < 3; });
  EXPECT_EQ(cancelled.finish, scheduler::FinishReason::Cancelled);
  EXPECT_EQ(cancelled.tokens.size(), 3u);

  request.prompt.assign(600, 1);  // the model's context is 512
  testing::expect_error([&] { scheduler::generate(model, request); }, {"600 tokens", "context is 512"});
}

TEST_F(Stories260K, MalformedModelFoldersGiveClearErrors) {
  testing::TempDir broken;
  for (const auto& entry : std::filesystem::directory_iterator(dir_->path())) {
    std::filesystem::copy(entry.path(), broken / entry.path().filename().string());
  }
  const auto weights_path = broken / "model.safetensors";
  const std::string bytes = testing::read_file(dir_->path() / "model.safetensors");

  testing::write_file(weights_path, bytes.substr(0, bytes.size() - 1000));
  testing::expect_error([&] { open_model(broken.path()); }, {"model.safetensors", "truncated"});

  // Drop one tensor: the model must name it.
  {
    const SafetensorsFile original(dir_->path() / "model.safetensors");
    std::vector<TensorView> kept;
    for (const auto& tensor : original.tensors()) {
      if (tensor.name != "model.layers.2.mlp.up_proj.weight") kept.push_back(tensor);
    }
    write_safetensors(weights_path, kept);
  }
  const ModelSource missing = open_model(broken.path());
  kernels::CpuBackend backend(1);
  testing::expect_error([&] { DecoderModel model(missing, backend); }, {"model.layers.2.mlp.up_proj.weight", "missing"});

  auto config = nlohmann::json::parse(testing::read_file(dir_->path() / "config.json"));
  config["hidden_size"] = 80;
  testing::write_file(broken / "config.json", config.dump());
  testing::write_file(weights_path, bytes);
  const ModelSource wrong_shape = open_model(broken.path());
  testing::expect_error([&] { DecoderModel model(wrong_shape, backend); }, {"model.embed_tokens.weight", "shape"});
}

TEST(Rope, Llama3ScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  RopeScaling scaling;
  scaling.kind = RopeScaling::Kind::Llama3;
  scaling.factor = 8;
  scaling.low_freq_factor = 1;
  scaling.high_freq_factor = 4;
  scaling.original_max_position_embeddings = 8192;
  const auto plain = rope_inv_freq(128, 500000.0, {});
  const auto scaled = rope_inv_freq(128, 500000.0, scaling);
  ASSERT_EQ(plain.size(), 64u);
  EXPECT_FLOAT_EQ(plain[1], 1.0f / std::pow(500000.0f, 2.0f / 128.0f));
  int kept = 0, slowed = 0, blended = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    const double wavelength = 2 * std::numbers::pi / plain[i];
    if (wavelength < 8192.0 / 4) {
      EXPECT_EQ(scaled[i], plain[i]);
      ++kept;
    } else if (wavelength > 8192.0) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i] / 8);
      ++slowed;
    } else {
      EXPECT_LT(scaled[i], plain[i]);
      EXPECT_GT(scaled[i], plain[i] / 8);
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(slowed, 0);
  EXPECT_GT(blended, 0);
}

}  // namespace
}  // namespace nibble::engine
