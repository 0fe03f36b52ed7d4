#pragma once
// Paged causal attention whose values are the first value_dim features of each kv
// head's value row (MLA's latent cache: keys [c_kv ; k_rope], values c_kv) or whose
// heads are wider than the tiled kernel's 256 features. A plain kernel, one block
// per (row, head): scores into a workspace, a block-wide softmax, then the
// weighted sum. Correct first; MLA decode on the GPU wants a tiled kernel that
// reads each latent tile once for all heads (FlashMLA's scheme), which is for later.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/attention.h"

namespace nibble::kernels::cuda {

struct PrefixValueDims {
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;   // keys (and q) per head
  std::int64_t value_dim = 0;  // <= head_dim
  std::int64_t window = 0;     // sliding window (0: none)
  float scale = 0.0f;          // 0: 1 / sqrt(head_dim)
  float softcap = 0.0f;
};

// Workspace floats prefix_value_attention needs: rows * heads * positions.
inline std::int64_t prefix_value_workspace(std::int64_t rows, const PrefixValueDims& dims, std::int64_t max_position) {
  return rows * dims.heads * (max_position + 1);
}

// out[r][h * value_dim + i] = sum over positions first(r)..positions[r] of
// softmax(q[r][h] . k_p * scale) * v_p[i], for the kv head of h; float32 or int8 views.
void prefix_value_attention(const float* q, std::int64_t rows, const std::int32_t* positions, const PagedKvView& kv,
                            const PrefixValueDims& dims, std::int64_t max_position, float* out, float* workspace,
                            cudaStream_t stream);

}  // namespace nibble::kernels::cuda
