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

}  // namespace

EvalResult evaluate(engine::Model& model, engine::Model* base, std::span<const std::int32_t> tokens,
                    const EvalOptions& options, const Progress& progress) {
  if (options.window < 2) fail("the evaluation window must hold at least 2 tokens");
  if (options.stride < 1 || options.stride > options.window) {
    fail("the evaluation stride must be between 1 and the window ({})", options.window);
  }
  if (options.max_tokens && static_cast<std::size_t>(*options.max_tokens) < tokens.size()) {
    tokens = tokens.first(static_cast<std::size_t>(*options.max_tokens));
  }
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (n < 2) fail("the evaluation text must hold at least 2 tokens (it has {})", n);
  const auto vocab = model.vocab_size();
  if (base && base->vocab_size() != vocab) {
    fail("the base model's vocabulary ({}) differs from the model's ({})", base->vocab_size(), vocab);
  }
  for (const auto id : tokens) {
    if (id < 0 || id >= vocab) fail("token id {} is outside the vocabulary of {}", id, vocab);
  }

  const std::int64_t windows = n <= options.window ? 1 : 1 + (n - options.window + options.stride - 1) / options.stride;
  EvalResult result;
  double nll = 0, base_nll = 0;
  std::int64_t agree = 0;
  std::vector<double> kls;
  std::vector<float> logits, base_logits;
  std::vector<double> logp, base_logp;
  std::int64_t scored_until = 1;  // targets before this index are scored (token 0 never is)
  for (std::int64_t w = 0; w < windows; ++w) {
    const std::int64_t begin = w * options.stride;
    const std::int64_t end = std::min(begin + options.window, n);
    const auto window = tokens.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin));
    run_window(model, window, logits);
    if (base) run_window(*base, window, base_logits);
    for (std::int64_t target = std::max(scored_until, begin + 1); target < end; ++target) {
      const auto row = static_cast<std::size_t>(target - 1 - begin) * static_cast<std::size_t>(vocab);
      log_softmax(std::span(logits).subspan(row, static_cast<std::size_t>(vocab)), logp);
      const auto id = static_cast<std::size_t>(tokens[static_cast<std::size_t>(target)]);
      if (!std::isfinite(logp[id])) fail("the model produced a non-finite log-probability at token {}", target);
      nll -= logp[id];
      if (base) {
        log_softmax(std::span(base_logits).subspan(row, static_cast<std::size_t>(vocab)), base_logp);
        base_nll -= base_logp[id];
        double kl = 0;
        for (std::size_t v = 0; v < base_logp.size(); ++v) {
          kl += std::exp(base_logp[v]) * (base_logp[v] - logp[v]);
        }
        kls.push_back(std::max(kl, 0.0));  // rounding can leave -1e-17 for identical models
        agree += argmax(logp) == argmax(base_logp) ? 1 : 0;
      }
      ++result.tokens_scored;
    }
    scored_until = end;
    if (progress) progress("evaluating windows", w + 1, windows);
  }
  const auto count = static_cast<double>(result.tokens_scored);
  result.mean_nll = nll / count;
  result.perplexity = std::exp(result.mean_nll);
  if (base) {
    result.base_perplexity = std::exp(base_nll / count);
    double sum = 0;
    for (const double kl : kls) sum += kl;
    result.mean_kl = sum / count;
    const auto p99 = static_cast<std::size_t>(std::ceil(0.99 * count)) - 1;
    std::nth_element(kls.begin(), kls.begin() + static_cast<std::ptrdiff_t>(p99), kls.end());
    result.p99_kl = kls[p99];
    result.top1_agreement = static_cast<double>(agree) / count;
  }
  return result;
}

}  // namespace nibble::quant
