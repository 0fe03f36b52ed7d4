#pragma once
// Kernels over the KV cache: attention for one (query row, head) and the fp16
// conversion of the rows a cache stores. Written once over the KV element format
// and the vector traits of each per-ISA unit (kv_impl.h), so fp16 and int8 rows
// are widened a vector at a time inside the dot products (F16C / AVX-512
// conversions, sign extension) rather than expanded into float buffers.
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"

namespace nibble::kernels::cpu {

// One (query row, head) of causal attention over positions [first, last].
struct AttentionHeadArgs {
  const KvLayerView* kv = nullptr;
  const float* q = nullptr;              // head_dim values
  float* out = nullptr;                  // value_dim values, overwritten
  const std::int64_t* rows = nullptr;    // [position]: its storage row (KvLayerView::row)
  float* scores = nullptr;               // [position]: scratch
  std::int64_t first = 0;
  std::int64_t last = 0;
  std::int64_t kv_head = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t value_dim = 0;            // out's width: the first value_dim features of the value row
  float scale = 1.0f;                    // 1 / sqrt(head_dim) unless the model says otherwise
  float softcap = 0.0f;                  // > 0: score = softcap * tanh(score / softcap)
};
using AttentionKernel = void (*)(const AttentionHeadArgs& args);
// out[i] = x[i] rounded to the nearest fp16 (ties to even; beyond 65504: infinity).
using F16Conversion = void (*)(const float* x, std::int64_t n, std::uint16_t* out);

struct KvKernelTable {
  AttentionKernel attention[3];  // [KvFormat]
  F16Conversion to_f16;
};

const KvKernelTable& kv_kernels_scalar();
const KvKernelTable& kv_kernels_avx2();
const KvKernelTable& kv_kernels_avx512();
const KvKernelTable& kv_kernel_table(Isa isa);

AttentionKernel attention_kernel(KvFormat format, Isa isa);
// to_f16 on the active ISA: how caches store fp16 rows.
void store_f16(const float* x, std::int64_t n, std::uint16_t* out);

}  // namespace nibble::kernels::cpu
