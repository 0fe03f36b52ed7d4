#pragma once
// Sampling on the GPU: one block per sequence turns its logits row into the next
// token, with the CPU sampler's (engine/sampler.h) rules: HF repetition penalty
// over prompt and output ids, OpenAI presence/frequency penalties over output
// counts, temperature (0 = greedy, first index on ties), then the kept set = the
// longest prefix of the vocabulary sorted by (logit desc, id asc) that satisfies
// top-k, top-p (the prefix whose mass reaches top_p) and min-p (weight at least
// min_p times the top one), and one draw from softmax over the kept set.
//
// No sort: each cut is a radix select over order-preserving 32-bit keys (4 passes
// of a 256-bin histogram, count- or mass-weighted), ties resolved by lowest id
// through a second select over the ids. The draw walks the kept tokens in
// vocabulary order with the caller's uniform number u: token i is chosen with
// probability w_i / sum(w) exactly as on the CPU, though the same u can pick a
// different token than the CPU's sorted-order walk.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nibble::kernels::cuda {

struct SampleParams {
  float temperature = 1.0f;  // 0: greedy
  std::int32_t top_k = 0;    // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float uniform = 0.0f;  // a draw from U[0, 1) of the sequence's own generator
  std::int32_t seen_begin = 0;  // repetition penalty ids: seen_ids[seen_begin, seen_end), unique
  std::int32_t seen_end = 0;
  std::int32_t counted_begin = 0;  // output ids and counts: counted_ids/counts[begin, end), unique ids
  std::int32_t counted_end = 0;
};

// logits: rows x vocab floats at stride ld (penalties are applied in place);
// params: one per row; tokens: one per row. All device pointers.
void sample_tokens(float* logits, std::int64_t rows, std::int64_t vocab, std::int64_t ld, const SampleParams* params,
                   const std::int32_t* seen_ids, const std::int32_t* counted_ids, const std::int32_t* counts,
                   std::int32_t* tokens, cudaStream_t stream);

}  // namespace nibble::kernels::cuda
