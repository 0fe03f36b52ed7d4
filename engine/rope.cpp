#include "engine/rope.h"

#include <cmath>
#include <numbers>

namespace nibble::engine {

std::vector<float> rope_inv_freq(std::int64_t head_dim, double theta, const RopeScaling& scaling) {
  std::vector<float> inv_freq(static_cast<std::size_t>(head_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    // float32 exponent and power, as transformers computes it, so positions far
    // into the context rotate by the same angles as the reference.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  switch (scaling.kind) {
    case RopeScaling::Kind::None:
      break;
    case RopeScaling::Kind::Linear:
      for (auto& f : inv_freq) f = static_cast<float>(f / scaling.factor);
      break;
    case RopeScaling::Kind::Llama3: {
      // Long wavelengths are slowed by `factor`, short ones kept, and the band in
      // between interpolated smoothly (Llama 3.1's context extension).
      const double old_context = static_cast<double>(scaling.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / scaling.low_freq_factor;
      const double high_freq_wavelen = old_context / scaling.high_freq_factor;
      for (auto& f : inv_freq) {
        const double wavelen = 2 * std::numbers::pi / f;
        if (wavelen < high_freq_wavelen) continue;
        if (wavelen > low_freq_wavelen) {
          f = static_cast<float>(f / scaling.factor);
          continue;
        }
        const double smooth =
            (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / scaling.factor + smooth * f);
      }
      break;
    }
  }
  return inv_freq;
}

}  // namespace nibble::engine
