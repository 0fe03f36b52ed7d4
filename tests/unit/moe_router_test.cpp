// The routing decision of MoE layers (engine/blocks/moe_router.h) against values
// worked out by hand from each family's definition.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/error.h"
#include "engine/blocks/moe_router.h"

namespace nibble::engine {
namespace {

MoeConfig softmax_config(std::int64_t experts, std::int64_t k, bool normalize) {
  MoeConfig config;
  config.num_experts = experts;
  config.experts_per_token = k;
  config.norm_topk_prob = normalize;
  return config;
}

std::vector<double> softmax(const std::vector<float>& logits) {
  double sum = 0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l));
  std::vector<double> out;
  for (const float l : logits) out.push_back(std::exp(static_cast<double>(l)) / sum);
  return out;
}

TEST(MoeRouter, SoftmaxTopTwoRenormalizedAsMixtral) {
  const std::vector<float> logits{1.0f, 3.0f, 2.0f, 0.0f, /* row 2 */ -1.0f, 0.5f, 0.25f, 4.0f};
  const MoeRouter router(softmax_config(4, 2, true));
  std::vector<std::int32_t> experts(4);
  std::vector<float> weights(4);
  router.route(logits, 2, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{1, 2, 3, 1}));
  const auto p = softmax({1.0f, 3.0f, 2.0f, 0.0f});
  EXPECT_NEAR(weights[0], p[1] / (p[1] + p[2]), 1e-6);
  EXPECT_NEAR(weights[1], p[2] / (p[1] + p[2]), 1e-6);
  EXPECT_NEAR(weights[2] + weights[3], 1.0, 1e-6);
}

TEST(MoeRouter, SoftmaxTopKWithoutRenormalizingKeepsTheProbabilities) {
  const std::vector<float> logits{0.1f, -0.3f, 0.9f, 0.4f, 0.0f, -2.0f};
  const MoeRouter router(softmax_config(6, 3, false));
  std::vector<std::int32_t> experts(3);
  std::vector<float> weights(3);
  router.route(logits, 1, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{2, 3, 0}));
  const auto p = softmax(logits);
  EXPECT_NEAR(weights[0], p[2], 1e-6);
  EXPECT_NEAR(weights[1], p[3], 1e-6);
  EXPECT_NEAR(weights[2], p[0], 1e-6);
}

TEST(MoeRouter, TiesGoToTheLowerIndex) {
  const MoeRouter router(softmax_config(4, 2, true));
  std::vector<std::int32_t> experts(2);
  std::vector<float> weights(2);
  router.route(std::vector<float>{0.5f, 1.0f, 1.0f, 1.0f}, 1, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{1, 2}));
}

// DeepSeek-V3: sigmoid scores; the correction bias moves the choice but not the
// weights; 4 groups of 2 scored by their two best, only the best 2 groups eligible;
// weights renormalized, then scaled.
TEST(MoeRouter, SigmoidWithCorrectionBiasAndGroupLimitedTopK) {
  MoeConfig config = softmax_config(8, 2, true);
  config.scoring = MoeConfig::Scoring::Sigmoid;
  config.n_group = 4;
  config.topk_group = 2;
  config.routed_scaling_factor = 2.5;
  const std::vector<float> logits{2.0f, -1.0f, 0.5f, 1.0f, 3.0f, -2.0f, 0.0f, 0.2f};
  // The choice scores the bias makes: groups {0.9, 0.0} = 0.9, {0.55, 0.45} = 1.0,
  // {0.3, 0.3} = 0.6, {0.1, 0.1} = 0.2. Expert 4 has the best raw score but its
  // group loses; groups 1 and 0 remain, and their best are experts 0 and 2.
  const std::vector<float> choice{0.9f, 0.0f, 0.55f, 0.45f, 0.3f, 0.3f, 0.1f, 0.1f};
  std::vector<float> sigmoid, bias;
  for (std::size_t e = 0; e < logits.size(); ++e) {
    sigmoid.push_back(1.0f / (1.0f + std::exp(-logits[e])));
    bias.push_back(choice[e] - sigmoid.back());
  }
  const MoeRouter router(config, bias);
  std::vector<std::int32_t> experts(2);
  std::vector<float> weights(2);
  router.route(logits, 1, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{0, 2}));
  const double sum = static_cast<double>(sigmoid[0]) + sigmoid[2];
  EXPECT_NEAR(weights[0], 2.5 * sigmoid[0] / sum, 1e-6);
  EXPECT_NEAR(weights[1], 2.5 * sigmoid[2] / sum, 1e-6);
}

TEST(MoeRouter, ImpossibleSettingsAreErrors) {
  EXPECT_THROW(MoeRouter(softmax_config(4, 5, true)), Error);
  EXPECT_THROW(MoeRouter(softmax_config(4, 2, true), std::vector<float>(3)), Error);
}

}  // namespace
}  // namespace nibble::engine
