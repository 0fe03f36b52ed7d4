#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/half.h"

namespace nibble::kernels::reference {

std::vector<float> linear(std::span<const float> x, std::int64_t rows, const Matrix& w, const float* bias) {
  std::vector<float> y(static_cast<std::size_t>(rows * w.rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t n = 0; n < w.rows; ++n) {
      double total = bias != nullptr ? bias[n] : 0.0;
      for (std::int64_t k = 0; k < w.cols; ++k) {
        total += static_cast<double>(x[static_cast<std::size_t>(r * w.cols + k)]) * kernels::matrix_element(w, n * w.cols + k);
      }
      y[static_cast<std::size_t>(r * w.rows + n)] = static_cast<float>(total);
    }
  }
  return y;
}

std::vector<float> rms_norm(std::span<const float> x, std::int64_t rows, std::int64_t dim, std::span<const float> weight,
                            float eps) {
  std::vector<float> y(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum_squares = 0;
    for (std::int64_t i = 0; i < dim; ++i) sum_squares += std::pow(static_cast<double>(x[static_cast<std::size_t>(r * dim + i)]), 2);
    const double scale = 1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps);
    for (std::int64_t i = 0; i < dim; ++i) {
      const auto at = static_cast<std::size_t>(r * dim + i);
      y[at] = static_cast<float>(weight[static_cast<std::size_t>(i)] * x[at] * scale);
    }
  }
  return y;
}

void rope(std::span<float> x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
          std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale, RopePairs pairs) {
  // The first 2 * inv_freq.size() features rotate; the rest of the head passes through.
  // Pair i is (i, i + half), or (2i, 2i + 1).
  const auto half = static_cast<std::int64_t>(inv_freq.size());
  const std::int64_t step = pairs == RopePairs::Halves ? 1 : 2, partner = pairs == RopePairs::Halves ? half : 1;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      float* v = x.data() + (r * heads + h) * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        // The angle is formed in float32, the convention of the models' own reference
        // (transformers); everything after it is exact.
        const double angle = static_cast<float>(positions[static_cast<std::size_t>(r)]) * inv_freq[static_cast<std::size_t>(i)];
        float& first = v[i * step];
        float& second = v[i * step + partner];
        const double a = first;
        const double b = second;
        first = static_cast<float>((a * std::cos(angle) - b * std::sin(angle)) * scale);
        second = static_cast<float>((b * std::cos(angle) + a * std::sin(angle)) * scale);
      }
    }
  }
}

std::vector<float> attention(std::span<const float> q, std::int64_t rows, std::span<const std::int32_t> positions,
                             const KvLayerView& kv, const AttentionShape& shape) {
  // Element i of head g's key / value at position t, in float64, whatever the cache's layout.
  const auto element = [&](bool key, std::int64_t t, std::int64_t g, std::int64_t i) {
    const std::int64_t r = kv.row(t);
    const std::int64_t at = r * kv.stride + g * shape.head_dim + i;
    switch (kv.format()) {
      case KvFormat::Float32:
        return static_cast<double>((key ? kv.keys : kv.values)[at]);
      case KvFormat::Float16:
        return static_cast<double>(f16_to_f32((key ? kv.keys_f16 : kv.values_f16)[at]));
      case KvFormat::Int8:
        break;
    }
    const std::int8_t code = (key ? kv.key_codes : kv.value_codes)[at];
    return static_cast<double>(code) * (key ? kv.key_scales : kv.value_scales)[r * shape.kv_heads + g];
  };
  const std::int64_t value_dim = shape.value_width();
  std::vector<float> out(static_cast<std::size_t>(rows * shape.heads * value_dim));
  const std::int64_t group = shape.heads / shape.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < shape.heads; ++h) {
      const std::int64_t last = positions[static_cast<std::size_t>(r)];
      const std::int64_t first = shape.sliding_window ? std::max<std::int64_t>(0, last - *shape.sliding_window + 1) : 0;
      const float* qh = q.data() + (r * shape.heads + h) * shape.head_dim;
      const std::int64_t g = h / group;
      std::vector<double> scores;
      for (std::int64_t t = first; t <= last; ++t) {
        double dot = 0;
        for (std::int64_t i = 0; i < shape.head_dim; ++i) dot += static_cast<double>(qh[i]) * element(true, t, g, i);
        double score = shape.scale > 0 ? dot * shape.scale : dot / std::sqrt(static_cast<double>(shape.head_dim));
        if (shape.logit_softcap > 0) score = shape.logit_softcap * std::tanh(score / shape.logit_softcap);
        scores.push_back(score);
      }
      const double max_score = *std::max_element(scores.begin(), scores.end());
      double total = 0;
      for (auto& s : scores) total += (s = std::exp(s - max_score));
      for (std::int64_t i = 0; i < value_dim; ++i) {
        double value = 0;
        for (std::int64_t t = first; t <= last; ++t) {
          value += scores[static_cast<std::size_t>(t - first)] / total * element(false, t, g, i);
        }
        out[static_cast<std::size_t>((r * shape.heads + h) * value_dim + i)] = static_cast<float>(value);
      }
    }
  }
  return out;
}

std::vector<float> swiglu(std::span<const float> gate, std::span<const float> up) {
  std::vector<float> out(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
  return out;
}

std::vector<float> geglu_tanh(std::span<const float> gate, std::span<const float> up) {
  std::vector<float> out(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    const double gelu = 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (g + 0.044715 * g * g * g)));
    out[i] = static_cast<float>(gelu * up[i]);
  }
  return out;
}

std::vector<float> soft_cap(std::span<const float> x, float cap) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(cap * std::tanh(double{x[i]} / cap));
  return out;
}

std::vector<float> scatter_add_rows(std::span<const float> x, std::int64_t width, std::span<const std::int32_t> ids,
                                    std::span<const float> weights, std::span<const float> y) {
  std::vector<float> out(y.begin(), y.end());
  const auto w = static_cast<std::size_t>(width);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    for (std::size_t c = 0; c < w; ++c) {
      auto& target = out[static_cast<std::size_t>(ids[i]) * w + c];
      target = static_cast<float>(static_cast<double>(target) + static_cast<double>(weights[i]) * x[i * w + c]);
    }
  }
  return out;
}

}  // namespace nibble::kernels::reference
