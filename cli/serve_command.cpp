// `nibble serve`: the OpenAI-compatible HTTP server. Listens at once (/health
// says 503 while the model loads), serves until SIGTERM/SIGINT, then stops
// accepting, lets in-flight requests finish up to the drain timeout and exits 0.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include "chat/chat_template.h"
#include "cli/backend_options.h"
#include "cli/commands.h"
#include "cli/load_progress.h"
#include "cli/stalling_model.h"
#include "cli/parallel_group.h"
#include "common/error.h"
#include "common/log.h"
#include "engine/decoder_model.h"
#include "engine/plan_broadcast.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "scheduler/batch_scheduler.h"
#include "scheduler/byte_size.h"
#include "scheduler/memory_plan.h"
#include "loader/model_shape.h"
#include "server/completion_service.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "tokenizer/tokenizer.h"

namespace nibble::cli {
namespace {

using namespace std::chrono;

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;
  std::uint16_t probe_port = 0;  // 0: none
  std::string served_model_name;
  std::string device = "cpu";
  int threads = 0;
  ActivationFlags activations;
  int io_threads = 2;
  std::string chat_template_file;
  bool special_tokens_in_messages = false;
  std::string tool_call_parser = "auto";
  std::string api_key;
  bool public_probes = true;
  std::int64_t max_model_len = 0;
  std::int64_t max_tokens = 0;
  std::int64_t max_queued = 64;
  std::size_t max_body_bytes = std::size_t{1} << 20;
  std::size_t max_connections = 1024;
  double header_timeout = 10;
  double read_timeout = 30;
  double request_timeout = 600;
  double drain_timeout = 30;
  std::string metrics_compat = "none";
  double readiness_stall_seconds = 10;
  double liveness_stall_seconds = 60;
  std::int64_t test_stall_after_steps = -1;  // test-only: hang the step loop after N steps
  std::int64_t max_num_seqs = 32;
  std::int64_t max_num_batched_tokens = 512;
  std::int32_t block_size = 16;
  std::string kv_cache_memory = "auto";
  std::string kv_cache_dtype = "float32";
  std::string memory_budget;  // the whole process: weights + KV + workspace
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int pipeline_micro_batches = 1;
  int expert_parallel_size = 1;
  double collective_timeout = 30;
};

// The KV cache's share of memory: given, or by default as much as the weights
// (runtime memory ≈ 2 × model size, inside the 1.2–2 × rule), at least 256 MiB,
// and never more than every sequence filling the context would use.
engine::KvDtype kv_dtype(const ServeOptions& options) { return engine::parse_kv_dtype(options.kv_cache_dtype); }

std::int32_t kv_blocks(const ServeOptions& options, const engine::Model& model, std::int64_t context) {
  const std::uint64_t per_block =
      engine::kv_bytes_per_token(model.config(), kv_dtype(options)) * static_cast<std::uint64_t>(options.block_size);
  std::uint64_t budget = 0;
  if (!options.memory_budget.empty()) {
    // The planner's rule: runtime memory ≈ model size × 1.2–2. Below 1.2 × the
    // weights, or without room for one full-context sequence, refuse with the
    // numbers and what would fit; otherwise the KV cache gets what is left.
    scheduler::PlanInputs inputs;
    inputs.measured_weight_bytes = model.weight_bytes();
    inputs.kv_bytes = kernels::kv_element_bytes(kv_dtype(options));
    inputs.context = context;
    inputs.concurrency = 1;
    inputs.max_batched_tokens = options.max_num_batched_tokens;
    inputs.memory = scheduler::CpuMemory{scheduler::parse_byte_size(options.memory_budget)};
    const auto plan = scheduler::plan_memory(model_shape_from_config(model.config()), inputs);
    scheduler::check_fits(plan);
    budget = static_cast<std::uint64_t>(plan.kv_token_capacity) * plan.kv_bytes_per_token;
    spdlog::info("memory_plan budget={} weights={} workspace={} kv={} ratio={:.2f}",
                 scheduler::format_bytes(static_cast<double>(plan.budget_bytes)),
                 scheduler::format_bytes(static_cast<double>(plan.weight_bytes)),
                 scheduler::format_bytes(static_cast<double>(plan.workspace_bytes)),
                 scheduler::format_bytes(static_cast<double>(budget)), plan.budget_to_weights);
  } else if (options.kv_cache_memory == "auto") {
    budget = scheduler::default_kv_budget(per_block, options.block_size, options.max_num_seqs, context,
                                          model.weight_bytes());
  } else {
    budget = scheduler::parse_byte_size(options.kv_cache_memory);
  }
  const std::uint64_t blocks = budget / per_block;
  if (blocks < 2) {
    const std::string source = !options.memory_budget.empty()    ? "the KV-cache share of --memory-budget"
                               : options.kv_cache_memory == "auto" ? "the automatic KV-cache size"
                                                                   : "--kv-cache-memory";
    fail("{} {} holds no more than one block of {} positions ({} per block); set a larger --kv-cache-memory",
         source, scheduler::format_bytes(static_cast<double>(budget)), options.block_size,
         scheduler::format_bytes(static_cast<double>(per_block)));
  }
  return static_cast<std::int32_t>(std::min<std::uint64_t>(blocks, 1U << 30));
}

// `group`: rank 0 of a split model's group, which tells the other ranks the
// KV cache's size and sends them every step's plan.
std::unique_ptr<scheduler::Scheduler> make_scheduler(const ServeOptions& options, engine::Model& model,
                                                     std::int64_t context, ParallelGroup* group,
                                                     server::ServerMetrics* metrics) {
  scheduler::BatchSchedulerOptions batch;
  batch.max_num_seqs = options.max_num_seqs;
  batch.max_num_batched_tokens = options.max_num_batched_tokens;
  batch.block_size = options.block_size;
  batch.num_blocks = kv_blocks(options, model, context);
  if (group != nullptr) {
    share_from_leader(*group, batch.num_blocks);
    // On the step thread, before each step: the collectives so far into the
    // metrics (read where they are written), then the plan to the other ranks.
    batch.before_step = [send = engine::plan_sender(*group->plans), group, metrics](const engine::StepPlan& plan) {
      metrics->observe_collectives(group->forward_stats());
      send(plan);
    };
  } else if (model.config().moe.enabled() && metrics != nullptr) {
    // On the step thread, before each step: the experts' token counts so far
    // (read where they are written) into the metrics.
    batch.before_step = [&model, metrics](const engine::StepPlan&) { metrics->observe_expert_load(model.expert_load()); };
  }
  batch.kv_dtype = kv_dtype(options);
  batch.max_waiting = options.max_queued;
  spdlog::info("kv_cache blocks={} block_size={} dtype={} bytes={} max_num_seqs={} max_num_batched_tokens={}",
               batch.num_blocks, batch.block_size, options.kv_cache_dtype,
               engine::kv_bytes_per_token(model.config(), batch.kv_dtype) *
                   static_cast<std::uint64_t>(batch.block_size) * static_cast<std::uint64_t>(batch.num_blocks),
               batch.max_num_seqs, batch.max_num_batched_tokens);
  return std::make_unique<scheduler::BatchScheduler>(model, batch);
}

milliseconds to_ms(double seconds) { return milliseconds(static_cast<std::int64_t>(seconds * 1000.0)); }

// The name clients send as "model": the folder's name, or the file's without .gguf.
std::string default_model_name(const std::filesystem::path& path) {
  auto clean = path.lexically_normal();
  if (!clean.has_filename()) clean = clean.parent_path();
  return clean.extension() == ".gguf" ? clean.stem().string() : clean.filename().string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read chat template {}", path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// SIGTERM and SIGINT, received by one thread with sigwait so no other thread
// (I/O, kernels, the scheduler) is interrupted. The first asks for a graceful
// stop; a second while draining, or one while the model is still loading (there
// is nothing to drain), ends the process at once.
class ShutdownSignal {
 public:
  ShutdownSignal() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGINT);
    // Blocked before any other thread starts, so every thread inherits the mask.
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    waiter_ = std::thread([this] { wait_loop(); });
  }
  ~ShutdownSignal() { waiter_.detach(); }

  void serving() {
    const std::lock_guard lock(mutex_);
    serving_ = true;
  }
  int wait() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return received_ != 0; });
    return received_;
  }

 private:
  void wait_loop() {
    while (true) {
      int signal = 0;
      if (sigwait(&signals_, &signal) != 0) continue;
      std::unique_lock lock(mutex_);
      if (!serving_ || received_ != 0) {
        spdlog::warn("shutdown_now signal={} reason={}", signal, serving_ ? "second_signal" : "still_loading");
        spdlog::default_logger()->flush();
        std::_Exit(serving_ ? 1 : 0);
      }
      received_ = signal;
      changed_.notify_all();
    }
  }

  sigset_t signals_{};
  std::mutex mutex_;
  std::condition_variable changed_;
  bool serving_ = false;
  int received_ = 0;
  std::thread waiter_;
};

// Ranks 1..N-1 of a split model's server: their share of the model, a KV
// cache as large as rank 0 chose, and rank 0's plans run until it stops them.
void run_serve_worker(const ServeOptions& options, kernels::Backend& backend, ParallelGroup& group,
                      ShutdownSignal& shutdown) {
  shutdown.serving();  // a SIGTERM is rank 0's to act on: it drains, then ends the loop below
  ShardedModel sharded = shard_for(open_model(options.model), group);
  engine::DecoderModel model(sharded.source, backend, sharded.options);
  const auto blocks = static_cast<std::int32_t>(share_from_leader(group, 0));
  engine::ModelRunner runner(model, blocks, options.block_size, kv_dtype(options));
  spdlog::info("parallel_worker_ready rank={} kv_blocks={} weight_bytes={}", group.rank(), blocks,
               model.weight_memory().total);
  const std::int64_t steps = engine::run_plan_receiver(runner, *group.plans);
  spdlog::info("parallel_worker_done rank={} steps={}", group.rank(), steps);
}

void run_serve(const ServeOptions& options, ShutdownSignal& shutdown, kernels::Backend& backend,
               ParallelGroup* group);

void run_serve(const ServeOptions& options) {
  // Before any thread starts (the backend's pool among them), so SIGTERM reaches only its waiter.
  ShutdownSignal shutdown;
  // Then a device that cannot run here fails before the port is taken.
  const ParallelSizes sizes{options.tensor_parallel_size, options.pipeline_parallel_size,
                            options.pipeline_micro_batches, options.expert_parallel_size};
  const auto backend_owner = make_backend(rank_device(options.device, sizes), options.threads, options.activations);
  auto group = join_parallel_group(
      sizes,
      fmt::format("nibble {} serve model={} device={} threads={} int8_activations={} kv={} block_size={} tp={} pp={} "
                  "micro_batches={} ep={}",
                  NIBBLE_VERSION, options.model, options.device, options.threads, options.activations.use_int8(),
                  options.kv_cache_dtype, options.block_size, options.tensor_parallel_size,
                  options.pipeline_parallel_size, options.pipeline_micro_batches, options.expert_parallel_size),
      *backend_owner, to_ms(options.collective_timeout));
  try {
    if (group && !group->leader()) {
      run_serve_worker(options, *backend_owner, *group, shutdown);
    } else {
      run_serve(options, shutdown, *backend_owner, group ? &*group : nullptr);
    }
  } catch (const std::exception& e) {
    if (!group) throw;
    // One rank cannot go on, so none can: end them all, with this rank's reason.
    spdlog::error("parallel_rank_failed rank={} error=\"{}\"", group->rank(), log::clip(e.what()));
    spdlog::default_logger()->flush();
    group->world->abort_group(1);
  }
}

void run_serve(const ServeOptions& options, ShutdownSignal& shutdown, kernels::Backend& backend,
               ParallelGroup* group) {
  const std::string name =
      options.served_model_name.empty() ? default_model_name(options.model) : options.served_model_name;
  std::optional<std::string> api_key;
  if (!options.api_key.empty()) {
    api_key = options.api_key;
  } else if (const char* env = std::getenv("NIBBLE_API_KEY"); env != nullptr && *env != '\0') {
    api_key = env;
  }

  server::ServerMetrics metrics(name, options.metrics_compat == "vllm" ? server::MetricsCompat::Vllm
                                                                       : server::MetricsCompat::None);
  server::OpenAiApi api({api_key, options.public_probes, NIBBLE_VERSION, 1,
                         {options.readiness_stall_seconds, options.liveness_stall_seconds},
                         options.tensor_parallel_size, options.pipeline_parallel_size, options.expert_parallel_size},
                        metrics);
  if (group != nullptr) {
    metrics.set_parallel_ranks(options.tensor_parallel_size, options.pipeline_parallel_size,
                               options.expert_parallel_size);
  }
  server::HttpLimits limits;
  limits.max_body_bytes = options.max_body_bytes;
  limits.header_timeout = to_ms(options.header_timeout);
  limits.read_timeout = to_ms(options.read_timeout);
  limits.max_connections = options.max_connections;
  server::HttpServer http(options.host, options.port, limits, api, options.io_threads,
                          options.probe_port != 0 ? std::optional(options.probe_port) : std::nullopt);
  spdlog::info("server_listening url=http://{}:{} model={} auth={}", options.host, http.port(), name,
               api_key ? "api_key" : "none");
  if (const auto probe_port = http.probe_port()) {
    spdlog::info("probe_listening url=http://{}:{}/health", options.host, *probe_port);
  }

  const auto load_start = steady_clock::now();
  ModelSource source = open_model(options.model);
  const auto tokenizer = load_tokenizer(source.path);
  std::optional<ShardedModel> sharded;
  if (group != nullptr) sharded.emplace(shard_for(open_model(options.model), *group));
  engine::DecoderModel model(sharded ? sharded->source : source, backend, sharded ? sharded->options : engine::ModelOptions{},
                             load_progress_reporter([&metrics](double fraction) { metrics.set_load_progress(fraction); }));
  const double load_seconds = duration<double>(steady_clock::now() - load_start).count();
  const auto& memory = model.weight_memory();
  metrics.set_model(load_seconds, {{"quantized", memory.quantized_resident},
                                   {"dense", memory.total - memory.quantized_resident}});

  std::shared_ptr<const ChatTemplate> chat_template;
  const auto template_text =
      options.chat_template_file.empty() ? source.chat_template : std::optional(read_file(options.chat_template_file));
  if (template_text) {
    const auto bos = tokenizer->bos_id();
    const auto eos = tokenizer->eos_ids();
    try {
      chat_template = std::make_shared<ChatTemplate>(*template_text, bos ? tokenizer->token_bytes(*bos) : "",
                                                     eos.empty() ? "" : tokenizer->token_bytes(eos.front()));
    } catch (const Error& e) {
      // A broken template in a model file should not keep /v1/completions from serving.
      if (!options.chat_template_file.empty()) fail("chat template {}: {}", options.chat_template_file, e.what());
      spdlog::warn("chat_template_unusable model={} error=\"{}\" (chat requests will be refused)", name, e.what());
    }
  }

  server::ServedModel served;
  served.name = name;
  served.context_length = source.config.max_position_embeddings;
  if (options.max_model_len > 0) served.context_length = std::min(served.context_length, options.max_model_len);
  served.stop_tokens = source.generation.eos_token_ids;
  for (const auto id : tokenizer->eos_ids()) {
    if (std::find(served.stop_tokens.begin(), served.stop_tokens.end(), id) == served.stop_tokens.end()) {
      served.stop_tokens.push_back(id);
    }
  }
  // Changes when what decides the numbers changes (version, kernels, threads, weights).
  served.vocab_size = source.config.vocab_size;
  served.system_fingerprint = fmt::format(
      "fp_{:012x}", std::hash<std::string>{}(fmt::format("{}|{}|{}", NIBBLE_VERSION, backend.name(), source.path.string())) & 0xffffffffffffULL);
  served.chat_template = chat_template;
  served.special_tokens_in_messages = options.special_tokens_in_messages;
  if (template_text) {
    served.tool_call_format = server::tool_call_format_of_template(*template_text);
    served.template_renders_tools = template_text->find("tools") != std::string::npos;
    served.template_renders_tool_calls = template_text->find("tool_calls") != std::string::npos;
  }
  if (options.tool_call_parser != "auto") served.tool_call_format = *server::tool_call_format_named(options.tool_call_parser);

  std::optional<StallingModel> stalling;
  if (options.test_stall_after_steps >= 0) stalling.emplace(model, options.test_stall_after_steps);
  engine::Model& unguarded_model = stalling ? static_cast<engine::Model&>(*stalling) : model;
  std::optional<GroupGuardedModel> guarded;
  if (group != nullptr) guarded.emplace(unguarded_model, *group);
  engine::Model& stepped_model = guarded ? static_cast<engine::Model&>(*guarded) : unguarded_model;
  const auto scheduler_owner = make_scheduler(options, stepped_model, served.context_length, group, &metrics);
  scheduler::Scheduler& scheduler = *scheduler_owner;
  metrics.set_kv_cache_config(options.block_size, scheduler.load().kv_blocks_total, options.kv_cache_dtype);
  const auto request_timeout =
      options.request_timeout > 0 ? std::optional(to_ms(options.request_timeout)) : std::nullopt;
  server::CompletionService service(*tokenizer, scheduler, metrics, served, request_timeout);
  server::RequestLimits request_limits;
  request_limits.vocab_size = source.config.vocab_size;
  request_limits.max_tokens = options.max_tokens > 0 ? options.max_tokens : served.context_length;
  api.set_ready(service, scheduler, request_limits);
  shutdown.serving();
  spdlog::info("model_ready model={} path={} context={} weight_bytes={} chat_template={} load_seconds={:.2f}", name,
               source.path.string(), served.context_length, memory.total, chat_template ? "yes" : "no", load_seconds);

  const int signal = shutdown.wait();
  const auto drain_start = steady_clock::now();
  spdlog::info("shutdown_started signal={} drain_timeout_seconds={}", signal, options.drain_timeout);
  api.set_draining();
  http.stop_accepting();
  scheduler.stop(to_ms(options.drain_timeout));  // in-flight sequences finish (or are cancelled past the timeout)
  if (group != nullptr) engine::stop_plan_receivers(*group->plans);
  // Their last events are on their way to the connections: let them be written.
  const bool flushed = http.wait_until_idle(to_ms(std::max(1.0, options.read_timeout)));
  http.stop();
  spdlog::info("shutdown_done seconds={:.2f} all_answered={}",
               duration<double>(steady_clock::now() - drain_start).count(), flushed);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  cmd->add_option("-m,--model", options->model, "Model folder (Hugging Face) or .gguf file")->required();
  cmd->add_option("--host", options->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", options->port, "TCP port (0: any free port)")->capture_default_str();
  cmd->add_option("--probe-port", options->probe_port,
                  "A second port serving only /health, /health/live, /health/ready and /metrics, with its own "
                  "connections, so probes answer while the main port is flooded (0: none)")
      ->capture_default_str();
  cmd->add_option("--served-model-name", options->served_model_name,
                  "Model id clients send (default: folder name, or file name without .gguf)");
  cmd->add_option("-t,--threads", options->threads, "CPU threads for the model (0 = all cores)")->capture_default_str();
  add_activation_flags(cmd, options->activations);
  add_device_flag(cmd, options->device);
  cmd->add_option("--io-threads", options->io_threads, "Threads for HTTP I/O")->capture_default_str()->check(
      CLI::Range(1, 64));
  cmd->add_option("--chat-template", options->chat_template_file,
                  "Jinja chat template file (default: the model's own)");
  cmd->add_flag("--allow-special-tokens-in-messages", options->special_tokens_in_messages,
                "Match special tokens (<|im_start|>, ...) written in chat message text, letting clients write "
                "template markup; by default message text is plain text");
  cmd->add_option("--tool-call-parser", options->tool_call_parser,
                  "How the model writes tool calls: hermes, llama3_json, mistral, or auto (from its chat template)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "hermes", "llama3_json", "mistral"}));
  cmd->add_option("--api-key", options->api_key, "Require 'Authorization: Bearer KEY' (or set NIBBLE_API_KEY)");
  cmd->add_flag("!--no-public-probes", options->public_probes,
                "Require the API key for /health, /metrics, /version and /openapi.json too");
  cmd->add_option("--max-model-len", options->max_model_len, "Context length cap, prompt + completion (0 = model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-tokens", options->max_tokens, "Largest max_tokens a request may ask (0 = context length)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-num-seqs", options->max_num_seqs, "Sequences sharing one step at most")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-num-batched-tokens", options->max_num_batched_tokens,
                  "Tokens in one step at most (decodes + prefill chunks)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--block-size", options->block_size, "KV-cache block size in positions")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  auto* kv_memory = cmd->add_option("--kv-cache-memory", options->kv_cache_memory,
                                    "KV-cache size, e.g. 2GiB (auto: as much as the weights, at least 256 MiB)")
                        ->capture_default_str();
  // Aliases become the canonical name here, so logs name the dtype one way.
  const CLI::Validator kv_dtype_name(
      [](std::string& name) {
        try {
          name = engine::kv_dtype_name(engine::parse_kv_dtype(name));
          return std::string();
        } catch (const Error& e) {
          return std::string(e.what());
        }
      },
      "DTYPE");
  cmd->add_option("--kv-cache-dtype", options->kv_cache_dtype,
                  "float32; float16 or f16 (2x the tokens in the same memory, logits within ~0.06 %); or int8 "
                  "(one scale per position and head: ~4x the tokens)")
      ->capture_default_str()->transform(kv_dtype_name);
  cmd->add_option("--memory-budget", options->memory_budget,
                  "Memory for the whole model (weights + KV cache + workspace), e.g. 4GiB; refused below "
                  "1.2 x the weights; the KV cache gets the rest")
      ->excludes(kv_memory);
  cmd->add_option("--tensor-parallel-size", options->tensor_parallel_size,
                  "Ranks the model is split across (tensor parallelism): start N processes with `mpirun -np N "
                  "nibble serve ... --tensor-parallel-size N`; rank 0 serves HTTP (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--pipeline-parallel-size", options->pipeline_parallel_size,
                  "Stages the model's layers are split into (pipeline parallelism), each stage on "
                  "--tensor-parallel-size x --expert-parallel-size ranks: start T x E x P processes with "
                  "`mpirun -np T*E*P`")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--expert-parallel-size", options->expert_parallel_size,
                  "Expert groups the routed experts are dealt out to (expert parallelism), each of "
                  "--tensor-parallel-size ranks: a stage runs on T x E ranks, attention split over all of them; "
                  "num_experts must divide by E. Start T x E x P processes (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--pipeline-micro-batches", options->pipeline_micro_batches,
                  "With --pipeline-parallel-size: groups each step's sequences go through the stages in, so "
                  "the stages work at once (0: as many as stages). Each group re-reads a stage's weights, which "
                  "costs decode steps more than the overlap gains (docs/parallel.md)")
      ->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("--collective-timeout", options->collective_timeout,
                  "With --tensor- or --pipeline-parallel-size: seconds a collective may wait for the other ranks before the "
                  "group is declared failed and every rank ends")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-queued", options->max_queued, "Sequences that may wait for the model; beyond: 429")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-body-bytes", options->max_body_bytes, "Largest request body; beyond: 413")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-connections", options->max_connections, "Open connections at most")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--header-timeout", options->header_timeout,
                  "Seconds to receive a request's headers (idle keep-alive included)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--read-timeout", options->read_timeout,
                  "Seconds to receive a body, and for a client to take each write")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--request-timeout", options->request_timeout,
                  "Seconds a request may generate before it ends with finish_reason length (0 = none)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--drain-timeout", options->drain_timeout,
                  "On SIGTERM/SIGINT, seconds in-flight requests may take to finish")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--metrics-compat", options->metrics_compat,
                  "vllm: /metrics also exports vLLM's names and labels (vllm:num_requests_waiting{model_name}, "
                  "...), for vLLM's dashboards, autoscalers and routers")
      ->capture_default_str()->check(CLI::IsMember({"none", "vllm"}));
  cmd->add_option("--readiness-stall-seconds", options->readiness_stall_seconds,
                  "/health/ready (and /health) answer 503 once the step loop has had work without progress this "
                  "long")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--liveness-stall-seconds", options->liveness_stall_seconds,
                  "/health/live answers 503 once the step loop has had work without progress this long")
      ->capture_default_str()->check(CLI::PositiveNumber);
  // Hidden: fault injection for the probe tests (tests/e2e/health_test.py).
  cmd->add_option("--test-stall-after-steps", options->test_stall_after_steps)->group("");
  cmd->callback([options, &app] {
    // A server's one line per request is its info log: on unless asked otherwise.
    if (app.get_option("--log-level")->count() == 0) log::set_level("info");
    run_serve(*options);
  });
}

}  // namespace nibble::cli
