#pragma once
// RoPE inverse frequencies, including the context-extension schemes real
// checkpoints ship with (linear, llama3, LongRoPE, YaRN), and the choice between
// LongRoPE's two tables. Backend-independent: computed once per layer.
#include <cstdint>
#include <optional>
#include <vector>

#include "loader/model_config.h"

namespace nibble::engine {

// `dim` / 2 inverse frequencies (dim: the rotated width of a head), matching
// Hugging Face's float32 computation. LongRoPE's factor lists are applied by
// RopeTables, not here.
std::vector<float> rope_inv_freq(std::int64_t dim, double theta, const RopeScaling& scaling);

// What Backend::rope takes: the frequencies and the factor cos and sin are scaled by.
struct RopeTable {
  std::vector<float> inv_freq;
  float scale = 1.0f;
};

// A config's rotary embedding: one table, or for LongRoPE a short-context and a
// long-context one. transformers picks between them per forward call by the
// sequence's length so far (max position + 1 > original_max_position_embeddings:
// long), so a sequence's keys cached before it grew past that length stay rotated
// by the short table; picking per sequence and step reproduces exactly that. (A
// prompt longer than that length prefilled in chunks thus starts with the short
// table, where transformers' single forward over it uses the long one: a step
// does not know how long its sequence's prompt is.)
class RopeTables {
 public:
  // Layer `layer`'s tables: sliding layers rotate by their own base and scaling
  // where the model has one (Gemma 3's local layers).
  RopeTables(const ModelConfig& config, std::int64_t layer);
  // The table for a sequence that is `length` tokens long after this step.
  const RopeTable& for_length(std::int64_t length) const;
  // Whether for_length() can differ between sequences (LongRoPE).
  bool by_length() const { return long_.has_value(); }

 private:
  RopeTable short_;
  std::optional<RopeTable> long_;
  std::int64_t original_length_ = 0;
};

}  // namespace nibble::engine
