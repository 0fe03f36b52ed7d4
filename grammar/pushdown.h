#pragma once
// Runs a Grammar byte by byte. A parse is a set of stacks (one per way the bytes
// so far can be read); each stack is a list of grammar positions, the top one at
// a byte set. Stacks are interned (hash-consed as (top, rest) pairs), so a stack
// is a number, equal stacks are the same number, and what follows a stack's byte
// is computed once and remembered: after warm-up a byte costs a bit test and a
// lookup. Not thread-safe; CompiledGrammar serializes access.
#include <cstdint>
#include <deque>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "grammar/grammar.h"

namespace nibble::grammar {

using StackId = std::uint32_t;
inline constexpr StackId kAccepted = 0;  // the empty stack: the input is complete

// Sorted, without duplicates; may hold kAccepted.
using ParseState = std::vector<StackId>;

class PushdownAutomaton {
 public:
  explicit PushdownAutomaton(Grammar grammar);

  const ParseState& initial() const { return initial_; }
  // Whether stack `s` (not kAccepted) takes `byte` next.
  bool allows(StackId s, std::uint8_t byte) const {
    return grammar_.byte_sets[grammar_.elements[nodes_[s].pos].value].has(byte);
  }
  // The stacks after `s` took its byte (whatever byte its set allowed).
  const std::vector<StackId>& after(StackId s);

  // `state` after `byte` into `out` (cleared first); empty: the byte is refused.
  void step(const ParseState& state, std::uint8_t byte, ParseState& out);
  // `state` after all of `text`; empty: refused somewhere.
  ParseState advance(ParseState state, std::string_view text);
  static bool accepts(const ParseState& state) { return !state.empty() && state.front() == kAccepted; }

  std::size_t stacks() const { return nodes_.size(); }

 private:
  struct Node {
    std::uint32_t pos = 0;  // into grammar_.elements
    StackId parent = kAccepted;
    bool expanded = false;
    std::vector<StackId> after;
  };
  StackId intern(std::uint32_t pos, StackId parent);
  // Every stack reachable from `s` without taking a byte whose top is a byte set
  // (or kAccepted), sorted.
  std::vector<StackId> close(StackId s);

  Grammar grammar_;
  std::deque<Node> nodes_;  // stable references: after() hands out its vectors
  std::unordered_map<std::uint64_t, StackId> ids_;
  ParseState initial_;
};

}  // namespace nibble::grammar
