// `nibble eval`: perplexity of a model on a text, and with --base how far its
// next-token distributions drifted from the model it was compressed from.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <cstdio>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/backend_options.h"
#include "cli/commands.h"
#include "cli/load_progress.h"
#include "cli/progress_bar.h"
#include "common/error.h"
#include "engine/model.h"
#include "engine/decoder_model.h"
#include "engine/model_stats.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "quant/calibration.h"
#include "quant/evaluate.h"
#include "tokenizer/tokenizer.h"

namespace nibble::cli {
namespace {

struct EvalFlags {
  std::string protocol = "sliding";
  std::int64_t chunks = 0;
  std::string model;
  std::string base;
  std::string text;
  quant::EvalOptions options;
  std::int64_t max_tokens = 0;
  std::int64_t stride = 0;
  std::string device = "cpu";
  int threads = 0;
  ActivationFlags activations;
  bool json = false;
  std::string dump_logits;  // prefix: .ids.json and .logits.f32 of the first window
};

// The first window's token ids and all-position logits, for comparing nibble with
// another implementation of the same checkpoint (tests/quant/interop_test.py).
void dump_first_window(engine::Model& model, std::span<const std::int32_t> tokens, std::int64_t window,
                       const std::string& prefix) {
  const auto ids = tokens.first(std::min(tokens.size(), static_cast<std::size_t>(window)));
  engine::SequenceCache cache(model, static_cast<std::int64_t>(ids.size()));
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(model.vocab_size()));
  model.forward(ids, 0, cache, engine::Logits::AllRows, logits);
  std::ofstream(prefix + ".ids.json") << nlohmann::json(std::vector<std::int32_t>(ids.begin(), ids.end())).dump();
  std::ofstream out(prefix + ".logits.f32", std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) fail("cannot write {}.logits.f32", prefix);
}

// Whether the tokenizer starts an encoding with BOS (llama.cpp's
// llama_vocab_get_add_bos): then llama-perplexity puts BOS at every chunk's start.
std::optional<std::int32_t> bos_if_added(const Tokenizer& tokenizer) {
  const auto bos = tokenizer.bos_id();
  if (!bos) return std::nullopt;
  const auto ids = tokenizer.encode("a", /*add_special=*/true);
  return !ids.empty() && ids.front() == *bos ? bos : std::nullopt;
}

quant::EvalProtocol parse_protocol(const std::string& name) {
  if (name == "sliding") return quant::EvalProtocol::SlidingWindow;
  if (name == "chunks") return quant::EvalProtocol::Chunks;
  fail("--protocol must be sliding or chunks, not {}", name);
}

// llama-perplexity --kl-divergence's summary, line for line, so the two compare by eye.
void print_divergence(const quant::EvalResult& r) {
  std::printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", r.perplexity, r.perplexity_uncertainty);
  std::printf("Mean PPL(base)                : %10.6f ± %10.6f\n", *r.base_perplexity, *r.base_perplexity_uncertainty);
  std::printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", *r.log_perplexity_ratio,
              *r.log_perplexity_ratio_uncertainty);
  std::printf("Mean    KLD: %10.6f ± %10.6f\n", *r.mean_kl, *r.mean_kl_uncertainty);
  const auto& k = *r.kl_percentiles;
  std::printf("Maximum KLD: %10.6f\n99.9%%   KLD: %10.6f\n99.0%%   KLD: %10.6f\n95.0%%   KLD: %10.6f\n", k.max, k.p99_9,
              k.p99, k.p95);
  std::printf("90.0%%   KLD: %10.6f\nMedian  KLD: %10.6f\n10.0%%   KLD: %10.6f\n 5.0%%   KLD: %10.6f\n", k.p90, k.median,
              k.p10, k.p5);
  std::printf(" 1.0%%   KLD: %10.6f\n 0.1%%   KLD: %10.6f\nMinimum KLD: %10.6f\n", k.p1, k.p0_1, k.min);
  std::printf("Mean    Δp: %6.3f %%\nRMS Δp    : %6.3f %%\n", 100.0 * *r.mean_delta_p, 100.0 * *r.rms_delta_p);
  std::printf("Same top p: %6.3f ± %5.3f %%\n", 100.0 * *r.top1_agreement, 100.0 * *r.top1_agreement_uncertainty);
}

nlohmann::json stats_json(const ModelSource& source) {
  const auto stats = engine::compute_model_stats(source);
  return {{"path", source.path.string()},
          {"parameters", stats.parameters},
          {"stored_bytes", stats.stored_bytes},
          {"file_bytes", stats.file_bytes},
          {"compression_vs_fp16", stats.compression_vs_fp16},
          {"matmul_flops_per_token", stats.matmul_flops_per_token}};
}

void print_stats(const char* label, const nlohmann::json& stats) {
  std::printf("%-6s %s: %.1f M parameters, %.1f MiB, %.2fx vs fp16, %.1f MFLOP/token\n", label,
              stats["path"].get<std::string>().c_str(), stats["parameters"].get<double>() / 1e6,
              stats["stored_bytes"].get<double>() / (1 << 20), stats["compression_vs_fp16"].get<double>(),
              stats["matmul_flops_per_token"].get<double>() / 1e6);
}

void run_eval(EvalFlags flags) {
  const auto backend_owner = make_backend(flags.device, flags.threads, flags.activations);
  kernels::Backend& backend = *backend_owner;
  const auto start = std::chrono::steady_clock::now();
  ModelSource source = open_model(flags.model);
  const auto tokenizer = load_tokenizer(source.path);
  flags.options.protocol = parse_protocol(flags.protocol);
  const bool chunks = flags.options.protocol == quant::EvalProtocol::Chunks;
  // llama-perplexity tokenizes its file with the vocabulary's special tokens (BOS
  // when it adds one); the sliding protocol keeps nibble's plain text stream.
  const auto tokens = quant::read_token_stream(flags.text, *tokenizer, /*add_special=*/chunks);
  if (chunks) {
    flags.options.chunk_bos = bos_if_added(*tokenizer);
    if (flags.chunks > 0) flags.options.max_chunks = flags.chunks;
  }
  engine::DecoderModel model(source, backend, load_progress_reporter());
  std::optional<ModelSource> base_source;
  std::optional<engine::DecoderModel> base;
  if (!flags.base.empty()) {
    base_source.emplace(open_model(flags.base));
    if (base_source->config.vocab_size != source.config.vocab_size) {
      fail("--base {} has a vocabulary of {}, the model {}", flags.base, base_source->config.vocab_size,
           source.config.vocab_size);
    }
    base.emplace(*base_source, backend, load_progress_reporter());
  }
  if (flags.max_tokens > 0) flags.options.max_tokens = flags.max_tokens;
  flags.options.stride = flags.stride > 0 ? flags.stride : std::max<std::int64_t>(1, flags.options.window / 2);
  if (!flags.dump_logits.empty()) dump_first_window(model, tokens, flags.options.window, flags.dump_logits);
  const auto result = quant::evaluate(model, base ? &*base : nullptr, tokens, flags.options, progress_bar());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  nlohmann::json json{{"text", flags.text},
                      {"protocol", flags.protocol},
                      {"windows", result.windows},
                      {"tokens_scored", result.tokens_scored},
                      {"window", flags.options.window},
                      {"stride", flags.options.stride},
                      {"perplexity", result.perplexity},
                      {"perplexity_uncertainty", result.perplexity_uncertainty},
                      {"mean_nll", result.mean_nll},
                      {"seconds", seconds},
                      {"model", stats_json(source)}};
  if (base) {
    json["base"] = stats_json(*base_source);
    json["base_perplexity"] = *result.base_perplexity;
    json["mean_kl"] = *result.mean_kl;
    json["p99_kl"] = *result.p99_kl;
    json["top1_agreement"] = *result.top1_agreement;
    json["base_perplexity_uncertainty"] = *result.base_perplexity_uncertainty;
    json["mean_kl_uncertainty"] = *result.mean_kl_uncertainty;
    json["top1_agreement_uncertainty"] = *result.top1_agreement_uncertainty;
    json["log_perplexity_ratio"] = *result.log_perplexity_ratio;
    json["log_perplexity_ratio_uncertainty"] = *result.log_perplexity_ratio_uncertainty;
    json["mean_delta_p"] = *result.mean_delta_p;
    json["rms_delta_p"] = *result.rms_delta_p;
    const auto& k = *result.kl_percentiles;
    json["kl_percentiles"] = {{"max", k.max}, {"99.9", k.p99_9}, {"99", k.p99},   {"95", k.p95},
                              {"90", k.p90},  {"50", k.median},  {"10", k.p10},   {"5", k.p5},
                              {"1", k.p1},    {"0.1", k.p0_1},   {"min", k.min}};
  }
  if (flags.json) {
    std::printf("%s\n", json.dump(2).c_str());
    return;
  }
  print_stats("model", json["model"]);
  if (base) print_stats("base", json["base"]);
  if (chunks) {
    std::printf("%lld chunks of %lld tokens, %lld scored (llama-perplexity's protocol%s)\n",
                static_cast<long long>(result.windows), static_cast<long long>(flags.options.window),
                static_cast<long long>(result.tokens_scored), flags.options.chunk_bos ? ", BOS at every chunk" : "");
    std::printf("Final estimate: PPL = %.4f +/- %.5f\n", result.perplexity, result.perplexity_uncertainty);
    if (base) print_divergence(result);
    return;
  }
  std::printf("perplexity %.4f over %lld tokens (window %lld, stride %lld)\n", result.perplexity,
              static_cast<long long>(result.tokens_scored), static_cast<long long>(flags.options.window),
              static_cast<long long>(flags.options.stride));
  if (base) {
    std::printf("base perplexity %.4f; KL(base || model) mean %.5f, p99 %.5f nats; top-1 agreement %.2f%%\n",
                *result.base_perplexity, *result.mean_kl, *result.p99_kl, *result.top1_agreement * 100.0);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand("eval", "Perplexity on a text; with --base, KL divergence and top-1 agreement");
  cmd->add_option("--model", flags->model, "Model folder or .gguf file")->required();
  cmd->add_option("--base", flags->base, "The model it was compressed from");
  cmd->add_option("--text", flags->text, "Evaluation text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--protocol", flags->protocol,
                  "sliding: overlapping windows, every token scored once; chunks: llama-perplexity's "
                  "non-overlapping --window-token chunks, second half of each scored")
      ->capture_default_str();
  cmd->add_option("--window", flags->options.window, "Tokens of context per window (the chunk size, n_ctx, with chunks)")
      ->capture_default_str();
  cmd->add_option("--stride", flags->stride, "sliding: new tokens scored per window (default: half the window)");
  cmd->add_option("--chunks", flags->chunks, "chunks: evaluate at most N chunks (llama-perplexity --chunks)");
  cmd->add_option("--max-tokens", flags->max_tokens, "Evaluate only the first N tokens of the text");
  cmd->add_option("--threads", flags->threads, "Worker threads (0: one per core)")->capture_default_str();
  add_activation_flags(cmd, flags->activations);
  add_device_flag(cmd, flags->device);
  cmd->add_flag("--json", flags->json, "Print the report as JSON");
  cmd->add_option("--dump-logits", flags->dump_logits,
                  "Also write the first window's ids (PREFIX.ids.json) and logits (PREFIX.logits.f32, float32 [tokens, vocab])");
  cmd->callback([flags] { run_eval(*flags); });
}

}  // namespace nibble::cli
