// Tensor and pipeline parallelism against the single-rank model, across real
// ranks: ctest runs this binary under `mpirun -np N`. Every rank loads the whole
// model (the reference) and its own share, runs both on the same batches, and
// compares: logits within 1e-5 relative (the ranks' partial sums are added in
// another order than one rank's dot products), greedy tokens identical, and the
// share's resident weights within total / N plus the replicated norms plus 5 %.
//
// NIBBLE_TP_MODEL picks the model: "stories" (stories260K: 8 query heads, 4
// key/value heads, MLP width 172, 5 layers; N = 2 or 4) or "smollm2" (the bundled
// SmolLM2-135M Q4_1 GGUF: 9 query heads, 3 key/value heads, width 1536, 30
// layers, its quantized codes sliced; N = 3) or "gptq_actorder" (GPTQModel's
// 4-bit act-order checkpoint of a tiny Llama in tests/quant/fixtures: each
// row-parallel share keeps its columns' g_idx; N = 2). Mixture-of-experts and
// latent attention, from the tiny_moe_models / tiny_deepseek_models fixtures
// (NIBBLE_TINY_MOE_DIR, NIBBLE_TINY_DEEPSEEK_DIR): "mixtral_moe" (4 experts of
// width 48, every layer sparse), "mixtral_moe_gguf" (the same model as llama.cpp
// writes it, its stacked ffn_gate_exps in Q8_0 blocks), "qwen2_moe_shared" (8
// experts of width 16 and a gated shared expert of width 24, q/k/v biases, one
// dense layer), "qwen2_moe_gptq" (GPTQ 4-bit group 32 experts and shared expert,
// sliced in stored form), "deepseek_v3" (MLA with a low-rank query, 4 heads,
// sigmoid group-limited routing, a shared expert) and "deepseek_v2" (MLA with a
// plain q_proj, softmax routing, two shared experts) and "deepseek_v3_fp8" (V3 in
// DeepSeek's FP8 format, 16x16 block scales); N = 2 or 4.
// NIBBLE_PP (default 1) splits the layers into that many pipeline stages, each
// on N / NIBBLE_PP tensor ranks (rank r: tensor rank r % T of stage r / T, as
// cli/parallel_group.h lays them out). Only stage 0 gets the logits back, so
// the comparisons run there; the other stages run the same steps.
// NIBBLE_EP (default 1) deals the routed experts out to that many expert groups
// (expert parallelism): a stage's N / NIBBLE_PP ranks are then NIBBLE_EP groups of
// tensor ranks, attention and the shared expert split over all of them, each
// routed expert held by one group only and split over its tensor ranks (rank g of
// a stage: tensor rank g % T of expert group g / T, as cli/parallel_group.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist/mpi_communicator.h"
#include "engine/decoder_model.h"
#include "engine/pipeline_stage.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"
#include "stories_model.h"

namespace nibble {
namespace {

using engine::BatchEntry;
using engine::DecoderModel;
using engine::Logits;
using engine::ModelOptions;

dist::Communicator& world() {
  static const auto communicator = dist::make_mpi_world();
  return *communicator;
}

int pipeline_size() {
  const char* pp = std::getenv("NIBBLE_PP");
  return pp != nullptr ? std::atoi(pp) : 1;
}
int expert_size() {
  const char* ep = std::getenv("NIBBLE_EP");
  return ep != nullptr ? std::atoi(ep) : 1;
}
// A stage's ranks: tensor_size() x expert_size() of them.
int group_size() { return world().size() / pipeline_size(); }
int tensor_size() { return group_size() / expert_size(); }
int stage() { return world().rank() / group_size(); }
// This rank's place in its stage's group (the shard layout's rank).
int group_rank() { return world().rank() % group_size(); }
// The ranks that get logits: the comparisons run there.
bool receives_logits() { return stage() == 0; }

std::string model_kind() {
  const char* kind = std::getenv("NIBBLE_TP_MODEL");
  return kind != nullptr ? kind : "stories";
}

// A fixture model under the directory `env` names (set by ctest).
std::filesystem::path fixture(const char* env, const std::string& name) {
  const char* dir = std::getenv(env);
  if (dir == nullptr) throw std::runtime_error(std::string(env) + " is not set");
  return std::filesystem::path(dir) / name;
}

ModelSource open_source(const testing::TempDir& dir) {
  const std::string kind = model_kind();
  if (kind == "mixtral_moe_gguf") return open_model(fixture("NIBBLE_TINY_MOE_DIR", "mixtral_moe") / "model.gguf");
  if (kind.find("_moe") != std::string::npos) return open_model(fixture("NIBBLE_TINY_MOE_DIR", kind));
  if (kind.starts_with("deepseek")) return open_model(fixture("NIBBLE_TINY_DEEPSEEK_DIR", kind));
  if (kind == "smollm2") {
    return open_model(std::filesystem::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf");
  }
  if (model_kind() == "gptq_actorder") {
    return open_model(std::filesystem::path(NIBBLE_SOURCE_DIR) / "tests/quant/fixtures/gptq_w4_g64_asym_actorder");
  }
  return testing::StoriesModel::convert_and_open(dir);
}

// The whole model and this rank's share, side by side on one rank.
struct Models {
  explicit Models(bool int8_activations = false)
      : full_source(open_source(dir)),
        // split() is collective: every rank makes both groups, in this order.
        tensor_group(world().split(stage(), group_rank())),
        pipeline_group(world().split(group_rank(), stage())),
        layout(plan_tensor_shard(full_source.config, group_rank(), tensor_size(), expert_size())),
        shard_source(group_size() > 1 ? shard_model_source(open_source(dir), layout) : open_source(dir)),
        backend(kernels::CpuBackendOptions{1, int8_activations}),
        full(full_source, backend),
        shard(shard_source, backend, options()) {}

  ModelOptions options() {
    ModelOptions o;
    if (group_size() > 1) {
      o.tensor_shard = layout;
      o.tensor_group = tensor_group.get();
    }
    if (pipeline_size() > 1) {
      o.pipeline_stage = engine::plan_pipeline_stage(full_source.config.num_layers, stage(), pipeline_size(),
                                                     pipeline_size());
      o.pipeline_group = pipeline_group.get();
    }
    return o;
  }

  testing::TempDir dir;
  ModelSource full_source;
  std::unique_ptr<dist::Communicator> tensor_group, pipeline_group;
  TensorShardLayout layout;
  ModelSource shard_source;
  kernels::CpuBackend backend;
  DecoderModel full;
  DecoderModel shard;
};

Models& models() {
  static Models m;
  return m;
}

// The same pair on int8-rounded activations (the CLI's default on VNNI CPUs).
Models& int8_models() {
  static Models m(true);
  return m;
}

std::vector<std::vector<TokenId>> prompts(std::int64_t vocab) {
  std::vector<std::vector<TokenId>> out;
  std::mt19937 rng(42);  // the same on every rank: the ranks must run the same batch
  for (const std::size_t length : {1u, 5u, 17u, 33u, 64u}) {
    std::vector<TokenId> tokens{1};
    std::uniform_int_distribution<TokenId> token(3, static_cast<TokenId>(vocab - 1));
    while (tokens.size() < length) tokens.push_back(token(rng));
    out.push_back(tokens);
  }
  return out;
}

// max |got - want| over max |want|, over the whole span; NaN never passes.
double relative_error(std::span<const float> got, std::span<const float> want) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
    scale = std::max(scale, static_cast<double>(std::abs(want[i])));
  }
  return diff / std::max(scale, 1e-30);
}

TokenId argmax(std::span<const float> row) {
  return static_cast<TokenId>(std::max_element(row.begin(), row.end()) - row.begin());
}

TEST(TensorParallel, TheShardIsTheLayoutOfThisRank) {
  Models& m = models();
  EXPECT_EQ(tensor_size() * expert_size() * pipeline_size(), world().size());
  EXPECT_EQ(m.shard.config().num_heads * group_size(), m.full.config().num_heads);
  EXPECT_EQ(m.shard.config().intermediate_size * group_size(), m.full.config().intermediate_size);
  EXPECT_EQ(m.shard.config().vocab_size, m.full.config().vocab_size) << "the sampler sees the whole vocabulary";
  const MoeConfig& moe = m.shard.config().moe;
  EXPECT_EQ(moe.num_experts, m.full.config().moe.num_experts) << "every rank routes over every expert";
  EXPECT_EQ(moe.expert_intermediate_size * tensor_size(), m.full.config().moe.expert_intermediate_size);
  EXPECT_EQ(moe.shared_expert_intermediate_size * group_size(), m.full.config().moe.shared_expert_intermediate_size);
  if (moe.enabled()) {
    // Every expert is held by exactly one expert group, by each of its tensor ranks.
    EXPECT_EQ(moe.held_experts() * expert_size(), moe.num_experts);
    std::vector<std::int32_t> holders(static_cast<std::size_t>(moe.num_experts), 0);
    for (std::int64_t e = 0; e < moe.num_experts; ++e) holders[static_cast<std::size_t>(e)] = moe.holds_expert(e) ? 1 : 0;
    m.tensor_group->all_reduce(holders.data(), static_cast<std::int64_t>(holders.size()), DType::I32,
                               dist::ReduceOp::Sum);
    for (std::int64_t e = 0; e < moe.num_experts; ++e) {
      EXPECT_EQ(holders[static_cast<std::size_t>(e)], tensor_size()) << "expert " << e;
    }
    // A rank does not even see another group's experts' tensors.
    for (const auto& info : m.shard_source.weights->list()) {
      const auto at = info.name.find(".experts.");
      if (at == std::string::npos) continue;
      const std::int64_t expert = std::atoll(info.name.c_str() + at + 9);
      EXPECT_TRUE(moe.holds_expert(expert)) << info.name << " is listed on rank " << world().rank();
    }
  }
  // The stages' layers add up to the model's, each stage holding at least one.
  std::int64_t layers = m.shard.config().num_layers;
  EXPECT_GE(layers, 1);
  m.pipeline_group->all_reduce(&layers, 1, DType::I64, dist::ReduceOp::Sum);
  EXPECT_EQ(layers, m.full.config().num_layers);
}

TEST(TensorParallel, PromptLogitsMatchTheSingleRankModel) {
  Models& m = models();
  const auto vocab = m.full.config().vocab_size;
  for (const auto& tokens : prompts(vocab)) {
    const auto n = static_cast<std::int64_t>(tokens.size());
    std::vector<float> want(static_cast<std::size_t>(n * vocab)), got(want.size());
    engine::SequenceCache full_cache(m.full, n + 8), shard_cache(m.shard, n + 8);
    m.full.forward(tokens, 0, full_cache, Logits::AllRows, want);
    m.shard.forward(tokens, 0, shard_cache, Logits::AllRows, got);
    if (receives_logits()) {
      EXPECT_LE(relative_error(got, want), 1e-5) << "prompt of " << n << " tokens on rank " << world().rank();
    }
  }
}

TEST(TensorParallel, SixtyFourGreedyTokensAreIdentical) {
  Models& m = models();
  const auto vocab = m.full.config().vocab_size;
  for (const auto& prompt : prompts(vocab)) {
    const auto n = static_cast<std::int64_t>(prompt.size());
    engine::SequenceCache full_cache(m.full, n + 64), shard_cache(m.shard, n + 64);
    std::vector<float> want(static_cast<std::size_t>(vocab)), got(want.size());
    m.full.forward(prompt, 0, full_cache, Logits::LastRow, want);
    m.shard.forward(prompt, 0, shard_cache, Logits::LastRow, got);
    std::vector<TokenId> want_tokens, got_tokens;
    double worst = 0;
    for (int step = 0; step < 64; ++step) {
      want_tokens.push_back(argmax(want));
      got_tokens.push_back(argmax(got));
      worst = std::max(worst, relative_error(got, want));
      // Both continue with the whole model's token, which every rank computes
      // (stages past the first get no logits to choose from).
      const TokenId next = want_tokens.back();
      m.full.forward(std::span(&next, 1), n + step, full_cache, Logits::LastRow, want);
      m.shard.forward(std::span(&next, 1), n + step, shard_cache, Logits::LastRow, got);
    }
    if (receives_logits()) {
      EXPECT_EQ(got_tokens, want_tokens) << "prompt of " << n << " tokens";
      EXPECT_LE(worst, 1e-5);
    }
  }
}

// With int8 activations the ranks' partial sums, added in another order, can move
// a value across an int8 rounding step of the next layer's input (and a row-parallel
// GPTQ act-order shard groups its inputs, so rounds them, in its own order), so a
// split is close to one rank rather than within float rounding. The bound: the
// split differs from one rank by no more than twice what int8 rounding itself moves
// the single-rank logits from float (measured, max |diff| / max |logit| over 5
// prompts: SmolLM2 Q4_1 TP 3 0.035 against 0.092, GPTQ act-order TP 2 0.027
// against 0.038, GPTQ Qwen2-MoE TP 2 0.0097 against 0.36; docs/parallel.md).
TEST(TensorParallel, Int8ActivationLogitsStayCloseToTheSingleRankModel) {
  if (!kernels::CpuBackend::int8_activations_supported()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  Models& m = int8_models();
  Models& floats = models();
  const auto vocab = m.full.config().vocab_size;
  double split = 0, rounding = 0;
  for (const auto& tokens : prompts(vocab)) {
    const auto n = static_cast<std::int64_t>(tokens.size());
    std::vector<float> want(static_cast<std::size_t>(n * vocab)), got(want.size()), exact(want.size());
    engine::SequenceCache full_cache(m.full, n + 8), shard_cache(m.shard, n + 8), float_cache(floats.full, n + 8);
    m.full.forward(tokens, 0, full_cache, Logits::AllRows, want);
    m.shard.forward(tokens, 0, shard_cache, Logits::AllRows, got);
    floats.full.forward(tokens, 0, float_cache, Logits::AllRows, exact);
    if (receives_logits()) {
      split = std::max(split, relative_error(got, want));
      rounding = std::max(rounding, relative_error(want, exact));
    }
  }
  if (receives_logits()) {
    std::printf("int8 activations: split vs one rank %.3g, one rank int8 vs float %.3g\n", split, rounding);
    EXPECT_LE(split, 2 * rounding + 1e-5);
  }
}

// Several sequences in one step, prefill and decode mixed, as the scheduler
// batches them: the same batch through both models.
TEST(TensorParallel, BatchedStepsMatchTheSingleRankModel) {
  Models& m = models();
  const auto vocab = m.full.config().vocab_size;
  const auto all = prompts(vocab);
  const std::int32_t block = 16, blocks = 64;
  auto full_cache = m.full.make_kv_cache(blocks, block);
  auto shard_cache = m.shard.make_kv_cache(blocks, block);
  std::vector<std::vector<std::int32_t>> tables;
  for (std::int32_t s = 0; s < 4; ++s) {
    tables.push_back({});
    for (std::int32_t b = 0; b < 6; ++b) tables.back().push_back(s * 6 + b);
  }
  // Step 1: prompts 1..4 (lengths 5, 17, 33, 64) prefilled together, last rows.
  std::vector<BatchEntry> batch;
  for (std::size_t s = 0; s < 4; ++s) batch.push_back({all[s + 1], 0, tables[s], s == 2 ? Logits::AllRows : Logits::LastRow});
  const std::int64_t rows = 1 + 1 + all[3].size() + 1;
  std::vector<float> want(static_cast<std::size_t>(rows * vocab)), got(want.size());
  m.full.forward_batch(batch, full_cache, want);
  m.shard.forward_batch(batch, shard_cache, got);
  if (receives_logits()) {
    EXPECT_LE(relative_error(got, want), 1e-5);
  }
  // Step 2: one decode token each.
  std::vector<std::vector<TokenId>> next(4);
  batch.clear();
  for (std::size_t s = 0; s < 4; ++s) {
    next[s] = {static_cast<TokenId>(7 + s)};
    batch.push_back({next[s], static_cast<std::int64_t>(all[s + 1].size()), tables[s], Logits::LastRow});
  }
  want.assign(static_cast<std::size_t>(4 * vocab), 0.0f);
  got.assign(want.size(), 1.0f);
  m.full.forward_batch(batch, full_cache, want);
  m.shard.forward_batch(batch, shard_cache, got);
  if (receives_logits()) {
    EXPECT_LE(relative_error(got, want), 1e-5);
  }
}

// Bytes of the tensors every tensor rank holds whole besides the norms: the
// routers (and DeepSeek-V3's correction bias), Qwen2-MoE's shared-expert gate and
// MLA's latent projections with their norms. Counted at float32 whatever they are
// stored as (the binder may widen them).
double replicated_beyond_norms(const WeightSource& weights) {
  double bytes = 0;
  for (const auto& info : weights.list()) {
    const std::string& n = info.name;
    const bool router = n.ends_with("mlp.gate.weight") || n.ends_with("block_sparse_moe.gate.weight") ||
                        n.find("ffn_gate_inp") != std::string::npos || n.find("e_score_correction_bias") != std::string::npos;
    const bool latent = n.find("q_a_") != std::string::npos || n.find("kv_a_") != std::string::npos;
    if (!router && !latent && n.find("shared_expert_gate") == std::string::npos) continue;
    double numel = 1;
    for (const auto d : info.shape) numel *= static_cast<double>(d);
    bytes += std::max(4 * numel, static_cast<double>(info.stored_bytes));
  }
  return bytes;
}

TEST(TensorParallel, EachRankHoldsItsShareOfTheWeights) {
  Models& m = models();
  const ModelConfig& c = m.full.config();
  // Replicated on every tensor rank: the norms (two per layer and the final one)
  // and the embedding's zero row, in float32, and the routers and latent projections.
  double replicated = static_cast<double>((2 * c.num_layers + 1) * c.hidden_size * 4 + c.hidden_size * 4) +
                      replicated_beyond_norms(*m.full_source.weights);
  // Fewer key/value heads than ranks (Qwen3-MoE's 2 over 2 x 2 ranks): each rank
  // keeps one whole head, 1 / num_kv_heads of k_proj and v_proj rather than 1 / N.
  if (c.num_kv_heads < group_size()) {
    for (const auto& info : m.full_source.weights->list()) {
      if (info.name.find("k_proj") == std::string::npos && info.name.find("v_proj") == std::string::npos) continue;
      replicated += static_cast<double>(info.stored_bytes) * (1.0 / c.num_kv_heads - 1.0 / group_size());
    }
  }
  const double total = static_cast<double>(m.full.weight_memory().total);
  // Under expert parallelism too: a rank holds num_experts / E experts at 1 / T of
  // their width, 1 / (T E) of the experts like every other split tensor.
  const double bound = total / group_size() + replicated + 0.05 * total / group_size();
  const auto held = static_cast<double>(m.shard.weight_memory().total);
  EXPECT_GT(held, 0.0);
  if (pipeline_size() == 1) {
    EXPECT_LE(held, bound) << "rank " << world().rank() << " holds " << held << " of " << total << " bytes";
    return;
  }
  // The stages of one tensor rank hold its share once, but for a tied embedding,
  // which the first stage looks up and the last runs as lm_head.
  double tied = 0;
  if (c.tie_word_embeddings) {
    for (const auto& info : m.full_source.weights->list()) {
      if (info.name.find("embed_tokens") != std::string::npos || info.name == "token_embd.weight") {
        tied = 1.1 * static_cast<double>(info.stored_bytes) / group_size();
      }
    }
  }
  double stages = held;
  m.pipeline_group->all_reduce(&stages, 1, DType::F64, dist::ReduceOp::Sum);
  EXPECT_LE(stages, bound + tied) << "the stages of group rank " << group_rank() << " hold " << stages;
  EXPECT_LE(held, 0.8 * total / group_size()) << "stage " << stage() << " holds layers of other stages";
}

}  // namespace
}  // namespace nibble
