#pragma once
// Uniform integer quantization of one group of weights, as GPTQ/AutoGPTQ define
// it, so checkpoints we write dequantize the same way in every reader:
//   min-max over the group with 0 always representable;
//   asymmetric: scale = (max - min) / maxq, zero = round(-min / scale);
//   symmetric:  scale = 2 * max(|min|, |max|) / maxq, zero = (maxq + 1) / 2;
//   code = clamp(round(w / scale) + zero, 0, maxq), value = scale * (code - zero).
// (round: to nearest, ties to even, as torch.round.) An all-zero group gets GPTQ's
// range [-1, 1]. The scale is rounded to the checkpoint's fp16 before any code (or
// the asymmetric zero point) is chosen, so the codes are the best ones for the scale
// readers will actually see; a scale that would underflow fp16 becomes its smallest
// subnormal, one that overflows it is an error.
//
// ScaleChoice::Search keeps that format (fp16 scale, integer zero point; the
// symmetric zero point stays 2^(bits-1), which GPTQ checkpoints fix) but chooses
// scale and zero by error: among the min-max fit above and a grid of candidates it
// keeps the one with the least (importance-weighted) squared error
//   sum_i h_i (w_i - value(code(w_i)))^2
// evaluated exactly as readers dequantize (fp16 scale, clamped codes). The grid
// clips the range (a finer step that saturates outliers) and, symmetric, uses the
// full code range: the extreme weight may land on -2^(bits-1) or on 2^(bits-1) - 1
// exactly, where min-max scaling leaves it half a step off, and the scale may be
// negative, which mirrors the grid so the extreme takes the long end (-2^(bits-1)
// steps) whatever its sign, as llama.cpp's Q4_0 (scale = extreme / -8). Every
// reader computes scale * (code - zero), so a negative scale needs no format
// change. Each grid winner is refined by least squares on its codes. A symmetric
// group given no importance is searched with importance |w_i| (magnitude_importance;
// measured, plain squared error is a poor proxy there, group_quantizer.cpp). The
// min-max fit is a candidate, so the search never does worse than it on the
// weighted error it minimizes.
#include <cstdint>
#include <span>
#include <vector>

namespace nibble::quant {

enum class ScaleChoice : std::uint8_t {
  MinMax,  // GPTQ/AutoGPTQ's reference convention (the default, so reference tests pin it)
  Search,  // least weighted squared error over a candidate grid (see above)
};

struct QuantSpec {
  int bits = 4;                   // 2, 3, 4 or 8
  std::int64_t group_size = 128;  // input columns per group; -1: one group per row
  bool sym = true;
  // The smallest asymmetric zero point the checkpoint can store. GPTQ's v1 layout
  // (what AutoGPTQ writes and vLLM reads) stores zero - 1 in an unsigned field, so
  // it needs 1: a group whose minimum is 0 then gets its range [-scale, (maxq - 1) * scale]
  // instead of a zero point of 0 that would wrap around.
  int min_zero = 0;
  ScaleChoice scales = ScaleChoice::MinMax;
  int maxq() const { return (1 << bits) - 1; }
  // Groups along `cols` input columns. As in GPTQ/AutoGPTQ the last group may be
  // shorter: SmolLM2's 576 columns in groups of 128 are 4 groups of 128 and one of 64.
  std::int64_t groups(std::int64_t cols) const { return group_size > 0 ? (cols + group_size - 1) / group_size : 1; }
  // Throws nibble::Error for unsupported bits or a group size that is neither
  // positive nor -1.
  void validate() const;
};

struct GroupParams {
  float scale = 1.0f;  // already representable in fp16; negative only symmetric (a mirrored grid)
  int zero = 0;        // in [0, maxq]
};

// Fits scale and zero point to `values` (all weights of one row's group).
// `importance` (empty, or one non-negative weight per value: the input column's
// activation second moment, GPTQ's H_jj) weights the error the search minimizes;
// empty weighs every value alike. MinMax ignores it. Throws nibble::Error for
// NaN/Inf values, bad importance or an invalid spec.
GroupParams fit_group(std::span<const float> values, const QuantSpec& spec, std::span<const float> importance = {});

// sum_i h_i (w_i - dequantize_code(quantize_code(w_i)))^2 (h_i = 1 when `importance`
// is empty): the error fit_group's search minimizes (for a symmetric group given no
// importance, with magnitude_importance's weights).
double group_error(std::span<const float> values, const GroupParams& params, int maxq,
                   std::span<const float> importance = {});

// |w_i|: the weights of a symmetric search given no importance.
std::vector<float> magnitude_importance(std::span<const float> values);

inline int quantize_code(float w, const GroupParams& p, int maxq);
inline float dequantize_code(int code, const GroupParams& p) {
  return p.scale * static_cast<float>(code - p.zero);
}

}  // namespace nibble::quant

#include <cmath>

namespace nibble::quant {
inline int quantize_code(float w, const GroupParams& p, int maxq) {
  // Clamped while still a float, so a weight far outside the group's range cannot
  // overflow the int conversion.
  const float code = std::nearbyint(w / p.scale) + static_cast<float>(p.zero);
  return static_cast<int>(code < 0.0f ? 0.0f : (code > static_cast<float>(maxq) ? static_cast<float>(maxq) : code));
}
}  // namespace nibble::quant
