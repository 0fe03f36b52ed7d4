#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/prefix_value_attention.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ std::int64_t storage_row(const PagedKvView& kv, std::int64_t position) {
  if (kv.block_table == nullptr) return position;
  return std::int64_t{kv.block_table[position / kv.block_size]} * kv.block_size + position % kv.block_size;
}

// Element i of kv head g's key (or value) at storage row `row`.
__device__ float element(const PagedKvView& kv, bool key, std::int64_t row, std::int64_t g, std::int64_t head_dim,
                         std::int64_t kv_heads, std::int64_t i) {
  const std::int64_t at = row * kv.stride + g * head_dim + i;
  if (kv.key_codes == nullptr) return (key ? kv.keys : kv.values)[at];
  const std::int8_t code = (key ? kv.key_codes : kv.value_codes)[at];
  return static_cast<float>(code) * (key ? kv.key_scales : kv.value_scales)[row * kv_heads + g];
}

// `value` reduced over the block by `op` (max or sum); every thread gets the result.
template <typename Op>
__device__ float block_reduce(float value, float* shared, Op op) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] = op(shared[threadIdx.x], shared[threadIdx.x + stride]);
    __syncthreads();
  }
  const float result = shared[0];
  __syncthreads();
  return result;
}

__global__ void __launch_bounds__(kThreads) prefix_value_kernel(const float* q, const std::int32_t* positions,
                                                                PagedKvView kv, PrefixValueDims dims,
                                                                std::int64_t stride, float* out, float* workspace) {
  __shared__ float shared[kThreads];
  const std::int64_t r = blockIdx.x / dims.heads, h = blockIdx.x % dims.heads;
  const std::int64_t last = positions[r];
  const std::int64_t first = dims.window > 0 && last - dims.window + 1 > 0 ? last - dims.window + 1 : 0;
  const std::int64_t g = h / (dims.heads / dims.kv_heads);
  const float* qh = q + (r * dims.heads + h) * dims.head_dim;
  float* scores = workspace + blockIdx.x * stride;
  const float scale = dims.scale > 0 ? dims.scale : rsqrtf(static_cast<float>(dims.head_dim));
  float local_max = -INFINITY;
  for (std::int64_t t = first + threadIdx.x; t <= last; t += kThreads) {
    const std::int64_t row = storage_row(kv, t);
    float dot = 0.0f;
    for (std::int64_t i = 0; i < dims.head_dim; ++i) {
      dot += qh[i] * element(kv, true, row, g, dims.head_dim, dims.kv_heads, i);
    }
    float score = dot * scale;
    if (dims.softcap > 0) score = dims.softcap * tanhf(score / dims.softcap);
    scores[t] = score;
    local_max = fmaxf(local_max, score);
  }
  const float max_score = block_reduce(local_max, shared, [](float a, float b) { return fmaxf(a, b); });
  float local_sum = 0.0f;
  for (std::int64_t t = first + threadIdx.x; t <= last; t += kThreads) {
    scores[t] = expf(scores[t] - max_score);
    local_sum += scores[t];
  }
  const float total = block_reduce(local_sum, shared, [](float a, float b) { return a + b; });
  __syncthreads();  // every score written before any thread reads them all
  for (std::int64_t i = threadIdx.x; i < dims.value_dim; i += kThreads) {
    float acc = 0.0f;
    for (std::int64_t t = first; t <= last; ++t) {
      acc += scores[t] * element(kv, false, storage_row(kv, t), g, dims.head_dim, dims.kv_heads, i);
    }
    out[(r * dims.heads + h) * dims.value_dim + i] = acc / total;
  }
}

}  // namespace

void prefix_value_attention(const float* q, std::int64_t rows, const std::int32_t* positions, const PagedKvView& kv,
                            const PrefixValueDims& dims, std::int64_t max_position, float* out, float* workspace,
                            cudaStream_t stream) {
  if (rows <= 0) return;
  const std::int64_t blocks = rows * dims.heads;
  prefix_value_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(q, positions, kv, dims, max_position + 1,
                                                                              out, workspace);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "prefix_value_kernel");
}

}  // namespace nibble::kernels::cuda
