#pragma once
// A fixed little workload for comparing one model on two backends: two sequences
// prefilled in one step (the first scoring every prompt position) over scattered
// blocks of a paged cache, then three batched decode steps. Returns every step's
// logits rows.
#include <cstdint>
#include <vector>

#include "engine/model.h"

namespace nibble::testing {

inline constexpr int kDecodeSteps = 3;

inline std::vector<std::vector<float>> run_model_steps(engine::Model& model,
                                                       engine::KvDtype kv = engine::KvDtype::Float32) {
  using engine::BatchEntry;
  using engine::Logits;
  engine::PagedKvCache cache = model.make_kv_cache(16, 4, kv);
  const std::vector<TokenId> a{1, 403, 261, 302, 9}, b{1, 77, 18};
  const std::vector<std::int32_t> table_a{5, 0, 11}, table_b{3, 6, 2};
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  std::vector<std::vector<float>> out;
  std::vector<float> logits((a.size() + 1) * vocab);
  const BatchEntry prefill[] = {{a, 0, table_a, Logits::AllRows}, {b, 0, table_b, Logits::LastRow}};
  model.forward_batch(prefill, cache, logits);
  out.push_back(logits);
  for (int step = 0; step < kDecodeSteps; ++step) {
    const std::vector<TokenId> next_a{static_cast<TokenId>(40 + step)}, next_b{static_cast<TokenId>(90 + step)};
    const BatchEntry decode[] = {{next_a, static_cast<std::int64_t>(a.size()) + step, table_a, Logits::LastRow},
                                 {next_b, static_cast<std::int64_t>(b.size()) + step, table_b, Logits::LastRow}};
    std::vector<float> two(2 * vocab);
    model.forward_batch(decode, cache, two);
    out.push_back(two);
  }
  return out;
}

}  // namespace nibble::testing
