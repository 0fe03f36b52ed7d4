#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kv_store.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kWarp = 32;

__device__ float warp_max(float value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// One warp per (row, kv head, keys or values).
__global__ void __launch_bounds__(kWarp) kv_store_kernel(KvStoreArgs args, const float* new_keys,
                                                          const float* new_values) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t head = blockIdx.y;
  const bool is_value = blockIdx.z == 1;
  const std::int64_t kv_dim = args.kv_heads * args.head_dim;
  const std::int64_t position = args.start + row;
  const std::int64_t slot =
      std::int64_t{args.block_table[position / args.block_size]} * args.block_size + position % args.block_size;
  const float* x = (is_value ? new_values : new_keys) + row * kv_dim + head * args.head_dim;
  const std::int64_t at = slot * kv_dim + head * args.head_dim;
  switch (args.format) {
    case KvFormat::Float32: {
      float* out = static_cast<float*>(is_value ? args.values : args.keys) + at;
      for (std::int64_t i = threadIdx.x; i < args.head_dim; i += kWarp) out[i] = x[i];
      break;
    }
    case KvFormat::Float16: {
      __half* out = static_cast<__half*>(is_value ? args.values : args.keys) + at;
      for (std::int64_t i = threadIdx.x; i < args.head_dim; i += kWarp) out[i] = __float2half_rn(x[i]);
      break;
    }
    case KvFormat::Int8: {
      float max_abs = 0.0f;
      for (std::int64_t i = threadIdx.x; i < args.head_dim; i += kWarp) max_abs = fmaxf(max_abs, fabsf(x[i]));
      max_abs = warp_max(max_abs);
      const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
      std::int8_t* out = static_cast<std::int8_t*>(is_value ? args.values : args.keys) + at;
      for (std::int64_t i = threadIdx.x; i < args.head_dim; i += kWarp) {
        out[i] = static_cast<std::int8_t>(__float2int_rn(fminf(fmaxf(x[i] / scale, -127.0f), 127.0f)));
      }
      if (threadIdx.x == 0) (is_value ? args.value_scales : args.key_scales)[slot * args.kv_heads + head] = scale;
      break;
    }
  }
}

}  // namespace

void kv_store(const KvStoreArgs& args, const float* new_keys, const float* new_values, cudaStream_t stream) {
  if (args.rows <= 0) return;
  const dim3 grid(static_cast<unsigned>(args.rows), static_cast<unsigned>(args.kv_heads), args.keys_only ? 1 : 2);
  kv_store_kernel<<<grid, kWarp, 0, stream>>>(args, new_keys, new_values);
  NIBBLE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace nibble::kernels::cuda
