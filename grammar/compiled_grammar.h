#pragma once
// A grammar bound to a vocabulary: the engine's TokenConstraint. The tokens a
// parse allows are the union of what each of its stacks allows, so masks are
// computed per stack (one walk of the vocabulary's prefix tree) and cached: a
// JSON string or number keeps its stack while it grows, and the choices of a
// request, or requests with the same schema, share one cache.
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/token_constraint.h"
#include "grammar/grammar.h"
#include "grammar/pushdown.h"
#include "grammar/vocabulary.h"

namespace nibble::grammar {

class CompiledGrammar final : public engine::TokenConstraint,
                              public std::enable_shared_from_this<CompiledGrammar> {
 public:
  CompiledGrammar(Grammar grammar, std::shared_ptr<const Vocabulary> vocabulary);

  std::unique_ptr<engine::ConstraintState> start() const override;

  // The pieces of a state, for the state objects and tests (each takes the lock).
  ParseState initial() const;
  ParseState advance(const ParseState& state, std::string_view bytes) const;
  void allowed(const ParseState& state, engine::TokenMask& mask) const;
  // The same mask by decoding every token from `state`: the reference for tests.
  void allowed_brute_force(const ParseState& state, engine::TokenMask& mask) const;

  const Vocabulary& vocabulary() const { return *vocabulary_; }
  std::size_t cached_masks() const;
  // Parser stacks interned so far: they are never freed, so an owner that keeps
  // the grammar for long drops it when this grows large.
  std::size_t parser_stacks() const;

 private:
  const std::vector<std::uint64_t>& stack_mask(StackId s) const;  // lock held

  std::shared_ptr<const Vocabulary> vocabulary_;
  mutable std::mutex mutex_;
  mutable PushdownAutomaton automaton_;
  mutable std::unordered_map<StackId, std::vector<std::uint64_t>> masks_;
  mutable std::vector<ParseState> frontier_;  // per trie depth, reused by every walk
};

}  // namespace nibble::grammar
