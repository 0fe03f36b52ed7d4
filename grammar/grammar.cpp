#include "grammar/grammar.h"

#include <map>
#include <utility>

#include "common/error.h"

namespace nibble::grammar {

Expr bytes(const ByteSet& set) {
  Expr e;
  e.kind = Expr::Kind::Bytes;
  e.bytes = set;
  return e;
}

Expr literal(std::string_view text) {
  std::vector<Expr> items;
  items.reserve(text.size());
  for (const char c : text) items.push_back(bytes(ByteSet::of(static_cast<std::uint8_t>(c))));
  return seq(std::move(items));
}

Expr ref(RuleId rule) {
  Expr e;
  e.kind = Expr::Kind::Ref;
  e.rule = rule;
  return e;
}

Expr seq(std::vector<Expr> items) {
  if (items.size() == 1) return std::move(items.front());
  Expr e;
  e.kind = Expr::Kind::Seq;
  e.items = std::move(items);
  return e;
}

Expr alt(std::vector<Expr> items) {
  if (items.size() == 1) return std::move(items.front());
  Expr e;
  e.kind = Expr::Kind::Alt;
  e.items = std::move(items);
  return e;
}

Expr repeat(Expr item, int min, int max) {
  Expr e;
  e.kind = Expr::Kind::Repeat;
  e.items.push_back(std::move(item));
  e.min = min;
  e.max = max;
  return e;
}

Expr utf8_char(const ByteSet& ascii, bool multibyte) {
  std::vector<Expr> forms;
  ByteSet low = ascii;
  low.remove(ByteSet::range(0x80, 0xFF));
  if (!low.empty()) forms.push_back(bytes(low));
  if (multibyte) {
    const auto r = [](int lo, int hi) {
      return bytes(ByteSet::range(static_cast<std::uint8_t>(lo), static_cast<std::uint8_t>(hi)));
    };
    const Expr tail = r(0x80, 0xBF);
    forms.push_back(seq({r(0xC2, 0xDF), tail}));
    forms.push_back(seq({r(0xE0, 0xE0), r(0xA0, 0xBF), tail}));
    forms.push_back(seq({r(0xE1, 0xEC), tail, tail}));
    forms.push_back(seq({r(0xED, 0xED), r(0x80, 0x9F), tail}));
    forms.push_back(seq({r(0xEE, 0xEF), tail, tail}));
    forms.push_back(seq({r(0xF0, 0xF0), r(0x90, 0xBF), tail, tail}));
    forms.push_back(seq({r(0xF1, 0xF3), tail, tail, tail}));
    forms.push_back(seq({r(0xF4, 0xF4), r(0x80, 0x8F), tail, tail}));
  }
  return alt(std::move(forms));
}

Expr json_string_char() {
  ByteSet plain = ByteSet::range(0x20, 0x7F);
  plain.remove(ByteSet::of('"'));
  plain.remove(ByteSet::of('\\'));
  ByteSet escapes;
  for (const char c : std::string_view("\"\\/bfnrt")) escapes.add(static_cast<std::uint8_t>(c), static_cast<std::uint8_t>(c));
  ByteSet hex = ByteSet::range('0', '9');
  hex.add('a', 'f');
  hex.add('A', 'F');
  return alt({utf8_char(plain, true), seq({literal("\\"), alt({bytes(escapes), seq({literal("u"), repeat(bytes(hex), 4, 4)})})})});
}

RuleId GrammarBuilder::declare(std::string name) {
  names_.push_back(std::move(name));
  exprs_.emplace_back();
  defined_.push_back(false);
  return static_cast<RuleId>(names_.size() - 1);
}

void GrammarBuilder::define(RuleId rule, Expr expr) {
  exprs_.at(rule) = std::move(expr);
  defined_.at(rule) = true;
}

namespace {

constexpr std::size_t kMaxElements = 4'000'000;  // keeps a hostile grammar from eating memory

// A symbol of a lowered alternative.
struct Symbol {
  bool is_rule = false;
  ByteSet bytes;
  RuleId rule = 0;
};
using Alternative = std::vector<Symbol>;

class Lowering {
 public:
  explicit Lowering(const std::vector<std::string>& names) : names_(names), rules_(names.size()) {}

  void lower_rule(RuleId id, const Expr& expr) { rules_[id] = alternatives(expr); }

  std::vector<std::vector<Alternative>>& rules() { return rules_; }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<Alternative> alternatives(const Expr& e) {
    std::vector<Alternative> out;
    if (e.kind == Expr::Kind::Alt) {
      for (const auto& item : e.items) {
        auto more = alternatives(item);
        for (auto& a : more) out.push_back(std::move(a));
      }
      return out;
    }
    out.emplace_back();
    sequence(e, out.back());
    return out;
  }

  void push(Alternative& out, Symbol s) {
    if (++count_ > kMaxElements) fail("the grammar is too large (over {} elements)", kMaxElements);
    out.push_back(std::move(s));
  }

  RuleId anonymous(std::vector<Alternative> alts) {
    names_.push_back(fmt::format("_{}", names_.size()));
    rules_.push_back(std::move(alts));
    return static_cast<RuleId>(rules_.size() - 1);
  }

  Symbol symbol(const Expr& e) {
    if (e.kind == Expr::Kind::Bytes) return {false, e.bytes, 0};
    if (e.kind == Expr::Kind::Ref) return {true, {}, e.rule};
    return {true, {}, anonymous(alternatives(e))};
  }

  void sequence(const Expr& e, Alternative& out) {
    switch (e.kind) {
      case Expr::Kind::Bytes:
      case Expr::Kind::Ref:
        push(out, symbol(e));
        return;
      case Expr::Kind::Seq:
        for (const auto& item : e.items) sequence(item, out);
        return;
      case Expr::Kind::Alt:
        if (e.items.size() == 1) return sequence(e.items.front(), out);
        push(out, symbol(e));
        return;
      case Expr::Kind::Repeat: {
        if (e.min < 0 || (e.max >= 0 && e.max < e.min)) fail("bad repetition {{{},{}}}", e.min, e.max);
        if (e.min > 100000 || e.max > 100000) fail("a repetition count above 100000 is not supported");
        const Symbol item = symbol(e.items.front());
        for (int i = 0; i < e.min; ++i) push(out, item);
        if (e.max < 0) {
          // R ::= item R | ε  (right recursion: the matcher's stack does not grow)
          const RuleId r = anonymous({});
          rules_[r] = {Alternative{item, Symbol{true, {}, r}}, Alternative{}};
          push(out, Symbol{true, {}, r});
        } else if (e.max > e.min) {
          // R1 ::= item | ε;  Rk ::= item R(k-1) | ε
          RuleId previous = anonymous({Alternative{item}, Alternative{}});
          for (int k = 2; k <= e.max - e.min; ++k) {
            previous = anonymous({Alternative{item, Symbol{true, {}, previous}}, Alternative{}});
          }
          push(out, Symbol{true, {}, previous});
        }
        return;
      }
    }
  }

  std::vector<std::string> names_;
  std::vector<std::vector<Alternative>> rules_;
  std::size_t count_ = 0;
};

// Refuses a rule that can reach itself without consuming a byte: the matcher
// would expand it forever.
void check_left_recursion(const std::vector<std::vector<Alternative>>& rules, const std::vector<std::string>& names) {
  const std::size_t n = rules.size();
  std::vector<bool> nullable(n, false);
  for (bool changed = true; changed;) {
    changed = false;
    for (std::size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      for (const auto& a : rules[r]) {
        bool all = true;
        for (const auto& s : a) {
          if (!s.is_rule || !nullable[s.rule]) {
            all = false;
            break;
          }
        }
        if (all) {
          nullable[r] = true;
          changed = true;
          break;
        }
      }
    }
  }
  std::vector<std::vector<RuleId>> first(n);
  for (std::size_t r = 0; r < n; ++r) {
    for (const auto& a : rules[r]) {
      for (const auto& s : a) {
        if (!s.is_rule) break;
        first[r].push_back(s.rule);
        if (!nullable[s.rule]) break;
      }
    }
  }
  // Iterative depth-first search: 0 new, 1 on the path, 2 done.
  std::vector<std::uint8_t> color(n, 0);
  for (std::size_t start = 0; start < n; ++start) {
    if (color[start] != 0) continue;
    std::vector<std::pair<RuleId, std::size_t>> path{{static_cast<RuleId>(start), 0}};
    color[start] = 1;
    while (!path.empty()) {
      auto& [rule, next] = path.back();
      if (next == first[rule].size()) {
        color[rule] = 2;
        path.pop_back();
        continue;
      }
      const RuleId to = first[rule][next++];
      if (color[to] == 1) fail("grammar rule '{}' is left-recursive", names[to]);
      if (color[to] == 0) {
        color[to] = 1;
        path.emplace_back(to, 0);
      }
    }
  }
}

}  // namespace

Grammar GrammarBuilder::build(RuleId root) const {
  for (std::size_t r = 0; r < names_.size(); ++r) {
    if (!defined_[r]) fail("grammar rule '{}' is used but never defined", names_[r]);
  }
  Lowering lowering(names_);
  for (std::size_t r = 0; r < names_.size(); ++r) lowering.lower_rule(static_cast<RuleId>(r), exprs_[r]);
  const auto& rules = lowering.rules();
  check_left_recursion(rules, lowering.names());

  Grammar g;
  g.root = root;
  g.rule_names = lowering.names();
  std::map<std::array<std::uint64_t, 4>, std::uint32_t> set_ids;
  g.rules.resize(rules.size());
  for (std::size_t r = 0; r < rules.size(); ++r) {
    for (const auto& a : rules[r]) {
      g.rules[r].push_back(static_cast<std::uint32_t>(g.elements.size()));
      for (const auto& s : a) {
        if (s.is_rule) {
          g.elements.push_back({Grammar::Element::Kind::Rule, s.rule});
          continue;
        }
        const auto [it, added] = set_ids.emplace(s.bytes.bits, static_cast<std::uint32_t>(g.byte_sets.size()));
        if (added) g.byte_sets.push_back(s.bytes);
        g.elements.push_back({Grammar::Element::Kind::Bytes, it->second});
      }
      g.elements.push_back({Grammar::Element::Kind::End, 0});
    }
  }
  return g;
}

Grammar grammar_of(Expr root) {
  GrammarBuilder builder;
  const RuleId id = builder.add("root", std::move(root));
  return builder.build(id);
}

}  // namespace nibble::grammar
