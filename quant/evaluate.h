#pragma once
// `nibble eval`: how much a compressed model lost. Perplexity over a token stream
// with a sliding window (each window of `window` tokens scores only the tokens the
// previous window did not, so every token but the first is scored once, with up to
// window - stride tokens of context), and, against a base model on the same
// windows, the KL divergence KL(base || model) of the next-token distributions
// (mean and p99 over tokens) and how often their top-1 tokens agree.
#include <cstdint>
#include <optional>
#include <span>

#include "engine/decoder_model.h"
#include "quant/progress.h"

namespace nibble::quant {

struct EvalOptions {
  std::int64_t window = 512;
  std::int64_t stride = 256;  // new tokens scored per window after the first
  std::optional<std::int64_t> max_tokens;  // evaluate only the first tokens of the stream
};

struct EvalResult {
  std::int64_t tokens_scored = 0;
  double mean_nll = 0;  // nats per token
  double perplexity = 0;
  // Against the base model (when one was given).
  std::optional<double> base_perplexity;
  std::optional<double> mean_kl;  // nats
  std::optional<double> p99_kl;
  std::optional<double> top1_agreement;  // share of scored tokens where both argmaxes match
};

// `base` may be null. Both models must share the vocabulary. Throws nibble::Error for
// streams shorter than two tokens or a window/stride that does not make sense.
EvalResult evaluate(engine::Model& model, engine::Model* base, std::span<const std::int32_t> tokens,
                    const EvalOptions& options, const Progress& progress = {});

}  // namespace nibble::quant
