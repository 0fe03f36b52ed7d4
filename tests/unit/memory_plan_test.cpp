// The memory planner: model shapes against published parameter counts, KV bytes
// against hand computation, the known deployment facts (OPT-175B on 80 GB GPUs,
// DeepSeek-V3 on H100 vs H200), the 1.2 x rule with alternatives that themselves fit,
// and `nibble plan` end to end.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/model_stats.h"
#include "engine/paged_kv_cache.h"
#include "engine/split_weights.h"
#include "loader/listed_weights.h"
#include "loader/model_shape.h"
#include "loader/tensor_shard.h"
#include "loader/model_source.h"
#include "scheduler/byte_size.h"
#include "scheduler/memory_plan.h"
#include "test_util.h"

namespace nibble::scheduler {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;

constexpr double kGB = 1e9;
constexpr double kGiB = 0x1p30;

fs::path example(const std::string& name) { return fs::path(NIBBLE_SOURCE_DIR) / "examples" / "configs" / name; }
ModelShape example_shape(const std::string& name) { return read_model_shape(example(name)); }

json example_json(const std::string& name) { return json::parse(testing::read_file(example(name) / "config.json")); }

// Within `tolerance` (relative) of a published number.
void expect_near_published(double actual, double published, double tolerance) {
  EXPECT_NEAR(actual / published, 1.0, tolerance) << actual << " against published " << published;
}

PlanInputs on_gpus(double bytes_per_gpu, std::optional<std::int64_t> gpus, int bits = 16) {
  PlanInputs in;
  in.weights.bits = bits;
  GpuMemory gpu;
  gpu.bytes_per_gpu = static_cast<std::uint64_t>(bytes_per_gpu);
  gpu.gpus = gpus;
  in.memory = gpu;
  return in;
}

PlanInputs on_cpu(double budget_bytes) {
  PlanInputs in;
  in.memory = CpuMemory{static_cast<std::uint64_t>(budget_bytes)};
  return in;
}

void expect_every_alternative_fits(const ModelShape& shape, const MemoryPlan& refused) {
  for (const auto& alternative : refused.alternatives) {
    const MemoryPlan plan = plan_memory(shape, alternative.inputs);
    EXPECT_TRUE(plan.fits) << alternative.description << ": " << plan.refusal;
  }
}

// ---- Parameter counts against the published totals

TEST(ModelShape, Llama2_7bMatchesItsPublishedCountExactly) {
  const ModelShape shape = example_shape("llama-2-7b");
  EXPECT_EQ(shape.parameters.total(), 6'738'415'616);  // transformers' num_parameters()
  EXPECT_EQ(shape.parameters.embedding, 32000LL * 4096);
  EXPECT_EQ(shape.parameters.lm_head, 32000LL * 4096);
  EXPECT_EQ(shape.parameters.attention, 32LL * 4 * 4096 * 4096);
  EXPECT_EQ(shape.parameters.dense_mlp, 32LL * 3 * 4096 * 11008);
  EXPECT_EQ(shape.parameters.experts, 0);
}

TEST(ModelShape, Llama2_70bWithGroupedQueryAttention) {
  const ModelShape shape = example_shape("llama-2-70b");
  EXPECT_EQ(shape.parameters.total(), 68'976'648'192);
  expect_near_published(static_cast<double>(shape.parameters.total()), 69.0e9, 0.01);
  EXPECT_EQ(shape.num_kv_heads, 8);
}

TEST(ModelShape, Opt175bIsGpt3Sized) {
  const ModelShape shape = example_shape("opt-175b");
  expect_near_published(static_cast<double>(shape.parameters.total()), 175e9, 0.01);
  EXPECT_EQ(shape.parameters.lm_head, 0);  // tied to the token embedding
  // Token embedding plus learned positions with OPT's offset of 2.
  EXPECT_EQ(shape.parameters.embedding, 50272LL * 12288 + 2050LL * 12288);
  EXPECT_EQ(shape.parameters.dense_mlp, 96LL * 2 * 12288 * 49152);
}

TEST(ModelShape, Llama31_405b) {
  const ModelShape shape = example_shape("llama-3.1-405b");
  expect_near_published(static_cast<double>(shape.parameters.total()), 405e9, 0.01);
}

TEST(ModelShape, DeepSeekV3Is671bWithoutAndAbout685bWithTheMtpModule) {
  const ModelShape shape = example_shape("deepseek-v3");
  expect_near_published(static_cast<double>(shape.parameters.total()), 671e9, 0.01);
  expect_near_published(static_cast<double>(shape.parameters.total() + shape.mtp_parameters), 685e9, 0.01);
  expect_near_published(static_cast<double>(shape.mtp_parameters), 14e9, 0.05);
  // 58 MoE layers of 257 experts (256 routed + 1 shared) and 3 dense layers.
  EXPECT_EQ(shape.parameters.experts, 58LL * 257 * 3 * 7168 * 2048);
  EXPECT_EQ(shape.parameters.dense_mlp, 3LL * 3 * 7168 * 18432);
  EXPECT_EQ(shape.attention_kind, AttentionKind::LatentMla);
}

TEST(ModelShape, BundledSmolLm2FromItsGgufConfig) {
  const fs::path gguf = fs::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(fs::exists(gguf)) << "missing " << gguf << ": run scripts/get-model to install it";
  const ModelShape shape = model_shape_from_config(open_model(gguf).config);
  expect_near_published(static_cast<double>(shape.parameters.total()), 135e6, 0.01);
  EXPECT_EQ(shape.parameters.lm_head, 0);
  EXPECT_EQ(shape.kv_elements_per_token, 30 * 2 * 3 * 64);
}

TEST(ModelShape, Qwen2CountsItsQkvBiasAndTiedEmbeddingsHaveNoHead) {
  json config = example_json("llama-2-7b");
  config["architectures"] = {"Qwen2ForCausalLM"};
  config["tie_word_embeddings"] = true;
  const ModelShape qwen = model_shape_from_hf_config(config);
  const ModelShape llama = example_shape("llama-2-7b");
  EXPECT_EQ(qwen.parameters.norms_and_biases - llama.parameters.norms_and_biases, 32LL * 3 * 4096);
  EXPECT_EQ(qwen.parameters.lm_head, 0);
}

// ---- KV bytes per token against hand computation

TEST(MemoryPlan, KvBytesPerTokenByHand) {
  const auto kv = [](const std::string& name, int kv_bytes) {
    PlanInputs in = on_cpu(1e15);
    in.kv_bytes = kv_bytes;
    return plan_memory(example_shape(name), in).kv_bytes_per_token;
  };
  EXPECT_EQ(kv("llama-2-7b", 2), 32u * 2 * 32 * 128 * 2);  // 524288
  EXPECT_EQ(kv("llama-2-7b", 2), 524288u);
  EXPECT_EQ(kv("llama-2-70b", 2), 80u * 2 * 8 * 128 * 2);  // GQA: 8 KV heads, not 64
  EXPECT_EQ(kv("opt-175b", 2), 96u * 2 * 12288 * 2);
  EXPECT_EQ(kv("deepseek-v3", 2), 61u * (512 + 64) * 2);  // MLA latent + rope key
  EXPECT_EQ(kv("llama-2-7b", 1), 524288u / 2);             // 8-bit KV
  EXPECT_EQ(kv("llama-2-7b", 4), 524288u * 2);             // the CPU's float32 KV: fp16 halves it
}

TEST(MemoryPlan, KvNeededIsContextTimesConcurrency) {
  PlanInputs in = on_cpu(1e15);
  in.context = 4096;
  in.concurrency = 8;
  const MemoryPlan plan = plan_memory(example_shape("llama-2-7b"), in);
  EXPECT_EQ(plan.kv_bytes_needed, 4096ull * 8 * 524288);
}

TEST(MemoryPlan, DefaultContextIsTheModelsMaxPositions) {
  EXPECT_EQ(plan_memory(example_shape("llama-3.1-405b"), on_cpu(1e15)).context, 131072);
}

TEST(MemoryPlan, WorkspaceFollowsItsDocumentedEstimate) {
  const ModelShape shape = example_shape("llama-2-7b");
  PlanInputs in = on_gpus(80 * kGB, 1);
  in.context = 4096;
  const double widths = 4 * 4096 + (4096 + 2 * 4096) + 3 * 11008;
  EXPECT_EQ(plan_memory(shape, in).workspace_bytes, static_cast<std::uint64_t>(2048 * 2 * widths + 32000 * 8));
  in.context = 100;  // a step never holds more tokens than there are
  EXPECT_EQ(plan_memory(shape, in).workspace_bytes, static_cast<std::uint64_t>(100 * 2 * widths + 32000 * 8));
}

// ---- Weight formats

TEST(MemoryPlan, GroupScalesAndZerosAddBitsAWeight) {
  EXPECT_DOUBLE_EQ(bits_per_weight({16, 128, false}), 16);
  EXPECT_DOUBLE_EQ(bits_per_weight({4, 128, false}), 4.25);
  EXPECT_DOUBLE_EQ(bits_per_weight({3, 64, false}), 3.5);
  EXPECT_DOUBLE_EQ(bits_per_weight({8, 0, false}), 8);
}

TEST(MemoryPlan, EmbeddingsStay16BitUnlessAsked) {
  const ModelShape shape = example_shape("llama-2-7b");
  EXPECT_EQ(weight_bytes(shape, {16, 128, false}), 2u * 6'738'415'616);
  const auto linear = static_cast<double>(shape.parameters.attention + shape.parameters.dense_mlp);
  const auto embeddings = static_cast<double>(shape.parameters.embedding + shape.parameters.lm_head);
  const auto norms = static_cast<double>(shape.parameters.norms_and_biases);
  EXPECT_NEAR(static_cast<double>(weight_bytes(shape, {4, 128, false})),
              (linear * 4.25 + (embeddings + norms) * 16) / 8, 1);
  EXPECT_NEAR(static_cast<double>(weight_bytes(shape, {4, 128, true})),
              ((linear + embeddings) * 4.25 + norms * 16) / 8, 1);
}

// ---- Known deployment facts

TEST(MemoryPlan, Opt175bInFp16NeedsAtLeastFive80GbGpus) {
  const ModelShape shape = example_shape("opt-175b");
  for (const std::int64_t gpus : {4, 5}) {
    const MemoryPlan plan = plan_memory(shape, on_gpus(80 * kGB, gpus));
    EXPECT_FALSE(plan.fits) << gpus << " GPUs";
    expect_error([&] { check_fits(plan); }, {"does not fit", "1.2 x"});
  }
  const MemoryPlan picked = plan_memory(shape, on_gpus(80 * kGB, std::nullopt));
  ASSERT_TRUE(picked.fits) << picked.refusal;
  EXPECT_GE(picked.parallelism.gpus(), 5);
  EXPECT_EQ(96 % picked.parallelism.tensor, 0);  // whole heads on every rank
  EXPECT_EQ(picked.parallelism.pipeline, 1);     // within one node
  EXPECT_GE(picked.budget_to_weights, 1.2);
}

TEST(MemoryPlan, Opt175bInInt4FitsTwo80GbGpus) {
  PlanInputs in = on_gpus(80 * kGB, 2, 4);
  const MemoryPlan plan = plan_memory(example_shape("opt-175b"), in);
  EXPECT_TRUE(plan.fits) << plan.refusal;
  EXPECT_EQ(plan.parallelism.tensor, 2);
  EXPECT_NO_THROW(check_fits(plan));
  in.weights.bits = 16;
  EXPECT_FALSE(plan_memory(example_shape("opt-175b"), in).fits);
}

TEST(MemoryPlan, DeepSeekV3InFp8FitsEightH200ButNotEightH100) {
  const ModelShape shape = example_shape("deepseek-v3");
  for (const int group_size : {128, 0}) {  // INT8 g128, and FP8 with 128x128 block scales
    PlanInputs h200 = on_gpus(141 * kGB, 8, 8);
    h200.weights.group_size = group_size;
    const MemoryPlan fits = plan_memory(shape, h200);
    EXPECT_TRUE(fits.fits) << fits.refusal;
    // 256 routed experts: 8 expert groups of one GPU each, attention over all 8.
    EXPECT_EQ(fits.parallelism.expert, 8);
    EXPECT_EQ(fits.parallelism.tensor, 1);

    PlanInputs h100 = on_gpus(80 * kGB, 8, 8);
    h100.weights.group_size = group_size;
    const MemoryPlan refused = plan_memory(shape, h100);
    EXPECT_FALSE(refused.fits);
    EXPECT_FALSE(refused.alternatives.empty());
    expect_every_alternative_fits(shape, refused);
  }
  // Left to choose, it takes a second node of H100s: ep 8 x pp 2.
  const MemoryPlan picked = plan_memory(shape, on_gpus(80 * kGB, std::nullopt, 8));
  ASSERT_TRUE(picked.fits) << picked.refusal;
  EXPECT_EQ(picked.parallelism.group(), 8);
  EXPECT_EQ(picked.parallelism.expert, 8);
  EXPECT_EQ(picked.parallelism.pipeline, 2);
}

TEST(MemoryPlan, MlaLatentIsWholeOnEveryTensorParallelRankWhileGqaSplits) {
  const auto device_kv = [](const std::string& name, std::int64_t gpus) {
    PlanInputs in = on_gpus(1000 * kGB, gpus, 8);
    in.context = 100000;
    const MemoryPlan plan = plan_memory(example_shape(name), in);
    const double weights_per_gpu = static_cast<double>(plan.device_weight_bytes);
    const double kv_on_one_gpu = static_cast<double>(plan.device_bytes_needed) - weights_per_gpu -
                                 static_cast<double>(plan.workspace_bytes);
    return kv_on_one_gpu / (100000.0 * static_cast<double>(plan.kv_bytes_per_token));
  };
  EXPECT_NEAR(device_kv("deepseek-v3", 8), 1.0, 1e-6);
  EXPECT_NEAR(device_kv("llama-2-70b", 8), 1.0 / 8, 1e-6);
}

// What serve holds per tensor rank (loader/tensor_shard.h): the split parts' share
// plus the replicated ones whole. DeepSeek-V3's q_a_proj and kv_a_proj_with_mqa
// (61 x 7168 x (1536 + 576) = 0.92B parameters) are on every one of 8 ranks.
TEST(MemoryPlan, EachTensorRankHoldsTheReplicatedWeightsWhole) {
  const ModelShape shape = example_shape("deepseek-v3");
  EXPECT_EQ(shape.tp_replicated_parameters, 61LL * 7168 * (1536 + 576));
  const MemoryPlan plan = plan_memory(shape, on_gpus(141 * kGB, 8, 8));
  const auto total = static_cast<double>(shape.parameters.total());
  const double replicated =
      static_cast<double>(shape.tp_replicated_parameters + shape.parameters.norms_and_biases) / total;
  const auto weights = static_cast<double>(plan.weight_bytes);
  EXPECT_NEAR(static_cast<double>(plan.device_weight_bytes), weights * ((1 - replicated) / 8 + replicated), 1.0);
  EXPECT_GT(static_cast<double>(plan.device_weight_bytes), weights / 8 * 1.005);
  // A dense model's replicated part is its norms alone: close to an even split.
  const MemoryPlan llama = plan_memory(example_shape("llama-2-70b"), on_gpus(80 * kGB, 8, 8));
  EXPECT_LT(static_cast<double>(llama.device_weight_bytes), static_cast<double>(llama.weight_bytes) / 8 * 1.001);
}

TEST(MemoryPlan, GpuCountsSplitIntoTensorParallelThenPipeline) {
  const auto layout = [](const std::string& name, std::int64_t gpus) {
    return plan_memory(example_shape(name), on_gpus(1000 * kGB, gpus)).parallelism;
  };
  EXPECT_EQ(layout("llama-2-70b", 16).tensor, 8);
  EXPECT_EQ(layout("llama-2-70b", 16).pipeline, 2);
  EXPECT_EQ(layout("opt-175b", 6).tensor, 6);
  EXPECT_EQ(layout("llama-2-7b", 6).tensor, 2);  // 6 does not divide 32 heads
  EXPECT_EQ(layout("llama-2-7b", 6).pipeline, 3);
  expect_error([&] { layout("llama-2-7b", 8 * 33); }, {"32 layers"});
}

// The planner picks only splits serve takes: every MLP and expert width divides too.
TEST(MemoryPlan, TensorParallelSizesDivideTheMlpAndExpertWidthsAsServeRequires) {
  ModelShape shape = example_shape("llama-2-7b");
  EXPECT_EQ(shape.tp_split_widths, (std::vector<std::int64_t>{11008}));
  shape.tp_split_widths = {11008, 1410};  // 1410 = 2 x 705: only 2 of 8 divides both
  const Parallelism picked = plan_memory(shape, on_gpus(1000 * kGB, 8)).parallelism;
  EXPECT_EQ(picked.tensor, 2);
  EXPECT_EQ(picked.pipeline, 4);
  // DeepSeek-V3: the dense layers' 18432 and the shared expert's 2048 split over the
  // whole group; each routed expert's 2048 over its tensor ranks.
  const ModelShape v3 = example_shape("deepseek-v3");
  EXPECT_EQ(v3.tp_split_widths, (std::vector<std::int64_t>{18432, 2048}));
  EXPECT_EQ(v3.routed_experts, 256);
  EXPECT_EQ(v3.expert_width, 2048);
}

// The shard mapping's bytes per rank describe the checkpoint as stored: a --bits
// alternative is planned from the parameter groups at those bits instead.
TEST(MemoryPlan, ABitsAlternativeDoesNotReuseTheStoredCheckpointsBytesPerRank) {
  const ModelShape shape = example_shape("deepseek-v3");
  PlanInputs in = on_gpus(80 * kGB, 8, 8);
  in.context = 8192;
  in.measured_weight_bytes = 700 * kGB;
  int calls = 0;
  in.rank_weight_bytes = [&calls](const Parallelism& layout) {
    ++calls;
    return static_cast<std::uint64_t>(700 * kGB / static_cast<double>(layout.gpus()));
  };
  const MemoryPlan refused = plan_memory(shape, in);
  EXPECT_FALSE(refused.fits);
  EXPECT_GT(calls, 0);
  EXPECT_EQ(refused.device_weight_bytes, static_cast<std::uint64_t>(700 * kGB / 8));
  bool four_bits = false;
  for (const auto& alternative : refused.alternatives) {
    four_bits = four_bits || alternative.description.starts_with("with --bits 4");
    if (alternative.inputs.weights.bits != in.weights.bits) {
      EXPECT_FALSE(alternative.inputs.rank_weight_bytes);
    }
  }
  EXPECT_TRUE(four_bits) << "671B at 4.25 bits fits 8 x 80 GB";
}

// Expert groups as serve takes them (loader/tensor_shard.h): the routed experts
// divide by E, each expert's width by T; the most expert groups a group size allows.
TEST(MemoryPlan, ExpertParallelSizesDivideTheRoutedExpertsAsServeRequires) {
  ModelShape shape = example_shape("deepseek-v3");
  shape.routed_experts = 12;  // 8 does not divide 12: 4 expert groups of 2 tensor ranks
  const Parallelism picked = plan_memory(shape, on_gpus(1000 * kGB, 8)).parallelism;
  EXPECT_EQ(picked.expert, 4);
  EXPECT_EQ(picked.tensor, 2);
  shape.expert_width = 2047;  // and an odd expert width leaves no tensor split of it: ep 4 alone
  const Parallelism odd = plan_memory(shape, on_gpus(1000 * kGB, 8)).parallelism;
  EXPECT_EQ(odd.expert, 4);
  EXPECT_EQ(odd.tensor, 1);
  EXPECT_EQ(odd.pipeline, 2);
  // A dense model has no expert groups.
  EXPECT_EQ(plan_memory(example_shape("llama-2-70b"), on_gpus(1000 * kGB, 8)).parallelism.expert, 1);
}

// ---- The 1.2 x rule and the alternatives

TEST(MemoryPlan, BudgetBelow1_2TimesTheWeightsIsRefusedWithNumbersAndAnAlternativeThatFits) {
  const ModelShape shape = example_shape("llama-2-70b");  // 137.95 GB in fp16
  PlanInputs in = on_cpu(150 * kGB);
  in.context = 1024;
  const MemoryPlan plan = plan_memory(shape, in);
  EXPECT_FALSE(plan.fits);
  EXPECT_LT(plan.budget_to_weights, 1.2);
  const std::string message = expect_error([&] { check_fits(plan); },
                                           {"does not fit", format_bytes(static_cast<double>(plan.weight_bytes)),
                                            format_bytes(150 * kGB), "1.2 x", "with --bits 8"});
  ASSERT_FALSE(plan.alternatives.empty());
  expect_every_alternative_fits(shape, plan);
  // The weights alone would fit: the rule, not the arithmetic, refuses it.
  EXPECT_LT(static_cast<double>(plan.device_bytes_needed), 150 * kGB);
}

TEST(MemoryPlan, MaxContextAndConcurrencyAlternativesAreTight) {
  const ModelShape shape = example_shape("llama-2-7b");
  PlanInputs in = on_cpu(24 * kGiB);
  in.context = 4096;
  in.concurrency = 64;
  const MemoryPlan refused = plan_memory(shape, in);
  ASSERT_FALSE(refused.fits);
  ASSERT_GE(refused.budget_to_weights, 1.2);
  std::optional<std::int64_t> max_context;
  std::optional<std::int64_t> max_concurrency;
  for (const auto& alternative : refused.alternatives) {
    if (alternative.inputs.context != in.context) max_context = alternative.inputs.context;
    if (alternative.inputs.concurrency != in.concurrency) max_concurrency = alternative.inputs.concurrency;
  }
  ASSERT_TRUE(max_context && max_concurrency);
  expect_every_alternative_fits(shape, refused);
  PlanInputs longer = in;
  longer.context = *max_context + 1;
  EXPECT_FALSE(plan_memory(shape, longer).fits);
  PlanInputs more = in;
  more.concurrency = *max_concurrency + 1;
  EXPECT_FALSE(plan_memory(shape, more).fits);
  expect_error([&] { check_fits(refused); }, {"max context at 64 concurrent sequences", "--memory-budget"});
}

TEST(MemoryPlan, KvCapacityIsExactAndMonotoneInTheBudget) {
  const ModelShape shape = example_shape("llama-2-7b");
  std::int64_t previous = -1;
  for (double budget = 14 * kGB; budget <= 64 * kGB; budget += 2.5 * kGB) {
    const MemoryPlan plan = plan_memory(shape, on_cpu(budget));
    EXPECT_GT(plan.kv_token_capacity, previous) << budget;
    previous = plan.kv_token_capacity;
  }
  PlanInputs in = on_cpu(20 * kGB);
  in.context = plan_memory(shape, in).kv_token_capacity;
  EXPECT_TRUE(plan_memory(shape, in).fits);
  in.context = *in.context + 1;
  EXPECT_FALSE(plan_memory(shape, in).fits);
}

TEST(MemoryPlan, MeasuredCheckpointBytesReplaceTheEstimate) {
  PlanInputs in = on_cpu(1 * kGiB);
  in.measured_weight_bytes = 90'000'000;
  const ModelShape shape = model_shape_from_config(parse_hf_config(example_json("llama-2-7b")));
  const MemoryPlan plan = plan_memory(shape, in);
  EXPECT_EQ(plan.weight_bytes, 90'000'000u);
  EXPECT_NEAR(plan.bits_per_weight, 8.0 * 90e6 / 6'738'415'616.0, 1e-9);
}

TEST(MemoryPlan, InputsOutOfRangeAreErrors) {
  const ModelShape shape = example_shape("llama-2-7b");
  PlanInputs in = on_cpu(kGB);
  in.weights.bits = 5;
  expect_error([&] { plan_memory(shape, in); }, {"16, 8, 4, 3 or 2", "5"});
  expect_error([&] { plan_memory(shape, on_cpu(0)); }, {"memory budget must be positive"});
  PlanInputs gpu = on_gpus(80 * kGB, 1);
  std::get<GpuMemory>(gpu.memory).utilization = 1.5;
  expect_error([&] { plan_memory(shape, gpu); }, {"utilization", "1.5"});
  PlanInputs zero = on_cpu(kGB);
  zero.concurrency = 0;
  expect_error([&] { plan_memory(shape, zero); }, {"concurrency"});
}

// ---- Bad configs

TEST(ModelShape, UnknownArchitectureNamesItAndTheSupportedOnes) {
  json config = example_json("llama-2-7b");
  config["architectures"] = {"GPTNeoXForCausalLM"};
  expect_error([&] { model_shape_from_hf_config(config); },
               {"GPTNeoXForCausalLM", "LlamaForCausalLM", "OPTForCausalLM", "DeepseekV3ForCausalLM"});
  config.erase("architectures");
  config["model_type"] = "gpt_neox";
  expect_error([&] { model_shape_from_hf_config(config); }, {"gpt_neox"});
}

TEST(ModelShape, BadFieldsAreNamed) {
  json missing = example_json("opt-175b");
  missing.erase("ffn_dim");
  expect_error([&] { model_shape_from_hf_config(missing); }, {"OPTForCausalLM", "ffn_dim"});
  json wrong_type = example_json("deepseek-v3");
  wrong_type["kv_lora_rank"] = "512";
  expect_error([&] { model_shape_from_hf_config(wrong_type); }, {"kv_lora_rank", "integer"});
  json negative = example_json("llama-2-7b");
  negative["num_hidden_layers"] = -1;
  expect_error([&] { model_shape_from_hf_config(negative); }, {"num_hidden_layers", "-1"});
  json uneven = example_json("llama-2-70b");
  uneven["num_key_value_heads"] = 7;
  expect_error([&] { model_shape_from_hf_config(uneven); }, {"not a multiple"});
  expect_error([&] { model_shape_from_hf_config(json::array()); }, {"not a JSON object"});
}

TEST(ModelShape, ReadErrorsNameTheFile) {
  const testing::TempDir dir;
  expect_error([&] { read_model_shape(dir.path()); }, {"config.json"});
  testing::write_file(dir / "config.json", R"({"architectures": ["LlamaForCausalLM"]})");
  expect_error([&] { read_model_shape(dir.path()); }, {(dir / "config.json").string(), "missing required field"});
}

// ---- Sizes on the command line

TEST(ByteSize, DecimalAndBinaryUnits) {
  EXPECT_EQ(parse_byte_size("80GB"), 80'000'000'000u);
  EXPECT_EQ(parse_byte_size("80GiB"), 80ull << 30);
  EXPECT_EQ(parse_byte_size("24 gib"), 24ull << 30);
  EXPECT_EQ(parse_byte_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parse_byte_size("141GB"), 141'000'000'000u);
  EXPECT_EQ(parse_byte_size("4096"), 4096u);
  EXPECT_EQ(parse_byte_size("2TB"), 2'000'000'000'000u);
  for (const char* bad : {"", "GB", "-1GB", "80XB", "80G", "nan", "1e30TB", "80 GB extra"}) {
    expect_error([&] { parse_byte_size(bad); }, {std::string("'") + bad});
  }
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(80 * kGiB), "80.00 GiB");
}

// ---- nibble plan end to end

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run_nibble(const std::string& arguments) {
  const std::string command = std::string(NIBBLE_BINARY_DIR) + "/cli/nibble " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) ADD_FAILURE() << "cannot run " << command;
  std::string output;
  char buffer[4096];
  while (pipe != nullptr && std::fgets(buffer, sizeof buffer, pipe) != nullptr) output += buffer;
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(PlanCommand, JsonForAFittingPlan) {
  const CommandResult run =
      run_nibble("plan --config " + example("llama-2-7b").string() + " --gpu-memory 80GB --context 4096 --json");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const json plan = json::parse(run.output);
  EXPECT_EQ(plan["kv_bytes_per_token"], 524288);
  EXPECT_EQ(plan["weight_bytes"], 2 * 6'738'415'616LL);
  EXPECT_EQ(plan["gpus"], 1);
  EXPECT_TRUE(plan["fits"].get<bool>());
  EXPECT_EQ(plan["command"], "nibble serve -m CHECKPOINT --device cuda --max-model-len 4096 --max-num-seqs 1 "
                             "--kv-cache-dtype float16");
}

TEST(PlanCommand, PrintsTheServeCommandForTheSplitItRecommends) {
  const CommandResult gpus = run_nibble("plan --config " + example("llama-2-70b").string() +
                                        " --gpu-memory 80GB --context 4096 --concurrency 8 --json");
  ASSERT_EQ(gpus.exit_code, 0) << gpus.output;
  const json plan = json::parse(gpus.output);
  const auto tp = plan["tensor_parallel"].get<int>();
  ASSERT_GT(tp, 1);
  EXPECT_EQ(plan["command"], fmt::format("mpirun -np {} nibble serve -m CHECKPOINT --device cuda --tensor-parallel-size {} "
                                         "--max-model-len 4096 --max-num-seqs 8 --kv-cache-dtype float16",
                                         tp, tp));
  EXPECT_NE(plan["command_caveat"].get<std::string>().find("GPU ranks"), std::string::npos);
  const fs::path gguf = fs::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";
  const CommandResult cpu = run_nibble("plan --model " + gguf.string() + " --memory-budget 1GiB --context 2048 --kv-bits 8");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.output;
  EXPECT_NE(cpu.output.find("command        nibble serve -m " + gguf.string() +
                            " --memory-budget 1GiB --max-model-len 2048 --max-num-seqs 1 --kv-cache-dtype int8"),
            std::string::npos)
      << cpu.output;
}

TEST(PlanCommand, KvBitsCoverTheServersCpuCacheDtypes) {
  // nibble serve's --kv-cache-dtype float32 / float16 / int8 store 32 / 16 / 8 bits.
  const auto kv_bytes_per_token = [](int bits) {
    const CommandResult run = run_nibble("plan --config " + example("llama-2-7b").string() +
                                         " --memory-budget 1TB --context 4096 --json --kv-bits " + std::to_string(bits));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return run.exit_code == 0 ? json::parse(run.output)["kv_bytes_per_token"].get<std::int64_t>() : -1;
  };
  EXPECT_EQ(kv_bytes_per_token(32), 2 * 524288);
  EXPECT_EQ(kv_bytes_per_token(16), 524288);
  // Serve's int8 cache keeps a float scale per position, layer and key/value head
  // (engine::kv_bytes_per_token, which the planner asks for an engine architecture).
  EXPECT_EQ(kv_bytes_per_token(8), 524288 / 2 + 32 * 2 * 32 * 4);
  EXPECT_NE(run_nibble("plan --config " + example("llama-2-7b").string() + " --memory-budget 1TB --kv-bits 4").exit_code,
            0);
}

TEST(PlanCommand, RefusalExitsNonZeroWithTheAlternatives) {
  const CommandResult run = run_nibble("plan --config " + example("deepseek-v3").string() +
                             " --bits 8 --gpu-memory 80GB --gpus 8 --context 8192");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("result         does not fit"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("nibble: error: the model does not fit"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("with --bits 4"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("with --gpus 16"), std::string::npos) << run.output;
}

TEST(PlanCommand, BadSizeAndMissingMemoryAreClearErrors) {
  const std::string config = " --config " + example("llama-2-7b").string();
  CommandResult run = run_nibble("plan" + config + " --gpu-memory 80XB");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("unknown unit 'xb'"), std::string::npos) << run.output;
  run = run_nibble("plan" + config);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--gpu-memory SIZE"), std::string::npos) << run.output;
}

TEST(PlanCommand, RealGgufUsesItsStoredBytes) {
  const fs::path gguf = fs::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(fs::exists(gguf)) << "missing " << gguf;
  const CommandResult run = run_nibble("plan --model " + gguf.string() + " --memory-budget 1GiB --context 2048 --json");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const json plan = json::parse(run.output);
  EXPECT_TRUE(plan["weight_bytes_measured"].get<bool>());
  // Q4_1 stores 5 bits a weight; the 16-bit norms and f16 leftovers lift the average a little.
  EXPECT_GT(plan["bits_per_weight"].get<double>(), 4.9);
  EXPECT_LT(plan["bits_per_weight"].get<double>(), 8.0);
  EXPECT_LT(plan["weight_bytes"].get<double>(), static_cast<double>(fs::file_size(gguf)));
}

// The product of context, sequences and block size used to wrap around for absurd
// contexts (2^62 positions gave a 0-byte cache "that holds no more than one block").
TEST(DefaultKvBudget, IsTheSmallerOfEveryContextFilledAndTheWeightsAndNeverWraps) {
  constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
  // 4 sequences x 64 positions in blocks of 16 = 16 blocks of 1 KiB.
  EXPECT_EQ(default_kv_budget(1024, 16, 4, 64, 0), 16u * 1024);
  EXPECT_EQ(default_kv_budget(1024, 16, 4, 65, 0), 20u * 1024) << "a partial block counts whole";
  EXPECT_EQ(default_kv_budget(kMiB, 16, 32, 1 << 20, 0), 256 * kMiB) << "at least 256 MiB when there is room";
  EXPECT_EQ(default_kv_budget(kMiB, 16, 32, 1 << 20, 1024 * kMiB), 1024 * kMiB) << "as much as the weights";
  const std::int64_t huge = std::int64_t{1} << 62;
  for (const std::int64_t sequences : {std::int64_t{1}, std::int64_t{256}, huge}) {
    EXPECT_EQ(default_kv_budget(kMiB, 16, sequences, huge, 512 * kMiB), 512 * kMiB) << sequences;
  }
  EXPECT_EQ(default_kv_budget(std::numeric_limits<std::uint64_t>::max(), 1, huge, huge, 0), 256 * kMiB);
}

// Issue 18's layouts for DeepSeek-V3 (671B, FP8 128x128 blocks, 256 routed experts,
// MLA): on 8 x H200 (141 GB) and on 16 x H100 (80 GB, nodes of 8), `nibble plan`
// proposes an expert-parallel layout serve takes, and the weights it puts on each
// GPU are what serve's shard mapping gives the most loaded rank of that layout,
// over the tensors the FP8 checkpoint stores (listed from the config.json).
TEST(PlanCommand, DeepSeekV3ExpertParallelPlansAreTheLayoutsServeSplitsAndSizes) {
  const json config = example_json("deepseek-v3");
  const ModelConfig model = parse_hf_config(config);
  const auto open = [&] {
    ModelSource source;
    source.config = model;
    source.weights = listed_weights(model, {128});
    return source;
  };
  for (const auto& [memory, gpus] : {std::pair<std::string, int>{"141GB", 8}, {"80GB", 16}}) {
    const CommandResult run = run_nibble("plan --config " + example("deepseek-v3").string() + " --gpu-memory " +
                                         memory + " --gpus " + std::to_string(gpus) +
                                         " --gpus-per-node 8 --context 32768 --concurrency 8 --json");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const json plan = json::parse(run.output);
    EXPECT_TRUE(plan["fits"].get<bool>()) << plan["refusal"];
    const int tp = plan["tensor_parallel"], ep = plan["expert_parallel"], pp = plan["pipeline_parallel"];
    SCOPED_TRACE(fmt::format("{} GPUs: tp {} x ep {} x pp {}", gpus, tp, ep, pp));
    EXPECT_EQ(tp * ep * pp, gpus);
    EXPECT_EQ(tp * ep, 8) << "a stage's group within one node";
    EXPECT_GT(ep, 1) << "256 routed experts are dealt out";
    // Serve takes it: every rank's share plans without a refusal.
    for (int rank = 0; rank < tp * ep; ++rank) EXPECT_NO_THROW(plan_tensor_shard(model, rank, tp, ep));
    EXPECT_EQ(plan["device_weight_bytes_from"], "shard mapping");
    EXPECT_EQ(plan["device_weight_bytes"].get<std::uint64_t>(), engine::max_rank_weight_bytes(open, {tp, ep, pp}));
    EXPECT_EQ(plan["weight_bytes"].get<std::uint64_t>(), engine::compute_model_stats(open()).stored_bytes);
    // The latent cache, 576 values a token and layer, sized by serve's own function.
    EXPECT_EQ(plan["kv_values_per_token_per_layer"], 576);
    EXPECT_EQ(plan["kv_bytes_per_token"].get<std::uint64_t>(),
              engine::kv_bytes_per_token(model, engine::KvDtype::Float16));
    EXPECT_EQ(plan["kv_bytes_per_token"].get<std::uint64_t>(), 61u * 576 * 2);
    EXPECT_GT(plan["kv_token_capacity"].get<std::int64_t>(), 32768 * 8);
    std::string command = fmt::format("mpirun -np {} nibble serve -m CHECKPOINT --device cuda", gpus);
    if (tp > 1) command += fmt::format(" --tensor-parallel-size {}", tp);
    command += fmt::format(" --expert-parallel-size {}", ep);
    if (pp > 1) command += fmt::format(" --pipeline-parallel-size {}", pp);
    EXPECT_EQ(plan["command"].get<std::string>().substr(0, command.size()), command);
  }
}

}  // namespace
}  // namespace nibble::scheduler
