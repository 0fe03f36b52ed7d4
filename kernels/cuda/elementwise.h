#pragma once
// Small CUDA kernels of the decoder layer: RMSNorm (and residual add fused into
// it), rotate-half RoPE, SwiGLU, residual add, bias add, embedding gather and
// float32 -> fp16/bf16 conversion. Pointers are device memory; every launch is on
// `stream` and checked. Semantics match kernels::Backend and kernels/reference.h.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace nibble::kernels::cuda {

// y = x / rms(x) * weight per row of `dim`; x and y may alias.
void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
              cudaStream_t stream);
// residual += x, then y = rms_norm(residual): the residual stream read and written
// once instead of twice. y may alias x (not residual).
void add_rms_norm(const float* x, float* residual, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                  float* y, cudaStream_t stream);
// Rotates each head of x [rows, heads * head_dim] in place by positions[row]
// (rotate-half over the first 2 * half features, the rest passing through; inv_freq
// has `half` entries), the rotated features times `scale`; `adjacent`: pairs
// (2i, 2i + 1) instead (DeepSeek). Angles are float32 products like the CPU's;
// their sine and cosine are evaluated in double.
void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim, std::int64_t half,
          const std::int32_t* positions, const float* inv_freq, float scale, bool adjacent, cudaStream_t stream);
// Backend::head_linear: y[r*y_row + h*y_head + j] = x[r*x_row + h*x_head + :] . w[h*out + j][:]
// over `in` features; w float32 [heads * out, in].
void head_linear(const float* x, std::int64_t x_row, std::int64_t x_head, std::int64_t rows, std::int64_t heads,
                 const float* w, std::int64_t out, std::int64_t in, float* y, std::int64_t y_row, std::int64_t y_head,
                 cudaStream_t stream);
// out = silu(gate) * up over n values.
void swiglu(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream);
// out = gelu_tanh(gate) * up over n values (PyTorch's gelu(approximate="tanh")).
void geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream);
// x *= factor over n values.
void scale(float* x, std::int64_t n, float factor, cudaStream_t stream);
// x = cap * tanh(x / cap) over n values.
void soft_cap(float* x, std::int64_t n, float cap, cudaStream_t stream);
// y += x over n values.
void add(const float* x, std::int64_t n, float* y, cudaStream_t stream);
// y[r][i] += bias[i] for rows of n values at stride ldy.
void add_bias(float* y, std::int64_t rows, std::int64_t n, std::int64_t ldy, const float* bias, cudaStream_t stream);
// out[r] = table[ids[r]] as float32; table [*, cols] of F32, F16 or BF16. Ids must be valid.
void embedding(const void* table, DType dtype, std::int64_t cols, const std::int32_t* ids, std::int64_t count,
               float* out, cudaStream_t stream);
// out[i] = x[ids[i]] for `count` rows of `width` floats.
void gather_rows(const float* x, std::int64_t width, const std::int32_t* ids, std::int64_t count, float* out,
                 cudaStream_t stream);
// y[ids[i]] += weights[i] * x[i] for `count` rows of `width` floats; ids distinct.
void scatter_add_rows(const float* x, std::int64_t width, const std::int32_t* ids, const float* weights,
                      std::int64_t count, float* y, cudaStream_t stream);
// out = x rounded to fp16 (or bf16), nearest even; fp16 saturates at +-65504.
void convert_to_half(const float* x, std::int64_t n, std::uint16_t* out, bool bf16, cudaStream_t stream);

}  // namespace nibble::kernels::cuda
