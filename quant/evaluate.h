#pragma once
// `nibble eval`: how much a compressed model lost. Perplexity over a token stream
// under one of two protocols:
//   SlidingWindow  each window of `window` tokens scores only the tokens the
//                  previous window did not, so every token but the first is scored
//                  once, with up to window - stride tokens of context;
//   Chunks         llama.cpp's llama-perplexity: the stream is cut into
//                  non-overlapping chunks of `window` (n_ctx) tokens, a trailing
//                  partial chunk dropped; each chunk runs from an empty cache, its
//                  first token replaced by `chunk_bos` when set (llama-perplexity
//                  does so when the vocabulary adds BOS), and only the targets in
//                  its second half are scored (window/2 + 1 .. window - 1), so
//                  every scored token has at least window/2 tokens of context.
// The protocols score different tokens with different context, so perplexities
// compare with llama.cpp's token for token only under Chunks.
// Against a base model on the same windows: KL(base || model) of the next-token
// distributions, how often their top-1 tokens agree, and the statistics
// llama-perplexity --kl-divergence reports (KLD percentiles, Δp, ln PPL ratio).
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/decoder_model.h"
#include "quant/progress.h"

namespace nibble::quant {

enum class EvalProtocol { SlidingWindow, Chunks };

struct EvalOptions {
  std::int64_t window = 512;  // tokens per forward pass (n_ctx under Chunks)
  std::int64_t stride = 256;  // SlidingWindow: new tokens scored per window after the first
  std::optional<std::int64_t> max_tokens;  // evaluate only the first tokens of the stream
  EvalProtocol protocol = EvalProtocol::SlidingWindow;
  std::optional<std::int64_t> max_chunks;  // Chunks: at most this many (llama-perplexity --chunks)
  std::optional<std::int32_t> chunk_bos;   // Chunks: the token every chunk starts with
};

// One forward pass of the evaluation: tokens [begin, end) of the stream from an
// empty cache, the first one replaced by `first_token` when set, and the
// predictions of targets [first_target, end) scored.
struct EvalWindow {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t first_target = 0;
  std::optional<std::int32_t> first_token;
  bool operator==(const EvalWindow&) const = default;
};

// The passes `evaluate` makes over a stream of `tokens` tokens (after max_tokens).
// Throws nibble::Error when the options make no sense or the stream is too short
// for one window (Chunks needs a full chunk, as llama-perplexity does).
std::vector<EvalWindow> plan_windows(std::int64_t tokens, const EvalOptions& options);

// Where the scored tokens' KL divergences lie, as llama-perplexity reports them
// (linear interpolation between the sorted values).
struct KlPercentiles {
  double max = 0, p99_9 = 0, p99 = 0, p95 = 0, p90 = 0, median = 0, p10 = 0, p5 = 0, p1 = 0, p0_1 = 0, min = 0;
};

struct EvalResult {
  std::int64_t windows = 0;
  std::int64_t tokens_scored = 0;
  double mean_nll = 0;  // nats per token
  double perplexity = 0;
  // llama-perplexity's "±": perplexity times the standard error of the mean NLL.
  double perplexity_uncertainty = 0;
  // Against the base model (when one was given).
  std::optional<double> base_perplexity;
  std::optional<double> base_perplexity_uncertainty;
  std::optional<double> mean_kl;  // nats
  std::optional<double> mean_kl_uncertainty;  // standard error of the mean
  std::optional<double> p99_kl;   // the 99th percentile's scored token (no interpolation)
  std::optional<KlPercentiles> kl_percentiles;
  std::optional<double> top1_agreement;  // share of scored tokens where both argmaxes match
  std::optional<double> top1_agreement_uncertainty;
  std::optional<double> log_perplexity_ratio;  // ln(PPL(model) / PPL(base)), with its error
  std::optional<double> log_perplexity_ratio_uncertainty;
  // Δp: the model's probability of the actual next token minus the base's.
  std::optional<double> mean_delta_p;
  std::optional<double> rms_delta_p;
};

// `base` may be null. Both models must share the vocabulary. Throws nibble::Error for
// streams shorter than two tokens or a window/stride that does not make sense.
EvalResult evaluate(engine::Model& model, engine::Model* base, std::span<const std::int32_t> tokens,
                    const EvalOptions& options, const Progress& progress = {});

}  // namespace nibble::quant
