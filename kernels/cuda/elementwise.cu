// See elementwise.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridX = 65535 * 16;  // grid-stride loops cover the rest

unsigned grid_for(std::int64_t n) {
  const std::int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxGridX ? (blocks > 0 ? blocks : 1) : kMaxGridX);
}

void check_rows(std::int64_t rows, const char* what) {
  if (rows > 2147483647) throw_cuda_error(cudaErrorInvalidValue, what, __FILE__, __LINE__);
}

// Sum over the block of one value per thread (kThreads threads).
__device__ float block_sum(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float total = 0.0f;
  if (warp == 0) {
    total = lane < kThreads / 32 ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) scratch[kThreads / 32] = total;
  }
  __syncthreads();
  return scratch[kThreads / 32];
}

__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, float* residual, std::int64_t dim, const float* weight, float eps, float* y) {
  __shared__ float scratch[kThreads / 32 + 1];
  const std::int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  float* rr = residual != nullptr ? residual + row * dim : nullptr;
  float* yr = y + row * dim;
  float sum_squares = 0.0f;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float v = xr[i];
    if (rr != nullptr) {
      v += rr[i];
      rr[i] = v;
    }
    sum_squares += v * v;
  }
  const float total = block_sum(sum_squares, scratch);
  const float scale = 1.0f / sqrtf(total / static_cast<float>(dim) + eps);
  const float* source = rr != nullptr ? rr : xr;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) yr[i] = weight[i] * (source[i] * scale);
}

__global__ void __launch_bounds__(kThreads) rope_kernel(float* x, std::int64_t rows, std::int64_t heads,
                                                        std::int64_t head_dim, std::int64_t half,
                                                        const std::int32_t* positions, const float* inv_freq,
                                                        float scale, int adjacent) {
  const std::int64_t total = rows * heads * half;
  for (std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; index < total;
       index += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t i = index % half;
    const std::int64_t head = (index / half) % heads;
    const std::int64_t row = index / (half * heads);
    const float angle = static_cast<float>(positions[row]) * inv_freq[i];
    double s = 0.0;
    double c = 0.0;
    sincos(static_cast<double>(angle), &s, &c);
    float* v = x + (row * heads + head) * head_dim;
    // Pair i: (i, i + half), or (2i, 2i + 1) for interleaved pairs.
    float* pa = adjacent ? v + 2 * i : v + i;
    float* pb = adjacent ? pa + 1 : pa + half;
    const float a = *pa;
    const float b = *pb;
    // Scaled after rounding, as transformers multiplies its float32 cos and sin.
    const float cs = static_cast<float>(c) * scale, sn = static_cast<float>(s) * scale;
    *pa = a * cs - b * sn;
    *pb = b * cs + a * sn;
  }
}

__global__ void __launch_bounds__(kThreads) swiglu_kernel(const float* gate, const float* up, std::int64_t n, float* out) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void __launch_bounds__(kThreads) geglu_tanh_kernel(const float* gate, const float* up, std::int64_t n,
                                                             float* out) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const float g = gate[i];
    const float inner = 0.7978845608028654f * (g + 0.044715f * (g * g * g));
    out[i] = 0.5f * g * (1.0f + tanhf(inner)) * up[i];
  }
}

__global__ void __launch_bounds__(kThreads) scale_kernel(float* x, std::int64_t n, float factor) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    x[i] *= factor;
  }
}

__global__ void __launch_bounds__(kThreads) soft_cap_kernel(float* x, std::int64_t n, float cap) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    x[i] = tanhf(x[i] / cap) * cap;
  }
}

__global__ void __launch_bounds__(kThreads) add_kernel(const float* x, std::int64_t n, float* y) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    y[i] += x[i];
  }
}

__global__ void __launch_bounds__(kThreads)
    add_bias_kernel(float* y, std::int64_t rows, std::int64_t n, std::int64_t ldy, const float* bias) {
  const std::int64_t total = rows * n;
  for (std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; index < total;
       index += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t row = index / n;
    const std::int64_t i = index % n;
    y[row * ldy + i] += bias[i];
  }
}

__device__ __forceinline__ float element(const void* table, int kind, std::int64_t index) {
  if (kind == 0) return static_cast<const float*>(table)[index];
  const unsigned short bits = static_cast<const unsigned short*>(table)[index];
  if (kind == 1) return __half2float(__ushort_as_half(bits));
  return __uint_as_float(static_cast<unsigned>(bits) << 16);  // bf16
}

__global__ void __launch_bounds__(kThreads) embedding_kernel(const void* table, int kind, std::int64_t cols,
                                                             const std::int32_t* ids, std::int64_t count, float* out) {
  const std::int64_t total = count * cols;
  for (std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; index < total;
       index += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t r = index / cols;
    const std::int64_t c = index % cols;
    out[index] = element(table, kind, static_cast<std::int64_t>(ids[r]) * cols + c);
  }
}

__global__ void __launch_bounds__(kThreads) convert_kernel(const float* x, std::int64_t n, std::uint16_t* out, int bf16) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    float v = x[i];
    if (bf16) {
      out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    } else {
      v = isnan(v) ? v : fminf(fmaxf(v, -65504.0f), 65504.0f);
      out[i] = __half_as_ushort(__float2half_rn(v));
    }
  }
}

// One thread per (row, head, output): a dot product over the input slice. MLA's
// per-head products are a few rows by a latent's width; a tiled kernel is for later.
__global__ void __launch_bounds__(kThreads) head_linear_kernel(const float* x, std::int64_t x_row, std::int64_t x_head,
                                                               std::int64_t rows, std::int64_t heads, const float* w,
                                                               std::int64_t out, std::int64_t in, float* y,
                                                               std::int64_t y_row, std::int64_t y_head) {
  const std::int64_t total = rows * heads * out;
  for (std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; index < total;
       index += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t j = index % out;
    const std::int64_t h = (index / out) % heads;
    const std::int64_t r = index / (out * heads);
    const float* input = x + r * x_row + h * x_head;
    const float* weights = w + (h * out + j) * in;
    float sum = 0.0f;
    for (std::int64_t i = 0; i < in; ++i) sum += input[i] * weights[i];
    y[r * y_row + h * y_head + j] = sum;
  }
}

}  // namespace

void head_linear(const float* x, std::int64_t x_row, std::int64_t x_head, std::int64_t rows, std::int64_t heads,
                 const float* w, std::int64_t out, std::int64_t in, float* y, std::int64_t y_row, std::int64_t y_head,
                 cudaStream_t stream) {
  const std::int64_t total = rows * heads * out;
  if (total <= 0) return;
  head_linear_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, x_row, x_head, rows, heads, w, out, in, y, y_row,
                                                               y_head);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "head_linear_kernel");
}

void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
              cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return;
  check_rows(rows, "rms_norm: too many rows");
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, nullptr, dim, weight, eps, y);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "rms_norm_kernel");
}

void add_rms_norm(const float* x, float* residual, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                  float* y, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return;
  check_rows(rows, "add_rms_norm: too many rows");
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, residual, dim, weight, eps, y);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "rms_norm_kernel (fused add)");
}

void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim, std::int64_t half,
          const std::int32_t* positions, const float* inv_freq, float scale, bool adjacent, cudaStream_t stream) {
  const std::int64_t total = rows * heads * half;
  if (total <= 0) return;
  rope_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, rows, heads, head_dim, half, positions, inv_freq, scale,
                                                        adjacent ? 1 : 0);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "rope_kernel");
}

void swiglu(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  swiglu_kernel<<<grid_for(n), kThreads, 0, stream>>>(gate, up, n, out);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "swiglu_kernel");
}

void geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  geglu_tanh_kernel<<<grid_for(n), kThreads, 0, stream>>>(gate, up, n, out);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "geglu_tanh_kernel");
}

void scale(float* x, std::int64_t n, float factor, cudaStream_t stream) {
  if (n <= 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, factor);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "scale_kernel");
}

void soft_cap(float* x, std::int64_t n, float cap, cudaStream_t stream) {
  if (n <= 0) return;
  soft_cap_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, cap);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "soft_cap_kernel");
}

void add(const float* x, std::int64_t n, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, y);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "add_kernel");
}

void add_bias(float* y, std::int64_t rows, std::int64_t n, std::int64_t ldy, const float* bias, cudaStream_t stream) {
  if (rows <= 0 || n <= 0 || bias == nullptr) return;
  add_bias_kernel<<<grid_for(rows * n), kThreads, 0, stream>>>(y, rows, n, ldy, bias);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "add_bias_kernel");
}

void embedding(const void* table, DType dtype, std::int64_t cols, const std::int32_t* ids, std::int64_t count,
               float* out, cudaStream_t stream) {
  if (count <= 0 || cols <= 0) return;
  int kind = 0;
  if (dtype == DType::F16) {
    kind = 1;
  } else if (dtype == DType::BF16) {
    kind = 2;
  } else if (dtype != DType::F32) {
    throw_cuda_error(cudaErrorInvalidValue, "embedding: table dtype must be F32, F16 or BF16", __FILE__, __LINE__);
  }
  embedding_kernel<<<grid_for(count * cols), kThreads, 0, stream>>>(table, kind, cols, ids, count, out);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "embedding_kernel");
}

void convert_to_half(const float* x, std::int64_t n, std::uint16_t* out, bool bf16, cudaStream_t stream) {
  if (n <= 0) return;
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, out, bf16 ? 1 : 0);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "convert_kernel");
}

namespace {

__global__ void gather_rows_kernel(const float* x, std::int64_t width, const std::int32_t* ids, std::int64_t count,
                                   float* out) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count * width) return;
  const std::int64_t row = i / width, column = i % width;
  out[i] = x[static_cast<std::int64_t>(ids[row]) * width + column];
}

// Each output row belongs to one id (ids are distinct), so plain adds do not race.
__global__ void scatter_add_rows_kernel(const float* x, std::int64_t width, const std::int32_t* ids,
                                        const float* weights, std::int64_t count, float* y) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count * width) return;
  const std::int64_t row = i / width, column = i % width;
  y[static_cast<std::int64_t>(ids[row]) * width + column] += weights[row] * x[i];
}

}  // namespace

void gather_rows(const float* x, std::int64_t width, const std::int32_t* ids, std::int64_t count, float* out,
                 cudaStream_t stream) {
  if (count <= 0 || width <= 0) return;
  gather_rows_kernel<<<grid_for(count * width), kThreads, 0, stream>>>(x, width, ids, count, out);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "gather_rows_kernel");
}

void scatter_add_rows(const float* x, std::int64_t width, const std::int32_t* ids, const float* weights,
                      std::int64_t count, float* y, cudaStream_t stream) {
  if (count <= 0 || width <= 0) return;
  scatter_add_rows_kernel<<<grid_for(count * width), kThreads, 0, stream>>>(x, width, ids, weights, count, y);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "scatter_add_rows_kernel");
}

}  // namespace nibble::kernels::cuda
