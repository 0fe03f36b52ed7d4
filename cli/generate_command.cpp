// `nibble generate`: one prompt in, text out, streamed as it is produced.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/backend_options.h"
#include "cli/commands.h"
#include "cli/load_progress.h"
#include "cli/process_stats.h"
#include "cli/parallel_group.h"
#include "common/error.h"
#include "common/log.h"
#include "engine/decoder_model.h"
#include "engine/model_runner.h"
#include "engine/plan_broadcast.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "scheduler/generate.h"
#include "tokenizer/tokenizer.h"

namespace nibble::cli {
namespace {

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::string prompt_file;
  std::vector<std::int32_t> prompt_ids;
  bool no_special = false;
  std::int64_t max_tokens = 128;
  std::optional<double> temperature;
  std::optional<std::int64_t> top_k;
  std::optional<double> top_p;
  double min_p = 0;
  std::optional<double> repetition_penalty;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  std::uint64_t seed = 0;
  std::string device = "cpu";
  int threads = 0;
  ActivationFlags activations;
  std::int64_t prefill_chunk = 512;
  bool ignore_eos = false;
  bool json = false;
  bool expand_quantized = false;
  bool warmup = false;
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int pipeline_micro_batches = 1;
  int expert_parallel_size = 1;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read prompt file {}", path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Ranks 1..N-1 of a split model's generate: their share of the model and a
// cache for any request within the context, running rank 0's plans.
void run_generate_worker(const GenerateOptions& options, kernels::Backend& backend, ParallelGroup& group) {
  engine::ModelOptions model_options;
  model_options.expand_quantized = options.expand_quantized;
  ShardedModel sharded = shard_for(open_model(options.model), group, model_options);
  engine::DecoderModel model(sharded.source, backend, sharded.options);
  engine::ModelRunner runner(model, scheduler::cache_blocks_for(model.config().max_position_embeddings),
                             scheduler::kGenerateBlockSize);
  engine::run_plan_receiver(runner, *group.plans);
}

void run_generate(const GenerateOptions& options, kernels::Backend& backend, ParallelGroup* group);

void run_generate(const GenerateOptions& options) {
  const ParallelSizes sizes{options.tensor_parallel_size, options.pipeline_parallel_size,
                            options.pipeline_micro_batches, options.expert_parallel_size};
  const auto backend_owner = make_backend(rank_device(options.device, sizes), options.threads, options.activations);
  auto group = join_parallel_group(
      sizes,
      fmt::format("nibble {} generate model={} device={} threads={} int8_activations={} expand_quantized={} tp={} "
                  "pp={} micro_batches={} ep={}",
                  NIBBLE_VERSION, options.model, options.device, options.threads, options.activations.use_int8(),
                  options.expand_quantized, options.tensor_parallel_size, options.pipeline_parallel_size,
                  options.pipeline_micro_batches, options.expert_parallel_size),
      *backend_owner);
  try {
    if (group && !group->leader()) {
      run_generate_worker(options, *backend_owner, *group);
    } else {
      run_generate(options, *backend_owner, group ? &*group : nullptr);
      if (group) engine::stop_plan_receivers(*group->plans);
    }
  } catch (const std::exception& e) {
    if (!group) throw;
    std::fprintf(stderr, "nibble: error on rank %d: %s\n", group->rank(), e.what());
    std::fflush(stderr);
    group->world->abort_group(1);
  }
}

void run_generate(const GenerateOptions& options, kernels::Backend& backend, ParallelGroup* group) {
  const auto load_start = std::chrono::steady_clock::now();
  ModelSource source = open_model(options.model);
  const auto tokenizer = load_tokenizer(source.path);
  engine::ModelOptions model_options;
  model_options.expand_quantized = options.expand_quantized;
  std::optional<ShardedModel> sharded;
  if (group != nullptr) sharded.emplace(shard_for(open_model(options.model), *group, model_options));
  engine::DecoderModel model(sharded ? sharded->source : source, backend, sharded ? sharded->options : model_options,
                             load_progress_reporter());
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const auto& memory = model.weight_memory();
  spdlog::info(
      "model_loaded path={} arch={} layers={} weight_bytes={} quantized_layers={} quantized_file_bytes={} "
      "quantized_resident_bytes={} sparse_layers={} stacked_linears={} backend=\"{}\" seconds={:.3f}",
      source.path.string(), source.config.architecture, source.config.num_layers, model.weight_bytes(),
      memory.quantized_layers, memory.quantized_file, memory.quantized_resident, memory.sparse_layers,
      memory.stacked_linears, backend.name(), load_seconds);
  for (const auto& [kind, count] : model.linear_kinds()) spdlog::debug("linear_weights kind=\"{}\" count={}", kind, count);

  scheduler::SequenceRequest request;
  if (!options.prompt_ids.empty()) {
    request.prompt = options.prompt_ids;
  } else {
    const std::string text = options.prompt_file.empty() ? options.prompt : read_text_file(options.prompt_file);
    request.prompt = tokenizer->encode(text, !options.no_special);
  }
  if (request.prompt.empty()) fail("the prompt is empty (give --prompt, --prompt-file or --prompt-ids)");
  request.max_tokens = options.max_tokens;
  const auto& defaults = source.generation;
  const bool sample_by_default = defaults.do_sample.value_or(false);
  request.sampling.temperature = options.temperature.value_or(sample_by_default ? defaults.temperature.value_or(1.0) : 0.0);
  request.sampling.top_k = options.top_k.value_or(sample_by_default ? defaults.top_k.value_or(0) : 0);
  request.sampling.top_p = options.top_p.value_or(sample_by_default ? defaults.top_p.value_or(1.0) : 1.0);
  request.sampling.min_p = options.min_p;
  request.sampling.repetition_penalty = options.repetition_penalty.value_or(defaults.repetition_penalty.value_or(1.0));
  request.sampling.presence_penalty = options.presence_penalty;
  request.sampling.frequency_penalty = options.frequency_penalty;
  request.sampling.seed = options.seed;
  if (!options.ignore_eos) {
    request.stop_tokens = defaults.eos_token_ids;
    for (const auto id : tokenizer->eos_ids()) request.stop_tokens.push_back(id);
  }

  IncrementalDecoder decoder(*tokenizer);
  std::string text;
  const auto on_token = [&](const engine::TokenStep& step) {
    std::string piece = decoder.push(step.token);
    if (!options.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    text += piece;
    return true;
  };
  scheduler::GenerateOptions generate_options;
  generate_options.prefill_chunk = options.prefill_chunk;
  if (group != nullptr) generate_options.before_step = engine::plan_sender(*group->plans);
  if (options.warmup) {
    // The same prompt and one decode step, untimed and discarded, as llama-bench does
    // before it measures: the weights have then just been read, as in a server
    // that is serving. (On some VMs memory untouched for a second reads several
    // times slower, and loading reads the weights seconds before the first step.)
    scheduler::SequenceRequest warm = request;
    warm.max_tokens = std::min<std::int64_t>(request.max_tokens, 2);
    (void)scheduler::generate(model, warm, {}, {}, generate_options);
  }
  const scheduler::GenerationResult result = scheduler::generate(model, request, on_token, {}, generate_options);
  const std::string rest = decoder.flush();
  text += rest;

  const auto generated = static_cast<double>(result.tokens.size());
  // The first token comes out of the prefill; decode time covers the others.
  const double decode_rate = result.tokens.size() > 1 && result.decode_seconds > 0
                                 ? (generated - 1) / result.decode_seconds
                                 : 0.0;
  const double prefill_rate =
      result.prefill_seconds > 0 ? static_cast<double>(request.prompt.size()) / result.prefill_seconds : 0.0;
  if (options.json) {
    nlohmann::json out = {
        {"model", source.path.string()},
        {"backend", backend.name()},
        {"tensor_parallel_size", options.tensor_parallel_size},
        {"pipeline_parallel_size", options.pipeline_parallel_size},
        {"expert_parallel_size", options.expert_parallel_size},
        {"prompt_tokens", request.prompt.size()},
        {"prompt_ids", request.prompt},
        {"tokens", result.tokens},
        {"text", text},
        {"finish_reason", scheduler::finish_reason_name(result.finish)},
        {"load_seconds", load_seconds},
        {"prefill_seconds", result.prefill_seconds},
        {"decode_seconds", result.decode_seconds},
        {"prefill_tokens_per_second", prefill_rate},
        {"decode_tokens_per_second", decode_rate},
        {"peak_rss_bytes", peak_rss_bytes()},
        {"weights",
         {{"bytes", memory.total},
          {"quantized_layers", memory.quantized_layers},
          {"quantized_file_bytes", memory.quantized_file},
          {"quantized_resident_bytes", memory.quantized_resident},
          {"sparse_layers", memory.sparse_layers},
          {"stacked_linears", memory.stacked_linears},
          {"kinds", model.linear_kinds()}}},
    };
    if (group != nullptr) {
      // Rank 0's time and bytes in each kind of collective: what the split costs.
      nlohmann::json collectives = nlohmann::json::object();
      const dist::CollectiveStats stats = group->forward_stats();
      for (std::size_t kind = 0; kind < dist::kCollectiveKinds; ++kind) {
        const auto& counter = stats.by_kind[kind];
        if (counter.calls == 0) continue;
        collectives[std::string(dist::collective_name(static_cast<dist::Collective>(kind)))] = {
            {"calls", counter.calls}, {"bytes", counter.bytes}, {"seconds", counter.seconds}};
      }
      out["collectives"] = collectives;
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::printf("\n");
  }
  spdlog::info("generation_done prompt_tokens={} tokens={} finish={} prefill_tok_s={:.1f} decode_tok_s={:.1f}",
               request.prompt.size(), result.tokens.size(), scheduler::finish_reason_name(result.finish), prefill_rate,
               decode_rate);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt on the CPU");
  cmd->add_option("-m,--model", options->model, "Model folder (Hugging Face) or .gguf file")->required();
  auto* prompt = cmd->add_option("-p,--prompt", options->prompt, "Prompt text");
  auto* prompt_file = cmd->add_option("--prompt-file", options->prompt_file, "Read the prompt from a file");
  auto* prompt_ids = cmd->add_option("--prompt-ids", options->prompt_ids, "Prompt as token ids (comma separated)")
                         ->delimiter(',');
  prompt->excludes(prompt_file)->excludes(prompt_ids);
  prompt_file->excludes(prompt_ids);
  cmd->add_flag("--no-special", options->no_special, "Do not add BOS/EOS tokens to the prompt");
  cmd->add_option("-n,--max-tokens", options->max_tokens, "Tokens to generate at most")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", options->temperature, "0 = greedy (default: model's generation_config, else 0)");
  cmd->add_option("--top-k", options->top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", options->top_p, "Nucleus sampling mass (1 = off)");
  cmd->add_option("--min-p", options->min_p, "Drop tokens below min_p x the top probability")->capture_default_str();
  cmd->add_option("--repetition-penalty", options->repetition_penalty, "HF-style repetition penalty (1 = off)");
  cmd->add_option("--presence-penalty", options->presence_penalty, "OpenAI-style presence penalty");
  cmd->add_option("--frequency-penalty", options->frequency_penalty, "OpenAI-style frequency penalty");
  cmd->add_option("--seed", options->seed, "Random seed; same seed, same output")->capture_default_str();
  cmd->add_option("-t,--threads", options->threads, "CPU threads (0 = all cores)")->capture_default_str();
  add_device_flag(cmd, options->device);
  add_activation_flags(cmd, options->activations);
  cmd->add_option("--prefill-chunk", options->prefill_chunk, "Prompt tokens per forward pass")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--ignore-eos", options->ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_flag("--json", options->json, "Print one JSON object with ids, text and timings instead of streaming");
  cmd->add_option("--tensor-parallel-size", options->tensor_parallel_size,
                  "Ranks the model is split across: run under `mpirun -np N` (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--pipeline-parallel-size", options->pipeline_parallel_size,
                  "Stages the layers are split into, each on --tensor-parallel-size x --expert-parallel-size "
                  "ranks: run under `mpirun -np T*E*P` (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--expert-parallel-size", options->expert_parallel_size,
                  "Expert groups the routed experts are dealt out to, each of --tensor-parallel-size ranks: run "
                  "under `mpirun -np T*E*P` (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--pipeline-micro-batches", options->pipeline_micro_batches,
                  "Groups each step's sequences pass the stages in (0: as many as stages; docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_flag("--warmup", options->warmup,
                "Run the prompt and one decode step once, untimed, before the timed run (as llama-bench does)");
  cmd->add_flag("--expand-quantized", options->expand_quantized,
                "Expand quantized weights to float32 at load (a benchmark baseline; ~8x the weight memory)");
  cmd->callback([options] { run_generate(*options); });
}

}  // namespace nibble::cli
