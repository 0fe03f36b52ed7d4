// Mixture-of-experts models against transformers: tiny random Mixtral, Qwen2-MoE
// (shared expert, a dense layer), Qwen3-MoE (QK-norm; and its GGUF twin with
// 3-D expert tensors, one of them Q8_0) and a Qwen2-MoE quantized by GPTQModel
// (4-bit per-expert modules) made by
// tests/reference/make_tiny_moe_models.py, which CTest runs first
// (NIBBLE_TINY_MOE_DIR; nothing is committed). Logits within 1e-4 relative,
// 32 greedy tokens identical on 5 prompts, and a batched, paged, chunked run equal
// to each sequence run alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "engine/model_stats.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "scheduler/generate.h"
#include "greedy_runs.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

const std::filesystem::path kModels = NIBBLE_TINY_MOE_DIR;
constexpr double kBound = 1e-4;
constexpr std::size_t kGreedyTokens = 32;

struct Variant {
  std::string name;
  std::string file;    // what open_model() gets, relative to the variant's folder ("" : the folder)
  std::string prefix;  // of the reference files: "" or "gguf_"
};

std::string variant_name(const ::testing::TestParamInfo<Variant>& info) {
  return info.param.name + (info.param.prefix.empty() ? "" : "_gguf");
}

class MoeReference : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    dir_ = kModels / GetParam().name;
    ASSERT_TRUE(std::filesystem::exists(dir_ / "config.json")) << dir_ << " is missing: CTest's tiny_moe_models makes it";
    source_ = open_model(GetParam().file.empty() ? dir_ : dir_ / GetParam().file);
    model_ = std::make_unique<DecoderModel>(source_, backend_);
    reference_ = nlohmann::json::parse(testing::read_file(dir_ / (GetParam().prefix + "reference.json")));
  }
  std::filesystem::path reference_file(const std::string& name) const { return dir_ / (GetParam().prefix + name); }

  std::filesystem::path dir_;
  ModelSource source_;
  kernels::CpuBackend backend_{2};
  std::unique_ptr<DecoderModel> model_;
  nlohmann::json reference_;
};

TEST_P(MoeReference, ConfigIsAMixtureOfExperts) {
  const ModelConfig& config = model_->config();
  const auto hf = nlohmann::json::parse(testing::read_file(dir_ / "config.json"));
  EXPECT_EQ(config.moe.num_experts, hf.value("num_experts", hf.value("num_local_experts", 0)));
  EXPECT_EQ(config.moe.experts_per_token, 2);
  const auto dense = hf.value("mlp_only_layers", std::vector<std::int64_t>{});
  for (std::int64_t i = 0; i < config.num_layers; ++i) {
    EXPECT_EQ(config.moe.sparse_layer(i), std::ranges::find(dense, i) == dense.end()) << "layer " << i;
  }
  EXPECT_EQ(model_->last_tokens_per_expert().size(), static_cast<std::size_t>(config.num_layers) - dense.size());
}

TEST_P(MoeReference, LogitsAtEveryPositionMatchTransformers) {
  const auto tokens =
      nlohmann::json::parse(testing::read_file(dir_ / "tokens.json"))["tokens"].get<std::vector<TokenId>>();
  const auto expected = testing::read_f32_file(reference_file("logits.f32"));
  const auto vocab = static_cast<std::size_t>(model_->vocab_size());
  ASSERT_EQ(expected.size(), tokens.size() * vocab);
  SequenceCache cache(*model_, static_cast<std::int64_t>(tokens.size()));
  std::vector<float> logits(expected.size());
  model_->forward(tokens, 0, cache, Logits::AllRows, logits);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const std::span<const float> got(logits.data() + i * vocab, vocab), want(expected.data() + i * vocab, vocab);
    EXPECT_LE(testing::relative_error(got, want), kBound) << "position " << i;
  }
  // Each token ran k experts, and the 40 tokens spread over more than k of them
  // (the routers are not degenerate); experts no token chose are counted as 0.
  std::int64_t idle = 0;
  for (const auto counts : model_->last_tokens_per_expert()) {
    EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), std::int64_t{0}),
              static_cast<std::int64_t>(tokens.size()) * model_->config().moe.experts_per_token);
    EXPECT_GT(std::ranges::count_if(counts, [](std::int64_t count) { return count > 0; }),
              model_->config().moe.experts_per_token);
    idle += std::ranges::count(counts, 0);
  }
  RecordProperty("idle_experts", std::to_string(idle));
}

TEST_P(MoeReference, LastPositionLogitsMatchTransformersOnFivePrompts) {
  const auto expected = testing::read_f32_file(reference_file("last_logits.f32"));
  const auto vocab = static_cast<std::size_t>(model_->vocab_size());
  const auto& cases = reference_["cases"];
  ASSERT_EQ(cases.size(), 5u);
  ASSERT_EQ(expected.size(), cases.size() * vocab);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto ids = cases[i]["prompt_ids"].get<std::vector<TokenId>>();
    SequenceCache cache(*model_, static_cast<std::int64_t>(ids.size()));
    std::vector<float> logits(vocab);
    model_->forward(ids, 0, cache, Logits::LastRow, logits);
    const double error = testing::relative_error(logits, std::span(expected.data() + i * vocab, vocab));
    EXPECT_LE(error, kBound) << "prompt " << i;
    RecordProperty("relative_error_" + std::to_string(i), fmt::format("{:.2e}", error));
  }
}

// Compressed experts stay compressed: every module the file quantized (GPTQModel's
// per-expert modules, the shared expert, attention) runs packed, none expanded.
TEST_P(MoeReference, QuantizedExpertsRunPacked) {
  const auto record = nlohmann::json::parse(testing::read_file(dir_ / "tokens.json"));
  const auto& memory = model_->weight_memory();
  if (GetParam().name == "qwen2_moe_gptq") {
    EXPECT_EQ(memory.quantized_layers, record["quantized_modules"].get<std::int64_t>());
  } else if (!GetParam().prefix.empty()) {
    // The GGUF twins: one expert tensor is Q8_0, a packed matrix per expert and layer.
    EXPECT_EQ(memory.quantized_layers, model_->config().num_layers * model_->config().moe.num_experts);
  } else {
    EXPECT_EQ(memory.quantized_layers, 0);
  }
}

// `nibble inspect`'s counts: every expert's parameters in the total, only the k
// chosen ones in the parameters a token uses.
TEST_P(MoeReference, ActiveParametersLeaveOutTheExpertsATokenDoesNotChoose) {
  const auto hf = nlohmann::json::parse(testing::read_file(dir_ / "config.json"));
  const std::int64_t experts = hf.value("num_experts", hf.value("num_local_experts", 0));
  const std::int64_t width = hf.value("moe_intermediate_size", hf["intermediate_size"].get<std::int64_t>());
  const auto dense = hf.value("mlp_only_layers", std::vector<std::int64_t>{});
  const std::int64_t sparse_layers = hf["num_hidden_layers"].get<std::int64_t>() - static_cast<std::int64_t>(dense.size());
  const engine::ModelStats stats = engine::compute_model_stats(source_);
  std::int64_t stored = 0;
  for (const auto& tensor : source_.weights->list()) {
    std::int64_t numel = 1;
    for (const auto d : tensor.shape) numel *= d;
    stored += numel;
  }
  // GPTQ modules count as their logical matrices, not their packed tensors.
  if (GetParam().name != "qwen2_moe_gptq") {
    EXPECT_EQ(stats.parameters, stored);
  }
  EXPECT_EQ(stats.active_parameters,
            stats.parameters - sparse_layers * (experts - 2) * 3 * hf["hidden_size"].get<std::int64_t>() * width);
}

TEST_P(MoeReference, ThirtyTwoGreedyTokensAreTransformersOnFivePrompts) {
  for (const auto& reference_case : reference_["cases"]) {
    const auto expected = reference_case["greedy_ids"].get<std::vector<TokenId>>();
    ASSERT_EQ(expected.size(), kGreedyTokens);
    EXPECT_EQ(testing::greedy_alone(*model_, reference_case["prompt_ids"].get<std::vector<TokenId>>(), kGreedyTokens), expected)
        << "prompt " << reference_case["prompt_ids"].dump();
  }
}

// The five prompts together in shared steps over one paged pool (blocks handed
// out shuffled, prompts prefilled 3 tokens a step while others decode, joining at
// different steps): the experts then see rows of several sequences at once, and
// each sequence's greedy tokens must still be the ones it gets alone.
TEST_P(MoeReference, ABatchedPagedRunEqualsEachSequenceAlone) {
  std::vector<std::vector<TokenId>> prompts;
  for (const auto& reference_case : reference_["cases"]) {
    prompts.push_back(reference_case["prompt_ids"].get<std::vector<TokenId>>());
  }
  const auto batched = testing::greedy_batched_paged(*model_, prompts, kGreedyTokens);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(batched[i], testing::greedy_alone(*model_, prompts[i], kGreedyTokens))
        << "prompt of " << prompts[i].size();
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, MoeReference,
                         ::testing::Values(Variant{"mixtral_moe", "", ""}, Variant{"mixtral_moe", "model.gguf", "gguf_"},
                                           Variant{"qwen2_moe_shared", "", ""},
                                           Variant{"qwen3_moe_qknorm", "", ""},
                                           Variant{"qwen3_moe_qknorm", "model.gguf", "gguf_"},
                                           Variant{"qwen2_moe_gptq", "", ""}),
                         variant_name);

// Bad MoE input fails by name, never by a crash or a mis-read.
class MoeBadInput : public ::testing::Test {
 protected:
  // A copy of the Mixtral model with config.json edited by `edit`.
  std::filesystem::path copy_with(const std::function<void(nlohmann::json&)>& edit) {
    const auto from = kModels / "mixtral_moe";
    for (const auto& entry : std::filesystem::directory_iterator(from)) {
      std::filesystem::copy(entry.path(), dir_.path() / entry.path().filename());
    }
    auto config = nlohmann::json::parse(testing::read_file(from / "config.json"));
    edit(config);
    testing::write_file(dir_.path() / "config.json", config.dump());
    return dir_.path();
  }
  testing::TempDir dir_;
  kernels::CpuBackend backend_{1};
};

TEST_F(MoeBadInput, MoreExpertsPerTokenThanExpertsIsAnError) {
  const auto path = copy_with([](nlohmann::json& config) { config["num_experts_per_tok"] = 5; });
  testing::expect_error([&] { open_model(path); }, {"num_experts_per_tok", "4"});
}

TEST_F(MoeBadInput, AMissingExpertIsNamed) {
  const auto path = copy_with([](nlohmann::json&) {});
  // Renames one expert's tensor in the safetensors header (same length, so every
  // offset stays right): the file then lacks it.
  const std::string present = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
  std::string bytes = testing::read_file(path / "model.safetensors");
  const auto at = bytes.find(present);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, present.size(), "model.layers.1.block_sparse_moe.experts.3.w2.wXight");
  testing::write_file(path / "model.safetensors", bytes);
  const ModelSource source = open_model(path);
  testing::expect_error([&] { DecoderModel model(source, backend_); }, {"model.layers.1.block_sparse_moe.experts.3.w2"});
}

TEST_F(MoeBadInput, ARouterOfTheWrongWidthIsNamed) {
  const auto path = copy_with([](nlohmann::json& config) { config["num_local_experts"] = 5; });
  const ModelSource source = open_model(path);
  testing::expect_error([&] { DecoderModel model(source, backend_); },
                        {"model.layers.0.block_sparse_moe.gate.weight", "[4, 32]", "[5, 32]"});
}

TEST_F(MoeBadInput, AnExpertOfTheWrongShapeIsNamed) {
  const auto path = copy_with([](nlohmann::json& config) { config["intermediate_size"] = 40; });
  const ModelSource source = open_model(path);
  testing::expect_error([&] { DecoderModel model(source, backend_); }, {"experts.0.w1", "[48, 32]", "[40, 32]"});
}

}  // namespace
}  // namespace nibble::engine
