#pragma once
// One rank's share of a model under tensor parallelism (Megatron-LM's split):
// column-parallel q/k/v and gate/up (each rank computes its heads and its slice
// of the MLP's width), row-parallel o and down (each rank reads its slice of the
// input and the ranks' outputs are summed), and a vocabulary-parallel embedding
// and lm_head. Mixture-of-experts layers split every expert the same way (each
// rank runs every chosen expert over its slice of the expert's width; the router
// is replicated), and latent attention (MLA) splits its heads alone: q, kv_b_proj's
// per-head rows and o_proj by heads, while the one latent every head reads
// (kv_a_proj_with_mqa, its norm, q_a_proj) and so the latent KV cache are whole on
// every rank. The rank's model is an ordinary, narrower model: its config has its
// heads and widths, its weights are slices of the file's, and every format is
// sliced in its stored form (quantized codes and file blocks are never widened).
// The engine adds the sums and the gather (DecoderModel).
//
// Expert parallelism composes with this: a stage's tensor_size x expert_size ranks
// form one group. Everything but the routed experts splits over all of them as
// above (heads, dense MLP, shared expert, vocabulary); the routed experts are
// dealt out in contiguous runs, num_experts / expert_size to each expert group of
// tensor_size neighbouring ranks, and each held expert splits its width over the
// group's ranks. A rank maps only its experts. docs/parallel.md.
#include <cstdint>
#include <string>

#include "loader/model_config.h"
#include "loader/model_source.h"

namespace nibble {

struct TensorShardLayout {
  int rank = 0;
  int size = 1;  // the stage's ranks: tensor_size x expert_size
  // Rank `rank` is tensor rank rank % tensor_size of expert group rank / tensor_size.
  int tensor_size = 1;
  int expert_size = 1;
  int expert_rank = 0;
  // The routed experts this rank holds (all of them without expert parallelism).
  std::int64_t first_expert = 0, experts = 0;
  std::int64_t first_q_head = 0, q_heads = 0;
  // Key/value heads: a contiguous run when there are at least as many as ranks;
  // otherwise one head, shared (replicated) by the ranks whose query heads use it.
  std::int64_t first_kv_head = 0, kv_heads = 0;
  std::int64_t first_intermediate = 0, intermediate = 0;
  // Each routed expert's width (split over tensor_size) and the shared expert's
  // (over size); 0 without MoE / a shared expert.
  std::int64_t first_expert_intermediate = 0, expert_intermediate = 0;
  std::int64_t first_shared_intermediate = 0, shared_intermediate = 0;
  // This rank's rows of the vocabulary: ceil(vocab / size) each, the last rank
  // the rest. The embedding gets one more, all-zero row for tokens other ranks
  // own, so a lookup is local and the ranks' results sum to the full row.
  std::int64_t first_vocab = 0, vocab = 0;
  std::int64_t vocab_stride = 0;  // ceil(vocab / size): every rank's share in a gather

  bool sharded() const { return size > 1; }
};

// The split of `config` for `rank` of tensor_size x expert_size ranks. Throws
// nibble::Error stating the rule and the sizes that would work when the heads or
// the MLP widths do not divide (query heads, intermediate size and the shared
// expert's width by tensor_size x expert_size; key/value heads by it, or it by
// them; the routed experts' width by tensor_size; their number by expert_size).
TensorShardLayout plan_tensor_shard(const ModelConfig& config, int rank, int tensor_size, int expert_size = 1);

// The tensor-parallel sizes (1..max_size) `config` can be split into.
std::string workable_tensor_parallel_sizes(const ModelConfig& config, int max_size = 16);
// The expert-parallel sizes (1..num_experts) that split `config` beside `tensor_size`.
std::string workable_expert_parallel_sizes(const ModelConfig& config, int tensor_size = 1);

// `full` as rank layout.rank sees it: the config narrowed (num_heads,
// num_kv_heads, intermediate_size, the experts' widths; vocab_size stays whole,
// it is what the sampler sees) and the weights wrapped so that every tensor reads
// as this rank's slice. Tensors the split does not name (norms, QK-norms, routers,
// MLA's latent projections) are whole on every rank.
ModelSource shard_model_source(ModelSource full, const TensorShardLayout& layout);

}  // namespace nibble
