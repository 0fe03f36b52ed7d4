#include "grammar/regex.h"

#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace nibble::grammar {
namespace {

ByteSet json_unsafe() {
  ByteSet s = ByteSet::range(0x00, 0x1F);
  s.add('"', '"');
  s.add('\\', '\\');
  return s;
}

ByteSet ascii_all() { return ByteSet::range(0x00, 0x7F); }
ByteSet digits() { return ByteSet::range('0', '9'); }
ByteSet word() {
  ByteSet s = ByteSet::range('a', 'z');
  s.add('A', 'Z');
  s.add('0', '9');
  s.add('_', '_');
  return s;
}
ByteSet spaces() {
  ByteSet s = ByteSet::of(' ');
  s.add('\t', '\r');  // \t \n \v \f \r
  return s;
}

std::uint32_t hex_value(std::string_view text, std::size_t& pos, int count) {
  std::uint32_t v = 0;
  for (int i = 0; i < count; ++i, ++pos) {
    if (pos >= text.size()) fail("incomplete hex escape");
    const char c = text[pos];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
    else fail("bad hex digit '{}' in an escape", c);
  }
  return v;
}

// One UTF-8 character starting at text[pos] (moved past it).
std::uint32_t next_code_point(std::string_view text, std::size_t& pos) {
  const auto b = static_cast<std::uint8_t>(text[pos++]);
  if (b < 0x80) return b;
  int extra = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : b >= 0xC0 ? 1 : 0;
  if (extra == 0) fail("the pattern is not valid UTF-8");
  std::uint32_t cp = b & (0x3FU >> extra);
  for (; extra > 0; --extra) {
    if (pos >= text.size()) fail("the pattern is not valid UTF-8");
    cp = (cp << 6) | (static_cast<std::uint8_t>(text[pos++]) & 0x3FU);
  }
  return cp;
}

// A class being read: its ASCII part, its listed non-ASCII characters, negation.
struct ClassSet {
  ByteSet ascii;
  std::vector<std::uint32_t> others;
  bool negated = false;
  bool any_multibyte = false;  // \D \W \S inside a class: every non-ASCII character

  Expr expr(bool json_string) const {
    ByteSet a = ascii;
    if (negated) {
      if (!others.empty()) fail("a negated class with non-ASCII characters is not supported");
      ByteSet all = ascii_all();
      all.remove(a);
      a = all;
    }
    if (json_string) a.remove(json_unsafe());
    std::vector<Expr> forms;
    const bool multibyte = negated || any_multibyte;
    if (!a.empty() || multibyte) forms.push_back(utf8_char(a, multibyte));
    if (!multibyte) {
      for (const auto cp : others) {
        std::string s;
        append_utf8(cp, s);
        forms.push_back(literal(s));
      }
    }
    return alt(std::move(forms));
  }
};

// \d and friends: whether text[pos] is one (pos moves past it).
bool class_escape(char c, ClassSet& into) {
  switch (c) {
    case 'd': into.ascii.add(digits()); return true;
    case 'w': into.ascii.add(word()); return true;
    case 's': into.ascii.add(spaces()); return true;
    case 'D':
    case 'W':
    case 'S': {
      ByteSet all = ascii_all();
      all.remove(c == 'D' ? digits() : c == 'W' ? word() : spaces());
      into.ascii.add(all);
      into.any_multibyte = true;
      return true;
    }
    default:
      return false;
  }
}

// A single-character escape (not a class): its code point.
std::uint32_t char_escape(std::string_view text, std::size_t& pos) {
  const char c = text[pos++];
  switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x': return hex_value(text, pos, 2);
    case 'u': return hex_value(text, pos, 4);
    case 'U': return hex_value(text, pos, 8);
    case 'b':
    case 'B': fail("word boundaries (\\{}) are not supported", c);
    default:
      if (c >= '1' && c <= '9') fail("back-references (\\{}) are not supported", c);
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) fail("the escape \\{} is not supported", c);
      return static_cast<std::uint8_t>(c);  // escaped punctuation stands for itself
  }
}

void add_code_point(ClassSet& set, std::uint32_t cp) {
  if (cp < 0x80) {
    set.ascii.add(static_cast<std::uint8_t>(cp), static_cast<std::uint8_t>(cp));
  } else {
    set.others.push_back(cp);
  }
}

class RegexParser {
 public:
  RegexParser(std::string_view text, bool json_string) : text_(text), json_string_(json_string) {}

  Expr parse(RegexMatch match) {
    bool anchored_start = false, anchored_end = false;
    std::string_view body = text_;
    if (!body.empty() && body.front() == '^') {
      anchored_start = true;
      body.remove_prefix(1);
    }
    if (!body.empty() && body.back() == '$' && (body.size() < 2 || body[body.size() - 2] != '\\')) {
      anchored_end = true;
      body.remove_suffix(1);
    }
    text_ = body;
    Expr e = alternation();
    if (pos_ != text_.size()) fail("unexpected '{}' at offset {} of the pattern", text_[pos_], pos_);
    if (match == RegexMatch::Full) return e;
    // Unanchored: any text around the match, newlines included (inside a JSON
    // string, any character as JSON writes it, escapes included).
    const Expr any = star(json_string_ ? json_string_char() : utf8_char(ascii_all(), true));
    std::vector<Expr> parts;
    if (!anchored_start) parts.push_back(any);
    parts.push_back(std::move(e));
    if (!anchored_end) parts.push_back(any);
    return seq(std::move(parts));
  }

 private:
  ByteSet any_but_newline() const {
    ByteSet s = ascii_all();
    s.remove(ByteSet::of('\n'));
    if (json_string_) s.remove(json_unsafe());
    return s;
  }

  bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  Expr alternation() {
    std::vector<Expr> branches{concatenation()};
    while (at('|')) {
      ++pos_;
      branches.push_back(concatenation());
    }
    return alt(std::move(branches));
  }

  Expr concatenation() {
    std::vector<Expr> items;
    while (pos_ < text_.size() && !at('|') && !at(')')) items.push_back(quantified());
    return seq(std::move(items));
  }

  Expr quantified() {
    Expr e = atom();
    while (pos_ < text_.size()) {
      int min = 0, max = -1;
      const char c = text_[pos_];
      if (c == '*') {
        ++pos_;
      } else if (c == '+') {
        ++pos_;
        min = 1;
      } else if (c == '?') {
        ++pos_;
        max = 1;
      } else if (c == '{' && braces(min, max)) {
        // read by braces()
      } else {
        break;
      }
      if (at('?')) ++pos_;  // lazy: the same language
      if (at('+')) fail("possessive quantifiers are not supported");
      e = repeat(std::move(e), min, max);
    }
    return e;
  }

  // {m}, {m,}, {m,n}; false (nothing read) when the brace is a literal.
  bool braces(int& min, int& max) {
    std::size_t p = pos_ + 1;
    const auto number = [&](int& into) {
      const std::size_t begin = p;
      long long v = 0;
      while (p < text_.size() && text_[p] >= '0' && text_[p] <= '9') {
        v = v * 10 + (text_[p++] - '0');
        if (v > 100000) fail("a repetition count above 100000 is not supported");
      }
      into = static_cast<int>(v);
      return p > begin;
    };
    if (!number(min)) return false;
    if (p < text_.size() && text_[p] == '}') {
      max = min;
    } else if (p < text_.size() && text_[p] == ',') {
      ++p;
      max = -1;
      if (!number(max)) max = -1;
      if (p >= text_.size() || text_[p] != '}') return false;
    } else {
      return false;
    }
    if (max >= 0 && max < min) fail("bad repetition {{{},{}}} in the pattern", min, max);
    pos_ = p + 1;
    return true;
  }

  Expr atom() {
    const char c = text_[pos_];
    if (c == '(') {
      ++pos_;
      if (at('?')) {
        if (pos_ + 1 < text_.size() && text_[pos_ + 1] == ':') {
          pos_ += 2;
        } else {
          fail("look-arounds and other (?...) groups are not supported");
        }
      }
      Expr e = alternation();
      if (!at(')')) fail("unbalanced '(' in the pattern");
      ++pos_;
      return e;
    }
    if (c == ')') fail("unbalanced ')' in the pattern");
    if (c == '[') return parse_class(text_, pos_, json_string_);
    if (c == '.') {
      ++pos_;
      return utf8_char(any_but_newline(), true);
    }
    if (c == '^' || c == '$') fail("anchors are only supported at the start and end of the pattern");
    if (c == '*' || c == '+' || c == '?') fail("nothing to repeat at offset {} of the pattern", pos_);
    ClassSet set;
    if (c == '\\') {
      ++pos_;
      if (pos_ >= text_.size()) fail("the pattern ends with a backslash");
      if (class_escape(text_[pos_], set)) {
        ++pos_;
        return set.expr(json_string_);
      }
      add_code_point(set, char_escape(text_, pos_));
      return set.expr(json_string_);
    }
    add_code_point(set, next_code_point(text_, pos_));
    return set.expr(json_string_);
  }

  std::string_view text_;
  bool json_string_;
  std::size_t pos_ = 0;
};

}  // namespace

void append_utf8(std::uint32_t cp, std::string& out) {
  if (cp > 0x10FFFF) fail("code point {:#x} is beyond Unicode", cp);
  unicode::append_utf8(out, static_cast<char32_t>(cp));
}

Expr parse_class(std::string_view text, std::size_t& pos, bool json_string) {
  ++pos;  // '['
  ClassSet set;
  if (pos < text.size() && text[pos] == '^') {
    set.negated = true;
    ++pos;
  }
  bool first = true;
  while (true) {
    if (pos >= text.size()) fail("unterminated character class");
    if (text[pos] == ']' && !first) break;
    first = false;
    std::uint32_t lo = 0;
    if (text[pos] == '\\') {
      ++pos;
      if (pos >= text.size()) fail("unterminated character class");
      if (class_escape(text[pos], set)) {
        ++pos;
        continue;
      }
      lo = char_escape(text, pos);
    } else {
      lo = next_code_point(text, pos);
    }
    std::uint32_t hi = lo;
    if (pos + 1 < text.size() && text[pos] == '-' && text[pos + 1] != ']') {
      ++pos;
      if (text[pos] == '\\') {
        ++pos;
        if (pos >= text.size()) fail("unterminated character class");
        hi = char_escape(text, pos);
      } else {
        hi = next_code_point(text, pos);
      }
      if (hi < lo) fail("bad range in a character class");
    }
    if (hi < 0x80) {
      set.ascii.add(static_cast<std::uint8_t>(lo), static_cast<std::uint8_t>(hi));
    } else if (lo == hi) {
      set.others.push_back(lo);
    } else {
      fail("character ranges beyond ASCII are not supported");
    }
  }
  ++pos;  // ']'
  return set.expr(json_string);
}

void parse_literal_escape(std::string_view text, std::size_t& pos, std::string& out) {
  ++pos;  // '\\'
  if (pos >= text.size()) fail("a literal ends with a backslash");
  append_utf8(char_escape(text, pos), out);
}

Expr regex_expr(std::string_view pattern, RegexMatch match, bool json_string) {
  return RegexParser(pattern, json_string).parse(match);
}

}  // namespace nibble::grammar
