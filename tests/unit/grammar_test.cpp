// The grammar engine: JSON Schema grammars accept exactly what the `jsonschema`
// package accepts on a generated corpus; regex, GBNF and choices; masks from the
// vocabulary's prefix tree equal decoding every token, on SmolLM2's vocabulary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "grammar/compiled_grammar.h"
#include "grammar/gbnf.h"
#include "grammar/json_schema.h"
#include "grammar/pushdown.h"
#include "grammar/regex.h"
#include "grammar/tokenizer_vocabulary.h"
#include "tokenizer/tokenizer.h"

namespace nibble::grammar {
namespace {

using ojson = nlohmann::ordered_json;

bool accepts(const Grammar& g, std::string_view text) {
  PushdownAutomaton pda(g);
  return PushdownAutomaton::accepts(pda.advance(pda.initial(), text));
}

bool schema_accepts(std::string_view schema, std::string_view text) {
  return accepts(json_schema_grammar(ojson::parse(schema)), text);
}

std::string schema_error(std::string_view schema) {
  try {
    json_schema_grammar(ojson::parse(schema));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(JsonSchemaGrammar, AgreesWithTheJsonschemaPackageOnTheGeneratedCorpus) {
  std::ifstream in(NIBBLE_GRAMMAR_CORPUS);
  ASSERT_TRUE(in) << "missing " << NIBBLE_GRAMMAR_CORPUS << " (made by the grammar_corpus ctest step)";
  const auto corpus = ojson::parse(in);
  ASSERT_GE(corpus.size(), 20U);
  std::size_t documents = 0, valid = 0;
  for (const auto& entry : corpus) {
    PushdownAutomaton pda(json_schema_grammar(entry["schema"]));
    for (const auto& c : entry["cases"]) {
      const auto text = c["text"].get<std::string>();
      const bool expected = c["valid"].get<bool>();
      EXPECT_EQ(PushdownAutomaton::accepts(pda.advance(pda.initial(), text)), expected)
          << "schema " << entry["schema"].dump() << "\ndocument " << text;
      ++documents;
      valid += expected ? 1 : 0;
    }
  }
  EXPECT_GE(documents, 800U);
  EXPECT_GE(valid, documents / 4);  // both verdicts are well represented
  EXPECT_LE(valid, documents * 3 / 4);
}

TEST(JsonSchemaGrammar, UnsupportedKeywordsAreNamedNotIgnored) {
  EXPECT_NE(schema_error(R"({"type":"integer","minimum":0})").find("'minimum' at the schema's root"), std::string::npos);
  EXPECT_NE(schema_error(R"({"type":"object","properties":{"a":{"type":"array","uniqueItems":true}}})")
                .find("'uniqueItems' at /properties/a"),
            std::string::npos);
  EXPECT_NE(schema_error(R"({"not":{"type":"null"}})").find("'not'"), std::string::npos);
  EXPECT_NE(schema_error(R"({"type":"string","format":"hostname"})").find("format 'hostname'"), std::string::npos);
  EXPECT_NE(schema_error(R"({"$ref":"#/$defs/Missing"})").find("points at nothing"), std::string::npos);
  EXPECT_NE(schema_error(R"({"type":"string","pattern":"(?=a)b"})").find("look-arounds"), std::string::npos);
  EXPECT_EQ(schema_error(R"({"type":"string","title":"T","description":"d","default":"x"})"), "");
}

TEST(JsonSchemaGrammar, FormatsAndUtf8) {
  EXPECT_TRUE(schema_accepts(R"({"type":"string","format":"date"})", R"("2026-12-07")"));
  EXPECT_FALSE(schema_accepts(R"({"type":"string","format":"date"})", R"("2026-13-07")"));
  EXPECT_TRUE(schema_accepts(R"({"type":"string","format":"date-time"})", R"("2026-12-07T00:50:00Z")"));
  EXPECT_TRUE(schema_accepts(R"({"type":"string","format":"uuid"})", R"("123e4567-e89b-12d3-a456-426614174000")"));
  EXPECT_TRUE(schema_accepts(R"({"type":"string","maxLength":1})", "\"\xF0\x9F\x98\x80\""));  // one 4-byte character
  EXPECT_FALSE(schema_accepts(R"({"type":"string"})", "\"\xC0\xAF\""));                      // overlong: not UTF-8
  EXPECT_FALSE(schema_accepts(R"({"type":"string"})", "\"\xED\xA0\x80\""));                  // a surrogate
  EXPECT_FALSE(schema_accepts(R"({"type":"string"})", "\"a\nb\""));                          // raw control character
}

TEST(JsonSchemaGrammar, RecursiveReferencesAndObjectsInSchemaOrder) {
  const char* tree =
      R"({"$defs":{"T":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/T"}}},"required":["v"],"additionalProperties":false}},"$ref":"#/$defs/T"})";
  EXPECT_TRUE(schema_accepts(tree, R"({"v":1,"kids":[{"v":2,"kids":[{"v":3}]},{"v":4}]})"));
  EXPECT_FALSE(schema_accepts(tree, R"({"v":1,"kids":[{"kids":[]}]})"));
  EXPECT_FALSE(schema_accepts(tree, R"({"kids":[],"v":1})"));  // the grammar keeps the schema's order
  EXPECT_TRUE(accepts(json_object_grammar(), "{\n  \"a\": [1, 2.5e3, \"x\", null, {\"b\": false}]\n}"));
  EXPECT_FALSE(accepts(json_object_grammar(), "[1]"));
}

TEST(RegexGrammar, FullMatchesAndErrors) {
  const auto full = [](std::string_view pattern, std::string_view text) {
    return accepts(grammar_of(regex_expr(pattern, RegexMatch::Full, false)), text);
  };
  EXPECT_TRUE(full(R"(\d{3}-\d{4})", "555-1234"));
  EXPECT_FALSE(full(R"(\d{3}-\d{4})", "555-12345"));
  EXPECT_TRUE(full("(cat|dog)s?", "dogs"));
  EXPECT_FALSE(full("(cat|dog)s?", "cow"));
  EXPECT_TRUE(full("[^a-c]+x", "\xC3\xA9zx"));  // é is outside [a-c]
  EXPECT_TRUE(full("a.c", "a\xE6\x97\xA5" "c"));
  EXPECT_FALSE(full("a.c", "a\nc"));
  EXPECT_TRUE(full("[A-Z][a-z]*?", "Hello"));
  EXPECT_THROW(regex_expr("(a)\\1", RegexMatch::Full, false), Error);
  EXPECT_THROW(regex_expr("a(?!b)", RegexMatch::Full, false), Error);
  EXPECT_THROW(regex_expr("(ab", RegexMatch::Full, false), Error);
  // Search (JSON Schema pattern): unanchored means "contains".
  EXPECT_TRUE(accepts(grammar_of(regex_expr("b+", RegexMatch::Search, false)), "abbbc"));
  EXPECT_FALSE(accepts(grammar_of(regex_expr("^b+", RegexMatch::Search, false)), "abbbc"));
}

TEST(GbnfGrammar, ParsesLlamaCppStyleGrammars) {
  const auto g = parse_gbnf(R"(
    # a list of small words
    root ::= "[" ws item ("," ws item){0,2} "]"
    item ::= [a-z]+ | "\"" [^"]* "\""
    ws   ::= [ \t\n]*
  )");
  EXPECT_TRUE(accepts(g, "[ abc, \"x y\",\nq]"));
  EXPECT_FALSE(accepts(g, "[a,b,c,d]"));
  EXPECT_FALSE(accepts(g, "[A]"));
  EXPECT_THROW(parse_gbnf("root ::= root \"a\" | \"b\""), Error);  // left recursion
  EXPECT_THROW(parse_gbnf("root ::= other"), Error);                // undefined
  EXPECT_THROW(parse_gbnf("start ::= \"a\""), Error);               // no root
  EXPECT_THROW(parse_gbnf("root ::= \"a"), Error);                  // unterminated
}

// Masks from one walk of the prefix tree equal decoding every vocabulary token
// from the same state, on SmolLM2's real vocabulary, at 200 states reached by
// random walks through several grammars.
TEST(CompiledGrammar, MasksEqualBruteForceOnSmolLM2Vocabulary) {
  const auto model = std::filesystem::path(NIBBLE_MODEL_CACHE) / "SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(std::filesystem::exists(model)) << "run scripts/get-model";
  const auto tokenizer = load_tokenizer(model);
  const auto vocabulary = vocabulary_of(*tokenizer, tokenizer->vocab_size(), tokenizer->eos_ids());
  std::vector<std::shared_ptr<CompiledGrammar>> grammars = {
      std::make_shared<CompiledGrammar>(json_object_grammar(), vocabulary),
      std::make_shared<CompiledGrammar>(
          json_schema_grammar(ojson::parse(
              R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","bb","ccc"]},"maxItems":3},"ok":{"type":["boolean","null"]}},"required":["name","age"],"additionalProperties":false})")),
          vocabulary),
      std::make_shared<CompiledGrammar>(grammar_of(regex_expr(R"((\w+ ){1,3}[0-9]{2,4}!)", RegexMatch::Full, false)),
                                        vocabulary),
      std::make_shared<CompiledGrammar>(parse_gbnf(R"(root ::= ("yes" | "no" | "maybe so") ("." | "!"))"), vocabulary),
  };
  std::mt19937 rng(7);
  int states = 0;
  engine::TokenMask fast, slow;
  while (states < 200) {
    for (const auto& g : grammars) {
      ParseState state = g->initial();
      for (int step = 0; step < 12 && states < 200; ++step, ++states) {
        g->allowed(state, fast);
        g->allowed_brute_force(state, slow);
        ASSERT_EQ(fast.words, slow.words) << "state " << states;
        std::vector<TokenId> allowed;
        for (std::size_t id = 0; id < vocabulary->size(); ++id) {
          if (fast.test(static_cast<TokenId>(id)) && !vocabulary->is_end(static_cast<TokenId>(id))) {
            allowed.push_back(static_cast<TokenId>(id));
          }
        }
        if (allowed.empty()) break;  // complete: only end tokens
        const TokenId pick = allowed[std::uniform_int_distribution<std::size_t>(0, allowed.size() - 1)(rng)];
        state = g->advance(state, vocabulary->bytes(pick));
        ASSERT_FALSE(state.empty());
      }
    }
  }
  EXPECT_GT(grammars[1]->cached_masks(), 0U);
}

TEST(CompiledGrammar, StateAllowsEndTokensOnlyWhenComplete) {
  std::vector<std::string> bytes = {"", "a", "b", "ab", "abc", "c"};
  const auto vocabulary = std::make_shared<const Vocabulary>(bytes, std::vector<TokenId>{0});
  const auto g = std::make_shared<CompiledGrammar>(parse_gbnf(R"(root ::= "ab" "c"?)"), vocabulary);
  auto state = g->start();
  engine::TokenMask mask;
  state->allowed(mask);
  EXPECT_EQ(mask.words[0], (1U << 1) | (1U << 3) | (1U << 4));  // a, ab, abc
  state->accept(3);                                               // "ab"
  state->allowed(mask);
  EXPECT_EQ(mask.words[0], (1U << 0) | (1U << 5));  // end, or "c"
  EXPECT_THROW(state->accept(1), Error);
  state->accept(5);
  state->allowed(mask);
  EXPECT_EQ(mask.words[0], 1U << 0);  // only the end token
  state->accept(0);
  state->allowed(mask);
  EXPECT_FALSE(mask.any());
}

}  // namespace
}  // namespace nibble::grammar
