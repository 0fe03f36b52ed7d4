#pragma once
// Paged causal attention on the GPU (decode and prefill), FlashAttention-style:
// keys and values stream through shared memory in tiles of 32 positions while
// each query keeps a running max, sum and output (online softmax), so scores are
// never stored. GQA: one block serves up to 16 query vectors of one kv head (all
// heads of the group, several rows when the group is small), so each key/value
// tile is read once for all of them. Long contexts with few blocks (decode) are
// split over position ranges (flash-decoding) and merged by a second kernel.
//
// The cache is read through the scheduler's block tables exactly as
// kernels::KvLayerView describes it: position p is storage row
// block_table[p / block_size] * block_size + p % block_size (or p without a
// table), float32 rows of `stride` values, or int8 codes with one scale per
// (row, kv head).
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace nibble::kernels::cuda {

struct PagedKvView {
  const float* keys = nullptr;
  const float* values = nullptr;
  const std::int8_t* key_codes = nullptr;  // set: the int8 cache
  const std::int8_t* value_codes = nullptr;
  const float* key_scales = nullptr;
  const float* value_scales = nullptr;
  std::int64_t stride = 0;                    // elements between storage rows
  const std::int32_t* block_table = nullptr;  // device; null: contiguous
  std::int64_t block_size = 0;
};

struct AttentionDims {
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;  // a multiple of 4, at most 256
  std::int64_t window = 0;    // sliding window (0: none)
  float scale = 0.0f;         // scores = q·k * scale (0: 1 / sqrt(head_dim))
  float softcap = 0.0f;       // > 0: scores = softcap * tanh(score / softcap)
};

struct AttentionPlan {
  int rows_per_block = 1;      // R
  int heads_per_block = 1;     // Gb: query heads of one kv head per block (R * Gb <= 16)
  int head_slabs = 1;          // blocks per kv head along the heads of its group
  std::int64_t row_blocks = 1;
  std::int64_t parts = 1;      // position ranges (flash-decoding split)
  std::int64_t part_len = 32;
  std::int64_t workspace_floats = 0;  // parts * rows * heads * (head_dim + 2) when parts > 1
  std::size_t shared_bytes = 0;
};

inline constexpr int kAttentionMaxQueries = 16;
inline constexpr int kAttentionTile = 32;
inline constexpr std::int64_t kAttentionMaxHeadDim = 256;

// `max_position` is the largest of the rows' positions.
AttentionPlan plan_attention(std::int64_t rows, const AttentionDims& dims, std::int64_t max_position, int sm_count);

// out[r][h * head_dim + d] = softmax over positions first(r)..positions[r] of
// q[r][h] . k_p / sqrt(head_dim), times v_p, for the kv head h / (heads / kv_heads).
// q and out are [rows, heads * head_dim] floats; positions on the device.
void paged_attention(const AttentionPlan& plan, const float* q, std::int64_t rows, const std::int32_t* positions,
                     const PagedKvView& kv, const AttentionDims& dims, float* out, float* workspace,
                     cudaStream_t stream);

}  // namespace nibble::kernels::cuda
