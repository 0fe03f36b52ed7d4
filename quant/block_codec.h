#pragma once
// Encoders for the GGUF block types nibble writes, in exactly the layouts
// llama.cpp reads (docs/formats.md, "Block layouts"): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
// (one fp16 scale per 32 weights, Q4_1/Q5_1 with an fp16 minimum) and Q4_K, Q5_K,
// Q6_K (256 weights: an fp16 super-block scale over 6-bit (Q6_K: 8-bit) sub-block
// scales, Q4_K/Q5_K with 6-bit sub-block minimums under an fp16 dmin).
//
// Every format is one rule: element e of a block has code q in [0, maxq] and value
//   scale[sub(e)] * (q - zero) - min[sub(e)]
// with the per-sub-block scale and min computed in float32 from the stored fields
// (Q4_0: zero 8, min 0; Q4_1: min = -m; Q4_K: scale = d * sc, min = dmin * m; ...).
// That lets one search serve every format and lets GPTQ quantize column by column
// against fixed block parameters (quantize()).
//
// fit() chooses the parameters by weighted squared error Σ imp_e (x_e - value_e)^2,
// not by absmax alone: per sub-block it tries a range of scales (and minimums),
// re-solves each by least squares for the codes it gives, and keeps the best; the
// K-quants' two-level scales are then rounded to their integers and the
// super-block d (and dmin) re-solved by least squares over the whole block. The
// plain absmax/min-max encoding (fit_absmax) is always one of the candidates, so
// fit() never does worse than it under the same importance.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "loader/gguf.h"

namespace nibble::quant {

class BlockCodec {
 public:
  // Fitted parameters of one block, as the format stores them, and the effective
  // per-sub-block scale/min they decode to.
  struct Params {
    std::uint16_t d = 0;     // fp16 bits: the (super-)block scale
    std::uint16_t dmin = 0;  // fp16 bits: K-quant dmin; Q4_1/Q5_1: the minimum m
    std::array<std::int16_t, 16> sc{};  // K-quant sub-block scales (Q6_K signed)
    std::array<std::int16_t, 16> mn{};  // Q4_K/Q5_K sub-block minimums
    std::array<float, 16> scale{};      // effective, per sub-block
    std::array<float, 16> min{};
  };

  // Throws nibble::Error for a type nibble cannot encode.
  explicit BlockCodec(GgmlType type);
  static bool supported(GgmlType type);

  GgmlType type() const { return type_; }
  int elements() const { return elements_; }  // weights per block: 32 or 256
  int bytes() const { return bytes_; }        // bytes per block
  int sub_elements() const { return sub_; }   // weights per sub-block (the whole block when single-level)
  double bits_per_weight() const { return 8.0 * bytes_ / elements_; }

  // `x`: elements() finite values; `importance`: empty (all 1) or elements()
  // non-negative finite weights. Throws nibble::Error otherwise.
  Params fit(std::span<const float> x, std::span<const float> importance = {}) const;
  // The baseline: symmetric formats map the largest-magnitude weight to the most
  // negative code (ggml's reference rule), affine ones span [min, max] (K-quants:
  // [min(min, 0), max]); sub-block scales rounded to their integers under d = max / top.
  Params fit_absmax(std::span<const float> x) const;

  // The nearest code to `w` at element `e` (0 <= e < elements()) under `p`.
  std::uint8_t quantize(float w, int e, const Params& p) const;
  float value(std::uint8_t code, int e, const Params& p) const {
    const int s = e / sub_;
    return p.scale[static_cast<std::size_t>(s)] * static_cast<float>(static_cast<int>(code) - zero_) -
           p.min[static_cast<std::size_t>(s)];
  }
  // Writes one block (bytes() bytes) from parameters and elements() codes.
  void pack(const Params& p, std::span<const std::uint8_t> codes, std::byte* out) const;

  // fit + quantize + pack of one block; returns the weighted squared error.
  double encode(std::span<const float> x, std::span<const float> importance, std::byte* out) const;
  // Weighted squared error of `p` with nearest codes.
  double error(std::span<const float> x, std::span<const float> importance, const Params& p) const;

 private:
  struct Fit;
  Params round_two_level(std::span<const double> scales, std::span<const double> mins) const;
  void refine_super(std::span<const float> x, std::span<const float> importance, Params& p) const;
  void set_effective(Params& p) const;
  void check(std::span<const float> x, std::span<const float> importance) const;

  GgmlType type_;
  int elements_ = 32, bytes_ = 0, sub_ = 32, maxq_ = 15, zero_ = 0;
  bool affine_ = false;     // has a minimum (Q4_1, Q5_1, Q4_K, Q5_K)
  bool two_level_ = false;  // K-quant integer sub-block scales
};

// Rows [rows, cols] of weights encoded block by block (round to nearest with the
// fitted parameters); `importance` empty or `cols` weights, shared by every row.
// cols must be a multiple of the block size.
std::vector<std::byte> encode_rows(const BlockCodec& codec, std::span<const float> weights, std::int64_t rows,
                                   std::int64_t cols, std::span<const float> importance = {});
// Decodes rows of `type` blocks with the loader's reference decoder.
std::vector<float> decode_rows(GgmlType type, std::span<const std::byte> blocks, std::int64_t rows, std::int64_t cols);

}  // namespace nibble::quant
