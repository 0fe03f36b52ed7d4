// The tensor-parallel split (loader/tensor_shard.h) and the slicing of
// quantized matrices in their stored form (common/quantized_matrix.h). The
// sharded model itself runs across ranks in tests/dist.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>

#include "common/error.h"
#include "common/half.h"
#include "common/quantized_matrix.h"
#include "loader/tensor_shard.h"
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

}  // namespace
}  // namespace nibble
