#include "quant/group_quantizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "common/half.h"

namespace nibble::quant {
namespace {

float round_to_f16(float value) { return f16_to_f32(f32_to_f16(value)); }

// The smallest positive fp16 (a subnormal): a group whose range is so tiny that its
// scale underflows fp16 still gets a finite, positive scale, so w / scale stays finite.
constexpr float kSmallestF16 = 0x1p-24f;

double weight_of(std::span<const float> importance, std::size_t i) {
  return importance.empty() ? 1.0 : static_cast<double>(importance[i]);
}

void check_importance(std::span<const float> values, std::span<const float> importance) {
  if (importance.empty()) return;
  if (importance.size() != values.size()) {
    fail("{} importance weights for a group of {} values", importance.size(), values.size());
  }
  for (const float h : importance) {
    if (!(h >= 0.0f) || !std::isfinite(h)) fail("importance weight {} is not a finite non-negative number", h);
  }
}

// Candidate scales and zero points, each judged by its exact weighted error.
class ScaleSearch {
 public:
  ScaleSearch(std::span<const float> values, std::span<const float> importance, const QuantSpec& spec,
              GroupParams start)
      : values_(values), importance_(importance), spec_(spec), maxq_(spec.maxq()), best_(start),
        best_error_(group_error(values, start, maxq_, importance)) {}

  // Offers scale (rounded to fp16 here) with zero point `zero` (clamped to what
  // the spec may store); kept when its error is strictly lower. Symmetric scales may
  // be negative (see search_group); asymmetric ones are positive, the zero point
  // already places the grid.
  void offer(float scale, int zero) {
    if (!std::isfinite(scale) || scale == 0.0f || (scale < 0.0f && !spec_.sym)) return;
    GroupParams p;
    p.scale = std::copysign(std::max(std::abs(round_to_f16(scale)), kSmallestF16), scale);
    if (std::isinf(p.scale)) return;
    p.zero = spec_.sym ? (maxq_ + 1) / 2 : std::clamp(zero, spec_.min_zero, maxq_);
    const double error = group_error(values_, p, maxq_, importance_);
    if (error < best_error_) {
      best_ = p;
      best_error_ = error;
    }
  }

  // Least squares on the current best's codes: with the codes fixed, the error is
  // a quadratic in the scale (and, asymmetric, in the offset), so its minimum is
  // one division away. New codes follow from the new scale, hence a few rounds.
  void refine() {
    for (int round = 0; round < 3; ++round) {
      const GroupParams p = best_;
      double hcc = 0, hcw = 0, h = 0, hq = 0, hqq = 0, hw = 0, hqw = 0;
      for (std::size_t i = 0; i < values_.size(); ++i) {
        const double weight = weight_of(importance_, i), w = values_[i];
        const int code = quantize_code(values_[i], p, maxq_);
        const double c = code - p.zero, q = code;
        hcc += weight * c * c;
        hcw += weight * c * w;
        h += weight;
        hq += weight * q;
        hqq += weight * q * q;
        hw += weight * w;
        hqw += weight * q * w;
      }
      if (hcc > 0) offer(static_cast<float>(hcw / hcc), p.zero);
      if (!spec_.sym) {
        // w ~ s q + m jointly, then the integer zero point nearest -m / s.
        const double det = h * hqq - hq * hq;
        if (det > 0) {
          const double s = (h * hqw - hq * hw) / det, m = (hw - s * hq) / h;
          if (s > 0) offer(static_cast<float>(s), static_cast<int>(std::nearbyint(std::clamp(-m / s, -1.0, maxq_ + 1.0))));
        }
      }
      if (best_.scale == p.scale && best_.zero == p.zero) return;
    }
  }

  const GroupParams& best() const { return best_; }

 private:
  std::span<const float> values_, importance_;
  const QuantSpec& spec_;
  int maxq_;
  GroupParams best_;
  double best_error_;
};

GroupParams search_group(std::span<const float> values, std::span<const float> importance, const QuantSpec& spec,
                         GroupParams start) {
  float low = 0.0f, high = 0.0f;
  for (const float v : values) {
    low = std::min(low, v);
    high = std::max(high, v);
  }
  if (low == 0.0f && high == 0.0f) return start;  // every candidate is exact
  ScaleSearch search(values, importance, spec, start);
  const int maxq = spec.maxq();
  if (spec.sym) {
    // The grid scale * (code - half) spans -half..half-1 steps: one more step below
    // zero than above. A negative scale mirrors it (-(half-1)..half steps), so either
    // sign of the group's extreme can take the long side, as llama.cpp's Q4_0 does
    // with scale = extreme / -half. Each sign is offered at amax / t: t = half - 1
    // puts amax on the short end, t = half on the long end (the full range), larger
    // t clip the extremes for a finer step.
    const float amax = std::max(-low, high);
    const double half = (maxq + 1) / 2, first = half - 1, last = half / 0.65;
    constexpr int kSteps = 24;
    for (int k = 0; k < kSteps; ++k) {
      const auto scale = static_cast<float>(amax / (first + (last - first) * k / (kSteps - 1)));
      search.offer(scale, 0);
      search.offer(-scale, 0);
    }
  } else {
    // Each end of the range clipped on its own, the zero point the one nearest the
    // clipped minimum.
    constexpr std::array<float, 6> kShrink = {1.0f, 0.93f, 0.86f, 0.8f, 0.74f, 0.68f};
    for (const float a : kShrink) {
      for (const float b : kShrink) {
        const float lo = low * a, hi = high * b, scale = (hi - lo) / static_cast<float>(maxq);
        const float stored = std::max(round_to_f16(scale), kSmallestF16);
        search.offer(scale, static_cast<int>(std::nearbyint(std::clamp(-lo / stored, 0.0f, static_cast<float>(maxq)))));
      }
    }
  }
  search.refine();
  return search.best();
}

}  // namespace

double group_error(std::span<const float> values, const GroupParams& params, int maxq,
                   std::span<const float> importance) {
  double error = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double d = static_cast<double>(values[i]) - dequantize_code(quantize_code(values[i], params, maxq), params);
    error += weight_of(importance, i) * d * d;
  }
  return error;
}

std::vector<float> magnitude_importance(std::span<const float> values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = std::abs(values[i]);
  return out;
}

void QuantSpec::validate() const {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) fail("{}-bit quantization is not supported (2, 3, 4, 8)", bits);
  if (min_zero < 0 || min_zero >= maxq()) fail("minimum zero point {} is outside [0, {})", min_zero, maxq());
  if (group_size != -1 && group_size <= 0) {
    fail("group size {} is invalid (a positive number, or -1 for one group per row)", group_size);
  }
}

GroupParams fit_group(std::span<const float> values, const QuantSpec& spec, std::span<const float> importance) {
  spec.validate();
  check_importance(values, importance);
  const int maxq = spec.maxq();
  // 0 is always inside the range, so pruned weights (exact zeros) stay exact.
  float low = 0.0f, high = 0.0f;
  for (const float v : values) {
    if (!std::isfinite(v)) fail("cannot quantize a group holding {}", v);
    low = std::min(low, v);
    high = std::max(high, v);
  }
  if (spec.sym) {
    high = std::max(-low, high);
    low = -high;
  }
  if (low == 0.0f && high == 0.0f) {  // an all-zero group: any scale works; GPTQ's choice
    low = -1.0f;
    high = 1.0f;
  }
  float scale = round_to_f16((high - low) / static_cast<float>(maxq));
  if (std::isinf(scale)) fail("weights up to {} need a scale beyond fp16's range", std::max(-low, high));
  scale = std::max(scale, kSmallestF16);

  GroupParams params;
  params.scale = scale;
  if (spec.sym) {
    params.zero = (maxq + 1) / 2;
  } else {
    // Chosen with the fp16 scale readers will see, so the group's minimum lands on a code.
    const float zero = std::nearbyint(-low / scale);
    params.zero = static_cast<int>(std::clamp(zero, 0.0f, static_cast<float>(maxq)));
    if (params.zero < spec.min_zero) {
      // Keep the group's maximum on a code while the zero point moves up.
      params.zero = spec.min_zero;
      params.scale = std::max(round_to_f16(high / static_cast<float>(maxq - spec.min_zero)), kSmallestF16);
      if (std::isinf(params.scale)) fail("weights up to {} need a scale beyond fp16's range", high);
    }
  }
  if (spec.scales != ScaleChoice::Search) return params;
  if (spec.sym && importance.empty()) {
    // Symmetric without activation statistics, plain squared weight error is a poor
    // stand-in for the output error: its optimum clips a group's extremes to save
    // error on the many small weights, which cost KL on SmolLM2. Weighing each
    // weight's error by |w| (as llama.cpp's K-quants weigh theirs without an
    // imatrix) keeps the large weights close. RTN 4-bit g32 sym, KL mean / p99
    // (docs/perf/2026-12-07-quality-table.md; sliding 4,096 tokens and 8 chunks of
    // 512): unweighted 0.378 / 2.61; |w|-weighted 0.348 / 2.62 and 0.292 / 1.57;
    // llama.cpp's Q4_0 0.358 / 2.75 and 0.300 / 1.77. (Searching without clipping
    // or refinement gave 0.352 / 2.40 and 0.295 / 1.83: the tail not better on both;
    // w^2 weights 0.332 / 1.55 on chunks: the mean worse.) Asymmetric, the plain
    // error does well (0.305 / 2.25 sliding), and is kept.
    const std::vector<float> magnitude = magnitude_importance(values);
    return search_group(values, magnitude, spec, params);
  }
  return search_group(values, importance, spec, params);
}

}  // namespace nibble::quant
