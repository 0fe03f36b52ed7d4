// See attention.h.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kQueriesPerWarp = kAttentionMaxQueries / kWarps;  // 4
constexpr int kMaxChunks = static_cast<int>(kAttentionMaxHeadDim / 32);  // output values per lane
constexpr int kTile = kAttentionTile;
static_assert(kTile == 32, "one position per lane");

struct AttentionArgs {
  const float* q;
  float* out;
  const std::int32_t* positions;
  PagedKvView kv;
  float* part_acc;  // [parts][rows][heads][head_dim]
  float* part_max;  // [parts][rows][heads]
  float* part_sum;
  std::int64_t rows;
  int heads;
  int kv_heads;
  int head_dim;
  int window;
  int group;  // heads / kv_heads
  int rows_per_block;
  int heads_per_block;
  int head_slabs;
  std::int64_t part_len;
  int parts;
  float scale;
  float softcap;
};

std::size_t shared_bytes_for(std::int64_t head_dim) {
  return static_cast<std::size_t>(kAttentionMaxQueries * head_dim + kTile * (head_dim + 4) + kTile * head_dim) *
         sizeof(float);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void __launch_bounds__(kThreads) attention_kernel(const AttentionArgs a) {
  extern __shared__ float smem[];
  __shared__ int q_row[kAttentionMaxQueries];
  __shared__ int q_head[kAttentionMaxQueries];
  __shared__ int q_first[kAttentionMaxQueries];
  __shared__ int q_last[kAttentionMaxQueries];
  __shared__ int range[2];

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int hd = a.head_dim;
  const int hd4 = hd / 4;
  float* q_s = smem;                                   // [16][hd]
  float* k_s = q_s + kAttentionMaxQueries * hd;        // [32][hd + 4]
  float* v_s = k_s + kTile * (hd + 4);                 // [32][hd]
  const int k_stride = hd + 4;

  const std::int64_t row_block = blockIdx.x;
  const int slab = static_cast<int>(blockIdx.y);
  const int part = static_cast<int>(blockIdx.z);
  const int kv_head = slab / a.head_slabs;
  const int slab_in_group = slab % a.head_slabs;
  const int head0 = kv_head * a.group + slab_in_group * a.heads_per_block;
  const int heads_here = min(a.heads_per_block, a.group - slab_in_group * a.heads_per_block);
  const std::int64_t part_lo = static_cast<std::int64_t>(part) * a.part_len;
  const std::int64_t part_hi = part_lo + a.part_len - 1;

  if (tid < kAttentionMaxQueries) {
    const int i = tid;
    const int r_local = i / a.heads_per_block;
    const int g = i % a.heads_per_block;
    const std::int64_t row = row_block * a.rows_per_block + r_local;
    const bool exists = r_local < a.rows_per_block && g < heads_here && row < a.rows;
    int first = 1;
    int last = 0;
    if (exists) {
      const std::int64_t position = a.positions[row];
      std::int64_t lo = a.window > 0 ? position - a.window + 1 : 0;
      lo = lo < 0 ? 0 : lo;
      lo = lo > part_lo ? lo : part_lo;
      const std::int64_t hi = position < part_hi ? position : part_hi;
      first = static_cast<int>(lo);
      last = static_cast<int>(hi);
    }
    q_row[i] = exists ? static_cast<int>(row) : -1;
    q_head[i] = exists ? head0 + g : -1;
    q_first[i] = first;
    q_last[i] = last;
  }
  __syncthreads();
  if (tid == 0) {
    int lo = 0x7fffffff;
    int hi = -1;
    for (int i = 0; i < kAttentionMaxQueries; ++i) {
      if (q_row[i] < 0 || q_first[i] > q_last[i]) continue;
      lo = min(lo, q_first[i]);
      hi = max(hi, q_last[i]);
    }
    range[0] = lo;
    range[1] = hi;
  }
  for (int index = tid; index < kAttentionMaxQueries * hd; index += kThreads) {
    const int i = index / hd;
    const int d = index % hd;
    float value = 0.0f;
    if (q_row[i] >= 0) value = a.q[(static_cast<std::int64_t>(q_row[i]) * a.heads + q_head[i]) * hd + d] * a.scale;
    q_s[index] = value;
  }
  __syncthreads();
  const int lo = range[0];
  const int hi = range[1];

  bool exists[kQueriesPerWarp];
  bool active[kQueriesPerWarp];
  int first[kQueriesPerWarp];
  int last[kQueriesPerWarp];
#pragma unroll
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    const int i = warp + kWarps * j;
    exists[j] = q_row[i] >= 0;
    first[j] = q_first[i];
    last[j] = q_last[i];
    active[j] = exists[j] && first[j] <= last[j];
  }
  float running_max[kQueriesPerWarp];
  float running_sum[kQueriesPerWarp];
  float acc[kQueriesPerWarp][kMaxChunks];
#pragma unroll
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    running_max[j] = -INFINITY;
    running_sum[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) acc[j][c] = 0.0f;
  }

  const bool quantized = a.kv.key_codes != nullptr;
  for (int t0 = lo; t0 <= hi; t0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    for (int index = tid; index < kTile * hd4; index += kThreads) {
      const int tt = index / hd4;
      const int d = (index % hd4) * 4;
      const int p = t0 + tt;
      float4 key = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float4 value = key;
      if (p <= hi) {
        const std::int64_t storage =
            a.kv.block_table != nullptr
                ? static_cast<std::int64_t>(a.kv.block_table[p / a.kv.block_size]) * a.kv.block_size + p % a.kv.block_size
                : p;
        const std::int64_t offset = storage * a.kv.stride + static_cast<std::int64_t>(kv_head) * hd + d;
        if (quantized) {
          const char4 kc = *reinterpret_cast<const char4*>(a.kv.key_codes + offset);
          const char4 vc = *reinterpret_cast<const char4*>(a.kv.value_codes + offset);
          const float ks = a.kv.key_scales[storage * a.kv_heads + kv_head];
          const float vs = a.kv.value_scales[storage * a.kv_heads + kv_head];
          key = make_float4(kc.x * ks, kc.y * ks, kc.z * ks, kc.w * ks);
          value = make_float4(vc.x * vs, vc.y * vs, vc.z * vs, vc.w * vs);
        } else {
          key = *reinterpret_cast<const float4*>(a.kv.keys + offset);
          value = *reinterpret_cast<const float4*>(a.kv.values + offset);
        }
      }
      *reinterpret_cast<float4*>(k_s + tt * k_stride + d) = key;
      *reinterpret_cast<float4*>(v_s + tt * hd + d) = value;
    }
    __syncthreads();

    // Scores: lane = position t0 + lane, one per query of this warp.
    float score[kQueriesPerWarp];
#pragma unroll
    for (int j = 0; j < kQueriesPerWarp; ++j) score[j] = 0.0f;
    const float4* key_row = reinterpret_cast<const float4*>(k_s + lane * k_stride);
    for (int d4 = 0; d4 < hd4; ++d4) {
      const float4 k4 = key_row[d4];
#pragma unroll
      for (int j = 0; j < kQueriesPerWarp; ++j) {
        if (!active[j]) continue;
        const float4 q4 = reinterpret_cast<const float4*>(q_s + (warp + kWarps * j) * hd)[d4];
        score[j] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
      }
    }
    const int p = t0 + lane;
    const int tile_len = min(kTile, hi - t0 + 1);
    float weight[kQueriesPerWarp];
#pragma unroll
    for (int j = 0; j < kQueriesPerWarp; ++j) {
      weight[j] = 0.0f;
      if (!active[j]) continue;
      const bool valid = p >= first[j] && p <= last[j];
      float s = valid ? score[j] : -INFINITY;
      if (valid && a.softcap > 0.0f) s = tanhf(s / a.softcap) * a.softcap;
      const float new_max = fmaxf(running_max[j], warp_max(s));
      if (new_max == -INFINITY) continue;  // nothing of this query in the tile yet (uniform across the warp)
      const float correction = expf(running_max[j] - new_max);
      weight[j] = valid ? expf(s - new_max) : 0.0f;
      running_sum[j] = running_sum[j] * correction + warp_sum(weight[j]);
      running_max[j] = new_max;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) acc[j][c] *= correction;
    }
    for (int tt = 0; tt < tile_len; ++tt) {
      float w[kQueriesPerWarp];
#pragma unroll
      for (int j = 0; j < kQueriesPerWarp; ++j) w[j] = __shfl_sync(0xffffffffu, weight[j], tt);
      const float* v_row = v_s + tt * hd;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) {
        const int d = lane + 32 * c;
        if (d >= hd) break;
        const float v = v_row[d];
#pragma unroll
        for (int j = 0; j < kQueriesPerWarp; ++j) acc[j][c] += w[j] * v;
      }
    }
  }

  // Results: normalized output, or this part's unnormalized partial for the merge.
#pragma unroll
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    if (!exists[j]) continue;
    const int i = warp + kWarps * j;
    const std::int64_t cell = static_cast<std::int64_t>(q_row[i]) * a.heads + q_head[i];
    if (a.parts == 1) {
      const float inverse = running_sum[j] > 0.0f ? 1.0f / running_sum[j] : 0.0f;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) a.out[cell * hd + d] = acc[j][c] * inverse;
      }
    } else {
      const std::int64_t part_cell = static_cast<std::int64_t>(part) * a.rows * a.heads + cell;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) a.part_acc[part_cell * hd + d] = acc[j][c];
      }
      if (lane == 0) {
        a.part_max[part_cell] = running_max[j];
        a.part_sum[part_cell] = running_sum[j];
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads) merge_parts_kernel(const AttentionArgs a) {
  const std::int64_t cell = blockIdx.x;  // row * heads + head
  const std::int64_t cells = a.rows * a.heads;
  float best = -INFINITY;
  for (int part = 0; part < a.parts; ++part) best = fmaxf(best, a.part_max[part * cells + cell]);
  float denominator = 0.0f;
  for (int part = 0; part < a.parts; ++part) {
    const float m = a.part_max[part * cells + cell];
    if (m != -INFINITY) denominator += expf(m - best) * a.part_sum[part * cells + cell];
  }
  const float inverse = denominator > 0.0f ? 1.0f / denominator : 0.0f;
  for (int d = static_cast<int>(threadIdx.x); d < a.head_dim; d += kThreads) {
    float sum = 0.0f;
    for (int part = 0; part < a.parts; ++part) {
      const float m = a.part_max[part * cells + cell];
      if (m != -INFINITY) sum += expf(m - best) * a.part_acc[(part * cells + cell) * a.head_dim + d];
    }
    a.out[cell * a.head_dim + d] = sum * inverse;
  }
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

AttentionPlan plan_attention(std::int64_t rows, const AttentionDims& dims, std::int64_t max_position, int sm_count) {
  AttentionPlan plan;
  if (dims.kv_heads <= 0 || dims.heads % dims.kv_heads != 0) {
    throw_cuda_error(cudaErrorInvalidValue, "attention: heads must be a multiple of kv_heads", __FILE__, __LINE__);
  }
  const std::int64_t group = dims.heads / dims.kv_heads;
  plan.heads_per_block = static_cast<int>(std::min<std::int64_t>(group, kAttentionMaxQueries));
  plan.head_slabs = static_cast<int>(ceil_div(group, plan.heads_per_block));
  plan.rows_per_block = std::max(1, kAttentionMaxQueries / plan.heads_per_block);
  plan.row_blocks = ceil_div(std::max<std::int64_t>(rows, 1), plan.rows_per_block);
  const std::int64_t context = std::max<std::int64_t>(max_position, 0) + 1;
  const std::int64_t blocks = plan.row_blocks * dims.kv_heads * plan.head_slabs;
  plan.parts = 1;
  plan.part_len = ceil_div(context, kTile) * kTile;
  constexpr std::int64_t kMinPartLen = 256;
  if (blocks < 2 * std::int64_t{std::max(sm_count, 1)} && context > kMinPartLen) {
    const std::int64_t want = ceil_div(2 * std::int64_t{std::max(sm_count, 1)}, blocks);
    const std::int64_t parts = std::min(want, ceil_div(context, kMinPartLen));
    plan.part_len = ceil_div(ceil_div(context, parts), kTile) * kTile;
    plan.parts = ceil_div(context, plan.part_len);
  }
  if (plan.parts > 1) plan.workspace_floats = plan.parts * rows * dims.heads * (dims.head_dim + 2);
  plan.shared_bytes = shared_bytes_for(dims.head_dim);
  return plan;
}

void paged_attention(const AttentionPlan& plan, const float* q, std::int64_t rows, const std::int32_t* positions,
                     const PagedKvView& kv, const AttentionDims& dims, float* out, float* workspace,
                     cudaStream_t stream) {
  if (rows <= 0) return;
  const auto invalid = [](const char* what) { throw_cuda_error(cudaErrorInvalidValue, what, __FILE__, __LINE__); };
  if (dims.head_dim <= 0 || dims.head_dim % 4 != 0 || dims.head_dim > kAttentionMaxHeadDim) {
    invalid("attention: head_dim must be a multiple of 4 and at most 256");
  }
  if (kv.stride % 4 != 0) invalid("attention: the cache row stride must be a multiple of 4 elements");
  if (kv.block_table != nullptr && kv.block_size <= 0) invalid("attention: a block table needs a block size");
  const bool quantized = kv.key_codes != nullptr;
  if (quantized ? (kv.value_codes == nullptr || kv.key_scales == nullptr || kv.value_scales == nullptr)
                : (kv.keys == nullptr || kv.values == nullptr)) {
    invalid("attention: incomplete cache view");
  }
  if (plan.parts > 1 && (workspace == nullptr || plan.workspace_floats < plan.parts * rows * dims.heads * (dims.head_dim + 2))) {
    invalid("attention: a split over positions needs its workspace");
  }
  if (plan.row_blocks > 0x7fffffff || dims.kv_heads * plan.head_slabs > 65535 || plan.parts > 65535) {
    invalid("attention: too many blocks");
  }
  AttentionArgs args{};
  args.q = q;
  args.out = out;
  args.positions = positions;
  args.kv = kv;
  const std::int64_t cells = rows * dims.heads;
  args.part_acc = workspace;
  args.part_max = workspace != nullptr ? workspace + plan.parts * cells * dims.head_dim : nullptr;
  args.part_sum = workspace != nullptr ? args.part_max + plan.parts * cells : nullptr;
  args.rows = rows;
  args.heads = static_cast<int>(dims.heads);
  args.kv_heads = static_cast<int>(dims.kv_heads);
  args.head_dim = static_cast<int>(dims.head_dim);
  args.window = static_cast<int>(std::min<std::int64_t>(dims.window, 0x7fffffff));
  args.group = static_cast<int>(dims.heads / dims.kv_heads);
  args.rows_per_block = plan.rows_per_block;
  args.heads_per_block = plan.heads_per_block;
  args.head_slabs = plan.head_slabs;
  args.part_len = plan.part_len;
  args.parts = static_cast<int>(plan.parts);
  args.scale = dims.scale > 0 ? dims.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(dims.head_dim)));
  args.softcap = dims.softcap;

  const std::size_t shared = shared_bytes_for(dims.head_dim);
  if (shared > 48 * 1024) {
    NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared)));
  }
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(dims.kv_heads * plan.head_slabs),
                  static_cast<unsigned>(plan.parts));
  attention_kernel<<<grid, kThreads, shared, stream>>>(args);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "attention_kernel");
  if (plan.parts > 1) {
    merge_parts_kernel<<<static_cast<unsigned>(cells), kThreads, 0, stream>>>(args);
    NIBBLE_CUDA_CHECK_LAUNCH(stream, "merge_parts_kernel");
  }
}

}  // namespace nibble::kernels::cuda
