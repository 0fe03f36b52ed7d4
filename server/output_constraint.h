#pragma once
// Turns a request's OutputFormat into the engine's TokenConstraint: the grammar
// is built (JSON Schema, regex, GBNF, choices; grammar/) and bound to the served
// model's vocabulary. Compiled constraints are kept by their source (LRU), so
// repeated schemas share one grammar and its cache of token masks.
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/token_constraint.h"
#include "grammar/vocabulary.h"
#include "grammar/compiled_grammar.h"
#include "grammar/grammar.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace nibble::server {

class OutputConstraints {
 public:
  OutputConstraints(const Tokenizer& tokenizer, std::size_t vocab_size, std::vector<TokenId> end_tokens,
                    std::size_t capacity = 32);

  // None for plain text. Throws ApiError 400 naming format.param when the format
  // cannot be compiled (an unsupported JSON Schema keyword, a bad pattern, ...).
  std::shared_ptr<const engine::TokenConstraint> compile(const OutputFormat& format);
  // The output tool_choice required / named forces: calls of `functions` in `format`.
  // Throws ApiError 400 naming tools when a parameters schema cannot be enforced.
  std::shared_ptr<const engine::TokenConstraint> compile_tool_calls(ToolCallFormat format,
                                                                    const std::vector<ToolFunction>& functions,
                                                                    int max_calls);

 private:
  std::shared_ptr<const grammar::Vocabulary> vocabulary();
  // The cached constraint for `key`, or `make`'s grammar compiled and cached.
  template <typename Make>
  std::shared_ptr<const engine::TokenConstraint> cached(const std::string& key, Make&& make);

  const Tokenizer& tokenizer_;
  const std::size_t vocab_size_;
  const std::vector<TokenId> end_tokens_;
  const std::size_t capacity_;
  std::mutex mutex_;
  std::shared_ptr<const grammar::Vocabulary> vocabulary_;  // made at the first constrained request
  using Entry = std::pair<std::string, std::shared_ptr<const grammar::CompiledGrammar>>;
  std::list<Entry> recent_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> by_key_;
};

}  // namespace nibble::server
