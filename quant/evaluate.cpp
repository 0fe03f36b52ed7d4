#include "quant/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "engine/model.h"

namespace nibble::quant {
namespace {

// log-softmax of one row of logits, in double so long vocabularies sum exactly enough.
void log_softmax(std::span<const float> logits, std::vector<double>& out) {
  out.resize(logits.size());
  double max = -INFINITY;
  for (const float l : logits) max = std::max(max, static_cast<double>(l));
  double sum = 0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l) - max);
  const double log_sum = max + std::log(sum);
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - log_sum;
}

std::size_t argmax(std::span<const double> values) {
  return static_cast<std::size_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

void run_window(engine::Model& model, std::span<const std::int32_t> window, std::vector<float>& logits) {
  engine::SequenceCache cache(model, static_cast<std::int64_t>(window.size()));
  logits.resize(window.size() * static_cast<std::size_t>(model.vocab_size()));
  model.forward(window, 0, cache, engine::Logits::AllRows, logits);
}

// A mean over `count` samples and the standard error of that mean, computed as
// llama-perplexity does (no error below 11 samples), so the "±" columns compare.
struct MeanAndError {
  double mean = 0, error = 0;
};
MeanAndError mean_and_error(double sum, double sum_of_squares, std::int64_t count) {
  if (count < 1) return {};
  const auto n = static_cast<double>(count);
  const double mean = sum / n;
  const double variance = sum_of_squares / n - mean * mean;
  return {mean, variance > 0 && count > 10 ? std::sqrt(variance / (n - 1)) : 0.0};
}

// The covariance of two sample means (llama-perplexity's ln-PPL-ratio error).
double covariance_of_means(double sum_a, double sum_b, double sum_ab, std::int64_t count) {
  if (count < 10) return 0;
  const auto n = static_cast<double>(count);
  return (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1);
}

// `sorted` ascending; llama-perplexity's interpolation between neighbours.
double percentile(const std::vector<double>& sorted, double fraction) {
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  const double position = fraction * static_cast<double>(sorted.size() - 1);
  const auto index = static_cast<std::size_t>(position);
  const double weight = position - static_cast<double>(index);
  return (1 - weight) * sorted[index] + weight * sorted[std::min(index + 1, sorted.size() - 1)];
}

KlPercentiles kl_percentiles(std::vector<double> kls) {
  std::sort(kls.begin(), kls.end());
  const std::size_t n = kls.size();
  return {.max = kls.back(),
          .p99_9 = percentile(kls, 0.999),
          .p99 = percentile(kls, 0.99),
          .p95 = percentile(kls, 0.95),
          .p90 = percentile(kls, 0.90),
          .median = n % 2 == 0 ? 0.5 * (kls[n / 2] + kls[n / 2 - 1]) : kls[n / 2],
          .p10 = percentile(kls, 0.10),
          .p5 = percentile(kls, 0.05),
          .p1 = percentile(kls, 0.01),
          .p0_1 = percentile(kls, 0.001),
          .min = kls.front()};
}

}  // namespace

std::vector<EvalWindow> plan_windows(std::int64_t n, const EvalOptions& options) {
  if (options.window < 2) fail("the evaluation window must hold at least 2 tokens");
  if (n < 2) fail("the evaluation text must hold at least 2 tokens (it has {})", n);
  std::vector<EvalWindow> windows;
  if (options.protocol == EvalProtocol::Chunks) {
    // llama-perplexity scores targets first+1 .. n_ctx-1 with first = n_ctx/2:
    // each scored token's logits come from a position >= n_ctx/2.
    if (options.window < 4) fail("a chunk must hold at least 4 tokens (it holds {})", options.window);
    std::int64_t chunks = n / options.window;
    if (options.max_chunks) {
      if (*options.max_chunks < 1) fail("--chunks must be at least 1");
      chunks = std::min(chunks, *options.max_chunks);
    }
    if (chunks == 0) {
      fail("the evaluation text holds {} tokens, fewer than one chunk of {}", n, options.window);
    }
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t begin = c * options.window;
      windows.push_back({.begin = begin,
                         .end = begin + options.window,
                         .first_target = begin + options.window / 2 + 1,
                         .first_token = options.chunk_bos});
    }
    return windows;
  }
  if (options.stride < 1 || options.stride > options.window) {
    fail("the evaluation stride must be between 1 and the window ({})", options.window);
  }
  const std::int64_t count = n <= options.window ? 1 : 1 + (n - options.window + options.stride - 1) / options.stride;
  std::int64_t scored_until = 1;  // targets before this index are scored (token 0 never is)
  for (std::int64_t w = 0; w < count; ++w) {
    const std::int64_t begin = w * options.stride;
    const std::int64_t end = std::min(begin + options.window, n);
    windows.push_back({.begin = begin, .end = end, .first_target = std::max(scored_until, begin + 1), .first_token = {}});
    scored_until = end;
  }
  return windows;
}

EvalResult evaluate(engine::Model& model, engine::Model* base, std::span<const std::int32_t> tokens,
                    const EvalOptions& options, const Progress& progress) {
  if (options.max_tokens && static_cast<std::size_t>(*options.max_tokens) < tokens.size()) {
    tokens = tokens.first(static_cast<std::size_t>(*options.max_tokens));
  }
  const auto windows = plan_windows(static_cast<std::int64_t>(tokens.size()), options);
  const auto vocab = model.vocab_size();
  if (base && base->vocab_size() != vocab) {
    fail("the base model's vocabulary ({}) differs from the model's ({})", base->vocab_size(), vocab);
  }
  for (const auto id : tokens) {
    if (id < 0 || id >= vocab) fail("token id {} is outside the vocabulary of {}", id, vocab);
  }
  for (const auto& w : windows) {
    if (w.first_token && (*w.first_token < 0 || *w.first_token >= vocab)) {
      fail("the chunk start token {} is outside the vocabulary of {}", *w.first_token, vocab);
    }
  }

  EvalResult result;
  result.windows = static_cast<std::int64_t>(windows.size());
  // Sums over scored tokens: NLL and its square (perplexity error), the base's,
  // their product (covariance of the two), Δp and its powers (RMS Δp).
  double nll = 0, nll2 = 0, base_nll = 0, base_nll2 = 0, nll_base_nll = 0;
  double p_diff = 0, p_diff2 = 0;
  std::int64_t agree = 0;
  std::vector<double> kls;
  std::vector<float> logits, base_logits;
  std::vector<double> logp, base_logp;
  std::vector<std::int32_t> input;
  for (std::size_t w = 0; w < windows.size(); ++w) {
    const auto& window = windows[w];
    const auto span = tokens.subspan(static_cast<std::size_t>(window.begin),
                                     static_cast<std::size_t>(window.end - window.begin));
    input.assign(span.begin(), span.end());
    if (window.first_token) input.front() = *window.first_token;
    run_window(model, input, logits);
    if (base) run_window(*base, input, base_logits);
    for (std::int64_t target = window.first_target; target < window.end; ++target) {
      const auto row = static_cast<std::size_t>(target - 1 - window.begin) * static_cast<std::size_t>(vocab);
      log_softmax(std::span(logits).subspan(row, static_cast<std::size_t>(vocab)), logp);
      // The target is the stream's token: a chunk's BOS replaces only its input.
      const auto id = static_cast<std::size_t>(tokens[static_cast<std::size_t>(target)]);
      if (!std::isfinite(logp[id])) fail("the model produced a non-finite log-probability at token {}", target);
      nll -= logp[id];
      nll2 += logp[id] * logp[id];
      if (base) {
        log_softmax(std::span(base_logits).subspan(row, static_cast<std::size_t>(vocab)), base_logp);
        base_nll -= base_logp[id];
        base_nll2 += base_logp[id] * base_logp[id];
        nll_base_nll += logp[id] * base_logp[id];
        double kl = 0;
        for (std::size_t v = 0; v < base_logp.size(); ++v) {
          kl += std::exp(base_logp[v]) * (base_logp[v] - logp[v]);
        }
        kls.push_back(std::max(kl, 0.0));  // rounding can leave -1e-17 for identical models
        agree += argmax(logp) == argmax(base_logp) ? 1 : 0;
        const double d = std::exp(logp[id]) - std::exp(base_logp[id]);
        p_diff += d;
        p_diff2 += d * d;
      }
      ++result.tokens_scored;
    }
    if (progress) progress("evaluating windows", static_cast<std::int64_t>(w) + 1, result.windows);
  }
  const auto count = result.tokens_scored;
  const auto n = static_cast<double>(count);
  const auto log_ppl = mean_and_error(nll, nll2, count);
  result.mean_nll = log_ppl.mean;
  result.perplexity = std::exp(log_ppl.mean);
  result.perplexity_uncertainty = result.perplexity * log_ppl.error;
  if (base) {
    const auto base_log_ppl = mean_and_error(base_nll, base_nll2, count);
    result.base_perplexity = std::exp(base_log_ppl.mean);
    result.base_perplexity_uncertainty = *result.base_perplexity * base_log_ppl.error;
    const double covariance = covariance_of_means(nll, base_nll, nll_base_nll, count);
    result.log_perplexity_ratio = log_ppl.mean - base_log_ppl.mean;
    result.log_perplexity_ratio_uncertainty = std::sqrt(std::max(
        0.0, log_ppl.error * log_ppl.error + base_log_ppl.error * base_log_ppl.error - 2 * covariance));
    double sum = 0, sum2 = 0;
    for (const double kl : kls) {
      sum += kl;
      sum2 += kl * kl;
    }
    const auto kl = mean_and_error(sum, sum2, count);
    result.mean_kl = kl.mean;
    result.mean_kl_uncertainty = kl.error;
    result.kl_percentiles = kl_percentiles(kls);
    const auto p99 = static_cast<std::size_t>(std::ceil(0.99 * n)) - 1;
    std::nth_element(kls.begin(), kls.begin() + static_cast<std::ptrdiff_t>(p99), kls.end());
    result.p99_kl = kls[p99];
    const double top1 = static_cast<double>(agree) / n;
    result.top1_agreement = top1;
    result.top1_agreement_uncertainty = count > 1 ? std::sqrt(top1 * (1 - top1) / (n - 1)) : 0.0;
    result.mean_delta_p = p_diff / n;
    result.rms_delta_p = std::sqrt(p_diff2 / n);
  }
  return result;
}

}  // namespace nibble::quant
