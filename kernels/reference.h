#pragma once
// Plain, obviously-correct implementations of the backend ops with float64
// accumulation. Tests check every backend against these; never used for serving.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"

namespace nibble::kernels::reference {

std::vector<float> linear(std::span<const float> x, std::int64_t rows, const Matrix& w, const float* bias);
std::vector<float> rms_norm(std::span<const float> x, std::int64_t rows, std::int64_t dim, std::span<const float> weight,
                            float eps);
// Backend::rope: the first 2 * inv_freq.size() features of each head rotate, scaled
// by `scale`, in `pairs`.
void rope(std::span<float> x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
          std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale = 1.0f,
          RopePairs pairs = RopePairs::Halves);
// Backend::attention; out is [rows, heads * shape.value_width()].
std::vector<float> attention(std::span<const float> q, std::int64_t rows, std::span<const std::int32_t> positions,
                             const KvLayerView& kv, const AttentionShape& shape);
std::vector<float> swiglu(std::span<const float> gate, std::span<const float> up);
std::vector<float> geglu_tanh(std::span<const float> gate, std::span<const float> up);
std::vector<float> soft_cap(std::span<const float> x, float cap);
// Backend::scatter_add_rows on a copy of y.
std::vector<float> scatter_add_rows(std::span<const float> x, std::int64_t width, std::span<const std::int32_t> ids,
                                    std::span<const float> weights, std::span<const float> y);

}  // namespace nibble::kernels::reference
