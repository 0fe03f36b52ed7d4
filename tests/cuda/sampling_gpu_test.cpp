// GPU sampling against a float64 host implementation of engine::Sampler's rules
// (penalties, greedy, temperature, top-k, top-p, min-p, ties by lowest id) on
// fresh random logits: the token must be the one the host picks for the same
// uniform number walking the kept tokens in vocabulary order (only when the draw
// falls within rounding of a boundary may it be the neighbour), and always a
// member of the kept set.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cuda/sampling.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::GpuTest;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

struct RowCase {
  SampleParams params;
  std::vector<std::int32_t> seen;
  std::vector<std::pair<std::int32_t, std::int32_t>> counted;  // (id, count)
};

struct Expected {
  std::vector<std::int32_t> kept;  // in (logit desc, id asc) order
  bool boundary_doubtful = false;  // a cut decided within rounding
  std::int32_t token = -1;
  std::int32_t neighbour = -1;     // also acceptable when the draw sits on a boundary
};

void apply_penalties(std::vector<float>& l, const RowCase& c) {
  const auto vocab = static_cast<std::int32_t>(l.size());
  if (c.params.repetition_penalty != 1.0f) {
    for (const std::int32_t id : c.seen) {
      if (id < 0 || id >= vocab) continue;
      float& v = l[at(id)];
      v = v > 0.0f ? v / c.params.repetition_penalty : v * c.params.repetition_penalty;
    }
  }
  if (c.params.presence_penalty != 0.0f || c.params.frequency_penalty != 0.0f) {
    for (const auto& [id, count] : c.counted) {
      if (id < 0 || id >= vocab) continue;
      l[at(id)] -= c.params.frequency_penalty * static_cast<float>(count) + c.params.presence_penalty;
    }
  }
}

Expected expected_token(const std::vector<float>& l, const SampleParams& p) {
  Expected e;
  const auto vocab = static_cast<std::int32_t>(l.size());
  std::vector<std::int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return l[at(a)] > l[at(b)]; });
  if (p.temperature == 0.0f) {
    e.kept = {order[0]};
    e.token = order[0];
    return e;
  }
  const double max_logit = l[at(order[0])];
  std::vector<double> w(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) w[i] = std::exp((l[i] - max_logit) / p.temperature);
  const std::int32_t pool = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
  double total = 0;
  for (std::int32_t i = 0; i < pool; ++i) total += w[at(order[at(i)])];
  std::int32_t keep = pool;
  double cumulative = 0;
  constexpr double kDoubt = 1e-4;
  for (std::int32_t i = 0; i < pool; ++i) {
    const double q = w[at(order[at(i)])] / total;
    if (p.min_p > 0.0f && i > 0) {
      if (std::abs(q - p.min_p / total) < kDoubt * q) e.boundary_doubtful = true;
      if (q < p.min_p * (1.0 / total)) {
        keep = i;
        break;
      }
    }
    cumulative += q;
    if (p.top_p < 1.0f) {
      if (std::abs(cumulative - p.top_p) < kDoubt) e.boundary_doubtful = true;
      if (cumulative >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  keep = std::max(keep, 1);
  e.kept.assign(order.begin(), order.begin() + keep);
  // The draw: kept tokens in vocabulary order.
  std::vector<std::int32_t> by_id = e.kept;
  std::sort(by_id.begin(), by_id.end());
  double mass = 0;
  for (const std::int32_t id : by_id) mass += w[at(id)];
  const double target = static_cast<double>(p.uniform) * mass;
  double running = 0;
  for (std::size_t i = 0; i < by_id.size(); ++i) {
    running += w[at(by_id[i])];
    if (target < running) {
      e.token = by_id[i];
      if (running - target < kDoubt * mass && i + 1 < by_id.size()) e.neighbour = by_id[i + 1];
      if (i > 0 && target - (running - w[at(by_id[i])]) < kDoubt * mass) e.neighbour = by_id[i - 1];
      break;
    }
  }
  if (e.token < 0) e.token = by_id.back();
  return e;
}

class SamplingGpu : public GpuTest {
 protected:
  void run(std::mt19937& rng, std::int64_t vocab, const std::vector<RowCase>& cases, bool ties) {
    const auto rows = static_cast<std::int64_t>(cases.size());
    const std::int64_t ld = vocab + 3;
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(at(rows * ld), 0.0f);
    for (auto& v : logits) v = ties ? std::round(normal(rng)) * 0.5f : normal(rng);
    std::vector<SampleParams> params;
    std::vector<std::int32_t> seen_ids;
    std::vector<std::int32_t> counted_ids;
    std::vector<std::int32_t> counts;
    for (const RowCase& c : cases) {
      SampleParams p = c.params;
      p.seen_begin = static_cast<std::int32_t>(seen_ids.size());
      seen_ids.insert(seen_ids.end(), c.seen.begin(), c.seen.end());
      p.seen_end = static_cast<std::int32_t>(seen_ids.size());
      p.counted_begin = static_cast<std::int32_t>(counted_ids.size());
      for (const auto& [id, count] : c.counted) {
        counted_ids.push_back(id);
        counts.push_back(count);
      }
      p.counted_end = static_cast<std::int32_t>(counted_ids.size());
      params.push_back(p);
    }
    seen_ids.push_back(0);  // never empty buffers
    counted_ids.push_back(0);
    counts.push_back(0);
    DeviceBuffer<float> logits_d = to_device(logits);
    const DeviceBuffer<SampleParams> params_d = to_device(params);
    const DeviceBuffer<std::int32_t> seen_d = to_device(seen_ids);
    const DeviceBuffer<std::int32_t> counted_d = to_device(counted_ids);
    const DeviceBuffer<std::int32_t> counts_d = to_device(counts);
    DeviceBuffer<std::int32_t> tokens(at(rows));
    tokens.fill_bytes(0xff, stream);
    sample_tokens(logits_d.data(), rows, vocab, ld, params_d.data(), seen_d.data(), counted_d.data(), counts_d.data(),
                  tokens.data(), stream);
    const std::vector<std::int32_t> got = to_host(tokens, at(rows));
    const std::vector<float> penalized = to_host(logits_d, logits.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " row " << r << " T " << params[at(r)].temperature
                                        << " top_k " << params[at(r)].top_k << " top_p " << params[at(r)].top_p
                                        << " min_p " << params[at(r)].min_p << " u " << params[at(r)].uniform
                                        << (ties ? " ties" : ""));
      std::vector<float> row(logits.begin() + r * ld, logits.begin() + r * ld + vocab);
      apply_penalties(row, cases[at(r)]);
      for (std::int64_t i = 0; i < vocab; ++i) ASSERT_EQ(penalized[at(r * ld + i)], row[at(i)]) << "penalty on " << i;
      const Expected e = expected_token(row, params[at(r)]);
      const std::int32_t token = got[at(r)];
      if (!e.boundary_doubtful) {
        EXPECT_TRUE(std::find(e.kept.begin(), e.kept.end(), token) != e.kept.end())
            << "token " << token << " outside the " << e.kept.size() << " kept";
        EXPECT_TRUE(token == e.token || token == e.neighbour) << "got " << token << ", expected " << e.token;
      }
    }
  }
};

std::vector<RowCase> parameter_grid(std::mt19937& rng, std::int64_t vocab) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<RowCase> cases;
  const float temperatures[] = {0.0f, 1.0f, 0.7f, 1.5f};
  const std::int32_t top_ks[] = {0, 1, 40, static_cast<std::int32_t>(vocab)};
  const float top_ps[] = {1.0f, 0.9f, 0.5f};
  const float min_ps[] = {0.0f, 0.05f};
  for (const float t : temperatures) {
    for (const std::int32_t k : top_ks) {
      for (const float tp : top_ps) {
        for (const float mp : min_ps) {
          RowCase c;
          c.params.temperature = t;
          c.params.top_k = k;
          c.params.top_p = tp;
          c.params.min_p = mp;
          c.params.uniform = u(rng);
          cases.push_back(c);
        }
      }
    }
  }
  // Penalties over a history.
  for (int i = 0; i < 6; ++i) {
    RowCase c;
    c.params.temperature = i == 0 ? 0.0f : 0.8f;
    c.params.top_p = 0.95f;
    c.params.repetition_penalty = 1.3f;
    c.params.presence_penalty = 0.5f;
    c.params.frequency_penalty = 0.25f;
    c.params.uniform = u(rng);
    std::set<std::int32_t> seen;
    for (int j = 0; j < 50; ++j) seen.insert(id(rng));
    c.seen.assign(seen.begin(), seen.end());
    int count = 1;
    for (const std::int32_t s : seen) {
      if (s % 3 == 0) c.counted.emplace_back(s, count++);
    }
    cases.push_back(c);
  }
  return cases;
}

TEST_F(SamplingGpu, FollowsTheCpuSamplersRules) {
  std::mt19937 rng(41);
  for (const std::int64_t vocab : {50, 1000, 32000, 151936}) run(rng, vocab, parameter_grid(rng, vocab), false);
}

TEST_F(SamplingGpu, BreaksTiesByLowestId) {
  std::mt19937 rng(42);
  for (const std::int64_t vocab : {64, 5000}) run(rng, vocab, parameter_grid(rng, vocab), true);
}

TEST_F(SamplingGpu, DrawsFollowTheSoftmax) {
  // 4000 rows over the same logits with evenly spread u: the token frequencies
  // are the kept softmax probabilities (up to 1/4000 per boundary).
  std::mt19937 rng(43);
  const std::int64_t vocab = 300;
  const std::int64_t rows = 4000;
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> row(at(vocab));
  for (auto& v : row) v = normal(rng);
  std::vector<float> logits;
  std::vector<SampleParams> params(at(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    logits.insert(logits.end(), row.begin(), row.end());
    params[at(r)].temperature = 0.9f;
    params[at(r)].top_k = 50;
    params[at(r)].uniform = (static_cast<float>(r) + 0.5f) / static_cast<float>(rows);
  }
  DeviceBuffer<float> logits_d = to_device(logits);
  const DeviceBuffer<SampleParams> params_d = to_device(params);
  const DeviceBuffer<std::int32_t> none = to_device(std::vector<std::int32_t>{0});
  DeviceBuffer<std::int32_t> tokens(at(rows));
  sample_tokens(logits_d.data(), rows, vocab, vocab, params_d.data(), none.data(), none.data(), none.data(), tokens.data(),
                stream);
  const std::vector<std::int32_t> got = to_host(tokens, at(rows));
  SampleParams p = params[0];
  p.uniform = 0.0f;
  const Expected e = expected_token(row, p);
  const double max_logit = *std::max_element(row.begin(), row.end());
  double mass = 0;
  for (const std::int32_t id : e.kept) mass += std::exp((row[at(id)] - max_logit) / 0.9);
  std::vector<int> histogram(at(vocab), 0);
  for (const std::int32_t t : got) ++histogram[at(t)];
  for (std::int64_t i = 0; i < vocab; ++i) {
    const bool kept = std::find(e.kept.begin(), e.kept.end(), static_cast<std::int32_t>(i)) != e.kept.end();
    const double probability = kept ? std::exp((row[at(i)] - max_logit) / 0.9) / mass : 0.0;
    EXPECT_NEAR(histogram[at(i)] / static_cast<double>(rows), probability, 1.5 / static_cast<double>(rows)) << "token " << i;
  }
}

}  // namespace
}  // namespace nibble::kernels::cuda
