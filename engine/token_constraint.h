#pragma once
// What the engine knows of a constrained output (JSON Schema, regex, grammar):
// which tokens may come next, and that a token was taken. The constraint itself
// is built elsewhere (grammar/) from the request; the engine only masks logits
// with it before sampling, so greedy, top-k/top-p, penalties and logit_bias all
// work unchanged on the tokens it allows.
#include <cstdint>
#include <memory>
#include <vector>

#include "common/token.h"

namespace nibble::engine {

// A set of token ids as bits (word i holds ids 64i..64i+63).
struct TokenMask {
  std::vector<std::uint64_t> words;

  void reset(std::size_t vocab_size) { words.assign((vocab_size + 63) / 64, 0); }
  bool test(TokenId id) const {
    const auto i = static_cast<std::size_t>(id);
    return id >= 0 && i / 64 < words.size() && ((words[i / 64] >> (i % 64)) & 1U) != 0;
  }
  void set(TokenId id) {
    const auto i = static_cast<std::size_t>(id);
    words[i / 64] |= std::uint64_t{1} << (i % 64);
  }
  bool any() const {
    for (const auto w : words) {
      if (w != 0) return true;
    }
    return false;
  }
};

// One choice's place in a constraint. Not thread-safe; the model runner owns it.
class ConstraintState {
 public:
  virtual ~ConstraintState() = default;
  // The tokens that may come next (end-of-sequence tokens once the output is complete).
  virtual void allowed(TokenMask& mask) = 0;
  // Records `token` as generated; it must have been allowed.
  virtual void accept(TokenId token) = 0;
};

// A compiled constraint, immutable to its users and shared by every choice that
// follows it (its caches are internally synchronized).
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  virtual std::unique_ptr<ConstraintState> start() const = 0;
};

}  // namespace nibble::engine
