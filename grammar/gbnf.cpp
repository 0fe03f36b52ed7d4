#include "grammar/gbnf.h"

#include <map>
#include <string>

#include "common/error.h"
#include "grammar/regex.h"

namespace nibble::grammar {
namespace {

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

class GbnfParser {
 public:
  explicit GbnfParser(std::string_view text) : text_(text) {}

  Grammar parse() {
    skip_space();
    while (pos_ < text_.size()) {
      const std::string name = rule_name();
      skip_space();
      if (text_.compare(pos_, 3, "::=") != 0) fail("expected '::=' after '{}' ({})", name, where());
      pos_ += 3;
      const RuleId id = rule(name);
      if (builder_.defined(id)) fail("rule '{}' is defined twice", name);
      builder_.define(id, alternatives());
      skip_space();
    }
    const auto root = ids_.find("root");
    if (root == ids_.end() || !builder_.defined(root->second)) fail("the grammar has no 'root' rule");
    return builder_.build(root->second);
  }

 private:
  std::string where() const {
    std::size_t line = 1;
    for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) line += text_[i] == '\n' ? 1 : 0;
    return "line " + std::to_string(line);
  }

  void skip_space() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '#') {
        while (pos_ < text_.size() && text_[pos_] != '\n') ++pos_;
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  std::string rule_name() {
    const std::size_t begin = pos_;
    while (pos_ < text_.size() && name_char(text_[pos_])) ++pos_;
    if (pos_ == begin) fail("expected a rule name ({})", where());
    return std::string(text_.substr(begin, pos_ - begin));
  }

  RuleId rule(const std::string& name) {
    const auto [it, added] = ids_.emplace(name, 0);
    if (added) it->second = builder_.declare(name);
    return it->second;
  }

  // Whether a rule name followed by "::=" starts here (the end of the current rule).
  bool at_definition() const {
    std::size_t p = pos_;
    while (p < text_.size() && name_char(text_[p])) ++p;
    if (p == pos_) return false;
    while (p < text_.size() && (text_[p] == ' ' || text_[p] == '\t' || text_[p] == '\n' || text_[p] == '\r')) ++p;
    return text_.compare(p, 3, "::=") == 0;
  }

  Expr alternatives() {
    std::vector<Expr> branches{sequence()};
    while (pos_ < text_.size() && text_[pos_] == '|') {
      ++pos_;
      branches.push_back(sequence());
    }
    return alt(std::move(branches));
  }

  Expr sequence() {
    std::vector<Expr> items;
    while (true) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] == '|' || text_[pos_] == ')' || at_definition()) break;
      Expr term = primary();
      items.push_back(postfix(std::move(term)));
    }
    return seq(std::move(items));
  }

  Expr primary() {
    const char c = text_[pos_];
    if (c == '"') {
      ++pos_;
      std::string bytes;
      while (true) {
        if (pos_ >= text_.size()) fail("unterminated string literal ({})", where());
        if (text_[pos_] == '"') break;
        if (text_[pos_] == '\\') {
          parse_literal_escape(text_, pos_, bytes);
        } else {
          bytes += text_[pos_++];
        }
      }
      ++pos_;
      return literal(bytes);
    }
    if (c == '[') return parse_class(text_, pos_, false);
    if (c == '.') {
      ++pos_;
      return utf8_char(ByteSet::range(0, 0x7F), true);
    }
    if (c == '(') {
      ++pos_;
      Expr e = alternatives();
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != ')') fail("unbalanced '(' ({})", where());
      ++pos_;
      return e;
    }
    if (name_char(c)) return ref(rule(rule_name()));
    fail("unexpected '{}' ({})", c, where());
  }

  Expr postfix(Expr e) {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '*') {
        ++pos_;
        e = star(std::move(e));
      } else if (c == '+') {
        ++pos_;
        e = plus(std::move(e));
      } else if (c == '?') {
        ++pos_;
        e = optional(std::move(e));
      } else if (c == '{') {
        ++pos_;
        const int min = number();
        int max = min;
        if (pos_ < text_.size() && text_[pos_] == ',') {
          ++pos_;
          max = pos_ < text_.size() && text_[pos_] == '}' ? -1 : number();
        }
        if (pos_ >= text_.size() || text_[pos_] != '}') fail("expected '}}' ({})", where());
        ++pos_;
        if (max >= 0 && max < min) fail("bad repetition {{{},{}}} ({})", min, max, where());
        e = repeat(std::move(e), min, max);
      } else {
        break;
      }
    }
    return e;
  }

  int number() {
    const std::size_t begin = pos_;
    long long v = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      v = v * 10 + (text_[pos_++] - '0');
      if (v > 100000) fail("a repetition count above 100000 is not supported");
    }
    if (pos_ == begin) fail("expected a number ({})", where());
    return static_cast<int>(v);
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  GrammarBuilder builder_;
  std::map<std::string, RuleId> ids_;
};

}  // namespace

Grammar parse_gbnf(std::string_view text) { return GbnfParser(text).parse(); }

}  // namespace nibble::grammar
