#pragma once
// A context-free grammar over bytes, the one form every constraint compiles to
// (JSON Schema, regex, GBNF, choices). Rules are alternatives of sequences of
// byte sets and rule references, as llama.cpp's GBNF grammars are; expressions
// (Expr) are built by the front ends and lowered into rules by GrammarBuilder.
// Left recursion is refused when the grammar is built, so the pushdown matcher
// (matcher.h) always terminates.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nibble::grammar {

// A set of byte values.
struct ByteSet {
  std::array<std::uint64_t, 4> bits{};

  static ByteSet of(std::uint8_t b) {
    ByteSet s;
    s.add(b, b);
    return s;
  }
  static ByteSet range(std::uint8_t lo, std::uint8_t hi) {
    ByteSet s;
    s.add(lo, hi);
    return s;
  }
  void add(std::uint8_t lo, std::uint8_t hi) {
    for (unsigned b = lo; b <= hi; ++b) bits[b / 64] |= std::uint64_t{1} << (b % 64);
  }
  void add(const ByteSet& other) {
    for (std::size_t i = 0; i < 4; ++i) bits[i] |= other.bits[i];
  }
  void remove(const ByteSet& other) {
    for (std::size_t i = 0; i < 4; ++i) bits[i] &= ~other.bits[i];
  }
  bool has(std::uint8_t b) const { return ((bits[b / 64] >> (b % 64)) & 1U) != 0; }
  bool empty() const { return (bits[0] | bits[1] | bits[2] | bits[3]) == 0; }
  bool operator==(const ByteSet&) const = default;
};

using RuleId = std::uint32_t;

// A grammar expression: what front ends build.
struct Expr {
  enum class Kind { Bytes, Ref, Seq, Alt, Repeat };
  Kind kind = Kind::Seq;
  ByteSet bytes;               // Bytes
  RuleId rule = 0;             // Ref
  std::vector<Expr> items;     // Seq, Alt; Repeat: one item
  int min = 0, max = 0;        // Repeat: max < 0 is unbounded
};

Expr bytes(const ByteSet& set);
Expr literal(std::string_view text);  // the exact bytes
Expr ref(RuleId rule);
Expr seq(std::vector<Expr> items);    // empty: matches the empty string
Expr alt(std::vector<Expr> items);    // empty: matches nothing
Expr repeat(Expr item, int min, int max);
inline Expr optional(Expr item) { return repeat(std::move(item), 0, 1); }
inline Expr star(Expr item) { return repeat(std::move(item), 0, -1); }
inline Expr plus(Expr item) { return repeat(std::move(item), 1, -1); }

// One UTF-8 encoded character whose ASCII part is `ascii` (every multi-byte
// character is allowed when `multibyte`): exact UTF-8, no overlongs or surrogates.
Expr utf8_char(const ByteSet& ascii, bool multibyte);
// One character of a JSON string as JSON writes it: any character but '"', '\'
// and controls, or an escape (\" \\ \/ \b \f \n \r \t \uXXXX).
Expr json_string_char();

// The compiled form: flat arrays the matcher walks.
struct Grammar {
  struct Element {
    enum class Kind : std::uint8_t { Bytes, Rule, End };
    Kind kind = Kind::End;
    std::uint32_t value = 0;  // Bytes: index into byte_sets; Rule: rule id
  };
  std::vector<Element> elements;                   // every alternative, each closed by an End
  std::vector<std::vector<std::uint32_t>> rules;   // per rule: where its alternatives start
  std::vector<std::string> rule_names;
  std::vector<ByteSet> byte_sets;
  RuleId root = 0;
};

class GrammarBuilder {
 public:
  // A rule to define later (rules may refer to each other in any order).
  RuleId declare(std::string name);
  void define(RuleId rule, Expr expr);
  RuleId add(std::string name, Expr expr) {
    const RuleId id = declare(std::move(name));
    define(id, std::move(expr));
    return id;
  }
  bool defined(RuleId rule) const { return defined_.at(rule); }
  std::size_t size() const { return names_.size(); }

  // Lowers every rule; throws nibble::Error for an undefined or left-recursive
  // rule, or one with too many elements.
  Grammar build(RuleId root) const;

 private:
  std::vector<std::string> names_;
  std::vector<Expr> exprs_;
  std::vector<bool> defined_;
};

// A grammar whose root is `root` (regex and choice constraints).
Grammar grammar_of(Expr root);

}  // namespace nibble::grammar
