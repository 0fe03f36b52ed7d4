// MoeBlock's grouped experts (one Backend::grouped_linear for every active
// expert's gate/up, one for their down projections) against the experts run one
// by one (set_grouped_experts(false)): the layer's output is bit for bit the
// same, for fp16, 4-bit GPTQ-style, GGUF Q4_K/Q5_0 experts and experts whose
// gate and up cannot be stacked, at 1, 3, 16 and 64 tokens (so some experts get
// no tokens), with and without a shared expert, on 1 and 3 threads; the tokens
// per expert (the load metrics) are the same either way.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "engine/blocks/moe.h"
#include "engine/paged_kv_cache.h"
#include "engine/weight_binder.h"
#include "kernels/cpu/cpu_backend.h"
#include "random_moe_weights.h"

namespace nibble::engine {
namespace {

using testing::ExpertFormat;

constexpr std::int64_t kTopK = 3;

ModelConfig moe_config(bool shared_expert) {
  ModelConfig config;
  config.architecture = shared_expert ? "Qwen2MoeForCausalLM" : "MixtralForCausalLM";
  config.model_type = shared_expert ? "qwen2_moe" : "mixtral";
  config.vocab_size = 32;
  config.hidden_size = 256;
  config.intermediate_size = 384;
  config.num_layers = 1;
  config.num_heads = 4;
  config.num_kv_heads = 4;
  config.head_dim = 64;
  config.moe.num_experts = 8;
  // Three per token: a row's sum of expert outputs then depends on the order they
  // are added in (with two, a + b == b + a), which must be the one-by-one order.
  config.moe.experts_per_token = kTopK;
  config.moe.expert_intermediate_size = 384;  // down's inputs: not a multiple of 256 (Q5_0 there)
  config.moe.norm_topk_prob = true;
  if (shared_expert) {
    config.moe.shared_expert_intermediate_size = 512;
    config.moe.shared_expert_gate = true;
  }
  config.validate();
  return config;
}

std::string format_name(ExpertFormat format) {
  switch (format) {
    case ExpertFormat::F16:
      return "f16";
    case ExpertFormat::Int4:
      return "int4 g128";
    case ExpertFormat::Q4K:
      return "q4_k";
    case ExpertFormat::Int4GateOnly:
      return "int4 gate, f16 up/down";
  }
  return "?";
}

TEST(MoeGroupedExperts, EqualTheExpertsOneByOneBitForBit) {
  for (const bool shared_expert : {false, true}) {
    const ModelConfig config = moe_config(shared_expert);
    const Architecture& arch = architecture_of(config.architecture);
    for (const ExpertFormat format :
         {ExpertFormat::F16, ExpertFormat::Int4, ExpertFormat::Q4K, ExpertFormat::Int4GateOnly}) {
      for (const int threads : {1, 3}) {
        const testing::RandomMoeWeights weights(config, format);
        kernels::CpuBackend backend(threads);
        WeightBinder binder(weights, config, backend, ModelOptions{});
        MoeBlock moe(binder, arch, config, 0);
        constexpr std::int64_t kMostRows = 64;
        Workspace ws(MoeBlock::widths(config, Workspace::Widths{config.hidden_size, config.q_dim(), config.kv_dim(),
                                                                 config.widest_ffn(), moe.stacked_width(),
                                                                 config.moe.num_experts}));
        ws.reserve(backend, kMostRows);
        PagedKvCache cache(backend, config, 1, 16);
        std::vector<std::int32_t> positions(kMostRows, 0);
        std::mt19937 rng(7);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        const LinearInputHook no_hook;
        for (const std::int64_t rows : {1, 3, 16, 64}) {
          const std::string what = fmt::format("{}{}, {} threads, {} tokens", format_name(format),
                                               shared_expert ? " + shared expert" : "", threads, rows);
          std::vector<float> input(static_cast<std::size_t>(rows * config.hidden_size));
          for (auto& x : input) x = normal(rng);
          const StepContext step{backend, cache, rows, std::span(positions).first(static_cast<std::size_t>(rows)), {},
                                 no_hook};
          const auto run = [&](bool grouped) {
            moe.set_grouped_experts(grouped);
            std::copy(input.begin(), input.end(), ws.h());
            moe.forward(step, ws, ws.h(), ws.h());  // in place, as the decoder runs it
            const auto counts = moe.last_tokens_per_expert();
            return std::pair(std::vector<float>(ws.h(), ws.h() + input.size()),
                             std::vector<std::int64_t>(counts.begin(), counts.end()));
          };
          const auto [one_by_one, counts_one_by_one] = run(false);
          const auto [grouped, counts_grouped] = run(true);
          ASSERT_EQ(grouped.size(), one_by_one.size());
          EXPECT_EQ(std::memcmp(grouped.data(), one_by_one.data(), grouped.size() * sizeof(float)), 0) << what;
          EXPECT_EQ(counts_grouped, counts_one_by_one) << what;
          EXPECT_EQ(std::accumulate(counts_grouped.begin(), counts_grouped.end(), std::int64_t{0}), kTopK * rows) << what;
          if (rows == 1) {
            EXPECT_GT(std::ranges::count(counts_grouped, 0), 0) << what << ": some experts should get no tokens";
          }
          // The output is the experts' work, not an untouched buffer.
          EXPECT_NE(std::memcmp(grouped.data(), input.data(), grouped.size() * sizeof(float)), 0) << what;
        }
        // Both paths counted into the totals: every routed row twice.
        const auto totals = moe.tokens_per_expert_total();
        EXPECT_EQ(std::accumulate(totals.begin(), totals.end(), std::int64_t{0}), 2 * kTopK * (1 + 3 + 16 + 64));
      }
    }
  }
}

}  // namespace
}  // namespace nibble::engine
