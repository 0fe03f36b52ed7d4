#include "scheduler/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "scheduler/byte_size.h"

namespace nibble::scheduler {
namespace {

// Scale and zero point (or minimum) of every quantization group, both fp16.
constexpr double kGroupOverheadBits = 32;
// fp32 logits plus the sampler's probabilities, one row per sequence in a step.
constexpr double kLogitBytesPerVocabEntry = 8;
// Comparisons of sums of large doubles: a plan exactly at its budget fits.
constexpr double kRelativeSlack = 1e-12;

void validate(const ModelShape& shape, const PlanInputs& in) {
  const int bits = in.weights.bits;
  if (bits != 16 && bits != 8 && bits != 4 && bits != 3 && bits != 2) {
    fail("weight bits must be 16, 8, 4, 3 or 2 (got {})", bits);
  }
  if (in.weights.group_size < 0) {
    fail("quantization group size must be 0 (per channel) or positive (got {})", in.weights.group_size);
  }
  if (in.kv_bytes != 1 && in.kv_bytes != 2 && in.kv_bytes != 4) {
    fail("KV bytes per element must be 1, 2 or 4 (got {})", in.kv_bytes);
  }
  if (in.context && *in.context < 1) fail("context must be at least 1 token (got {})", *in.context);
  if (in.concurrency < 1) fail("concurrency must be at least 1 sequence (got {})", in.concurrency);
  if (in.max_batched_tokens < 1) fail("max batched tokens must be at least 1 (got {})", in.max_batched_tokens);
  if (shape.num_layers < 1 || shape.kv_elements_per_token < 1 || shape.parameters.total() < 1) {
    fail("model shape of '{}' is empty", shape.architecture);
  }
  if (const auto* gpu = std::get_if<GpuMemory>(&in.memory)) {
    if (gpu->bytes_per_gpu == 0) fail("GPU memory must be positive");
    if (!(gpu->utilization > 0 && gpu->utilization <= 1)) {
      fail("GPU memory utilization must be in (0, 1] (got {})", gpu->utilization);
    }
    if (gpu->gpus && *gpu->gpus < 1) fail("GPU count must be at least 1 (got {})", *gpu->gpus);
    if (gpu->gpus_per_node < 1) fail("GPUs per node must be at least 1 (got {})", gpu->gpus_per_node);
  } else if (std::get<CpuMemory>(in.memory).budget_bytes == 0) {
    fail("memory budget must be positive");
  }
}

// Whether serve takes tensor x expert ranks a stage (loader/tensor_shard.h): each
// of the group's ranks gets whole query heads and whole KV heads (or, with fewer KV
// heads than ranks, a replicated one) and an equal slice of the dense and shared
// MLP widths; each expert group an equal number of whole routed experts, split over
// its tensor ranks.
bool serve_takes(const ModelShape& shape, std::int64_t tp, std::int64_t ep) {
  const std::int64_t group = tp * ep;
  const bool heads_split = shape.num_attention_heads % group == 0;
  const bool kv_split = shape.num_kv_heads % group == 0 || group % shape.num_kv_heads == 0;
  const bool widths_split =
      std::ranges::all_of(shape.tp_split_widths, [group](std::int64_t w) { return w % group == 0; });
  const bool experts_split = shape.routed_experts == 0 ? ep == 1
                                                       : shape.routed_experts % ep == 0 && shape.expert_width % tp == 0;
  return heads_split && kv_split && widths_split && experts_split;
}

// The stage groups within one node serve can take, smallest first: for each size
// the one with the most expert groups (whole experts run as fewer, wider matmuls
// than every expert's slice on every rank, and need no tensor split of them).
std::vector<Parallelism> stage_groups(const ModelShape& shape, std::int64_t gpus_per_node) {
  std::vector<Parallelism> groups;
  for (std::int64_t size = 1; size <= gpus_per_node; ++size) {
    for (std::int64_t ep = size; ep >= 1; --ep) {
      if (size % ep != 0 || !serve_takes(shape, size / ep, ep)) continue;
      groups.push_back({size / ep, 1, ep});
      break;
    }
  }
  return groups;
}

// The share of a token's KV one tensor-parallel rank holds.
double kv_share_per_rank(const ModelShape& shape, std::int64_t tp) {
  if (shape.attention_kind == AttentionKind::LatentMla) return 1.0;  // every rank reads the whole latent
  const std::int64_t heads_per_rank = (shape.num_kv_heads + tp - 1) / tp;
  return static_cast<double>(heads_per_rank) / static_cast<double>(shape.num_kv_heads);
}

std::string describe_memory(const PlanInputs& in, const Parallelism& layout) {
  if (const auto* gpu = std::get_if<GpuMemory>(&in.memory)) {
    // GPUs are sold in GB (an "80 GB" H100 is 74.51 GiB), so both are shown.
    const auto bytes = static_cast<double>(gpu->bytes_per_gpu);
    const std::string experts = layout.expert > 1 ? fmt::format(" x ep {}", layout.expert) : "";
    return fmt::format("{} x {} ({:.1f} GB) GPUs (tp {}{} x pp {}, {:.2f} usable)", layout.gpus(), format_bytes(bytes),
                       bytes / 1e9, layout.tensor, experts, layout.pipeline, gpu->utilization);
  }
  const auto budget = static_cast<double>(std::get<CpuMemory>(in.memory).budget_bytes);
  return fmt::format("a {} memory budget", format_bytes(budget));
}

// The plan for one layout, without looking for alternatives.
MemoryPlan evaluate(const ModelShape& shape, const PlanInputs& in, const Parallelism& layout) {
  const auto* gpu = std::get_if<GpuMemory>(&in.memory);
  MemoryPlan plan;
  plan.on_gpu = gpu != nullptr;
  plan.parallelism = layout;
  plan.context = in.context.value_or(shape.max_position_embeddings);
  plan.concurrency = in.concurrency;
  plan.weight_bytes = in.measured_weight_bytes.value_or(weight_bytes(shape, in.weights));
  // A measured checkpoint's average, embeddings and scales included.
  plan.bits_per_weight = in.measured_weight_bytes ? 8.0 * static_cast<double>(plan.weight_bytes) /
                                                        static_cast<double>(shape.parameters.total())
                                                  : bits_per_weight(in.weights);
  plan.kv_bytes_per_token = in.kv_bytes_per_token.value_or(
      static_cast<std::uint64_t>(shape.kv_elements_per_token) * static_cast<std::uint64_t>(in.kv_bytes));
  const double tokens = static_cast<double>(plan.context) * static_cast<double>(plan.concurrency);
  plan.kv_bytes_needed = static_cast<std::uint64_t>(tokens * static_cast<double>(plan.kv_bytes_per_token));

  const double step_tokens = std::min(static_cast<double>(in.max_batched_tokens), tokens);
  const double activation_bytes = plan.on_gpu ? 2 : 4;
  const double widths = 4.0 * static_cast<double>(shape.hidden_size) + static_cast<double>(shape.attention_width) +
                        3.0 * static_cast<double>(shape.mlp_width);
  const double logit_rows = std::min(step_tokens, static_cast<double>(plan.concurrency));
  const double workspace = step_tokens * activation_bytes * widths +
                           logit_rows * static_cast<double>(shape.vocab_size) * kLogitBytesPerVocabEntry;
  plan.workspace_bytes = static_cast<std::uint64_t>(std::ceil(workspace));

  const auto devices = static_cast<double>(layout.gpus());
  const double device_budget = gpu ? static_cast<double>(gpu->bytes_per_gpu) * gpu->utilization
                                   : static_cast<double>(std::get<CpuMemory>(in.memory).budget_bytes);
  // Tensor ranks each hold the replicated parameters whole: only stages divide them.
  const double replicated = std::min(
      1.0, static_cast<double>(shape.parameters.norms_and_biases + shape.tp_replicated_parameters) /
               static_cast<double>(std::max<std::int64_t>(shape.parameters.total(), 1)));
  const double device_weights =
      in.rank_weight_bytes && gpu != nullptr
          ? static_cast<double>(in.rank_weight_bytes(layout))
          : static_cast<double>(plan.weight_bytes) *
                ((1.0 - replicated) / devices + replicated / static_cast<double>(layout.pipeline));
  plan.device_weight_bytes = static_cast<std::uint64_t>(std::ceil(device_weights));
  const double device_kv_per_token = static_cast<double>(plan.kv_bytes_per_token) /
                                     static_cast<double>(layout.pipeline) * kv_share_per_rank(shape, layout.group());
  const double device_needed = device_weights + tokens * device_kv_per_token + workspace;
  plan.device_budget_bytes = static_cast<std::uint64_t>(device_budget);
  plan.device_bytes_needed = static_cast<std::uint64_t>(std::ceil(device_needed));
  plan.total_bytes = static_cast<std::uint64_t>(std::ceil(device_needed * devices));
  plan.budget_bytes = static_cast<std::uint64_t>(device_budget * devices);
  plan.budget_to_weights = device_budget * devices / static_cast<double>(plan.weight_bytes);
  const double free_for_kv = device_budget - device_weights - workspace;
  plan.kv_token_capacity =
      free_for_kv > 0 ? static_cast<std::int64_t>(std::floor(free_for_kv / device_kv_per_token)) : 0;

  std::vector<std::string> reasons;
  if (plan.budget_to_weights < kMinBudgetToWeights) {
    reasons.push_back(fmt::format(
        "{} usable ({}) is {:.2f} x the weights ({} at {:.2f} bits a weight), below the {:.1f} x minimum "
        "(runtime memory is about 1.2-2 x the model size)",
        format_bytes(device_budget * devices), describe_memory(in, layout), plan.budget_to_weights,
        format_bytes(static_cast<double>(plan.weight_bytes)), plan.bits_per_weight, kMinBudgetToWeights));
  }
  if (device_needed > device_budget * (1 + kRelativeSlack)) {
    reasons.push_back(fmt::format(
        "needs {} per {} (weights {} + KV cache {} for {} tokens x {} sequences + workspace {}) but {} is usable",
        format_bytes(device_needed), gpu ? "GPU" : "process", format_bytes(device_weights),
        format_bytes(tokens * device_kv_per_token), plan.context, plan.concurrency, format_bytes(workspace),
        format_bytes(device_budget)));
  }
  plan.fits = reasons.empty();
  for (const auto& reason : reasons) plan.refusal += (plan.refusal.empty() ? "" : "; ") + reason;
  return plan;
}

// The smallest layout that fits: a stage group within a node first (tensor x
// expert), then pipeline stages of full groups across nodes. When nothing fits,
// the largest layout tried (its refusal says by how much).
MemoryPlan search_layout(const ModelShape& shape, const PlanInputs& in, const GpuMemory& gpu) {
  const std::vector<Parallelism> groups = stage_groups(shape, gpu.gpus_per_node);
  for (const Parallelism& group : groups) {
    MemoryPlan plan = evaluate(shape, in, group);
    if (plan.fits) return plan;
  }
  Parallelism widest = groups.back();
  MemoryPlan plan = evaluate(shape, in, widest);
  for (widest.pipeline = 2; widest.pipeline <= shape.num_layers && !plan.fits; ++widest.pipeline) {
    plan = evaluate(shape, in, widest);
  }
  return plan;
}

// A given GPU count as the widest stage group that divides it, the rest as
// pipeline stages.
Parallelism layout_for(const ModelShape& shape, const GpuMemory& gpu, std::int64_t gpus) {
  Parallelism layout;
  for (const Parallelism& group : stage_groups(shape, gpu.gpus_per_node)) {
    if (gpus % group.group() == 0) layout = group;
  }
  layout.pipeline = gpus / layout.group();
  if (layout.pipeline > shape.num_layers) {
    fail("{} GPUs cannot be split into tp {} x ep {} x pipeline stages: {} has only {} layers", gpus, layout.tensor,
         layout.expert, shape.architecture, shape.num_layers);
  }
  return layout;
}

MemoryPlan plan_without_alternatives(const ModelShape& shape, const PlanInputs& in) {
  validate(shape, in);
  const auto* gpu = std::get_if<GpuMemory>(&in.memory);
  if (gpu == nullptr) return evaluate(shape, in, {});
  if (!gpu->gpus) return search_layout(shape, in, *gpu);
  return evaluate(shape, in, layout_for(shape, *gpu, *gpu->gpus));
}

std::string where(const MemoryPlan& plan, const PlanInputs& in) {
  return fmt::format("fits in {}", describe_memory(in, plan.parallelism));
}

// Changes that make a refused plan fit, each planned again to be sure.
std::vector<Alternative> find_alternatives(const ModelShape& shape, const PlanInputs& in, const MemoryPlan& refused) {
  std::vector<Alternative> found;
  const auto keep_if_fits = [&](const PlanInputs& changed, const auto& describe) {
    const MemoryPlan plan = plan_without_alternatives(shape, changed);
    if (plan.fits) found.push_back({describe(plan), changed});
    return plan.fits;
  };
  for (const int bits : {8, 4, 3, 2}) {
    PlanInputs changed = in;
    changed.weights.bits = bits;
    changed.measured_weight_bytes.reset();
    changed.rank_weight_bytes = nullptr;  // it maps the checkpoint as stored, not at `bits`
    if (bits_per_weight(changed.weights) >= refused.bits_per_weight) continue;
    const bool fits = keep_if_fits(changed, [&](const MemoryPlan& plan) {
      return fmt::format("with --bits {} ({:.2f} bits a weight, weights {}): {}", bits, plan.bits_per_weight,
                         format_bytes(static_cast<double>(plan.weight_bytes)), where(plan, changed));
    });
    if (fits) break;
  }
  // Context and concurrency only change the KV cache, so they help only when the
  // budget already clears the 1.2 x rule.
  if (refused.budget_to_weights >= kMinBudgetToWeights && refused.kv_token_capacity > 0) {
    PlanInputs shorter = in;
    shorter.context = refused.kv_token_capacity / refused.concurrency;
    if (*shorter.context >= 1) {
      keep_if_fits(shorter, [&](const MemoryPlan& plan) {
        return fmt::format("max context at {} concurrent sequences: {} tokens (--context {}): {}", plan.concurrency,
                           plan.context, plan.context, where(plan, shorter));
      });
    }
    PlanInputs fewer = in;
    fewer.concurrency = refused.kv_token_capacity / refused.context;
    if (fewer.concurrency >= 1) {
      keep_if_fits(fewer, [&](const MemoryPlan& plan) {
        return fmt::format("max concurrent sequences at a {}-token context: {} (--concurrency {}): {}", plan.context,
                           plan.concurrency, plan.concurrency, where(plan, fewer));
      });
    }
  }
  PlanInputs more = in;
  if (auto* gpu = std::get_if<GpuMemory>(&more.memory)) {
    if (!gpu->gpus) return found;  // the search already tried every GPU count
    gpu->gpus.reset();
    keep_if_fits(more, [&](const MemoryPlan& plan) {
      return fmt::format("with --gpus {}: {}", plan.parallelism.gpus(), where(plan, more));
    });
  } else {
    // The smallest budget passing both rules, rounded up to whole GiB.
    const double needed = std::max(kMinBudgetToWeights * static_cast<double>(refused.weight_bytes),
                                   static_cast<double>(refused.device_bytes_needed));
    const double gib = 0x1p30;
    std::get<CpuMemory>(more.memory).budget_bytes = static_cast<std::uint64_t>(std::ceil(needed / gib) * gib);
    keep_if_fits(more, [&](const MemoryPlan&) {
      return fmt::format("with --memory-budget {:.0f}GiB: fits", std::ceil(needed / gib));
    });
  }
  return found;
}

}  // namespace

double bits_per_weight(const WeightFormat& format) {
  if (format.bits >= 16 || format.group_size == 0) return format.bits;
  return format.bits + kGroupOverheadBits / format.group_size;
}

std::uint64_t weight_bytes(const ModelShape& shape, const WeightFormat& format) {
  const ParameterGroups& p = shape.parameters;
  const auto linear = static_cast<double>(p.attention + p.dense_mlp + p.experts);
  const auto embeddings = static_cast<double>(p.embedding + p.lm_head);
  const double embedding_bits = format.quantize_embeddings ? bits_per_weight(format) : 16;
  const double bits = linear * bits_per_weight(format) + embeddings * embedding_bits +
                      static_cast<double>(p.norms_and_biases) * 16;
  return static_cast<std::uint64_t>(std::ceil(bits / 8));
}

MemoryPlan plan_memory(const ModelShape& shape, const PlanInputs& inputs) {
  MemoryPlan plan = plan_without_alternatives(shape, inputs);
  if (!plan.fits) plan.alternatives = find_alternatives(shape, inputs, plan);
  return plan;
}

void check_fits(const MemoryPlan& plan) {
  if (plan.fits) return;
  std::string suggestions;
  for (const auto& alternative : plan.alternatives) {
    suggestions += (suggestions.empty() ? "" : "; ") + alternative.description;
  }
  fail("the model does not fit: {}. {}", plan.refusal,
       suggestions.empty() ? std::string("No smaller configuration fits either.") : "What would fit: " + suggestions);
}

std::uint64_t default_kv_budget(std::uint64_t block_bytes, std::int64_t block_size, std::int64_t sequences,
                                std::int64_t context, std::uint64_t weight_bytes) {
  const auto saturating_product = [](std::uint64_t a, std::uint64_t b) {
    std::uint64_t product = 0;
    return __builtin_mul_overflow(a, b, &product) ? std::numeric_limits<std::uint64_t>::max() : product;
  };
  const auto positive = [](std::int64_t v) { return static_cast<std::uint64_t>(std::max<std::int64_t>(v, 1)); };
  const std::uint64_t blocks_per_sequence = (positive(context) - 1) / positive(block_size) + 1;
  const std::uint64_t wanted = saturating_product(block_bytes, saturating_product(positive(sequences), blocks_per_sequence));
  return std::min(wanted, std::max<std::uint64_t>(std::uint64_t{256} << 20, weight_bytes));
}

}  // namespace nibble::scheduler
