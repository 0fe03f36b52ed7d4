// engine/pipeline_stage.h: which layers each stage runs, and how a step is cut
// into micro-batches.
#include "engine/pipeline_stage.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <vector>

#include "common/error.h"

namespace nibble::engine {
namespace {

TEST(PipelineStage, StagesCoverEveryLayerOnceEarlierStagesTakingTheExtra) {
  for (const std::int64_t layers : {1, 2, 5, 30, 61}) {
    for (int stages = 1; stages <= std::min<std::int64_t>(layers, 8); ++stages) {
      std::int64_t next = 0, most = 0, fewest = layers;
      for (int s = 0; s < stages; ++s) {
        const PipelineStage stage = plan_pipeline_stage(layers, s, stages, 1);
        EXPECT_EQ(stage.first_layer, next) << layers << " layers, stage " << s << " of " << stages;
        EXPECT_GE(stage.layers(), 1);
        EXPECT_EQ(stage.first(), s == 0);
        EXPECT_EQ(stage.last(), s == stages - 1);
        // Non-increasing: stage 0 (whose rank sizes the KV cache) has the most.
        if (s > 0) {
          EXPECT_LE(stage.layers(), plan_pipeline_stage(layers, s - 1, stages, 1).layers());
        }
        most = std::max(most, stage.layers());
        fewest = std::min(fewest, stage.layers());
        next = stage.end_layer;
      }
      EXPECT_EQ(next, layers);
      EXPECT_LE(most - fewest, 1);
    }
  }
  const PipelineStage middle = plan_pipeline_stage(30, 1, 3, 3);
  EXPECT_EQ(middle.first_layer, 10);
  EXPECT_EQ(middle.end_layer, 20);
  EXPECT_EQ(middle.micro_batches, 3);
}

TEST(PipelineStage, ImpossibleSplitsAreRefused) {
  EXPECT_THROW(plan_pipeline_stage(5, 0, 6, 1), Error);  // more stages than layers
  EXPECT_THROW(plan_pipeline_stage(5, 2, 2, 1), Error);  // no such stage
  EXPECT_THROW(plan_pipeline_stage(5, -1, 2, 1), Error);
  EXPECT_THROW(plan_pipeline_stage(5, 0, 2, 0), Error);  // no micro-batch
}

// The runs are consecutive, non-empty, cover every sequence, number at most
// `parts`, and are about balanced when the sequences allow it.
TEST(PipelineStage, MicroBatchesCoverTheStepInBalancedRuns) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int64_t> length(1, 40);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<std::int64_t> rows(static_cast<std::size_t>(trial % 17));
    for (auto& r : rows) r = trial % 3 == 0 ? 1 : length(rng);  // decode-only steps too
    const int parts = 1 + trial % 5;
    const auto bounds = micro_batch_bounds(rows, parts);
    ASSERT_FALSE(bounds.empty());
    EXPECT_EQ(bounds.front(), 0u);
    EXPECT_EQ(bounds.back(), rows.size());
    const std::size_t runs = bounds.size() - 1;
    EXPECT_LE(runs, static_cast<std::size_t>(parts));
    EXPECT_EQ(runs, std::min(rows.size(), static_cast<std::size_t>(parts)))
        << "every run gets a sequence while sequences last";
    for (std::size_t i = 0; i + 1 < bounds.size(); ++i) EXPECT_LT(bounds[i], bounds[i + 1]);
  }
  // Equal sequences split evenly.
  const std::vector<std::int64_t> decode(16, 1);
  EXPECT_EQ(micro_batch_bounds(decode, 4), (std::vector<std::size_t>{0, 4, 8, 12, 16}));
  // One long prefill does not leave the other runs empty.
  const std::vector<std::int64_t> mixed{64, 1, 1, 1};
  EXPECT_EQ(micro_batch_bounds(mixed, 2), (std::vector<std::size_t>{0, 1, 4}));
  EXPECT_EQ(micro_batch_bounds(std::vector<std::int64_t>{}, 3), (std::vector<std::size_t>{0}));
}

// What DecoderModel binds on a stage, by tensor name: inspect and the planner count
// a stage's bytes with it.
TEST(PipelineStage, EachStageKeepsItsLayersAndTheEndsKeepTheTables) {
  const PipelineStage first = plan_pipeline_stage(5, 0, 2, 1);  // layers 0-2
  const PipelineStage last = plan_pipeline_stage(5, 1, 2, 1);   // layers 3-4
  EXPECT_TRUE(stage_keeps(first, "model.layers.2.mlp.experts.7.up_proj.weight", false));
  EXPECT_FALSE(stage_keeps(last, "model.layers.2.mlp.experts.7.up_proj.weight", false));
  EXPECT_TRUE(stage_keeps(last, "model.layers.3.self_attn.q_a_proj.weight_scale_inv", false));
  EXPECT_TRUE(stage_keeps(last, "blk.4.attn_q.weight", false));
  EXPECT_FALSE(stage_keeps(first, "model.layers.12.mlp.gate.weight", false)) << "layer 12, not 1 or 2";
  EXPECT_FALSE(stage_keeps(last, "model.layers.5.eh_proj.weight", false)) << "past the decoder (MTP)";
  EXPECT_TRUE(stage_keeps(first, "model.embed_tokens.weight", false));
  EXPECT_FALSE(stage_keeps(last, "model.embed_tokens.weight", false));
  EXPECT_TRUE(stage_keeps(last, "model.embed_tokens.weight", true)) << "a tied lm_head";
  EXPECT_TRUE(stage_keeps(last, "lm_head.weight", false));
  EXPECT_TRUE(stage_keeps(last, "model.norm.weight", false));
  EXPECT_FALSE(stage_keeps(first, "model.norm.weight", false));
}

}  // namespace
}  // namespace nibble::engine
