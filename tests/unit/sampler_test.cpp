#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "common/error.h"
#include "engine/sampler.h"
#include "engine/token_picker.h"

namespace nibble::engine {
namespace {

std::vector<float> example_logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 0.0f, 2.9f}; }

TEST(Sampler, GreedyPicksTheArgmaxAndTiesGoToTheFirst) {
  SamplingParams params;
  params.temperature = 0;
  Sampler sampler(params, {});
  auto logits = example_logits();
  EXPECT_EQ(sampler.sample(logits), 1);
  std::vector<float> tie{0.5f, 2.0f, 2.0f};
  EXPECT_EQ(argmax(tie), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const auto run = [](std::uint64_t seed) {
    SamplingParams params;
    params.temperature = 1.5;
    params.seed = seed;
    Sampler sampler(params, {});
    std::vector<TokenId> tokens;
    for (int i = 0; i < 64; ++i) {
      auto logits = example_logits();
      tokens.push_back(sampler.sample(logits));
    }
    return tokens;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  SamplingParams params;
  params.temperature = 0.7;
  params.seed = 3;
  Sampler sampler(params, {});
  const auto base = example_logits();
  std::vector<double> expected(base.size());
  double total = 0;
  for (std::size_t i = 0; i < base.size(); ++i) total += expected[i] = std::exp(base[i] / 0.7);
  std::map<TokenId, int> counts;
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) {
    auto logits = base;
    ++counts[sampler.sample(logits)];
  }
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double p = expected[i] / total;
    const double sigma = std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(counts[static_cast<TokenId>(i)] / static_cast<double>(draws), p, 5 * sigma + 1e-4) << "token " << i;
  }
}

TEST(Sampler, TopKTopPAndMinPRestrictTheCandidates) {
  const auto support = [](SamplingParams params) {
    params.seed = 11;
    Sampler sampler(params, {});
    std::map<TokenId, int> seen;
    for (int i = 0; i < 3000; ++i) {
      auto logits = example_logits();
      ++seen[sampler.sample(logits)];
    }
    std::vector<TokenId> ids;
    for (const auto& [id, count] : seen) ids.push_back(id);
    return ids;
  };
  SamplingParams top_k;
  top_k.top_k = 2;
  EXPECT_EQ(support(top_k), (std::vector<TokenId>{1, 5}));
  SamplingParams top_p;
  top_p.top_p = 0.5;  // p(1) ~ 0.37, p(5) ~ 0.33: the first two reach 0.5
  EXPECT_EQ(support(top_p), (std::vector<TokenId>{1, 5}));
  SamplingParams min_p;
  min_p.min_p = 0.5;  // keeps tokens with p >= 0.5 * p(1): ids 1, 5, 2
  EXPECT_EQ(support(min_p), (std::vector<TokenId>{1, 2, 5}));
}

TEST(Sampler, PenaltiesDiscourageRepeats) {
  SamplingParams params;
  params.temperature = 0;
  params.repetition_penalty = 2.0;  // 3.0 / 2 = 1.5 drops token 1 below 2.9 and 2.5
  Sampler with_prompt(params, std::vector<TokenId>{1});
  auto logits = example_logits();
  EXPECT_EQ(with_prompt.sample(logits), 5);

  SamplingParams presence;
  presence.temperature = 0;
  presence.presence_penalty = 1.0;
  Sampler sampler(presence, {});
  auto first = example_logits();
  EXPECT_EQ(sampler.sample(first), 1);
  auto second = example_logits();
  EXPECT_EQ(sampler.sample(second), 5);  // token 1 now scores 2.0
}

TEST(Sampler, RejectsOutOfRangeParameters) {
  SamplingParams params;
  params.top_p = 0;
  EXPECT_THROW(params.validate(), Error);
  params = {};
  params.temperature = -1;
  EXPECT_THROW(params.validate(), Error);
  params = {};
  params.frequency_penalty = 3;
  EXPECT_THROW(params.validate(), Error);
}

// A constraint that allows a fixed list of token sets, one per step, and records what it was given.
class ScriptedConstraint final : public TokenConstraint {
 public:
  explicit ScriptedConstraint(std::vector<std::vector<TokenId>> steps) : steps_(std::move(steps)) {}
  std::unique_ptr<ConstraintState> start() const override { return std::make_unique<State>(*this); }
  mutable std::vector<TokenId> accepted;

 private:
  class State final : public ConstraintState {
   public:
    explicit State(const ScriptedConstraint& owner) : owner_(owner) {}
    void allowed(TokenMask& mask) override {
      mask.reset(6);
      if (step_ < owner_.steps_.size()) {
        for (const TokenId id : owner_.steps_[step_]) mask.set(id);
      }
    }
    void accept(TokenId token) override {
      owner_.accepted.push_back(token);
      ++step_;
    }

   private:
    const ScriptedConstraint& owner_;
    std::size_t step_ = 0;
  };
  std::vector<std::vector<TokenId>> steps_;
};

TEST(TokenPicker, TheConstraintMasksBeforeBiasPenaltiesAndSamplingAndDeadEndsThrow) {
  const auto constraint = std::make_shared<ScriptedConstraint>(std::vector<std::vector<TokenId>>{{3, 4}, {0, 2}, {}});
  SamplerSetup setup;
  setup.sampling.temperature = 0;
  setup.logit_bias = {{4, 1.5f}};  // lifts token 4 (0.0) above token 3 (-1.0)
  setup.top_logprobs = 0;
  setup.constraint = constraint;
  TokenPicker picker(setup);
  auto logits = example_logits();
  const TokenStep first = picker.pick(logits);
  EXPECT_EQ(first.token, 4);  // best allowed after bias; 1 (3.0) is masked
  EXPECT_LT(first.logprob, -2.0f);  // log-probabilities stay the model's own, before the mask
  logits = example_logits();
  EXPECT_EQ(picker.pick(logits).token, 2);
  logits = example_logits();
  EXPECT_THROW(picker.pick(logits), ConstraintDeadEnd);
  EXPECT_EQ(constraint->accepted, (std::vector<TokenId>{4, 2}));

  // Sampling only ever draws allowed tokens.
  const auto only_five = std::make_shared<ScriptedConstraint>(std::vector<std::vector<TokenId>>(50, {0, 5}));
  setup.sampling.temperature = 1.5;
  setup.sampling.top_p = 0.9;
  setup.logit_bias.clear();
  setup.constraint = only_five;
  TokenPicker sampler(setup);
  for (int i = 0; i < 50; ++i) {
    logits = example_logits();
    const TokenId t = sampler.pick(logits).token;
    EXPECT_TRUE(t == 0 || t == 5) << t;
  }
}

}  // namespace
}  // namespace nibble::engine
