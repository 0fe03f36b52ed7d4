// The tensor-parallel split (loader/tensor_shard.h) and the slicing of
// quantized matrices in their stored form (common/quantized_matrix.h). The
// sharded model itself runs across ranks in tests/dist.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <array>
#include <functional>
#include <map>
#include <random>
#include <string>

#include "common/error.h"
#include "common/half.h"
#include "common/quantized_matrix.h"
#include "loader/tensor_shard.h"
#include "loader/weight_source.h"
#include "random_quantized.h"

namespace nibble {
namespace {

ModelConfig config(std::int64_t heads, std::int64_t kv_heads, std::int64_t intermediate, std::int64_t vocab) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.hidden_size = heads * 64;
  c.head_dim = 64;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.intermediate_size = intermediate;
  c.vocab_size = vocab;
  c.num_layers = 2;
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(TensorShardPlan, HeadsWidthAndVocabularySplitIntoContiguousShares) {
  const ModelConfig c = config(8, 4, 172, 512);
  for (int rank = 0; rank < 2; ++rank) {
    const auto l = plan_tensor_shard(c, rank, 2);
    EXPECT_EQ(l.q_heads, 4);
    EXPECT_EQ(l.first_q_head, 4 * rank);
    EXPECT_EQ(l.kv_heads, 2);
    EXPECT_EQ(l.first_kv_head, 2 * rank);
    EXPECT_EQ(l.intermediate, 86);
    EXPECT_EQ(l.first_intermediate, 86 * rank);
    EXPECT_EQ(l.vocab, 256);
    EXPECT_EQ(l.first_vocab, 256 * rank);
  }
  // An uneven vocabulary: ceil(10 / 4) = 3 rows each, the last rank the one left.
  const ModelConfig odd = config(4, 4, 8, 10);
  std::vector<std::int64_t> shares;
  for (int rank = 0; rank < 4; ++rank) shares.push_back(plan_tensor_shard(odd, rank, 4).vocab);
  EXPECT_EQ(shares, (std::vector<std::int64_t>{3, 3, 3, 1}));
  EXPECT_EQ(plan_tensor_shard(odd, 3, 4).first_vocab, 9);
}

TEST(TensorShardPlan, FewerKeyValueHeadsThanRanksAreReplicatedToTheRanksThatReadThem) {
  const ModelConfig c = config(8, 2, 64, 100);  // four query heads per key/value head
  std::vector<std::int64_t> kv_head_of_rank;
  for (int rank = 0; rank < 4; ++rank) {
    const auto l = plan_tensor_shard(c, rank, 4);
    EXPECT_EQ(l.q_heads, 2);
    EXPECT_EQ(l.kv_heads, 1);
    kv_head_of_rank.push_back(l.first_kv_head);
  }
  EXPECT_EQ(kv_head_of_rank, (std::vector<std::int64_t>{0, 0, 1, 1}));
}

TEST(TensorShardPlan, AnUnevenSplitIsRefusedWithTheRuleAndTheSizesThatWork) {
  const ModelConfig smollm2 = config(9, 3, 1536, 49152);  // SmolLM2-135M
  const std::string message = error_of([&] { plan_tensor_shard(smollm2, 0, 2); });
  EXPECT_NE(message.find("9 query heads do not divide by 2"), std::string::npos) << message;
  EXPECT_NE(message.find("sizes that work: 1, 3"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { plan_tensor_shard(config(8, 3, 64, 100), 0, 2); }).find("3 key/value heads"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan_tensor_shard(config(8, 8, 100, 100), 0, 8); }).find("intermediate_size 100"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan_tensor_shard(smollm2, 3, 3); }).find("outside"), std::string::npos);
  EXPECT_EQ(workable_tensor_parallel_sizes(config(32, 8, 11008, 32000)), "1, 2, 4, 8, 16");
}

// Every value of a slice equals the whole matrix's value at the same place.
void expect_slice_of(const QuantizedMatrix& slice, const QuantizedMatrix& whole, std::int64_t first_row,
                     std::int64_t first_col) {
  ASSERT_NO_THROW(slice.validate());
  for (std::int64_t n = 0; n < slice.rows; ++n) {
    std::vector<float> got(static_cast<std::size_t>(slice.cols)), want(static_cast<std::size_t>(whole.cols));
    slice.dequantize_row(n, got.data());
    whole.dequantize_row(first_row + n, want.data());
    for (std::int64_t k = 0; k < slice.cols; ++k) {
      ASSERT_FALSE(std::isnan(got[k]));
      ASSERT_EQ(got[k], want[first_col + k]) << "row " << n << " column " << k;
    }
  }
}

TEST(QuantizedSlices, RowsAndColumnsOfUnpackedMatricesKeepTheirValues) {
  std::mt19937 rng(7);
  for (const testing::QuantCase& c :
       {testing::QuantCase{48, 256, 4, 32}, testing::QuantCase{48, 256, 4, 64, /*act_order=*/true},
        testing::QuantCase{24, 128, 8, 128}, testing::QuantCase{16, 96, 3, 32},
        testing::QuantCase{32, 64, 4, 32, false, false, QuantizedMatrix::Offset::Min}}) {
    const QuantizedMatrix m = testing::random_quantized(rng, c);
    expect_slice_of(slice_rows(m, m.rows / 4, m.rows / 2), m, m.rows / 4, 0);
    const QuantizedMatrix cols = slice_cols(m, m.cols / 2, m.cols / 4);
    expect_slice_of(cols, m, 0, m.cols / 2);
    // Plain grouping keeps only the groups its columns use: its share of the scales.
    if (!c.act_order && m.groups > 1) {
      EXPECT_LT(cols.groups, m.groups) << testing::describe(c);
    }
    EXPECT_EQ(cols.stored_bytes, m.stored_bytes / 4);
  }
}

TEST(QuantizedSlices, BlockRowsAndBlockAlignedColumnsAreTheFilesBytes) {
  std::mt19937 rng(3);
  QuantizedMatrix m;
  m.name = "blk.0.ffn_down";
  m.rows = 6;
  m.cols = 768;
  m.block_format = BlockFormat::Q4_K;
  const auto& info = block_format_info(BlockFormat::Q4_K);
  m.blocks.resize(static_cast<std::size_t>(m.rows) * m.block_row_bytes());
  for (auto& b : m.blocks) b = static_cast<std::byte>(rng());
  // Finite super-block scales (d, dmin: the first two fp16 of each block).
  for (std::size_t at = 0; at < m.blocks.size(); at += static_cast<std::size_t>(info.bytes)) {
    for (int h = 0; h < 2; ++h) {
      const std::uint16_t scale = f32_to_f16(0.001f * static_cast<float>(1 + rng() % 50));
      std::memcpy(m.blocks.data() + at + 2 * h, &scale, 2);
    }
  }
  expect_slice_of(slice_rows(m, 2, 3), m, 2, 0);
  expect_slice_of(slice_cols(m, 256, 512), m, 0, 256);
  const std::string message = error_of([&] { slice_cols(m, 128, 256); });
  EXPECT_NE(message.find("Q4_K"), std::string::npos) << message;
  EXPECT_NE(message.find("256-weight"), std::string::npos) << message;
}

TEST(QuantizedSlices, TheZeroRowDecodesToZerosAndLeavesTheOthers) {
  std::mt19937 rng(5);
  for (const auto offset : {QuantizedMatrix::Offset::ZeroPoint, QuantizedMatrix::Offset::Min}) {
    const QuantizedMatrix m = testing::random_quantized(rng, {8, 64, 4, 32, false, false, offset});
    const QuantizedMatrix z = append_zero_row(m);
    ASSERT_EQ(z.rows, 9);
    expect_slice_of(slice_rows(z, 0, 8), m, 0, 0);
    for (std::int64_t k = 0; k < z.cols; ++k) EXPECT_EQ(z.value(8, k), 0.0f);
  }
  QuantizedMatrix blocks;
  blocks.name = "token_embd";
  blocks.rows = 1;
  blocks.cols = 256;
  for (const auto format : {BlockFormat::Q6_K, BlockFormat::IQ4_XS, BlockFormat::TQ2_0, BlockFormat::Q5_0}) {
    blocks.block_format = format;
    blocks.blocks.assign(blocks.block_row_bytes(), std::byte{0x11});
    const QuantizedMatrix z = append_zero_row(blocks);
    for (std::int64_t k = 0; k < z.cols; ++k) ASSERT_EQ(z.value(1, k), 0.0f) << block_format_info(format).name;
  }
}

// Mixtral-like: every layer sparse (its intermediate_size is the experts'), or
// Qwen2-MoE-like with a shared expert and a dense layer.
ModelConfig moe_config(std::int64_t expert_width, std::int64_t shared_width) {
  ModelConfig c = config(4, 2, 48, 128);
  c.architecture = shared_width > 0 ? "Qwen2MoeForCausalLM" : "MixtralForCausalLM";
  c.moe.num_experts = 4;
  c.moe.experts_per_token = 2;
  c.moe.expert_intermediate_size = expert_width;
  c.moe.shared_expert_intermediate_size = shared_width;
  return c;
}

// DeepSeek-V3-like latent attention (head_dim is q/k's width, num_kv_heads num_heads).
ModelConfig mla_config(std::int64_t heads) {
  ModelConfig c = config(heads, heads, 48, 128);
  c.architecture = "DeepseekV3ForCausalLM";
  c.mla = MlaConfig{24, 16, 16, 8, 12, true};
  c.head_dim = 24;
  return c;
}

TEST(TensorShardPlan, EveryExpertAndTheSharedExpertSplitLikeTheDenseMlp) {
  const ModelConfig c = moe_config(16, 24);
  for (int rank = 0; rank < 2; ++rank) {
    const auto l = plan_tensor_shard(c, rank, 2);
    EXPECT_EQ(l.expert_intermediate, 8);
    EXPECT_EQ(l.first_expert_intermediate, 8 * rank);
    EXPECT_EQ(l.shared_intermediate, 12);
    EXPECT_EQ(l.first_shared_intermediate, 12 * rank);
  }
  EXPECT_EQ(workable_tensor_parallel_sizes(c), "1, 2, 4");
  const std::string message = error_of([&] { plan_tensor_shard(moe_config(6, 0), 0, 4); });
  EXPECT_NE(message.find("moe_intermediate_size 6 does not divide by 4"), std::string::npos) << message;
  EXPECT_NE(message.find("sizes that work: 1, 2"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { plan_tensor_shard(moe_config(16, 10), 0, 4); }).find("shared expert's width 10"),
            std::string::npos);
  // Every layer sparse: the dense intermediate_size is not split and does not limit.
  ModelConfig mixtral = moe_config(16, 0);
  mixtral.intermediate_size = 6;
  EXPECT_EQ(plan_tensor_shard(mixtral, 1, 4).expert_intermediate, 4);
}

TEST(TensorShardPlan, ExpertParallelDealsOutContiguousExpertsEachSplitOverItsGroup) {
  const ModelConfig c = moe_config(16, 24);  // 4 experts, 4 query heads, 2 key/value heads
  // 2 tensor ranks x 2 expert groups: rank 3 is tensor rank 1 of expert group 1.
  const auto l = plan_tensor_shard(c, 3, 2, 2);
  EXPECT_EQ(l.size, 4);
  EXPECT_EQ(l.expert_rank, 1);
  EXPECT_EQ(l.first_expert, 2);
  EXPECT_EQ(l.experts, 2);
  EXPECT_EQ(l.expert_intermediate, 8);  // each held expert over the group's 2 tensor ranks
  EXPECT_EQ(l.first_expert_intermediate, 8);
  EXPECT_EQ(l.shared_intermediate, 6);  // the shared expert, like attention, over all 4 ranks
  EXPECT_EQ(l.first_shared_intermediate, 18);
  EXPECT_EQ(l.q_heads, 1);
  EXPECT_EQ(l.first_q_head, 3);
  const auto first = plan_tensor_shard(c, 0, 1, 4);
  EXPECT_EQ(first.experts, 1);
  EXPECT_EQ(first.expert_intermediate, 16) << "one rank per group: whole experts";
  EXPECT_EQ(workable_expert_parallel_sizes(c), "1, 2, 4");
  EXPECT_EQ(workable_expert_parallel_sizes(c, 2), "1, 2") << "2 x 4 ranks would split 4 query heads 8 ways";
}

TEST(TensorShardPlan, AnUnevenExpertSplitIsRefusedWithTheRuleAndTheSizesThatWork) {
  const ModelConfig c = moe_config(16, 24);
  std::string message = error_of([&] { plan_tensor_shard(c, 0, 1, 3); });
  EXPECT_NE(message.find("expert-parallel size 3 cannot split this model: 4 routed experts do not divide by 3"),
            std::string::npos) << message;
  EXPECT_NE(message.find("sizes that work: 1, 2, 4"), std::string::npos) << message;
  message = error_of([&] { plan_tensor_shard(c, 0, 2, 4); });
  EXPECT_NE(message.find("tensor-parallel size 2 x expert-parallel size 4 cannot split this model: 4 query heads do "
                         "not divide by 8"), std::string::npos) << message;
  EXPECT_NE(message.find("expert-parallel sizes that work with tensor-parallel size 2: 1, 2"), std::string::npos)
      << message;
  message = error_of([&] { plan_tensor_shard(config(4, 2, 48, 128), 0, 1, 2); });
  EXPECT_NE(message.find("needs a mixture-of-experts model"), std::string::npos) << message;
}

TEST(TensorShardPlan, LatentAttentionSplitsItsHeadsAndRefusesUnevenOnes) {
  const auto l = plan_tensor_shard(mla_config(4), 1, 2);
  EXPECT_EQ(l.q_heads, 2);
  EXPECT_EQ(l.first_q_head, 2);
  const std::string message = error_of([&] { plan_tensor_shard(mla_config(4), 0, 3); });
  EXPECT_NE(message.find("4 query heads do not divide by 3"), std::string::npos) << message;
  EXPECT_NE(message.find("sizes that work: 1, 2, 4"), std::string::npos) << message;
}

// Float32 tensors [rows, cols] whose value at (r, c) is 1000 r + c, and quantized
// modules as given: what a sharded source reads of them is checked by position.
class FakeWeights final : public WeightSource {
 public:
  std::map<std::string, std::array<std::int64_t, 2>> plain;
  std::map<std::string, QuantizedMatrix> quantized;

  std::vector<StoredTensorInfo> list() const override {
    std::vector<StoredTensorInfo> infos;
    for (const auto& [name, shape] : plain) {
      infos.push_back({name, "F32", {shape[0], shape[1]}, static_cast<std::uint64_t>(shape[0] * shape[1] * 4)});
    }
    return infos;
  }
  bool contains(const std::string& name) const override { return plain.contains(name); }
  bool has_quantized(const std::string& module) const override { return quantized.contains(module); }
  std::uint64_t file_bytes() const override { return 0; }
  TensorView load(const std::string& name) const override {
    const auto [rows, cols] = plain.at(name);
    std::vector<float> values(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) values[static_cast<std::size_t>(r * cols + c)] = static_cast<float>(1000 * r + c);
    }
    std::vector<std::byte> bytes(values.size() * sizeof(float));
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return make_owned_tensor(name, DType::F32, {rows, cols}, std::move(bytes));
  }
  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    const auto it = quantized.find(module);
    if (it == quantized.end()) return std::nullopt;
    return it->second;
  }
};

float at(const TensorView& t, std::int64_t r, std::int64_t c) {
  float v = 0;
  std::memcpy(&v, t.bytes.data() + static_cast<std::size_t>(r * t.shape[1] + c) * sizeof(float), sizeof(float));
  return v;
}

ModelSource fake_source(const ModelConfig& c, std::unique_ptr<FakeWeights> weights) {
  ModelSource source;
  source.config = c;
  source.weights = std::move(weights);
  return source;
}

TEST(TensorShardSource, ExpertsSplitTheirWidthAndTheRouterStaysWhole) {
  const ModelConfig c = moe_config(16, 24);
  auto weights = std::make_unique<FakeWeights>();
  const std::string mlp = "model.layers.0.mlp.";
  weights->plain = {{mlp + "gate.weight", {4, 256}},
                    {mlp + "experts.3.up_proj.weight", {16, 256}},
                    {mlp + "experts.3.down_proj.weight", {256, 16}},
                    {mlp + "shared_expert.gate_proj.weight", {24, 256}},
                    {mlp + "shared_expert.down_proj.weight", {256, 24}},
                    {mlp + "shared_expert_gate.weight", {1, 256}}};
  const ModelSource shard = shard_model_source(fake_source(c, std::move(weights)), plan_tensor_shard(c, 1, 2));
  EXPECT_EQ(shard.config.moe.expert_intermediate_size, 8);
  EXPECT_EQ(shard.config.moe.shared_expert_intermediate_size, 12);
  EXPECT_EQ(shard.config.moe.num_experts, 4);
  const TensorView router = shard.weights->load(mlp + "gate.weight");
  EXPECT_EQ(router.shape, (std::vector<std::int64_t>{4, 256})) << "every rank routes alike";
  EXPECT_EQ(shard.weights->load(mlp + "shared_expert_gate.weight").shape, (std::vector<std::int64_t>{1, 256}));
  const TensorView up = shard.weights->load(mlp + "experts.3.up_proj.weight");
  EXPECT_EQ(up.shape, (std::vector<std::int64_t>{8, 256}));
  EXPECT_EQ(at(up, 0, 5), 8000.0f + 5);  // rank 1: rows 8..15
  const TensorView down = shard.weights->load(mlp + "experts.3.down_proj.weight");
  EXPECT_EQ(down.shape, (std::vector<std::int64_t>{256, 8}));
  EXPECT_EQ(at(down, 2, 0), 2008.0f);  // input columns 8..15
  const TensorView shared_down = shard.weights->load(mlp + "shared_expert.down_proj.weight");
  EXPECT_EQ(shared_down.shape, (std::vector<std::int64_t>{256, 12}));
  EXPECT_EQ(at(shared_down, 0, 0), 12.0f);
  EXPECT_EQ(shard.weights->load(mlp + "shared_expert.gate_proj.weight").shape, (std::vector<std::int64_t>{12, 256}));
}

TEST(TensorShardSource, AnExpertParallelRankSeesOnlyItsGroupsExperts) {
  const ModelConfig c = moe_config(16, 24);
  auto weights = std::make_unique<FakeWeights>();
  const std::string mlp = "model.layers.0.mlp.";
  weights->plain = {{mlp + "gate.weight", {4, 256}}, {mlp + "shared_expert.up_proj.weight", {24, 256}}};
  for (int e = 0; e < 4; ++e) weights->plain[fmt::format("{}experts.{}.up_proj.weight", mlp, e)] = {16, 256};
  // Tensor rank 0 of expert group 1 of 2 x 2: experts 2 and 3, rows 0..7 of each.
  const ModelSource shard = shard_model_source(fake_source(c, std::move(weights)), plan_tensor_shard(c, 2, 2, 2));
  EXPECT_EQ(shard.config.moe.num_experts, 4) << "the router scores every expert";
  EXPECT_EQ(shard.config.moe.first_held_expert(), 2);
  EXPECT_EQ(shard.config.moe.held_experts(), 2);
  std::vector<std::string> listed;
  std::uint64_t bytes = 0;
  for (const auto& info : shard.weights->list()) {
    listed.push_back(info.name);
    bytes += info.stored_bytes;
  }
  EXPECT_EQ(listed, (std::vector<std::string>{mlp + "experts.2.up_proj.weight", mlp + "experts.3.up_proj.weight",
                                              mlp + "gate.weight", mlp + "shared_expert.up_proj.weight"}));
  // Two experts at half their rows, the router whole, a quarter of the shared expert.
  EXPECT_EQ(bytes, (2u * 8 * 256 + 4 * 256 + 6 * 256) * 4);
  EXPECT_FALSE(shard.weights->contains(mlp + "experts.1.up_proj.weight"));
  EXPECT_TRUE(shard.weights->contains(mlp + "experts.3.up_proj.weight"));
  const TensorView up = shard.weights->load(mlp + "experts.3.up_proj.weight");
  EXPECT_EQ(up.shape, (std::vector<std::int64_t>{8, 256}));
  EXPECT_EQ(at(up, 1, 0), 1000.0f);
  const std::string message = error_of([&] { shard.weights->load(mlp + "experts.0.up_proj.weight"); });
  EXPECT_NE(message.find("expert 0 belongs to another expert-parallel group; rank 2 holds experts 2..3"),
            std::string::npos) << message;
}

TEST(TensorShardSource, LatentAttentionSplitsHeadsAndKeepsTheLatentWhole) {
  const ModelConfig c = mla_config(4);  // q/k head 24 (16 nope + 8 rope), v head 12
  auto weights = std::make_unique<FakeWeights>();
  const std::string attn = "model.layers.0.self_attn.";
  weights->plain = {{attn + "q_a_proj.weight", {24, 256}},
                    {attn + "q_b_proj.weight", {4 * 24, 24}},
                    {attn + "kv_a_proj_with_mqa.weight", {24, 256}},
                    {attn + "kv_b_proj.weight", {4 * (16 + 12), 16}},
                    {attn + "o_proj.weight", {256, 4 * 12}}};
  const ModelSource shard = shard_model_source(fake_source(c, std::move(weights)), plan_tensor_shard(c, 1, 2));
  EXPECT_EQ(shard.config.num_heads, 2);
  EXPECT_EQ(shard.config.mla->latent_width(), 24) << "the cache keeps the whole latent";
  EXPECT_EQ(shard.weights->load(attn + "q_a_proj.weight").shape, (std::vector<std::int64_t>{24, 256}));
  EXPECT_EQ(shard.weights->load(attn + "kv_a_proj_with_mqa.weight").shape, (std::vector<std::int64_t>{24, 256}));
  const TensorView q_b = shard.weights->load(attn + "q_b_proj.weight");
  EXPECT_EQ(q_b.shape, (std::vector<std::int64_t>{48, 24}));
  EXPECT_EQ(at(q_b, 0, 0), 48000.0f);  // heads 2 and 3
  const TensorView kv_b = shard.weights->load(attn + "kv_b_proj.weight");
  EXPECT_EQ(kv_b.shape, (std::vector<std::int64_t>{56, 16}));
  EXPECT_EQ(at(kv_b, 0, 0), 56000.0f);  // head 2's W_UK rows first
  const TensorView o = shard.weights->load(attn + "o_proj.weight");
  EXPECT_EQ(o.shape, (std::vector<std::int64_t>{256, 24}));
  EXPECT_EQ(at(o, 1, 0), 1024.0f);  // input columns of heads 2 and 3: v heads of 12
}

TEST(TensorShardSource, QuantizedExpertsSliceStoredAndAMisalignedBlockSplitIsRefusedByFormat) {
  ModelConfig c = moe_config(64, 0);
  c.hidden_size = 32;
  std::mt19937 rng(11);
  auto weights = std::make_unique<FakeWeights>();
  const std::string expert = "model.layers.0.block_sparse_moe.experts.2.";
  QuantizedMatrix down;  // [hidden 32, width 64] in Q5_0's 32-weight blocks
  down.name = expert + "w2";
  down.rows = 32;
  down.cols = 64;
  down.block_format = BlockFormat::Q5_0;
  down.blocks.resize(static_cast<std::size_t>(down.rows) * down.block_row_bytes());
  for (auto& b : down.blocks) b = static_cast<std::byte>(rng() % 100);  // small finite fp16 scales
  weights->quantized = {{expert + "w1", testing::random_quantized(rng, {64, 32, 4, 32})}, {expert + "w2", down}};
  const QuantizedMatrix whole_gate = weights->quantized.at(expert + "w1");
  const QuantizedMatrix whole_down = down;
  auto two = std::make_unique<FakeWeights>(*weights);
  // Two ranks: 32 columns each, whole blocks; the gate's rows are its stored rows.
  const ModelSource half = shard_model_source(fake_source(c, std::move(two)), plan_tensor_shard(c, 1, 2));
  expect_slice_of(*half.weights->load_quantized(expert + "w1"), whole_gate, 32, 0);
  expect_slice_of(*half.weights->load_quantized(expert + "w2"), whole_down, 0, 32);
  // Four ranks: 16 columns each would cut Q5_0 blocks: refused on every rank, by format.
  for (int rank = 0; rank < 4; ++rank) {
    auto four = std::make_unique<FakeWeights>(*weights);
    const ModelSource quarter = shard_model_source(fake_source(c, std::move(four)), plan_tensor_shard(c, rank, 4));
    const std::string message = error_of([&] { (void)quarter.weights->load_quantized(expert + "w2"); });
    EXPECT_NE(message.find("Q5_0"), std::string::npos) << "rank " << rank << ": " << message;
    EXPECT_NE(message.find(expert + "w2"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace nibble
