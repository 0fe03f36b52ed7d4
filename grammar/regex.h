#pragma once
// Regular expressions (the common subset of Python's re, ECMAScript and
// vLLM's guided_regex) as grammar expressions: literals, . [classes] \d \w \s
// (ASCII), groups (?:...), |, * + ? {m} {m,} {m,n} (lazy forms too: same
// language). Look-arounds, back-references and word boundaries are refused by
// name. Text is UTF-8: '.', negated classes and \D \W \S take any character.
#include <string_view>

#include "grammar/grammar.h"

namespace nibble::grammar {

enum class RegexMatch {
  Full,    // the whole text matches (guided_regex)
  Search,  // JSON Schema "pattern": a match anywhere, unless anchored with ^ / $
};

// `json_string`: the text will sit inside a JSON string, so '"', '\' and control
// characters are left out of every class (they would need escapes). Throws
// nibble::Error naming what is not supported.
Expr regex_expr(std::string_view pattern, RegexMatch match, bool json_string);

// Shared with the GBNF reader: the class at text[pos] == '[' (pos moves past ']').
Expr parse_class(std::string_view text, std::size_t& pos, bool json_string);
// An escape at text[pos] == '\\' inside a literal; appends its UTF-8 bytes.
void parse_literal_escape(std::string_view text, std::size_t& pos, std::string& out);
// The UTF-8 bytes of code point `cp`.
void append_utf8(std::uint32_t cp, std::string& out);

}  // namespace nibble::grammar
