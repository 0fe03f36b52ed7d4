// `nibble plan`: will a model fit, at a weight format, context and concurrency, on
// these GPUs or in this much memory, and if not, what would? Arithmetic only: it
// reads a config.json (any supported architecture, run by the engine or not) or a
// real checkpoint's tensor sizes, and never loads weights into memory.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <tuple>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "engine/model_stats.h"
#include "engine/paged_kv_cache.h"
#include "engine/split_weights.h"
#include "loader/architecture.h"
#include "loader/json_file.h"
#include "loader/listed_weights.h"
#include "loader/model_shape.h"
#include "loader/model_source.h"
#include "scheduler/byte_size.h"
#include "scheduler/memory_plan.h"

namespace nibble::cli {
namespace {

using scheduler::format_bytes;

struct PlanOptions {
  std::string config;
  std::string model;
  int bits = 16;
  int group_size = 128;
  bool quantize_embeddings = false;
  std::string gpu_memory;
  std::int64_t gpus = 0;
  double utilization = 0.9;
  std::int64_t gpus_per_node = 8;
  std::string memory_budget;
  std::int64_t context = 0;
  std::int64_t concurrency = 1;
  std::int64_t max_batched_tokens = 2048;
  int kv_bits = 16;
  bool as_json = false;
  // Which optional flags were given (CLI11 fills the fields above either way).
  bool bits_given = false;
  bool gpus_given = false;
  bool context_given = false;
};

struct PlannedModel {
  std::string path;
  ModelShape shape;
  std::optional<std::uint64_t> measured_weight_bytes;
  // Where the engine runs the architecture: its config, and the model's tensors
  // (the checkpoint's, or a config's listed as its checkpoint stores them), which
  // serve's own functions size ranks and KV by.
  std::optional<ModelConfig> config;
  std::function<ModelSource()> open;
};

// A config.json as its checkpoint stores it: FP8 blocks where its
// quantization_config says so (DeepSeek-V3), bfloat16 otherwise.
ListedFormat listed_format(const nlohmann::json& config) {
  const auto q = config.find("quantization_config");
  if (q == config.end() || !q->is_object() || q->value("quant_method", "") != "fp8") return {};
  const auto block = q->find("weight_block_size");
  if (block == q->end() || !block->is_array() || block->size() != 2 || (*block)[0] != (*block)[1]) return {};
  return {(*block)[0].get<std::int64_t>()};
}

// A config.json is planned from its shape; a real checkpoint (--model) from the
// bytes its tensors take, unless --bits asks what another format would take. A
// config of an architecture the engine runs is listed as its checkpoint (without
// --bits), so its bytes per rank come from the shard mapping too.
PlannedModel read_model(const PlanOptions& options) {
  if (!options.config.empty()) {
    PlannedModel planned{options.config, read_model_shape(options.config), std::nullopt, std::nullopt, {}};
    const std::filesystem::path path = options.config;
    const nlohmann::json json = read_json_file(std::filesystem::is_directory(path) ? path / "config.json" : path);
    const auto names = json.value("architectures", nlohmann::json::array());
    const bool engine_runs = !names.empty() && names[0].is_string() &&
                             find_hf_architecture(names[0].get<std::string>()) != nullptr;
    if (options.bits_given || !engine_runs) return planned;
    ModelConfig config = parse_hf_config(json);
    const ListedFormat format = listed_format(json);
    planned.open = [config, format] {
      ModelSource source;
      source.config = config;
      source.weights = listed_weights(config, format);
      return source;
    };
    planned.measured_weight_bytes = engine::compute_model_stats(planned.open()).stored_bytes;
    planned.config = std::move(config);
    return planned;
  }
  const ModelSource source = open_model(options.model);
  PlannedModel planned{options.model, model_shape_from_config(source.config), std::nullopt, source.config, {}};
  if (!options.bits_given) {
    planned.measured_weight_bytes = engine::compute_model_stats(source).stored_bytes;
    planned.open = [path = options.model] { return open_model(path); };
  }
  return planned;
}

engine::KvDtype kv_dtype_of(const scheduler::PlanInputs& inputs) {
  return inputs.kv_bytes == 4 ? engine::KvDtype::Float32
                              : inputs.kv_bytes == 2 ? engine::KvDtype::Float16 : engine::KvDtype::Int8;
}

scheduler::PlanInputs plan_inputs(const PlanOptions& options, const PlannedModel& model) {
  scheduler::PlanInputs inputs;
  inputs.weights = {options.bits, options.group_size, options.quantize_embeddings};
  inputs.measured_weight_bytes = model.measured_weight_bytes;
  inputs.kv_bytes = options.kv_bits / 8;
  if (options.context_given) inputs.context = options.context;
  if (model.config) inputs.kv_bytes_per_token = engine::kv_bytes_per_token(*model.config, kv_dtype_of(inputs));
  if (model.open) {
    // Serve's shard mapping, once per layout the search looks at.
    auto cache = std::make_shared<std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::uint64_t>>();
    inputs.rank_weight_bytes = [open = model.open, cache](const scheduler::Parallelism& layout) {
      const auto key = std::make_tuple(layout.tensor, layout.expert, layout.pipeline);
      if (const auto it = cache->find(key); it != cache->end()) return it->second;
      const engine::SplitSizes sizes{static_cast<int>(layout.tensor), static_cast<int>(layout.expert),
                                     static_cast<int>(layout.pipeline)};
      return (*cache)[key] = engine::max_rank_weight_bytes(open, sizes);
    };
  }
  inputs.concurrency = options.concurrency;
  inputs.max_batched_tokens = options.max_batched_tokens;
  if (!options.gpu_memory.empty()) {
    scheduler::GpuMemory gpu;
    gpu.bytes_per_gpu = scheduler::parse_byte_size(options.gpu_memory);
    gpu.utilization = options.utilization;
    gpu.gpus_per_node = options.gpus_per_node;
    if (options.gpus_given) gpu.gpus = options.gpus;
    inputs.memory = gpu;
  } else if (!options.memory_budget.empty()) {
    inputs.memory = scheduler::CpuMemory{scheduler::parse_byte_size(options.memory_budget)};
  } else {
    fail("say where the model runs: --gpu-memory SIZE (per GPU, e.g. 80GB) or --memory-budget SIZE (CPU)");
  }
  return inputs;
}

std::string weight_format(const scheduler::MemoryPlan& plan, const scheduler::PlanInputs& inputs) {
  if (inputs.measured_weight_bytes) return fmt::format("as stored ({:.2f} bits a weight)", plan.bits_per_weight);
  if (inputs.weights.bits == 16) return "16-bit";
  const std::string groups = inputs.weights.group_size > 0 ? fmt::format(" g{}", inputs.weights.group_size) : "";
  return fmt::format("{}-bit{} ({:.2f} bits a weight{})", inputs.weights.bits, groups, plan.bits_per_weight,
                     inputs.weights.quantize_embeddings ? "" : "; embeddings, lm_head, norms 16-bit");
}

// The `nibble serve` command line that runs the plan: the split it recommends,
// the context and concurrency it sized the KV cache for, and its KV precision.
std::string serve_command(const PlanOptions& options, const scheduler::PlanInputs& inputs,
                          const scheduler::MemoryPlan& plan) {
  const std::string model = options.model.empty() ? "CHECKPOINT" : options.model;
  const char* kv_dtype = inputs.kv_bytes == 4 ? "float32" : inputs.kv_bytes == 2 ? "float16" : "int8";
  std::string command;
  const auto ranks = plan.on_gpu ? plan.parallelism.gpus() : 1;
  if (ranks > 1) command += fmt::format("mpirun -np {} ", ranks);
  command += fmt::format("nibble serve -m {}", model);
  if (plan.on_gpu) {
    command += " --device cuda";
    if (plan.parallelism.tensor > 1) command += fmt::format(" --tensor-parallel-size {}", plan.parallelism.tensor);
    if (plan.parallelism.expert > 1) command += fmt::format(" --expert-parallel-size {}", plan.parallelism.expert);
    if (plan.parallelism.pipeline > 1) command += fmt::format(" --pipeline-parallel-size {}", plan.parallelism.pipeline);
  } else {
    command += fmt::format(" --memory-budget {}", options.memory_budget);
  }
  command += fmt::format(" --max-model-len {} --max-num-seqs {} --kv-cache-dtype {}", plan.context, plan.concurrency,
                         kv_dtype);
  return command;
}

// What is unproven about that command in this build (docs/parallel.md), or "".
std::string command_caveat(const scheduler::MemoryPlan& plan) {
  if (!plan.on_gpu || plan.parallelism.gpus() == 1) return "";
  return "GPU ranks (NCCL) are wired but have not run on a GPU yet: check with scripts/gpu-tp-check first "
         "(docs/parallel.md)";
}

nlohmann::json plan_json(const PlanOptions& options, const PlannedModel& model, const scheduler::PlanInputs& inputs,
                         const scheduler::MemoryPlan& plan) {
  const ParameterGroups& p = model.shape.parameters;
  nlohmann::json alternatives = nlohmann::json::array();
  for (const auto& alternative : plan.alternatives) alternatives.push_back(alternative.description);
  return {
      {"model", model.path},
      {"architecture", model.shape.architecture},
      {"parameters",
       {{"total", p.total()},
        {"embedding", p.embedding},
        {"lm_head", p.lm_head},
        {"attention", p.attention},
        {"dense_mlp", p.dense_mlp},
        {"experts", p.experts},
        {"norms_and_biases", p.norms_and_biases},
        {"mtp_not_counted", model.shape.mtp_parameters}}},
      {"device", plan.on_gpu ? "gpu" : "cpu"},
      {"weight_bits", inputs.measured_weight_bytes ? nlohmann::json() : nlohmann::json(inputs.weights.bits)},
      {"bits_per_weight", plan.bits_per_weight},
      {"weight_bytes", plan.weight_bytes},
      {"weight_bytes_measured", inputs.measured_weight_bytes.has_value()},
      {"kv_bytes_per_token", plan.kv_bytes_per_token},
      {"context", plan.context},
      {"concurrency", plan.concurrency},
      {"kv_bytes_needed", plan.kv_bytes_needed},
      {"workspace_bytes", plan.workspace_bytes},
      {"total_bytes", plan.total_bytes},
      {"budget_bytes", plan.budget_bytes},
      {"budget_to_weights", plan.budget_to_weights},
      {"tensor_parallel", plan.parallelism.tensor},
      {"expert_parallel", plan.parallelism.expert},
      {"device_weight_bytes_from", inputs.rank_weight_bytes ? "shard mapping" : "estimate"},
      {"kv_values_per_token_per_layer",
       model.shape.kv_elements_per_token / std::max<std::int64_t>(model.shape.num_layers, 1)},
      {"pipeline_parallel", plan.parallelism.pipeline},
      {"gpus", plan.on_gpu ? nlohmann::json(plan.parallelism.gpus()) : nlohmann::json()},
      {"device_weight_bytes", plan.device_weight_bytes},
      {"device_bytes_needed", plan.device_bytes_needed},
      {"device_budget_bytes", plan.device_budget_bytes},
      {"kv_token_capacity", plan.kv_token_capacity},
      {"fits", plan.fits},
      {"refusal", plan.refusal},
      {"alternatives", alternatives},
      {"command", plan.fits ? nlohmann::json(serve_command(options, inputs, plan)) : nlohmann::json()},
      {"command_caveat", command_caveat(plan)},
  };
}

std::string count(std::int64_t parameters) {
  const auto value = static_cast<double>(parameters);
  return value >= 1e9 ? fmt::format("{:.2f} B", value / 1e9) : fmt::format("{:.2f} M", value / 1e6);
}

void print_table(const PlanOptions& options, const PlannedModel& model, const scheduler::PlanInputs& inputs, const scheduler::MemoryPlan& plan) {
  const ParameterGroups& p = model.shape.parameters;
  const auto bytes = [](std::uint64_t value) { return format_bytes(static_cast<double>(value)); };
  fmt::print("model          {} ({})\n", model.path, model.shape.architecture);
  fmt::print("parameters     {}: embedding {}, lm_head {}, attention {}, dense MLP {}, experts {}, norms/biases {}\n",
             count(p.total()), count(p.embedding), count(p.lm_head), count(p.attention),
             count(p.dense_mlp), count(p.experts), count(p.norms_and_biases));
  if (model.shape.mtp_parameters > 0) {
    fmt::print("               (+ {} multi-token-prediction module, not loaded)\n", count(model.shape.mtp_parameters));
  }
  fmt::print("weights        {}, {}\n", bytes(plan.weight_bytes), weight_format(plan, inputs));
  fmt::print("kv cache       {} a token x {} tokens x {} sequences = {} ({}-bit)\n", bytes(plan.kv_bytes_per_token),
             plan.context, plan.concurrency, bytes(plan.kv_bytes_needed), inputs.kv_bytes * 8);
  if (model.shape.attention_kind == AttentionKind::LatentMla) {
    fmt::print("               latent: {} values a token per layer x {} layers ({} bytes a token{})\n",
               model.shape.kv_elements_per_token / model.shape.num_layers, model.shape.num_layers,
               plan.kv_bytes_per_token, inputs.kv_bytes_per_token ? ", as serve sizes its cache" : "");
  }
  fmt::print("workspace      {} a device ({} batched tokens)\n", bytes(plan.workspace_bytes),
             inputs.max_batched_tokens);
  if (plan.on_gpu) {
    fmt::print("layout         {} GPUs: tensor parallel {} x expert parallel {} x pipeline {}\n",
               plan.parallelism.gpus(), plan.parallelism.tensor, plan.parallelism.expert, plan.parallelism.pipeline);
    if (plan.parallelism.expert > 1) {
      fmt::print("               each stage's {} GPUs split attention; {} expert groups of {} GPUs hold {} routed "
                 "experts each\n",
                 plan.parallelism.group(), plan.parallelism.expert, plan.parallelism.tensor,
                 model.shape.routed_experts / plan.parallelism.expert);
    }
    // Per rank as serve splits it: the replicated weights whole on every tensor rank,
    // and an MLA model's latent KV cache whole on each (its heads alone are split).
    fmt::print("per GPU        needs {} of {} usable (weights {}{})\n", bytes(plan.device_bytes_needed),
               bytes(plan.device_budget_bytes), bytes(plan.device_weight_bytes),
               model.shape.attention_kind == AttentionKind::LatentMla && plan.parallelism.group() > 1
                   ? "; the latent KV cache is whole on every tensor rank"
                   : "");
  }
  fmt::print("total          {} of {} usable ({:.2f} x the weights; at least {:.1f} x)\n", bytes(plan.total_bytes),
             bytes(plan.budget_bytes), plan.budget_to_weights, scheduler::kMinBudgetToWeights);
  fmt::print("kv capacity    {} tokens\n", plan.kv_token_capacity);
  fmt::print("result         {}\n", plan.fits ? "fits" : "does not fit");
  for (const auto& alternative : plan.alternatives) fmt::print("  instead      {}\n", alternative.description);
  if (plan.fits) {
    fmt::print("command        {}\n", serve_command(options, inputs, plan));
    if (const std::string caveat = command_caveat(plan); !caveat.empty()) fmt::print("               ({})\n", caveat);
  }
}

void run_plan(const PlanOptions& options) {
  const PlannedModel model = read_model(options);
  const scheduler::PlanInputs inputs = plan_inputs(options, model);
  const scheduler::MemoryPlan plan = scheduler::plan_memory(model.shape, inputs);
  if (options.as_json) {
    fmt::print("{}\n", plan_json(options, model, inputs, plan).dump(2));
  } else {
    print_table(options, model, inputs, plan);
  }
  std::fflush(stdout);
  scheduler::check_fits(plan);  // a refusal exits non-zero with the reasons and the alternatives
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Memory plan: weights, KV cache and workspace against GPU or CPU memory; GPUs needed; what fits");
  auto* config = cmd->add_option("--config", options->config, "A Hugging Face config.json, or a folder holding one");
  auto* model = cmd->add_option("-m,--model", options->model,
                                "A model folder or .gguf file: plans with the bytes its tensors really take");
  config->excludes(model);
  cmd->add_option("--bits", options->bits, "Weight bits of the linear layers: 16, 8 (FP8/INT8), 4, 3, 2")
      ->check(CLI::IsMember({16, 8, 4, 3, 2}))
      ->capture_default_str();
  cmd->add_option("--group-size", options->group_size, "Quantization group size (0: per channel or FP8 blocks)")
      ->capture_default_str();
  cmd->add_flag("--quantize-embeddings", options->quantize_embeddings,
                "Embedding and lm_head at --bits too (default: kept 16-bit)");
  auto* gpu_memory = cmd->add_option("--gpu-memory", options->gpu_memory, "Memory of each GPU (80GB, 80GiB, 141GB)");
  auto* gpus = cmd->add_option("--gpus", options->gpus, "GPU count (default: the smallest that fits)");
  auto* utilization = cmd->add_option("--gpu-memory-utilization", options->utilization,
                                      "Share of each GPU's memory the server may use")
                          ->capture_default_str();
  auto* per_node = cmd->add_option("--gpus-per-node", options->gpus_per_node,
                                   "GPUs in one node: tensor parallelism stays within it")
                       ->capture_default_str();
  auto* budget =
      cmd->add_option("--memory-budget", options->memory_budget, "CPU memory budget instead of GPUs (24GiB)");
  gpus->needs(gpu_memory);
  utilization->needs(gpu_memory);
  per_node->needs(gpu_memory);
  budget->excludes(gpu_memory);
  cmd->add_option("--context", options->context, "Tokens per sequence (default: the model's max_position_embeddings)");
  cmd->add_option("--concurrency", options->concurrency, "Sequences with their KV cache resident at once")
      ->capture_default_str();
  cmd->add_option("--max-batched-tokens", options->max_batched_tokens,
                  "Tokens one step processes (activation workspace)")
      ->capture_default_str();
  cmd->add_option("--kv-bits", options->kv_bits,
                  "KV-cache bits: 16 or 8 (nibble serve's CPU cache: 32 float32, 16 float16, 8 int8)")
      ->check(CLI::IsMember({32, 16, 8}))
      ->capture_default_str();
  cmd->add_flag("--json", options->as_json, "Print JSON");
  cmd->callback([cmd, options] {
    if (cmd->count("--config") + cmd->count("--model") == 0) fail("nibble plan needs --config or --model");
    options->bits_given = cmd->count("--bits") > 0;
    options->gpus_given = cmd->count("--gpus") > 0;
    options->context_given = cmd->count("--context") > 0;
    run_plan(*options);
  });
}

}  // namespace nibble::cli
