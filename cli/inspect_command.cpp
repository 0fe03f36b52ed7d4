// `nibble inspect`: what a model is and what it costs, without running it.
#include <fmt/format.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "engine/model_stats.h"
#include "engine/pipeline_stage.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"

namespace nibble::cli {
namespace {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return fmt::format("{:.2f} {}", bytes, units[unit]);
}

// Each rank's share under tensor (and expert) parallelism (loader/tensor_shard.h):
// the bytes of weights it maps or keeps, as stored, and its KV cache per token.
nlohmann::json tensor_parallel_shares(const std::string& model_path, int tensor, int expert,
                                      std::uint64_t whole_bytes) {
  nlohmann::json ranks = nlohmann::json::array();
  for (int rank = 0; rank < tensor * expert; ++rank) {
    ModelSource whole = open_model(model_path);
    const TensorShardLayout layout = plan_tensor_shard(whole.config, rank, tensor, expert);
    const engine::ModelStats share = engine::compute_model_stats(shard_model_source(std::move(whole), layout));
    ranks.push_back({{"rank", rank},
                     {"stored_bytes", share.stored_bytes},
                     {"fraction_of_whole", static_cast<double>(share.stored_bytes) / static_cast<double>(whole_bytes)},
                     {"kv_bytes_per_token_f32", share.kv_bytes_per_token_f32},
                     {"q_heads", layout.q_heads},
                     {"kv_heads", layout.kv_heads},
                     {"intermediate", layout.intermediate},
                     {"expert_rank", layout.expert_rank},
                     {"first_expert", layout.first_expert},
                     {"experts", layout.experts},
                     {"expert_intermediate", layout.expert_intermediate},
                     {"shared_expert_intermediate", layout.shared_intermediate},
                     {"vocab", layout.vocab}});
  }
  return ranks;
}

// Each stage's share under pipeline parallelism (engine/pipeline_stage.h): its
// layers, the weights it keeps as stored (its layers' tensors; the embedding on
// the first stage, the final norm and lm_head on the last, the embedding there
// too when lm_head is tied to it) and its KV cache per token.
nlohmann::json pipeline_stages(const ModelSource& source, int stages, const engine::ModelStats& stats) {
  const ModelConfig& c = source.config;
  const std::vector<StoredTensorInfo> tensors = source.weights->list();
  nlohmann::json out = nlohmann::json::array();
  for (int s = 0; s < stages; ++s) {
    const engine::PipelineStage stage = engine::plan_pipeline_stage(c.num_layers, s, stages, 1);
    std::uint64_t bytes = 0;
    for (const auto& info : tensors) {
      if (engine::stage_keeps(stage, info.name, c.tie_word_embeddings)) bytes += info.stored_bytes;
    }
    out.push_back({{"stage", s},
                   {"first_layer", stage.first_layer},
                   {"end_layer", stage.end_layer},
                   {"stored_bytes", bytes},
                   {"fraction_of_whole", static_cast<double>(bytes) / static_cast<double>(stats.stored_bytes)},
                   {"kv_bytes_per_token_f32", stats.kv_bytes_per_token_f32 / static_cast<std::uint64_t>(c.num_layers) *
                                                  static_cast<std::uint64_t>(stage.layers())}});
  }
  return out;
}

void run_inspect(const std::string& model_path, bool as_json, int tensor_parallel_size, int expert_parallel_size,
                 int pipeline_parallel_size) {
  const ModelSource source = open_model(model_path);
  const ModelConfig& c = source.config;
  const engine::ModelStats stats = engine::compute_model_stats(source);
  const char* format = source.format == ModelFormat::Gguf ? "gguf" : "safetensors";
  const nlohmann::json shares =
      tensor_parallel_size * expert_parallel_size > 1
          ? tensor_parallel_shares(model_path, tensor_parallel_size, expert_parallel_size, stats.stored_bytes)
          : nlohmann::json();
  const nlohmann::json stages =
      pipeline_parallel_size > 1 ? pipeline_stages(source, pipeline_parallel_size, stats) : nlohmann::json();
  if (as_json) {
    nlohmann::json out = {
        {"path", source.path.string()},
        {"format", format},
        {"architecture", c.architecture},
        {"config", to_hf_config(c)},
        {"parameters", stats.parameters},
        {"active_parameters", stats.active_parameters},
        {"parameters_by_type", stats.parameters_by_type},
        {"bytes_by_type", stats.bytes_by_type},
        {"stored_bytes", stats.stored_bytes},
        {"file_bytes", stats.file_bytes},
        {"compression_vs_fp16", stats.compression_vs_fp16},
        {"matmul_flops_per_token", stats.matmul_flops_per_token},
        {"attention_flops_per_context_token", stats.attention_flops_per_context_token},
        {"kv_bytes_per_token_f32", stats.kv_bytes_per_token_f32},
        {"kv_bytes_per_token_f16", stats.kv_bytes_per_token_f16},
        {"has_chat_template", source.chat_template.has_value()},
        {"quantization", source.quantization ? source.quantization->to_json() : nlohmann::json()},
        {"tensor_parallel_workable_sizes", workable_tensor_parallel_sizes(c)},
        {"expert_parallel_workable_sizes",
         c.moe.enabled() ? nlohmann::json(workable_expert_parallel_sizes(c, tensor_parallel_size)) : nlohmann::json()},
        {"parallel", {{"tensor", tensor_parallel_size}, {"expert", expert_parallel_size},
                      {"pipeline", pipeline_parallel_size}}},
    };
    if (!shares.is_null()) out["tensor_parallel"] = shares;
    if (!stages.is_null()) out["pipeline_parallel"] = stages;
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("model          %s (%s)\n", source.path.string().c_str(), format);
  std::printf("architecture   %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("shape          %lld layers, hidden %lld, mlp %lld, heads %lld (kv %lld) x %lld, vocab %lld\n",
              static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim),
              static_cast<long long>(c.vocab_size));
  const auto scaling = [&]() -> std::string {
    switch (c.rope_scaling.kind) {
      case RopeScaling::Kind::None: return "";
      case RopeScaling::Kind::Linear: return fmt::format(", linear scaling x{}", c.rope_scaling.factor);
      case RopeScaling::Kind::Llama3: return ", llama3 scaling";
      case RopeScaling::Kind::LongRope:
        return fmt::format(", longrope scaling (long factors past {} positions)",
                           c.rope_scaling.original_max_position_embeddings);
      case RopeScaling::Kind::Yarn:
        return fmt::format(", yarn scaling x{} from {} positions", c.rope_scaling.factor,
                           c.rope_scaling.original_max_position_embeddings);
    }
    return "";
  };
  const std::string rotary =
      c.rotary_dim ? fmt::format(", rotary {} of {} features", *c.rotary_dim, c.head_dim) : std::string();
  std::printf("context        %lld positions, rope theta %g%s%s%s\n", static_cast<long long>(c.max_position_embeddings),
              c.rope_theta, scaling().c_str(), rotary.c_str(), c.tie_word_embeddings ? ", tied embeddings" : "");
  if (c.mla) {
    const std::string query = c.mla->q_lora_rank > 0 ? fmt::format("low-rank query {}", c.mla->q_lora_rank)
                                                     : std::string("full-rank query");
    std::printf("latent attn    cache kv_lora_rank %lld + rope %lld per token and layer, %s, v_head_dim %lld\n",
                static_cast<long long>(c.mla->kv_lora_rank), static_cast<long long>(c.mla->qk_rope_head_dim),
                query.c_str(), static_cast<long long>(c.mla->v_head_dim));
  }
  if (source.quantization) std::printf("quantization   %s\n", source.quantization->describe().c_str());
  std::printf("parameters     %lld (%.1f M)\n", static_cast<long long>(stats.parameters),
              static_cast<double>(stats.parameters) / 1e6);
  if (c.moe.enabled()) {
    std::int64_t sparse_layers = 0;
    for (std::int64_t i = 0; i < c.num_layers; ++i) sparse_layers += c.moe.sparse_layer(i) ? 1 : 0;
    const std::string shared =
        c.moe.shared_expert_intermediate_size > 0
            ? fmt::format(", shared expert mlp {}{}", c.moe.shared_expert_intermediate_size,
                          c.moe.shared_expert_gate ? " (gated)" : "")
            : std::string();
    std::printf("experts        %lld per MoE layer, %lld active (%s), expert mlp %lld%s; %lld of %lld layers\n",
                static_cast<long long>(c.moe.num_experts), static_cast<long long>(c.moe.experts_per_token),
                c.moe.norm_topk_prob ? "renormalized" : "softmax weights", static_cast<long long>(c.moe.expert_intermediate_size),
                shared.c_str(), static_cast<long long>(sparse_layers), static_cast<long long>(c.num_layers));
    std::printf("active         %lld parameters per token (%.1f M)\n", static_cast<long long>(stats.active_parameters),
                static_cast<double>(stats.active_parameters) / 1e6);
  }
  for (const auto& [type, bytes] : stats.bytes_by_type) {
    std::printf("  %-12s %lld params, %s\n", type.c_str(), static_cast<long long>(stats.parameters_by_type.at(type)),
                human_bytes(static_cast<double>(bytes)).c_str());
  }
  std::printf("size on disk   %s (tensors %s)\n", human_bytes(static_cast<double>(stats.file_bytes)).c_str(),
              human_bytes(static_cast<double>(stats.stored_bytes)).c_str());
  std::printf("compression    %.2fx against fp16 (%.2f bits per parameter)\n", stats.compression_vs_fp16,
              16.0 / stats.compression_vs_fp16);
  std::printf("compute        %.3f GFLOP per token + %.1f kFLOP per token of context\n",
              stats.matmul_flops_per_token / 1e9, stats.attention_flops_per_context_token / 1e3);
  std::printf("kv cache       %s per token in fp32, %s in fp16\n",
              human_bytes(static_cast<double>(stats.kv_bytes_per_token_f32)).c_str(),
              human_bytes(static_cast<double>(stats.kv_bytes_per_token_f16)).c_str());
  std::printf("tensor parallel %s ranks can split it\n", workable_tensor_parallel_sizes(c).c_str());
  if (c.moe.enabled()) {
    std::printf("expert parallel %s expert groups can split it (with tensor-parallel size %d)\n",
                workable_expert_parallel_sizes(c, tensor_parallel_size).c_str(), tensor_parallel_size);
  }
  for (const auto& rank : shares) {
    std::printf("  rank %d: weights %s (%.1f %% of the whole), kv %s per token in fp32; heads %lld (kv %lld), mlp %lld, "
                "vocab %lld\n",
                rank["rank"].get<int>(), human_bytes(rank["stored_bytes"].get<double>()).c_str(),
                100.0 * rank["fraction_of_whole"].get<double>(), human_bytes(rank["kv_bytes_per_token_f32"].get<double>()).c_str(),
                rank["q_heads"].get<long long>(), rank["kv_heads"].get<long long>(), rank["intermediate"].get<long long>(),
                rank["vocab"].get<long long>());
    if (c.moe.enabled() && expert_parallel_size > 1) {
      std::printf("          expert group %d: experts %lld-%lld of %lld at width %lld, shared expert %lld; routers "
                  "whole\n",
                  rank["expert_rank"].get<int>(), rank["first_expert"].get<long long>(),
                  rank["first_expert"].get<long long>() + rank["experts"].get<long long>() - 1,
                  static_cast<long long>(c.moe.num_experts), rank["expert_intermediate"].get<long long>(),
                  rank["shared_expert_intermediate"].get<long long>());
    } else if (c.moe.enabled()) {
      std::printf("          every one of %lld experts at width %lld, shared expert %lld; routers whole\n",
                  static_cast<long long>(c.moe.num_experts), rank["expert_intermediate"].get<long long>(),
                  rank["shared_expert_intermediate"].get<long long>());
    }
    if (c.mla) {
      std::printf("          latent attention: its heads split; q_a/kv_a projections and the latent KV cache whole\n");
    }
  }
  if (!stages.is_null()) {
    std::printf("pipeline       %d stages (up to %lld)%s\n", pipeline_parallel_size, static_cast<long long>(c.num_layers),
                tensor_parallel_size > 1 ? "; each tensor rank holds its share of its stage" : "");
  }
  for (const auto& stage : stages) {
    std::printf("  stage %d: layers %lld-%lld, weights %s (%.1f %% of the whole), kv %s per token in fp32\n",
                stage["stage"].get<int>(), stage["first_layer"].get<long long>(),
                stage["end_layer"].get<long long>() - 1, human_bytes(stage["stored_bytes"].get<double>()).c_str(),
                100.0 * stage["fraction_of_whole"].get<double>(),
                human_bytes(stage["kv_bytes_per_token_f32"].get<double>()).c_str());
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a model: architecture, size, compression, cost per token");
  cmd->add_option("-m,--model", *model, "Model folder (Hugging Face) or .gguf file")->required();
  cmd->add_flag("--json", *as_json, "Print JSON");
  auto tensor_parallel_size = std::make_shared<int>(1);
  cmd->add_option("--tensor-parallel-size", *tensor_parallel_size,
                  "Also show each rank's share of a split across N ranks (weights as stored, KV per token)")
      ->check(CLI::Range(1, 1024));
  auto expert_parallel_size = std::make_shared<int>(1);
  cmd->add_option("--expert-parallel-size", *expert_parallel_size,
                  "With --tensor-parallel-size T: also show each of the T x E ranks' share when the routed experts "
                  "are dealt out to E expert groups")
      ->check(CLI::Range(1, 1024));
  auto pipeline_parallel_size = std::make_shared<int>(1);
  cmd->add_option("--pipeline-parallel-size", *pipeline_parallel_size,
                  "Also show each stage's layers, weights and KV per token when the layers are split into P stages")
      ->check(CLI::Range(1, 1024));
  cmd->callback([model, as_json, tensor_parallel_size, expert_parallel_size, pipeline_parallel_size] {
    run_inspect(*model, *as_json, *tensor_parallel_size, *expert_parallel_size, *pipeline_parallel_size);
  });
}

}  // namespace nibble::cli
