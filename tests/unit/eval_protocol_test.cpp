// `nibble eval`'s llama-perplexity protocol (EvalProtocol::Chunks) on the real
// stories260K model: which windows run, which targets are scored, that every
// chunk starts with BOS when asked, and that perplexity, its ± and the
// KL-divergence statistics equal a plain computation over the same chunks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "quant/compressor.h"
#include "quant/evaluate.h"
#include "stories_model.h"

namespace nibble::quant {
namespace {

using testing::StoriesModel;
using testing::TempDir;

EvalOptions chunks(std::int64_t n_ctx, std::optional<std::int32_t> bos = {}) {
  EvalOptions options;
  options.protocol = EvalProtocol::Chunks;
  options.window = n_ctx;
  options.chunk_bos = bos;
  return options;
}

std::vector<std::int32_t> story_tokens(const StoriesModel& stories, std::size_t count) {
  // Several sentences so chunks differ; no BOS anywhere in the stream.
  const auto ids = stories.tokenizer->encode(
      "Once upon a time there was a little girl named Lily. She loved to play in the park with her dog. "
      "One day a big red ball rolled into the pond and the dog jumped after it. Tom laughed and ran home. ",
      false);
  std::vector<std::int32_t> out;
  while (out.size() < count) out.insert(out.end(), ids.begin(), ids.end());
  out.resize(count);
  return out;
}

TEST(EvalProtocol, ChunksAreNonOverlappingFullWindowsScoredInTheirSecondHalf) {
  // llama-perplexity: n_chunk = tokens / n_ctx (the tail is dropped); targets
  // first+1 .. n_ctx-1 of each chunk with first = n_ctx/2, i.e. 255 of 512.
  const auto windows = plan_windows(1100, chunks(512, 1));
  ASSERT_EQ(windows.size(), 2u);
  EXPECT_EQ(windows[0], (EvalWindow{.begin = 0, .end = 512, .first_target = 257, .first_token = 1}));
  EXPECT_EQ(windows[1], (EvalWindow{.begin = 512, .end = 1024, .first_target = 769, .first_token = 1}));
  EXPECT_EQ(windows[1].end - windows[1].first_target, 255);

  // Odd n_ctx: first = 4, targets 5..8.
  const auto odd = plan_windows(27, chunks(9));
  ASSERT_EQ(odd.size(), 3u);
  EXPECT_EQ(odd[2], (EvalWindow{.begin = 18, .end = 27, .first_target = 23, .first_token = {}}));

  auto capped = chunks(512);
  capped.max_chunks = 1;
  EXPECT_EQ(plan_windows(5000, capped).size(), 1u);
  testing::expect_error([] { plan_windows(511, chunks(512)); }, {"511", "fewer than one chunk"});
  testing::expect_error([] { plan_windows(100, chunks(3)); }, {"at least 4"});
}

TEST(EvalProtocol, SlidingWindowsStillScoreEveryTokenButTheFirstOnce) {
  EvalOptions sliding;
  sliding.window = 32;
  sliding.stride = 8;
  std::vector<int> scored(80, 0);
  for (const auto& w : plan_windows(80, sliding)) {
    EXPECT_LE(w.end - w.begin, 32);
    EXPECT_FALSE(w.first_token.has_value());
    for (auto t = w.first_target; t < w.end; ++t) ++scored[static_cast<std::size_t>(t)];
  }
  EXPECT_EQ(scored[0], 0);
  EXPECT_TRUE(std::all_of(scored.begin() + 1, scored.end(), [](int n) { return n == 1; }));
}

// Per scored token of the chunks protocol, computed the plain way: one forward
// per chunk from an empty cache with BOS in front, float64 log-softmax.
struct Plain {
  std::vector<double> nll;
  std::vector<std::vector<double>> logp;  // full rows, for KL
};
Plain plain_chunks(engine::Model& model, const std::vector<std::int32_t>& tokens, std::int64_t n_ctx,
                   std::optional<std::int32_t> bos) {
  Plain out;
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  for (std::size_t begin = 0; begin + static_cast<std::size_t>(n_ctx) <= tokens.size();
       begin += static_cast<std::size_t>(n_ctx)) {
    std::vector<std::int32_t> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(begin),
                                    tokens.begin() + static_cast<std::ptrdiff_t>(begin) + n_ctx);
    if (bos) chunk[0] = *bos;
    engine::SequenceCache cache(model, n_ctx);
    std::vector<float> logits(chunk.size() * vocab);
    model.forward(chunk, 0, cache, engine::Logits::AllRows, logits);
    for (auto i = static_cast<std::size_t>(n_ctx / 2); i + 1 < chunk.size(); ++i) {
      const float* row = logits.data() + i * vocab;
      double max = row[0], sum = 0;
      for (std::size_t v = 0; v < vocab; ++v) max = std::max(max, static_cast<double>(row[v]));
      for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
      std::vector<double> logp(vocab);
      for (std::size_t v = 0; v < vocab; ++v) logp[v] = row[v] - max - std::log(sum);
      out.nll.push_back(-logp[static_cast<std::size_t>(tokens[begin + i + 1])]);  // the stream's token
      out.logp.push_back(std::move(logp));
    }
  }
  return out;
}

TEST(EvalProtocol, ChunkPerplexityAndItsErrorEqualAPlainComputationWithBos) {
  StoriesModel stories;
  const auto tokens = story_tokens(stories, 210);  // 3 chunks of 64, 18 tokens dropped
  const std::int32_t bos = *stories.tokenizer->bos_id();
  const auto expected = plain_chunks(stories.model, tokens, 64, bos);
  ASSERT_EQ(expected.nll.size(), 3u * 31u);
  double sum = 0, sum2 = 0;
  for (const double v : expected.nll) {
    sum += v;
    sum2 += v * v;
  }
  const double n = static_cast<double>(expected.nll.size());
  const double ppl = std::exp(sum / n);
  const double error = ppl * std::sqrt((sum2 / n - (sum / n) * (sum / n)) / (n - 1));

  const auto result = evaluate(stories.model, nullptr, tokens, chunks(64, bos));
  EXPECT_EQ(result.windows, 3);
  EXPECT_EQ(result.tokens_scored, 93);
  EXPECT_NEAR(result.perplexity / ppl, 1.0, 1e-9);
  EXPECT_NEAR(result.perplexity_uncertainty / error, 1.0, 1e-6);
  EXPECT_GT(result.perplexity_uncertainty, 0.0);

  // BOS in front changes what the model sees: the chunk start is not the stream's
  // token, so leaving it out must give another perplexity (and the plain one).
  const auto without = evaluate(stories.model, nullptr, tokens, chunks(64));
  const auto plain_without = plain_chunks(stories.model, tokens, 64, std::nullopt);
  double sum_without = 0;
  for (const double v : plain_without.nll) sum_without += v;
  EXPECT_NEAR(without.perplexity / std::exp(sum_without / n), 1.0, 1e-9);
  EXPECT_GT(std::abs(without.perplexity / result.perplexity - 1.0), 1e-6);
}

TEST(EvalProtocol, DivergenceStatisticsEqualAPlainComputationAgainstARoundedModel) {
  StoriesModel stories;
  TempDir out;
  kernels::CpuBackend backend(1);
  {
    CheckpointSettings settings;
    settings.format = CheckpointFormat::CompressedTensors;
    settings.method = "rtn";
    settings.bits = 4;
    settings.group_size = 32;
    CompressionOptions options;
    options.quantize = QuantMethod::Rtn;
    options.spec = QuantSpec{.bits = 4, .group_size = 32, .sym = true, .min_zero = 0};
    CheckpointWriter writer(stories.source, out / "rtn", settings);
    compress_model(stories.source, options, {}, backend, writer);
    writer.finish();
  }
  const ModelSource rounded_source = open_model(out / "rtn");
  engine::DecoderModel rounded(rounded_source, backend);
  const auto tokens = story_tokens(stories, 256);
  const std::int32_t bos = *stories.tokenizer->bos_id();

  const auto q = plain_chunks(rounded, tokens, 64, bos);
  const auto b = plain_chunks(stories.model, tokens, 64, bos);
  std::vector<double> kls;
  double agree = 0, p_diff = 0, p_diff2 = 0, nll = 0, base_nll = 0;
  for (std::size_t t = 0; t < q.nll.size(); ++t) {
    double kl = 0;
    for (std::size_t v = 0; v < q.logp[t].size(); ++v) kl += std::exp(b.logp[t][v]) * (b.logp[t][v] - q.logp[t][v]);
    kls.push_back(std::max(kl, 0.0));  // as evaluate() clamps rounding noise
    const auto top = [](const std::vector<double>& row) { return std::max_element(row.begin(), row.end()) - row.begin(); };
    agree += top(q.logp[t]) == top(b.logp[t]) ? 1 : 0;
    const double d = std::exp(-q.nll[t]) - std::exp(-b.nll[t]);
    p_diff += d;
    p_diff2 += d * d;
    nll += q.nll[t];
    base_nll += b.nll[t];
  }
  const double n = static_cast<double>(kls.size());
  std::sort(kls.begin(), kls.end());
  double mean_kl = 0;
  for (const double kl : kls) mean_kl += kl / n;

  const auto result = evaluate(rounded, &stories.model, tokens, chunks(64, bos));
  ASSERT_EQ(result.tokens_scored, 4 * 31);
  ASSERT_EQ(kls.size(), 124u);
  EXPECT_GT(mean_kl, 1e-4);  // rounding to 4 bits must show
  EXPECT_NEAR(*result.mean_kl / mean_kl, 1.0, 1e-6);
  const auto& p = *result.kl_percentiles;
  EXPECT_NEAR(p.min, kls.front(), 1e-12);
  EXPECT_NEAR(p.max, kls.back(), 1e-12);
  EXPECT_NEAR(p.median, 0.5 * (kls[61] + kls[62]), 1e-12);  // even count: mean of the middle two
  // 0.99 * 123 = 121.77: 23 % of the way from the 122nd to the 123rd smallest.
  EXPECT_NEAR(p.p99, 0.23 * kls[121] + 0.77 * kls[122], 1e-9);
  EXPECT_NEAR(*result.top1_agreement, agree / n, 1e-12);
  EXPECT_NEAR(*result.mean_delta_p, p_diff / n, 1e-9);
  EXPECT_NEAR(*result.rms_delta_p, std::sqrt(p_diff2 / n), 1e-9);
  EXPECT_NEAR(*result.log_perplexity_ratio, (nll - base_nll) / n, 1e-9);
  EXPECT_GT(*result.mean_kl_uncertainty, 0.0);
  EXPECT_GT(*result.log_perplexity_ratio_uncertainty, 0.0);

  // Against itself: nothing diverges.
  const auto same = evaluate(stories.model, &stories.model, tokens, chunks(64, bos));
  EXPECT_LT(same.kl_percentiles->max, 1e-9);
  EXPECT_EQ(*same.top1_agreement, 1.0);
  EXPECT_NEAR(*same.log_perplexity_ratio, 0.0, 1e-12);
}

}  // namespace
}  // namespace nibble::quant
