#pragma once
// Attention and fp16 stores over the KV cache (kv_kernels.h), written once over
// the KV element format and the vector-traits type `V` of the including per-ISA
// unit (see linear_impl.h for the scheme). Everything lives in that unit's
// anonymous namespace.
//
// V adds to the dense traits: load(const std::int8_t*, I8Codes) (sign-extended to
// float), store(std::uint16_t*, reg, F16Weights) (round to nearest even), set1,
// store, add, exp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace {

using nibble::kernels::KvLayerView;
using nibble::kernels::cpu::AttentionHeadArgs;

// The format's key and value arrays in the view (KvLayerView says which are set).
inline std::pair<const float*, const float*> kv_arrays(const KvLayerView& kv, F32Weights) {
  return {kv.keys, kv.values};
}
inline std::pair<const std::uint16_t*, const std::uint16_t*> kv_arrays(const KvLayerView& kv, F16Weights) {
  return {kv.keys_f16, kv.values_f16};
}
inline std::pair<const std::int8_t*, const std::int8_t*> kv_arrays(const KvLayerView& kv, I8Codes) {
  return {kv.key_codes, kv.value_codes};
}

// Rows of one sequence are scattered over the pool's blocks, so the hardware
// prefetcher sees no stream; asking for a row ahead overlaps its memory latency
// with the work on the current one. 64 rows measured best of 8..128 for 16
// sequences (8 left a batched step waiting on memory: 25 -> 18 ms at 512 positions).
constexpr std::int64_t kRowsAhead = 64;

template <typename Element>
inline void prefetch_row(const Element* row, std::int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (std::size_t line = 0; line < n * sizeof(Element); line += 64) __builtin_prefetch(bytes + line, 0, 3);
}

// q . k[j] for Keys key rows at once: one FMA chain per key, all sharing each load
// of q. A single chain is latency-bound (a 256-wide head is 16 dependent FMAs per
// key on AVX-512); several in flight keep both FMA ports busy. Each key's chain and
// its final sum are the same whatever Keys, so a score does not depend on how the
// positions were grouped. The ragged tails go through the vector path on
// zero-padded copies, as in dot_rows, so one conversion (the ISA's) widens every
// element.
template <typename Format, int Keys>
inline void kv_dots(const float* q, const typename Format::Element* const (&k)[Keys], std::int64_t n, float* out) {
  typename V::reg acc[Keys];
  for (auto& a : acc) a = V::zero();
  std::int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    const auto qv = V::load(q + i);
    for (int j = 0; j < Keys; ++j) acc[j] = V::fma(qv, V::load(k[j] + i, Format{}), acc[j]);
  }
  if (i < n) {
    float q_tail[V::kWidth] = {};
    std::copy(q + i, q + n, q_tail);
    const auto qv = V::load(q_tail);
    for (int j = 0; j < Keys; ++j) {
      typename Format::Element k_tail[V::kWidth] = {};
      std::copy(k[j] + i, k[j] + n, k_tail);
      acc[j] = V::fma(qv, V::load(k_tail, Format{}), acc[j]);
    }
  }
  for (int j = 0; j < Keys; ++j) out[j] = V::sum(acc[j]);
}

// Key rows scored together by attend_head.
constexpr int kKeysAtOnce = 8;

// out[0, Vectors * kWidth) = sum over t of weights[t] * (row t's values). The
// accumulators stay in registers across all positions: accumulating into `out`
// would chain a store and a load through memory at every position.
template <typename Format, int Vectors>
inline void weighted_rows(const AttentionHeadArgs& a, const float* weights, const typename Format::Element* values,
                          float* out) {
  typename V::reg acc[Vectors];
  for (int j = 0; j < Vectors; ++j) acc[j] = V::zero();
  for (std::int64_t t = a.first; t <= a.last; ++t) {
    const auto* v = values + a.rows[t] * a.kv->stride;
    if (t + kRowsAhead <= a.last) prefetch_row(values + a.rows[t + kRowsAhead] * a.kv->stride, Vectors * V::kWidth);
    const auto w = V::set1(weights[t]);
    for (int j = 0; j < Vectors; ++j) acc[j] = V::fma(w, V::load(v + j * V::kWidth, Format{}), acc[j]);
  }
  for (int j = 0; j < Vectors; ++j) V::store(out + j * V::kWidth, acc[j]);
}

// The same over n < kWidth elements, through zero-padded copies.
template <typename Format>
inline void weighted_rows_tail(const AttentionHeadArgs& a, const float* weights, const typename Format::Element* values,
                               std::int64_t n, float* out) {
  auto acc = V::zero();
  for (std::int64_t t = a.first; t <= a.last; ++t) {
    const auto* v = values + a.rows[t] * a.kv->stride;
    typename Format::Element v_tail[V::kWidth] = {};
    std::copy(v, v + n, v_tail);
    acc = V::fma(V::set1(weights[t]), V::load(v_tail, Format{}), acc);
  }
  float out_tail[V::kWidth];
  V::store(out_tail, acc);
  std::copy(out_tail, out_tail + n, out);
}

// Up to 8 vector accumulators a pass: head_dim 64 (AVX2) or 128 (AVX-512) in one
// pass over the positions, in 8 of 16 (or 32) registers.
constexpr int kMaxWeightedVectors = 8;

template <typename Format>
void weighted_sum(const AttentionHeadArgs& a, const float* weights, const typename Format::Element* values, float* out) {
  constexpr std::int64_t kChunk = kMaxWeightedVectors * V::kWidth;
  std::int64_t i = 0;
  for (; i + kChunk <= a.value_dim; i += kChunk) weighted_rows<Format, kMaxWeightedVectors>(a, weights, values + i, out + i);
  const std::int64_t vectors = (a.value_dim - i) / V::kWidth;
  switch (vectors) {
    case 7: weighted_rows<Format, 7>(a, weights, values + i, out + i); break;
    case 6: weighted_rows<Format, 6>(a, weights, values + i, out + i); break;
    case 5: weighted_rows<Format, 5>(a, weights, values + i, out + i); break;
    case 4: weighted_rows<Format, 4>(a, weights, values + i, out + i); break;
    case 3: weighted_rows<Format, 3>(a, weights, values + i, out + i); break;
    case 2: weighted_rows<Format, 2>(a, weights, values + i, out + i); break;
    case 1: weighted_rows<Format, 1>(a, weights, values + i, out + i); break;
    default: break;
  }
  i += vectors * V::kWidth;
  if (i < a.value_dim) weighted_rows_tail<Format>(a, weights, values + i, a.value_dim - i, out + i);
}

template <typename Format>
void attend_head(const AttentionHeadArgs& a) {
  // Int8 rows carry a scale per (row, kv head); it multiplies the whole dot product
  // and the softmax weight instead of every element.
  constexpr bool kScaled = std::is_same_v<Format, I8Codes>;
  const KvLayerView& kv = *a.kv;
  // Not a structured binding: clang before 16 cannot capture one in key_row.
  const auto arrays = kv_arrays(kv, Format{});
  const auto* const keys = arrays.first;
  const auto* const values = arrays.second;
  const std::int64_t head_offset = a.kv_head * a.head_dim;
  float* scores = a.scores;
  const auto key_row = [&](std::int64_t t) { return keys + a.rows[t] * kv.stride + head_offset; };
  std::int64_t t = a.first;
  for (; t + kKeysAtOnce <= a.last + 1; t += kKeysAtOnce) {
    const typename Format::Element* k[kKeysAtOnce];
    for (int j = 0; j < kKeysAtOnce; ++j) {
      k[j] = key_row(t + j);
      if (t + j + kRowsAhead <= a.last) prefetch_row(key_row(t + j + kRowsAhead), a.head_dim);
    }
    kv_dots<Format, kKeysAtOnce>(a.q, k, a.head_dim, scores + t);
  }
  for (; t <= a.last; ++t) {
    const typename Format::Element* k[1] = {key_row(t)};
    kv_dots<Format, 1>(a.q, k, a.head_dim, scores + t);
  }
  float max_score = -INFINITY;
  for (t = a.first; t <= a.last; ++t) {
    float dot = scores[t];
    if constexpr (kScaled) dot *= kv.key_scales[a.rows[t] * a.kv_heads + a.kv_head];
    scores[t] = dot * a.scale;
    if (a.softcap > 0) scores[t] = std::tanh(scores[t] / a.softcap) * a.softcap;
    max_score = std::max(max_score, scores[t]);
  }
  // Softmax numerators a vector at a time; the ragged end goes through the same
  // V::exp on a padded copy, so every position gets the same function.
  const auto shift = V::set1(-max_score);
  auto totals = V::zero();
  std::int64_t at = a.first;
  for (; at + V::kWidth <= a.last + 1; at += V::kWidth) {
    const auto e = V::exp(V::add(V::load(scores + at), shift));
    V::store(scores + at, e);
    totals = V::add(totals, e);
  }
  float total = V::sum(totals);
  if (at <= a.last) {
    float tail[V::kWidth] = {};
    std::copy(scores + at, scores + a.last + 1, tail);
    V::store(tail, V::exp(V::add(V::load(tail), shift)));
    for (std::int64_t i = 0; at + i <= a.last; ++i) {
      scores[at + i] = tail[i];
      total += tail[i];
    }
  }
  // The scores become each position's weight on its value row.
  const float norm = 1.0f / total;
  for (t = a.first; t <= a.last; ++t) {
    scores[t] *= norm;
    if constexpr (kScaled) scores[t] *= kv.value_scales[a.rows[t] * a.kv_heads + a.kv_head];
  }
  weighted_sum<Format>(a, scores, values + head_offset, a.out);
}

void to_f16(const float* x, std::int64_t n, std::uint16_t* out) {
  std::int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) V::store(out + i, V::load(x + i), F16Weights{});
  if (i < n) {
    float x_tail[V::kWidth] = {};
    std::uint16_t out_tail[V::kWidth] = {};
    std::copy(x + i, x + n, x_tail);
    V::store(out_tail, V::load(x_tail), F16Weights{});
    std::copy(out_tail, out_tail + (n - i), out + i);
  }
}

const nibble::kernels::cpu::KvKernelTable kKvTable = [] {
  using nibble::kernels::KvFormat;
  nibble::kernels::cpu::KvKernelTable table{};
  table.attention[static_cast<int>(KvFormat::Float32)] = attend_head<F32Weights>;
  table.attention[static_cast<int>(KvFormat::Float16)] = attend_head<F16Weights>;
  table.attention[static_cast<int>(KvFormat::Int8)] = attend_head<I8Codes>;
  table.to_f16 = to_f16;
  return table;
}();

}  // namespace
