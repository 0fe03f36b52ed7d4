#include "grammar/compiled_grammar.h"

#include "common/error.h"

namespace nibble::grammar {
namespace {

// Masks kept per grammar: ~6 KiB each at a 50k vocabulary (3 MiB), ~19 KiB at 150k.
constexpr std::size_t kMaxCachedMasks = 512;

class GrammarState final : public engine::ConstraintState {
 public:
  explicit GrammarState(std::shared_ptr<const CompiledGrammar> grammar)
      : grammar_(std::move(grammar)), state_(grammar_->initial()) {}

  void allowed(engine::TokenMask& mask) override {
    if (ended_) {
      mask.reset(grammar_->vocabulary().size());
      return;
    }
    grammar_->allowed(state_, mask);
  }

  void accept(TokenId token) override {
    const auto& vocabulary = grammar_->vocabulary();
    if (token < 0 || static_cast<std::size_t>(token) >= vocabulary.size()) fail("token {} is outside the grammar's vocabulary", token);
    if (vocabulary.is_end(token) && PushdownAutomaton::accepts(state_)) {
      ended_ = true;
      return;
    }
    const std::string& bytes = vocabulary.bytes(token);
    auto next = bytes.empty() ? ParseState{} : grammar_->advance(state_, bytes);
    if (next.empty()) fail("token {} does not follow the grammar", token);
    state_ = std::move(next);
  }

 private:
  std::shared_ptr<const CompiledGrammar> grammar_;
  ParseState state_;
  bool ended_ = false;
};

}  // namespace

CompiledGrammar::CompiledGrammar(Grammar grammar, std::shared_ptr<const Vocabulary> vocabulary)
    : vocabulary_(std::move(vocabulary)), automaton_(std::move(grammar)) {
  frontier_.resize(vocabulary_->max_depth() + 1);
}

std::unique_ptr<engine::ConstraintState> CompiledGrammar::start() const {
  return std::make_unique<GrammarState>(shared_from_this());
}

ParseState CompiledGrammar::initial() const {
  const std::lock_guard lock(mutex_);
  return automaton_.initial();
}

ParseState CompiledGrammar::advance(const ParseState& state, std::string_view bytes) const {
  const std::lock_guard lock(mutex_);
  return automaton_.advance(state, bytes);
}

std::size_t CompiledGrammar::parser_stacks() const {
  const std::lock_guard lock(mutex_);
  return automaton_.stacks();
}

std::size_t CompiledGrammar::cached_masks() const {
  const std::lock_guard lock(mutex_);
  return masks_.size();
}

const std::vector<std::uint64_t>& CompiledGrammar::stack_mask(StackId s) const {
  if (const auto found = masks_.find(s); found != masks_.end()) return found->second;
  if (masks_.size() >= kMaxCachedMasks) masks_.clear();
  std::vector<std::uint64_t> mask((vocabulary_->size() + 63) / 64, 0);
  const auto& nodes = vocabulary_->nodes();
  const auto& order = vocabulary_->token_order();
  frontier_[0].assign(1, s);
  for (std::size_t i = 0; i < nodes.size();) {
    const auto& node = nodes[i];
    ParseState& here = frontier_[node.depth];
    automaton_.step(frontier_[node.depth - 1], node.byte, here);
    if (here.empty()) {
      i = node.subtree_end;
      continue;
    }
    for (std::uint32_t t = node.tokens_begin; t < node.tokens_end; ++t) {
      const auto id = static_cast<std::size_t>(order[t]);
      mask[id / 64] |= std::uint64_t{1} << (id % 64);
    }
    ++i;
  }
  return masks_.emplace(s, std::move(mask)).first->second;
}

void CompiledGrammar::allowed(const ParseState& state, engine::TokenMask& mask) const {
  const std::lock_guard lock(mutex_);
  mask.reset(vocabulary_->size());
  for (const StackId s : state) {
    if (s == kAccepted) {
      for (const TokenId end : vocabulary_->end_tokens()) {
        if (end >= 0 && static_cast<std::size_t>(end) < vocabulary_->size()) mask.set(end);
      }
      continue;
    }
    const auto& words = stack_mask(s);
    for (std::size_t w = 0; w < words.size(); ++w) mask.words[w] |= words[w];
  }
}

void CompiledGrammar::allowed_brute_force(const ParseState& state, engine::TokenMask& mask) const {
  const std::lock_guard lock(mutex_);
  mask.reset(vocabulary_->size());
  for (std::size_t id = 0; id < vocabulary_->size(); ++id) {
    const auto token = static_cast<TokenId>(id);
    if (vocabulary_->is_end(token)) {
      if (PushdownAutomaton::accepts(state)) mask.set(token);
      continue;
    }
    const std::string& bytes = vocabulary_->bytes(token);
    if (!bytes.empty() && !automaton_.advance(state, bytes).empty()) mask.set(token);
  }
}

}  // namespace nibble::grammar
