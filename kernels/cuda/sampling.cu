// See sampling.h.
#include <cfloat>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;

struct Shared {
  unsigned count[kBins];
  float mass[kBins];
  float reduce_f[kWarps];
  int reduce_i[kWarps];
  unsigned bucket;
  unsigned count_above;
  float mass_above;
  unsigned tie_count;
  float tie_mass;
  int chosen;
  int fallback;
  float scan[kWarps];
};

// Larger float -> larger key; NaN sorts below everything.
__device__ __forceinline__ unsigned order_key(float f) {
  if (isnan(f)) return 0u;
  const unsigned bits = __float_as_uint(f);
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

__device__ float block_sum(float v, Shared& sh) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();
  if (lane == 0) sh.reduce_f[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += sh.reduce_f[w];  // same order in every thread
  return total;
}

__device__ int block_sum_int(int v, Shared& sh) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();
  if (lane == 0) sh.reduce_i[warp] = v;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < kWarps; ++w) total += sh.reduce_i[w];
  return total;
}

__device__ float block_max(float v, Shared& sh) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  __syncthreads();
  if (lane == 0) sh.reduce_f[warp] = v;
  __syncthreads();
  float best = -INFINITY;
  for (int w = 0; w < kWarps; ++w) best = fmaxf(best, sh.reduce_f[w]);
  return best;
}

// Exclusive prefix sum over the threads, in thread order.
__device__ float block_exclusive_scan(float v, Shared& sh) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  float inclusive = v;
  for (int o = 1; o < 32; o *= 2) {
    const float other = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += other;
  }
  __syncthreads();
  if (lane == 31) sh.scan[warp] = inclusive;
  __syncthreads();
  float before = 0.0f;
  for (int w = 0; w < warp; ++w) before += sh.scan[w];
  return before + inclusive - v;
}

// The threshold key t of the `need`-th largest (by count) or of the element where
// the mass, accumulated from the largest key down, reaches `need` (by mass), over
// the elements i < n with in_set(i). Sets sh.count_above / sh.mass_above (strictly
// above t) and sh.tie_count / sh.tie_mass (equal to t).
template <bool kByMass, typename Key, typename Weight, typename InSet>
__device__ unsigned radix_select(int n, const Key& key, const Weight& weight, const InSet& in_set, float need,
                                 Shared& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  unsigned prefix = 0;
  unsigned mask = 0;
  float remaining = need;
  unsigned count_above = 0;
  float mass_above = 0.0f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();
    for (int b = tid; b < kBins; b += kThreads) {
      sh.count[b] = 0;
      sh.mass[b] = 0.0f;
    }
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      if (!in_set(i)) continue;
      const unsigned k = key(i);
      if ((k & mask) != prefix) continue;
      const unsigned bin = (k >> shift) & 0xffu;
      atomicAdd(&sh.count[bin], 1u);
      if (kByMass) atomicAdd(&sh.mass[bin], weight(i));
    }
    __syncthreads();
    if (tid == 0) {
      // The first non-empty bin from the top where the running amount reaches
      // `remaining`; if rounding leaves it short everywhere, the lowest non-empty bin.
      float cumulative = 0.0f;
      unsigned cumulative_count = 0;
      int chosen = -1;
      int lowest = -1;
      float before_lowest = 0.0f;
      unsigned count_before_lowest = 0;
      for (int b = kBins - 1; b >= 0; --b) {
        const unsigned c = sh.count[b];
        if (c == 0) continue;
        const float here = kByMass ? sh.mass[b] : static_cast<float>(c);
        lowest = b;
        before_lowest = cumulative;
        count_before_lowest = cumulative_count;
        if (cumulative + here >= remaining) {
          chosen = b;
          break;
        }
        cumulative += here;
        cumulative_count += c;
      }
      if (chosen < 0) {
        chosen = lowest < 0 ? 0 : lowest;
        cumulative = before_lowest;
        cumulative_count = count_before_lowest;
      }
      sh.bucket = static_cast<unsigned>(chosen);
      sh.count_above = cumulative_count;
      sh.mass_above = cumulative;
      sh.tie_count = sh.count[chosen];
      sh.tie_mass = sh.mass[chosen];
    }
    __syncthreads();
    prefix |= sh.bucket << shift;
    mask |= 0xffu << shift;
    remaining -= kByMass ? sh.mass_above : static_cast<float>(sh.count_above);
    count_above += sh.count_above;
    mass_above += sh.mass_above;
  }
  __syncthreads();
  if (tid == 0) {
    sh.count_above = count_above;
    sh.mass_above = mass_above;
  }
  __syncthreads();
  return prefix;
}

// The `need` largest keys, ties by lowest id: key > threshold, or key == threshold
// and id <= id_cut.
struct TopSet {
  unsigned threshold = 0;
  int id_cut = 0x7fffffff;
  __device__ bool contains(unsigned k, int id) const { return k > threshold || (k == threshold && id <= id_cut); }
};

template <typename Key, typename InSet>
__device__ TopSet select_top(int n, const Key& key, const InSet& in_set, int need, Shared& sh) {
  const auto no_weight = [](int) { return 0.0f; };
  TopSet top;
  top.threshold = radix_select<false>(n, key, no_weight, in_set, static_cast<float>(need), sh);
  const int ties_needed = need - static_cast<int>(sh.count_above);
  if (ties_needed < static_cast<int>(sh.tie_count)) {
    const unsigned threshold = top.threshold;
    const auto tie = [&](int i) { return in_set(i) && key(i) == threshold; };
    const auto inverted_id = [](int i) { return ~static_cast<unsigned>(i); };  // larger = lower id
    top.id_cut = static_cast<int>(~radix_select<false>(n, inverted_id, no_weight, tie, static_cast<float>(ties_needed), sh));
  }
  return top;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(float* logits, int vocab, std::int64_t ld, const SampleParams* params, const std::int32_t* seen_ids,
                  const std::int32_t* counted_ids, const std::int32_t* counts, std::int32_t* tokens) {
  __shared__ Shared sh;
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t row = blockIdx.x;
  float* l = logits + row * ld;
  const SampleParams p = params[row];

  if (p.repetition_penalty != 1.0f) {
    for (int i = p.seen_begin + tid; i < p.seen_end; i += kThreads) {
      const int id = seen_ids[i];
      if (id < 0 || id >= vocab) continue;
      const float v = l[id];
      l[id] = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    }
    __syncthreads();
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (int i = p.counted_begin + tid; i < p.counted_end; i += kThreads) {
      const int id = counted_ids[i];
      if (id < 0 || id >= vocab) continue;
      l[id] -= p.frequency_penalty * static_cast<float>(counts[i]) + p.presence_penalty;
    }
    __syncthreads();
  }

  if (p.temperature == 0.0f) {
    // Greedy: the largest logit, the lowest index on ties (torch.argmax).
    float best = -INFINITY;
    int best_id = 0x7fffffff;
    for (int i = tid; i < vocab; i += kThreads) {
      const float v = l[i];
      if (v > best || (v == best && i < best_id)) {
        best = v;
        best_id = i;
      }
    }
    for (int o = 16; o > 0; o /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, o);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, o);
      if (other > best || (other == best && other_id < best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    if (tid % 32 == 0) {
      sh.reduce_f[tid / 32] = best;
      sh.reduce_i[tid / 32] = best_id;
    }
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < kWarps; ++w) {
        if (sh.reduce_f[w] > best || (sh.reduce_f[w] == best && sh.reduce_i[w] < best_id)) {
          best = sh.reduce_f[w];
          best_id = sh.reduce_i[w];
        }
      }
      tokens[row] = best_id == 0x7fffffff ? 0 : best_id;
    }
    return;
  }

  float local_max = -INFINITY;
  for (int i = tid; i < vocab; i += kThreads) {
    if (!isnan(l[i])) local_max = fmaxf(local_max, l[i]);
  }
  const float max_logit = block_max(local_max, sh);
  if (max_logit == -INFINITY) {  // nothing finite to sample from
    if (tid == 0) tokens[row] = 0;
    return;
  }
  const float inverse_temperature = 1.0f / p.temperature;
  const auto key = [&](int i) { return order_key(l[i]); };
  const auto weight = [&](int i) {
    const float v = l[i];
    return isnan(v) ? 0.0f : expf((v - max_logit) * inverse_temperature);
  };
  const auto everything = [](int) { return true; };

  // The pool: the top-k tokens, or all.
  int pool = vocab;
  TopSet pool_set;
  pool_set.threshold = 0;  // key > 0 or (== 0 and id <= max): everything
  if (p.top_k > 0 && p.top_k < vocab) {
    pool = p.top_k;
    pool_set = select_top(vocab, key, everything, pool, sh);
  }
  const auto in_pool = [&](int i) { return pool_set.contains(key(i), i); };
  float local_total = 0.0f;
  for (int i = tid; i < vocab; i += kThreads) {
    if (in_pool(i)) local_total += weight(i);
  }
  const float total = block_sum(local_total, sh);

  int keep = pool;
  if (p.min_p > 0.0f) {
    // p_i < min_p p_0 <=> w_i < min_p (the top token's weight is 1): a prefix by weight.
    int local = 0;
    for (int i = tid; i < vocab; i += kThreads) {
      if (in_pool(i) && weight(i) >= p.min_p) ++local;
    }
    keep = min(keep, max(1, block_sum_int(local, sh)));
  }
  if (p.top_p < 1.0f) {
    const float target = p.top_p * total;
    radix_select<true>(vocab, key, weight, in_pool, target, sh);
    const unsigned above = sh.count_above;
    const float mass_above = sh.mass_above;
    const unsigned ties = sh.tie_count;
    if (ties > 0) {
      const float tie_weight = sh.tie_mass / static_cast<float>(ties);
      int needed = tie_weight > 0.0f ? static_cast<int>(ceilf((target - mass_above) / tie_weight)) : 1;
      needed = min(max(needed, 1), static_cast<int>(ties));
      keep = min(keep, static_cast<int>(above) + needed);
    }
  }
  keep = max(keep, 1);
  const TopSet kept_set = keep == pool ? pool_set : select_top(vocab, key, everything, keep, sh);
  const auto kept = [&](int i) { return kept_set.contains(key(i), i); };

  // Draw in vocabulary order: thread t walks a contiguous segment.
  const int segment = (vocab + kThreads - 1) / kThreads;
  const int begin = min(vocab, tid * segment);
  const int end = min(vocab, begin + segment);
  float local_mass = 0.0f;
  int local_last = -1;
  for (int i = begin; i < end; ++i) {
    if (kept(i)) {
      local_mass += weight(i);
      local_last = i;
    }
  }
  const float kept_mass = block_sum(local_mass, sh);
  const float offset = block_exclusive_scan(local_mass, sh);
  // Fallback (rounding put the target past the end): the last kept token.
  int last = local_last;
  for (int o = 16; o > 0; o /= 2) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
  if (tid % 32 == 0) sh.reduce_i[tid / 32] = last;
  __syncthreads();
  if (tid == 0) {
    int overall = -1;
    for (int w = 0; w < kWarps; ++w) overall = max(overall, sh.reduce_i[w]);
    sh.fallback = max(overall, 0);
    sh.chosen = 0x7fffffff;
  }
  __syncthreads();
  const float target = p.uniform * kept_mass;
  if (local_mass > 0.0f && target >= offset && target < offset + local_mass) {
    float cumulative = offset;
    for (int i = begin; i < end; ++i) {
      if (!kept(i)) continue;
      cumulative += weight(i);
      if (target < cumulative) {
        atomicMin(&sh.chosen, i);  // two segments can only both claim it through rounding: lowest wins
        break;
      }
    }
  }
  __syncthreads();
  if (tid == 0) tokens[row] = sh.chosen == 0x7fffffff ? sh.fallback : sh.chosen;
}

}  // namespace

void sample_tokens(float* logits, std::int64_t rows, std::int64_t vocab, std::int64_t ld, const SampleParams* params,
                   const std::int32_t* seen_ids, const std::int32_t* counted_ids, const std::int32_t* counts,
                   std::int32_t* tokens, cudaStream_t stream) {
  if (rows <= 0) return;
  if (vocab <= 0 || vocab > 0x7ffffffe || rows > 0x7fffffff) {
    throw_cuda_error(cudaErrorInvalidValue, "sample_tokens: bad vocabulary or row count", __FILE__, __LINE__);
  }
  sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, static_cast<int>(vocab), ld, params,
                                                                      seen_ids, counted_ids, counts, tokens);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "sample_kernel");
}

}  // namespace nibble::kernels::cuda
