#pragma once
// Greedy generation two ways, for reference tests that hold a model to "a batched
// run equals each sequence alone": alone through the scheduler's generate, and
// all sequences together in shared steps over one paged pool (blocks handed out
// shuffled, prompts prefilled `chunk` tokens a step while others decode, sequence
// i joining at step i % 3).
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "engine/model.h"
#include "scheduler/generate.h"

namespace nibble::testing {

inline std::vector<TokenId> greedy_alone(engine::Model& model, const std::vector<TokenId>& prompt,
                                         std::int64_t max_tokens) {
  scheduler::SequenceRequest request;
  request.prompt = prompt;
  request.sampling.temperature = 0;
  request.max_tokens = max_tokens;
  return scheduler::generate(model, request).tokens;
}

// Each prompt's `max_tokens` greedy tokens from the shared, paged, chunked run.
inline std::vector<std::vector<TokenId>> greedy_batched_paged(engine::Model& model,
                                                              const std::vector<std::vector<TokenId>>& prompts,
                                                              std::size_t max_tokens, std::int32_t block = 4,
                                                              std::int64_t chunk = 3) {
  struct Sequence {
    std::vector<TokenId> prompt, out;
    std::int64_t join = 0, position = 0;
    std::vector<std::int32_t> blocks;
  };
  std::vector<Sequence> sequences;
  for (const auto& prompt : prompts) {
    sequences.push_back({prompt, {}, static_cast<std::int64_t>(sequences.size() % 3), 0, {}});
  }
  std::vector<std::int32_t> free(256);
  std::iota(free.begin(), free.end(), 0);
  std::shuffle(free.begin(), free.end(), std::mt19937(11));
  engine::PagedKvCache cache = model.make_kv_cache(static_cast<std::int32_t>(free.size()), block);
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  std::vector<float> logits;
  for (std::int64_t step = 0;; ++step) {
    std::vector<engine::BatchEntry> batch;
    std::vector<Sequence*> members;
    std::vector<std::vector<TokenId>> tokens(sequences.size());
    for (std::size_t i = 0; i < sequences.size(); ++i) {
      auto& s = sequences[i];
      const auto prompt_length = static_cast<std::int64_t>(s.prompt.size());
      if (step < s.join || s.out.size() >= max_tokens) continue;
      if (s.position < prompt_length) {
        const auto take = std::min(chunk, prompt_length - s.position);
        tokens[i].assign(s.prompt.begin() + s.position, s.prompt.begin() + s.position + take);
      } else {
        tokens[i] = {s.out.back()};
      }
      while (static_cast<std::int64_t>(s.blocks.size()) * block <
             s.position + static_cast<std::int64_t>(tokens[i].size())) {
        s.blocks.push_back(free.back());
        free.pop_back();
      }
      batch.push_back({tokens[i], s.position, s.blocks, engine::Logits::LastRow});
      members.push_back(&s);
    }
    if (batch.empty()) break;
    logits.resize(batch.size() * vocab);
    model.forward_batch(batch, cache, logits);
    for (std::size_t b = 0; b < members.size(); ++b) {
      Sequence& s = *members[b];
      s.position += static_cast<std::int64_t>(batch[b].tokens.size());
      if (s.position < static_cast<std::int64_t>(s.prompt.size())) continue;
      const auto row = std::span(logits).subspan(b * vocab, vocab);
      s.out.push_back(static_cast<TokenId>(std::max_element(row.begin(), row.end()) - row.begin()));
    }
  }
  std::vector<std::vector<TokenId>> out;
  for (auto& s : sequences) out.push_back(std::move(s.out));
  return out;
}

}  // namespace nibble::testing
