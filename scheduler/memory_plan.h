#pragma once
// The memory planner: will a model, at a weight format, context and concurrency, fit
// in the memory at hand, and if not, what would? Pure arithmetic over a ModelShape
// (no I/O), so `nibble plan`, `nibble serve`'s start-up check and tests share it.
//
// The rule behind the refusals: runtime memory is about 1.2-2 x the model's size
// (weights, then KV cache, activations and allocator slack on top). A plan whose
// usable budget is below 1.2 x the weight bytes is refused even when the arithmetic
// below would squeeze it in.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "loader/model_shape.h"

namespace nibble::scheduler {

inline constexpr double kMinBudgetToWeights = 1.2;

struct WeightFormat {
  int bits = 16;  // 16 (fp16/bf16), 8 (FP8/INT8), 4, 3 or 2
  // Inputs sharing one fp16 scale and one fp16 zero point (or minimum): 32 bits of
  // overhead a group, so 4-bit g128 is 4.25 bits a weight. 0: per-channel or large
  // block scales (FP8's 128x128 blocks), whose overhead is negligible and counted as 0.
  int group_size = 128;
  // Embedding and lm_head stay 16-bit by default, as GPTQ, AWQ and FP8 checkpoints
  // keep them (they are a small share of a large model and hurt quality most when
  // quantized); set this for formats that quantize them too (GGUF). Norms, biases
  // and routers always stay 16-bit.
  bool quantize_embeddings = false;
};

// 4.25 for 4-bit g128, 16 for fp16.
double bits_per_weight(const WeightFormat& format);
std::uint64_t weight_bytes(const ModelShape& shape, const WeightFormat& format);

struct GpuMemory {
  std::uint64_t bytes_per_gpu = 0;
  double utilization = 0.9;  // the share of each GPU the server may take (vLLM's --gpu-memory-utilization)
  // Unset: the planner picks the smallest layout that fits (tp within a node, then pp).
  std::optional<std::int64_t> gpus;
  std::int64_t gpus_per_node = 8;
};

struct CpuMemory {
  std::uint64_t budget_bytes = 0;  // all of it usable
};

struct Parallelism {
  std::int64_t tensor = 1;    // GPUs splitting every layer (heads, MLP columns), within a node
  std::int64_t pipeline = 1;  // stages holding consecutive layers, across nodes
  // Expert groups the routed experts are dealt out to (expert parallelism): a stage
  // runs on tensor x expert GPUs, attention split over all of them (loader/tensor_shard.h).
  std::int64_t expert = 1;
  std::int64_t group() const { return tensor * expert; }
  std::int64_t gpus() const { return group() * pipeline; }
};

struct PlanInputs {
  WeightFormat weights;
  // The tensor bytes of a real checkpoint (`nibble plan --model`) instead of the
  // estimate from `weights`.
  std::optional<std::uint64_t> measured_weight_bytes;
  int kv_bytes = 2;                    // per cached element: 2 (fp16/bf16), 1 (8-bit KV), 4 (fp32)
  std::optional<std::int64_t> context;  // tokens per sequence; unset: the model's max_position_embeddings
  std::int64_t concurrency = 1;        // sequences whose KV is resident at once
  std::int64_t max_batched_tokens = 2048;  // tokens one step processes (prefill chunk + decodes)
  std::variant<GpuMemory, CpuMemory> memory = CpuMemory{};
  // Where the engine runs the architecture, serve's own numbers instead of the
  // estimates from the shape: the bytes the most loaded rank of a layout maps, as
  // the shard mapping computes them (engine/split_weights.h), and the KV bytes per
  // token of the whole model at the planned KV precision (engine::kv_bytes_per_token).
  std::function<std::uint64_t(const Parallelism&)> rank_weight_bytes;
  std::optional<std::uint64_t> kv_bytes_per_token;
};


// A change to the inputs that makes the plan fit, said as the flag that does it.
struct Alternative {
  std::string description;  // "with --bits 4 (4.25 bits a weight): fits on 2 x 80.00 GiB"
  PlanInputs inputs;        // the inputs it was checked with
};

struct MemoryPlan {
  bool on_gpu = false;
  std::int64_t context = 0;
  std::int64_t concurrency = 0;
  double bits_per_weight = 16;
  std::uint64_t weight_bytes = 0;
  std::uint64_t kv_bytes_per_token = 0;  // all layers, before any split across GPUs
  std::uint64_t kv_bytes_needed = 0;     // context x concurrency tokens
  // One step's activations on each device: max_batched_tokens (at most context x
  // concurrency) x (4 x hidden + attention_width + 3 x mlp_width) elements (fp16 on a
  // GPU, fp32 on the CPU engine), plus fp32 logits and sampler probabilities for one
  // row per sequence. Attention scores are not materialized (tiled attention).
  std::uint64_t workspace_bytes = 0;
  // Summed over devices: weights split evenly but for the replicated parts, KV split by pipeline stage and by KV
  // head under tensor parallelism (an MLA latent is whole on every TP rank), and a
  // workspace on every device.
  std::uint64_t total_bytes = 0;
  std::uint64_t budget_bytes = 0;  // usable memory over all devices
  double budget_to_weights = 0;
  Parallelism parallelism;  // 1 x 1 on the CPU
  // Weights on each device: the split parts' share of their stage, plus what every
  // tensor rank holds whole (norms, routers, MLA's latent projections).
  std::uint64_t device_weight_bytes = 0;
  std::uint64_t device_bytes_needed = 0;  // on each GPU (or the CPU)
  std::uint64_t device_budget_bytes = 0;
  std::int64_t kv_token_capacity = 0;  // tokens of KV cache that fit beside weights and workspace
  bool fits = false;
  std::string refusal;  // why not, with the numbers; empty when it fits
  std::vector<Alternative> alternatives;  // when refused: changes that fit, each checked
};

// Throws nibble::Error for inputs out of range (unknown bits, zero memory, ...).
MemoryPlan plan_memory(const ModelShape& shape, const PlanInputs& inputs);

// Throws nibble::Error with the refusal and the alternatives when the plan does not fit.
void check_fits(const MemoryPlan& plan);

// `nibble serve`'s KV-cache size when none is given: as much as the weights, at
// least 256 MiB, and never more than `sequences` sequences filling `context`
// positions would use (blocks of `block_size` positions, `block_bytes` each).
// Saturates rather than wrapping around, whatever the inputs.
std::uint64_t default_kv_budget(std::uint64_t block_bytes, std::int64_t block_size, std::int64_t sequences,
                                std::int64_t context, std::uint64_t weight_bytes);

}  // namespace nibble::scheduler
