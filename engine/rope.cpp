#include "engine/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace nibble::engine {

namespace {

// LongRoPE's frequencies: 1 / (factor_i * theta^(2i / dim)), in float32 like
// transformers' _compute_longrope_parameters.
std::vector<float> longrope_inv_freq(std::int64_t dim, double theta, const std::vector<double>& factors) {
  std::vector<float> inv_freq(static_cast<std::size_t>(dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / (static_cast<float>(factors[i]) * std::pow(static_cast<float>(theta), exponent));
  }
  return inv_freq;
}

// YaRN (transformers' _compute_yarn_parameters, step for step in its float32 and
// double arithmetic): dimensions that turn fewer than beta_slow times over the
// original context are divided by `factor` (interpolated), those that turn more
// than beta_fast times are kept (extrapolated), with a linear ramp between.
void apply_yarn(std::vector<float>& inv_freq, std::int64_t dim, double theta, const RopeScaling& scaling) {
  const auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) *
           std::log(static_cast<double>(scaling.original_max_position_embeddings) / (rotations * 2 * std::numbers::pi)) /
           (2 * std::log(theta));
  };
  double low = correction_dim(scaling.beta_fast), high = correction_dim(scaling.beta_slow);
  if (scaling.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // no zero-width ramp
  const auto factor = static_cast<float>(scaling.factor);
  const auto low_f = static_cast<float>(low), width_f = static_cast<float>(high - low);
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const float extrapolation = inv_freq[i];  // 1 / theta^(2i / dim), as rope_inv_freq computed it
    const float position_frequency = std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(dim));
    const float interpolation = 1.0f / (factor * position_frequency);
    const float ramp = std::clamp((static_cast<float>(i) - low_f) / width_f, 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // the share of the unscaled frequency
    inv_freq[i] = interpolation * (1.0f - keep) + extrapolation * keep;
  }
}

}  // namespace

std::vector<float> rope_inv_freq(std::int64_t dim, double theta, const RopeScaling& scaling) {
  std::vector<float> inv_freq(static_cast<std::size_t>(dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    // float32 exponent and power, as transformers computes it, so positions far
    // into the context rotate by the same angles as the reference.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  switch (scaling.kind) {
    case RopeScaling::Kind::None:
    case RopeScaling::Kind::LongRope:  // RopeTables applies its factor lists
      break;
    case RopeScaling::Kind::Linear:
      for (auto& f : inv_freq) f = static_cast<float>(f / scaling.factor);
      break;
    case RopeScaling::Kind::Yarn:
      apply_yarn(inv_freq, dim, theta, scaling);
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

RopeTables::RopeTables(const ModelConfig& config, std::int64_t layer) {
  const bool local = config.local_rope_theta && config.sliding_layer(layer);
  const RopeScaling& scaling = local ? config.local_rope_scaling : config.rope_scaling;
  const double theta = local ? *config.local_rope_theta : config.rope_theta;
  const std::int64_t dim = config.rope_dim();
  if (scaling.kind != RopeScaling::Kind::LongRope) {
    short_.inv_freq = rope_inv_freq(dim, theta, scaling);
    // YaRN multiplies cos and sin by its attention factor (transformers' attention_scaling).
    if (scaling.kind == RopeScaling::Kind::Yarn) short_.scale = static_cast<float>(scaling.attention_factor);
    return;
  }
  const auto scale = static_cast<float>(scaling.attention_factor);
  short_ = {longrope_inv_freq(dim, theta, scaling.short_factor), scale};
  long_ = RopeTable{longrope_inv_freq(dim, theta, scaling.long_factor), scale};
  original_length_ = scaling.original_max_position_embeddings;
}

const RopeTable& RopeTables::for_length(std::int64_t length) const {
  return long_ && length > original_length_ ? *long_ : short_;
}

}  // namespace nibble::engine
