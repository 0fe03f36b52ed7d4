#include "quant/block_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>

#include "common/error.h"
#include "common/half.h"

namespace nibble::quant {
namespace {

struct Layout {
  GgmlType type;
  int elements, bytes, sub, maxq, zero;
  bool affine, two_level;
};

// The one table of what each writable type is (docs/formats.md).
constexpr Layout kLayouts[] = {
    {GgmlType::Q4_0, 32, 18, 32, 15, 8, false, false},   {GgmlType::Q4_1, 32, 20, 32, 15, 0, true, false},
    {GgmlType::Q5_0, 32, 22, 32, 31, 16, false, false},  {GgmlType::Q5_1, 32, 24, 32, 31, 0, true, false},
    {GgmlType::Q8_0, 32, 34, 32, 255, 128, false, false}, {GgmlType::Q4_K, 256, 144, 32, 15, 0, true, true},
    {GgmlType::Q5_K, 256, 176, 32, 31, 0, true, true},   {GgmlType::Q6_K, 256, 210, 16, 63, 32, false, true},
};

const Layout* layout_of(GgmlType type) {
  for (const auto& layout : kLayouts) {
    if (layout.type == type) return &layout;
  }
  return nullptr;
}

float half(std::uint16_t bits) { return f16_to_f32(bits); }
std::uint16_t to_half(double value) { return f32_to_f16(static_cast<float>(value)); }

// One sub-block's float parameters: value = scale * (q - zero) - min.
struct SubFit {
  double scale = 0, min = 0;
};

int nearest_code(double x, double scale, double min, int zero, int maxq) {
  if (scale == 0.0 || !std::isfinite(scale)) return zero;
  const double q = std::nearbyint((x + min) / scale) + zero;
  return static_cast<int>(std::clamp(q, 0.0, static_cast<double>(maxq)));
}

double sub_error(std::span<const float> x, std::span<const float> w, const SubFit& f, int zero, int maxq) {
  double err = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const int q = nearest_code(x[i], f.scale, f.min, zero, maxq);
    const double e = x[i] - (f.scale * (q - zero) - f.min);
    err += w[i] * e * e;
  }
  return err;
}

// Symmetric sub-block (min 0): the scale maps the largest-magnitude weight to a
// fraction of either end of the code range; each candidate's codes then get their
// least-squares scale. `round_scale` rounds a scale to what the format stores.
template <typename Round>
SubFit search_symmetric(std::span<const float> x, std::span<const float> w, int zero, int maxq, const Round& round_scale) {
  double peak = 0;
  for (const float v : x) {
    if (std::abs(v) > std::abs(peak)) peak = v;
  }
  SubFit best{round_scale(-peak / zero), 0.0};  // the absmax baseline
  if (peak == 0.0) return best;
  double best_err = sub_error(x, w, best, zero, maxq);
  const auto consider = [&](double scale) {
    if (!(scale != 0.0) || !std::isfinite(scale)) return;
    SubFit f{scale, 0.0};
    if (const double e = sub_error(x, w, f, zero, maxq); e < best_err) best = f, best_err = e;
    // Least squares for the codes this scale gives.
    double num = 0, den = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const int t = nearest_code(x[i], scale, 0, zero, maxq) - zero;
      num += w[i] * x[i] * t;
      den += w[i] * t * t;
    }
    if (den > 0) {
      SubFit g{round_scale(num / den), 0.0};
      if (g.scale != 0.0) {
        if (const double e = sub_error(x, w, g, zero, maxq); e < best_err) best = g, best_err = e;
      }
    }
  };
  for (int step = -12; step <= 12; ++step) {
    const double f = 1.0 + 0.025 * step;
    consider(round_scale(-peak / (zero * f)));
    consider(round_scale(peak / ((maxq - zero) * f)));
  }
  return best;
}

// Affine sub-block (value = scale * q - min): ranges from [lo, hi] with a varied
// number of steps, each re-solved by weighted least squares on its codes.
// `nonnegative_min` (K-quants store -min as an unsigned integer) keeps lo <= 0.
template <typename RoundScale, typename RoundMin>
SubFit search_affine(std::span<const float> x, std::span<const float> w, int maxq, bool nonnegative_min,
                     const RoundScale& round_scale, const RoundMin& round_min) {
  double lo = *std::min_element(x.begin(), x.end()), hi = *std::max_element(x.begin(), x.end());
  if (nonnegative_min) lo = std::min(lo, 0.0);
  SubFit best{round_scale((hi - lo) / maxq), round_min(-lo)};
  if (hi == lo) return SubFit{0.0, round_min(-lo)};
  double best_err = sub_error(x, w, best, 0, maxq);
  const auto consider = [&](double scale, double min) {
    SubFit f{scale, min};
    if (!(scale > 0.0)) return;
    if (const double e = sub_error(x, w, f, 0, maxq); e < best_err) best = f, best_err = e;
    // value = s q + b: the 2x2 normal equations for the codes f gives.
    double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double q = nearest_code(x[i], scale, min, 0, maxq);
      sw += w[i], sq += w[i] * q, sqq += w[i] * q * q, sx += w[i] * x[i], sqx += w[i] * q * x[i];
    }
    const double det = sw * sqq - sq * sq;
    if (!(det > 0)) return;
    double s = (sw * sqx - sq * sx) / det, b = (sqq * sx - sq * sqx) / det;
    if (nonnegative_min && b > 0) b = 0, s = sqq > 0 ? sqx / sqq : 0;
    SubFit g{round_scale(s), round_min(-b)};
    if (!(g.scale > 0.0)) return;
    if (const double e = sub_error(x, w, g, 0, maxq); e < best_err) best = g, best_err = e;
  };
  for (int step = -4; step <= 12; ++step) {
    const double steps = maxq + 0.25 * step;
    consider(round_scale((hi - lo) / steps), round_min(-lo));
  }
  return best;
}

}  // namespace

bool BlockCodec::supported(GgmlType type) { return layout_of(type) != nullptr; }

BlockCodec::BlockCodec(GgmlType type) : type_(type) {
  const Layout* layout = layout_of(type);
  if (layout == nullptr) {
    fail("nibble cannot write GGUF type {} (writable: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
         ggml_type_name(type));
  }
  elements_ = layout->elements, bytes_ = layout->bytes, sub_ = layout->sub;
  maxq_ = layout->maxq, zero_ = layout->zero, affine_ = layout->affine, two_level_ = layout->two_level;
}

void BlockCodec::check(std::span<const float> x, std::span<const float> importance) const {
  if (x.size() != static_cast<std::size_t>(elements_)) fail("a {} block holds {} weights, got {}", ggml_type_name(type_), elements_, x.size());
  for (const float v : x) {
    if (!std::isfinite(v)) fail("cannot encode {} into a {} block", v, ggml_type_name(type_));
  }
  if (!importance.empty()) {
    if (importance.size() != x.size()) fail("{} importance weights for a block of {}", importance.size(), x.size());
    for (const float v : importance) {
      if (!std::isfinite(v) || v < 0) fail("importance weight {} is not a finite non-negative number", v);
    }
  }
}

void BlockCodec::set_effective(Params& p) const {
  const int subs = elements_ / sub_;
  for (int s = 0; s < subs; ++s) {
    const auto i = static_cast<std::size_t>(s);
    if (two_level_) {
      p.scale[i] = half(p.d) * static_cast<float>(p.sc[i]);
      p.min[i] = affine_ ? half(p.dmin) * static_cast<float>(p.mn[i]) : 0.0f;
    } else {
      p.scale[i] = half(p.d);
      p.min[i] = affine_ ? -half(p.dmin) : 0.0f;
    }
  }
}

std::uint8_t BlockCodec::quantize(float w, int e, const Params& p) const {
  const auto s = static_cast<std::size_t>(e / sub_);
  return static_cast<std::uint8_t>(nearest_code(w, p.scale[s], p.min[s], zero_, maxq_));
}

double BlockCodec::error(std::span<const float> x, std::span<const float> importance, const Params& p) const {
  double err = 0;
  for (int e = 0; e < elements_; ++e) {
    const double diff = x[static_cast<std::size_t>(e)] - value(quantize(x[static_cast<std::size_t>(e)], e, p), e, p);
    err += (importance.empty() ? 1.0 : importance[static_cast<std::size_t>(e)]) * diff * diff;
  }
  return err;
}

// The K-quants' second level: sub-block scales (and mins) as integers under one
// fp16 d (dmin), d = the largest / the top integer.
BlockCodec::Params BlockCodec::round_two_level(std::span<const double> scales, std::span<const double> mins) const {
  const int top = affine_ ? 63 : 127;
  const int low = affine_ ? 0 : -128;
  Params p;
  double peak = 0, peak_min = 0;
  for (const double s : scales) peak = std::max(peak, std::abs(s));
  for (const double m : mins) peak_min = std::max(peak_min, m);
  // Never below fp16's smallest subnormal while anything is nonzero: tiny blocks then
  // get small integer sub-block scales instead of a super-block scale rounded to 0.
  constexpr double kSmallest = 0x1p-24;
  p.d = to_half(peak > 0 ? std::max(peak / top, kSmallest) : 0.0);
  p.dmin = to_half(peak_min > 0 ? std::max(peak_min / 63, kSmallest) : 0.0);
  const double d = half(p.d), dmin = half(p.dmin);
  for (std::size_t s = 0; s < scales.size(); ++s) {
    p.sc[s] = static_cast<std::int16_t>(d > 0 ? std::clamp(std::nearbyint(scales[s] / d), double(low), double(top)) : 0);
    if (affine_) p.mn[s] = static_cast<std::int16_t>(dmin > 0 ? std::clamp(std::nearbyint(mins[s] / dmin), 0.0, 63.0) : 0);
  }
  set_effective(p);
  return p;
}

// With the integer sub-block scales fixed, value = d * (sc (q - zero)) - dmin * mn
// is linear in (d, dmin): solve that least squares on the current codes, keep it
// when it lowers the error, and repeat with the codes it gives.
void BlockCodec::refine_super(std::span<const float> x, std::span<const float> importance, Params& p) const {
  double err = error(x, importance, p);
  for (int round = 0; round < 3; ++round) {
    double aa = 0, ab = 0, bb = 0, ax = 0, bx = 0;
    for (int e = 0; e < elements_; ++e) {
      const auto i = static_cast<std::size_t>(e), s = static_cast<std::size_t>(e / sub_);
      const double w = importance.empty() ? 1.0 : importance[i];
      const double a = p.sc[s] * (quantize(x[i], e, p) - zero_), b = affine_ ? -p.mn[s] : 0.0;
      aa += w * a * a, ab += w * a * b, bb += w * b * b, ax += w * a * x[i], bx += w * b * x[i];
    }
    Params q = p;
    if (affine_) {
      const double det = aa * bb - ab * ab;
      if (!(det > 0)) return;
      const double d = (bb * ax - ab * bx) / det, dmin = (aa * bx - ab * ax) / det;
      if (!(d > 0) || dmin < 0) return;
      q.d = to_half(d), q.dmin = to_half(dmin);
    } else {
      if (!(aa > 0)) return;
      q.d = to_half(ax / aa);
    }
    if (!std::isfinite(half(q.d)) || !std::isfinite(half(q.dmin))) return;
    set_effective(q);
    const double e = error(x, importance, q);
    if (!(e < err)) return;
    p = q, err = e;
  }
}

BlockCodec::Params BlockCodec::fit_absmax(std::span<const float> x) const {
  check(x, {});
  const int subs = elements_ / sub_;
  std::vector<double> scales(static_cast<std::size_t>(subs)), mins(static_cast<std::size_t>(subs));
  for (int s = 0; s < subs; ++s) {
    const auto part = x.subspan(static_cast<std::size_t>(s * sub_), static_cast<std::size_t>(sub_));
    double lo = *std::min_element(part.begin(), part.end()), hi = *std::max_element(part.begin(), part.end());
    if (affine_) {
      if (two_level_) lo = std::min(lo, 0.0);
      scales[static_cast<std::size_t>(s)] = (hi - lo) / maxq_;
      mins[static_cast<std::size_t>(s)] = -lo;
    } else {
      const double peak = std::abs(lo) > std::abs(hi) ? lo : hi;
      scales[static_cast<std::size_t>(s)] = -peak / zero_;
    }
  }
  if (two_level_) return round_two_level(scales, mins);
  Params p;
  p.d = to_half(scales[0]);
  if (affine_) p.dmin = to_half(-mins[0]);
  set_effective(p);
  return p;
}

BlockCodec::Params BlockCodec::fit(std::span<const float> x, std::span<const float> importance) const {
  check(x, importance);
  const Params baseline = fit_absmax(x);
  const double baseline_err = error(x, importance, baseline);
  const int subs = elements_ / sub_;
  std::vector<float> ones;
  if (importance.empty()) ones.assign(x.size(), 1.0f);
  const std::span<const float> w = importance.empty() ? std::span<const float>(ones) : importance;
  // Single-level formats store the scale (and Q4_1's min) in fp16, so candidates
  // are judged as stored; the K-quants' sub-block values stay exact here and are
  // rounded to integers afterwards.
  const auto exact = [](double v) { return v; };
  const auto stored = [](double v) { return static_cast<double>(f16_to_f32(to_half(v))); };
  // A nonzero scale stays nonzero: at least fp16's smallest subnormal.
  const auto stored_scale = [&](double v) { return stored(v == 0.0 ? 0.0 : std::copysign(std::max(std::abs(v), 0x1p-24), v)); };
  std::vector<double> scales(static_cast<std::size_t>(subs)), mins(static_cast<std::size_t>(subs));
  for (int s = 0; s < subs; ++s) {
    const auto from = static_cast<std::size_t>(s * sub_), n = static_cast<std::size_t>(sub_);
    const auto xs = x.subspan(from, n), ws = w.subspan(from, n);
    SubFit f;
    if (two_level_) {
      f = affine_ ? search_affine(xs, ws, maxq_, true, exact, exact) : search_symmetric(xs, ws, zero_, maxq_, exact);
    } else {
      f = affine_ ? search_affine(xs, ws, maxq_, false, stored_scale, stored)
                  : search_symmetric(xs, ws, zero_, maxq_, stored_scale);
    }
    scales[static_cast<std::size_t>(s)] = f.scale, mins[static_cast<std::size_t>(s)] = f.min;
  }
  Params p;
  if (two_level_) {
    p = round_two_level(scales, mins);
    refine_super(x, importance, p);
  } else {
    p.d = to_half(scales[0]);
    if (affine_) p.dmin = to_half(-mins[0]);
    set_effective(p);
  }
  return error(x, importance, p) <= baseline_err ? p : baseline;
}

void BlockCodec::pack(const Params& p, std::span<const std::uint8_t> codes, std::byte* out) const {
  if (codes.size() != static_cast<std::size_t>(elements_)) fail("{} codes for a {} block", codes.size(), ggml_type_name(type_));
  auto* b = reinterpret_cast<std::uint8_t*>(out);
  std::memset(b, 0, static_cast<std::size_t>(bytes_));
  const auto put_half = [](std::uint8_t* at, std::uint16_t v) { std::memcpy(at, &v, 2); };
  const auto q = [&](int e) { return static_cast<unsigned>(codes[static_cast<std::size_t>(e)]); };
  switch (type_) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      // [d][m]?[qh u32]?[qs 16]: element j < 16 the low nibble of qs[j], j + 16 the high one.
      const bool has_min = type_ == GgmlType::Q4_1 || type_ == GgmlType::Q5_1;
      const bool five = type_ == GgmlType::Q5_0 || type_ == GgmlType::Q5_1;
      put_half(b, p.d);
      std::size_t at = 2;
      if (has_min) put_half(b + 2, p.dmin), at = 4;
      if (five) {
        std::uint32_t h = 0;
        for (int j = 0; j < 32; ++j) h |= ((q(j) >> 4) & 1u) << j;
        std::memcpy(b + at, &h, 4);
        at += 4;
      }
      for (int j = 0; j < 16; ++j) b[at + static_cast<std::size_t>(j)] = static_cast<std::uint8_t>((q(j) & 15u) | (q(j + 16) & 15u) << 4);
      break;
    }
    case GgmlType::Q8_0:
      put_half(b, p.d);
      for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(static_cast<int>(q(j)) - 128));
      break;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      put_half(b, p.d);
      put_half(b + 2, p.dmin);
      std::uint8_t* s = b + 4;
      const auto sc = [&](int j) { return static_cast<unsigned>(p.sc[static_cast<std::size_t>(j)]); };
      const auto mn = [&](int j) { return static_cast<unsigned>(p.mn[static_cast<std::size_t>(j)]); };
      for (int j = 0; j < 4; ++j) {
        s[j] = static_cast<std::uint8_t>(sc(j) | (sc(j + 4) >> 4) << 6);
        s[j + 4] = static_cast<std::uint8_t>(mn(j) | (mn(j + 4) >> 4) << 6);
        s[j + 8] = static_cast<std::uint8_t>((sc(j + 4) & 15u) | (mn(j + 4) & 15u) << 4);
      }
      const bool five = type_ == GgmlType::Q5_K;
      std::uint8_t* qh = b + 16;
      std::uint8_t* qs = b + 16 + (five ? 32 : 0);
      for (int pair = 0; pair < 4; ++pair) {
        for (int l = 0; l < 32; ++l) {
          const unsigned lo = q(64 * pair + l), hi = q(64 * pair + 32 + l);
          qs[32 * pair + l] = static_cast<std::uint8_t>((lo & 15u) | (hi & 15u) << 4);
          if (five) qh[l] = static_cast<std::uint8_t>(qh[l] | ((lo >> 4) & 1u) << (2 * pair) | ((hi >> 4) & 1u) << (2 * pair + 1));
        }
      }
      break;
    }
    case GgmlType::Q6_K: {
      std::uint8_t* ql = b;
      std::uint8_t* qh = b + 128;
      for (int h = 0; h < 2; ++h) {
        for (int s = 0; s < 4; ++s) {
          for (int l = 0; l < 32; ++l) {
            const unsigned v = q(128 * h + 32 * s + l);
            std::uint8_t& low = ql[64 * h + 32 * (s & 1) + l];
            low = static_cast<std::uint8_t>(low | (s < 2 ? (v & 15u) : (v & 15u) << 4));
            qh[32 * h + l] = static_cast<std::uint8_t>(qh[32 * h + l] | ((v >> 4) & 3u) << (2 * s));
          }
        }
      }
      for (int i = 0; i < 16; ++i) b[192 + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(p.sc[static_cast<std::size_t>(i)]));
      put_half(b + 208, p.d);
      break;
    }
    default:
      fail("internal error: no packer for {}", ggml_type_name(type_));
  }
}

double BlockCodec::encode(std::span<const float> x, std::span<const float> importance, std::byte* out) const {
  const Params p = fit(x, importance);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(elements_));
  for (int e = 0; e < elements_; ++e) codes[static_cast<std::size_t>(e)] = quantize(x[static_cast<std::size_t>(e)], e, p);
  pack(p, codes, out);
  return error(x, importance, p);
}

std::vector<std::byte> encode_rows(const BlockCodec& codec, std::span<const float> weights, std::int64_t rows,
                                   std::int64_t cols, std::span<const float> importance) {
  const std::int64_t n = codec.elements();
  if (rows <= 0 || cols <= 0 || cols % n != 0 || weights.size() != static_cast<std::size_t>(rows * cols)) {
    fail("cannot encode [{}, {}] ({} values) in {} blocks of {}", rows, cols, weights.size(),
         ggml_type_name(codec.type()), n);
  }
  if (!importance.empty() && importance.size() != static_cast<std::size_t>(cols)) {
    fail("{} importance weights for {} columns", importance.size(), cols);
  }
  const std::int64_t blocks = cols / n;
  std::vector<std::byte> out(static_cast<std::size_t>(rows * blocks * codec.bytes()));
  // Blocks are independent: rows are shared out among one thread per core.
  const auto encode = [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t r = first; r < last; ++r) {
      for (std::int64_t b = 0; b < blocks; ++b) {
        const auto x = weights.subspan(static_cast<std::size_t>(r * cols + b * n), static_cast<std::size_t>(n));
        const auto imp = importance.empty() ? importance
                                            : importance.subspan(static_cast<std::size_t>(b * n), static_cast<std::size_t>(n));
        codec.encode(x, imp, out.data() + (r * blocks + b) * codec.bytes());
      }
    }
  };
  const std::int64_t threads =
      std::clamp<std::int64_t>(static_cast<std::int64_t>(std::thread::hardware_concurrency()), 1, rows);
  // A bad value (NaN) throws in whichever thread meets it; the first error is rethrown here.
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
  const auto guarded = [&](std::int64_t t) {
    try {
      encode(rows * t / threads, rows * (t + 1) / threads);
    } catch (...) {
      errors[static_cast<std::size_t>(t)] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  for (std::int64_t t = 1; t < threads; ++t) workers.emplace_back(guarded, t);
  guarded(0);
  for (auto& worker : workers) worker.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return out;
}

std::vector<float> decode_rows(GgmlType type, std::span<const std::byte> blocks, std::int64_t rows, std::int64_t cols) {
  GgufTensor tensor;
  tensor.name = "encoded";
  tensor.type = type;
  tensor.shape = {rows, cols};
  tensor.data = blocks;
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  dequantize_to_f32(tensor, out);
  return out;
}

}  // namespace nibble::quant
