#include "server/output_constraint.h"

#include <fmt/format.h>

#include "common/error.h"
#include "grammar/compiled_grammar.h"
#include "grammar/gbnf.h"
#include "grammar/json_schema.h"
#include "grammar/regex.h"
#include "grammar/tokenizer_vocabulary.h"
#include "server/api_error.h"

namespace nibble::server {
namespace {

std::string cache_key(const OutputFormat& format) {
  using Kind = OutputFormat::Kind;
  switch (format.kind) {
    case Kind::JsonObject:
      return "object";
    case Kind::JsonSchema:
      return "schema:" + format.schema.dump();
    case Kind::Regex:
      return "regex:" + format.text;
    case Kind::Grammar:
      return "gbnf:" + format.text;
    case Kind::Choice:
      return "choice:" + nlohmann::json(format.choices).dump();
    case Kind::Text:
      break;
  }
  return "";
}

grammar::Grammar grammar_for(const OutputFormat& format) {
  using Kind = OutputFormat::Kind;
  switch (format.kind) {
    case Kind::JsonObject:
      return grammar::json_object_grammar();
    case Kind::JsonSchema:
      return grammar::json_schema_grammar(format.schema);
    case Kind::Regex:
      return grammar::grammar_of(grammar::regex_expr(format.text, grammar::RegexMatch::Full, false));
    case Kind::Grammar:
      return grammar::parse_gbnf(format.text);
    case Kind::Choice: {
      std::vector<grammar::Expr> choices;
      for (const auto& c : format.choices) choices.push_back(grammar::literal(c));
      return grammar::grammar_of(grammar::alt(std::move(choices)));
    }
    case Kind::Text:
      break;
  }
  fail("no grammar for plain text");
}

}  // namespace

OutputConstraints::OutputConstraints(const Tokenizer& tokenizer, std::size_t vocab_size,
                                     std::vector<TokenId> end_tokens, std::size_t capacity)
    : tokenizer_(tokenizer), vocab_size_(vocab_size), end_tokens_(std::move(end_tokens)), capacity_(capacity) {}

std::shared_ptr<const grammar::Vocabulary> OutputConstraints::vocabulary() {
  if (!vocabulary_) vocabulary_ = grammar::vocabulary_of(tokenizer_, vocab_size_, end_tokens_);
  return vocabulary_;
}

template <typename Make>
std::shared_ptr<const engine::TokenConstraint> OutputConstraints::cached(const std::string& key, Make&& make) {
  const std::lock_guard lock(mutex_);
  if (const auto found = by_key_.find(key); found != by_key_.end()) {
    // Its interned parser stacks only grow; past a bound the grammar starts afresh
    // (requests still using the old one keep it until they end).
    constexpr std::size_t kMaxParserStacks = 1'000'000;
    if (found->second->second->parser_stacks() < kMaxParserStacks) {
      recent_.splice(recent_.begin(), recent_, found->second);
      return found->second->second;
    }
    recent_.erase(found->second);
    by_key_.erase(found);
  }
  auto constraint = std::make_shared<grammar::CompiledGrammar>(make(), vocabulary());
  recent_.emplace_front(key, constraint);
  by_key_[key] = recent_.begin();
  if (recent_.size() > capacity_) {
    by_key_.erase(recent_.back().first);
    recent_.pop_back();
  }
  return constraint;
}

std::shared_ptr<const engine::TokenConstraint> OutputConstraints::compile(const OutputFormat& format) {
  if (format.kind == OutputFormat::Kind::Text) return nullptr;
  try {
    return cached(cache_key(format), [&] { return grammar_for(format); });
  } catch (const Error& e) {
    throw ApiError::invalid(format.param, fmt::format("'{}' cannot be enforced: {}", format.param, e.what()),
                            "unsupported_output_format");
  }
}

std::shared_ptr<const engine::TokenConstraint> OutputConstraints::compile_tool_calls(
    ToolCallFormat format, const std::vector<ToolFunction>& functions, int max_calls) {
  nlohmann::ordered_json key = nlohmann::ordered_json::array();
  for (const auto& f : functions) key.push_back({f.name, f.parameters});
  try {
    return cached(fmt::format("tools:{}:{}:{}", tool_call_format_name(format), max_calls, key.dump()),
                  [&] { return forced_tool_call_grammar(format, functions, max_calls); });
  } catch (const Error& e) {
    throw ApiError::invalid("tools", fmt::format("the function parameters cannot be enforced: {}", e.what()),
                            "unsupported_output_format");
  }
}

}  // namespace nibble::server
