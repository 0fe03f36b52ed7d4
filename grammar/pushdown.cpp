#include "grammar/pushdown.h"

#include <algorithm>

#include "common/error.h"

namespace nibble::grammar {

namespace {
constexpr std::size_t kMaxStacks = 20'000'000;  // a grammar whose parses explode stops here

void sort_unique(std::vector<StackId>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}
}  // namespace

PushdownAutomaton::PushdownAutomaton(Grammar grammar) : grammar_(std::move(grammar)) {
  nodes_.emplace_back();  // kAccepted
  nodes_.front().expanded = true;
  for (const std::uint32_t start : grammar_.rules.at(grammar_.root)) {
    for (const StackId s : close(intern(start, kAccepted))) initial_.push_back(s);
  }
  sort_unique(initial_);
}

StackId PushdownAutomaton::intern(std::uint32_t pos, StackId parent) {
  const std::uint64_t key = (std::uint64_t{pos} << 32) | parent;
  const auto [it, added] = ids_.emplace(key, static_cast<StackId>(nodes_.size()));
  if (added) {
    if (nodes_.size() >= kMaxStacks) fail("the grammar needs too many parser stacks");
    nodes_.push_back(Node{pos, parent, false, {}});
  }
  return it->second;
}

std::vector<StackId> PushdownAutomaton::close(StackId start) {
  using Kind = Grammar::Element::Kind;
  std::vector<StackId> out, pending{start}, seen;
  while (!pending.empty()) {
    const StackId s = pending.back();
    pending.pop_back();
    if (std::find(seen.begin(), seen.end(), s) != seen.end()) continue;
    seen.push_back(s);
    if (s == kAccepted) {
      out.push_back(s);
      continue;
    }
    const Node node = nodes_[s];
    const auto& element = grammar_.elements[node.pos];
    if (element.kind == Kind::Bytes) {
      out.push_back(s);
    } else if (element.kind == Kind::End) {
      pending.push_back(node.parent);
    } else {
      // Where to return after the rule; a rule at the end of its alternative
      // returns straight to the caller's caller, so right recursion keeps the stack flat.
      const StackId back =
          grammar_.elements[node.pos + 1].kind == Kind::End ? node.parent : intern(node.pos + 1, node.parent);
      for (const std::uint32_t alt : grammar_.rules[element.value]) pending.push_back(intern(alt, back));
    }
  }
  sort_unique(out);
  return out;
}

const std::vector<StackId>& PushdownAutomaton::after(StackId s) {
  Node& node = nodes_[s];
  if (!node.expanded) {
    auto next = close(intern(node.pos + 1, node.parent));
    Node& same = nodes_[s];  // deque: still valid, but be explicit
    same.after = std::move(next);
    same.expanded = true;
    return same.after;
  }
  return node.after;
}

void PushdownAutomaton::step(const ParseState& state, std::uint8_t byte, ParseState& out) {
  out.clear();
  std::size_t sources = 0;
  for (const StackId s : state) {
    if (s == kAccepted || !allows(s, byte)) continue;
    const auto& next = after(s);
    out.insert(out.end(), next.begin(), next.end());
    ++sources;
  }
  if (sources > 1) sort_unique(out);
}

ParseState PushdownAutomaton::advance(ParseState state, std::string_view text) {
  ParseState next;
  for (const char c : text) {
    step(state, static_cast<std::uint8_t>(c), next);
    state.swap(next);
    if (state.empty()) break;
  }
  return state;
}

}  // namespace nibble::grammar
