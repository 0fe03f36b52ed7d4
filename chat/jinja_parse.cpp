// Template text -> syntax tree. Two stages: split the text into literal text and
// tags (applying jinja2's whitespace rules: `-` markers, trim_blocks, lstrip_blocks),
// then recursive descent over each tag's tokens with jinja2's operator precedence.
#include <cctype>
#include <set>

#include "chat/jinja_syntax.h"
#include "common/error.h"

namespace nibble::jinja {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

struct Token {
  enum class Type { Name, String, Integer, Float, Operator, End };
  Type type;
  std::string text;  // name, operator, or decoded string
  Json number;
  int line;
};

struct Segment {
  enum class Type { Text, Output, Statement };
  Type type;
  std::string text;
  std::vector<Token> tokens;
  int line;
};

// ---------------------------------------------------------------------------
// Stage 1: text and tags.

class Splitter {
 public:
  explicit Splitter(std::string_view raw) {
    source_.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {  // jinja2 normalizes newlines to \n
      if (raw[i] == '\r') {
        source_ += '\n';
        if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      } else {
        source_ += raw[i];
      }
    }
    if (!source_.empty() && source_.back() == '\n') source_.pop_back();  // keep_trailing_newline=False
  }

  std::vector<Segment> split() {
    std::vector<Segment> segments;
    bool line_starting = true;
    while (pos_ < source_.size()) {
      const size_t tag = find_tag(pos_);
      std::string text = source_.substr(pos_, tag - pos_);
      if (tag == source_.size()) {
        add_text(segments, std::move(text));
        break;
      }
      const char kind = source_[tag + 1];
      const char marker = tag + 2 < source_.size() ? source_[tag + 2] : '\0';
      if (marker == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (marker != '+' && kind != '{') {
        const size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting) && line_start < text.size() &&
            text.find_first_not_of(" \t\r\v\f", line_start) == std::string::npos) {
          text.resize(line_start);
        }
      }
      add_text(segments, std::move(text));
      advance_to(tag + 2 + ((marker == '-' || marker == '+') ? 1 : 0));
      const int tag_line = line_;
      if (kind == '#') {
        const size_t close = source_.find("#}", pos_);
        if (close == std::string::npos) fail("line {}: missing end of comment tag", tag_line);
        const char end_marker = close > pos_ ? source_[close - 1] : '\0';
        advance_to(close + 2);
        line_starting = finish_tag(end_marker, true);
        continue;
      }
      Segment segment{kind == '{' ? Segment::Type::Output : Segment::Type::Statement, {}, {}, tag_line};
      const char end_marker = read_tokens(kind == '{' ? "}}" : "%}", segment.tokens, tag_line);
      line_starting = finish_tag(end_marker, kind == '%');
      segments.push_back(std::move(segment));
    }
    return segments;
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < source_.size(); ++i) {
      if (source_[i] == '{' && (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#')) return i;
    }
    return source_.size();
  }

  void advance_to(size_t to) {
    for (; pos_ < to; ++pos_) line_ += source_[pos_] == '\n';
  }

  static void add_text(std::vector<Segment>& segments, std::string text) {
    if (!text.empty()) segments.push_back({Segment::Type::Text, std::move(text), {}, 0});
  }

  // After a tag's closer: `-` eats following whitespace, trim_blocks eats one newline
  // after a block or comment. Returns whether what was consumed ended a line (jinja2's
  // lstrip_blocks only strips indentation on a line the previous tag did not share).
  bool finish_tag(char end_marker, bool trims_newline) {
    const size_t before = pos_;
    if (end_marker == '-') {
      while (pos_ < source_.size() && is_space(source_[pos_])) advance_to(pos_ + 1);
    } else if (end_marker != '+' && trims_newline && pos_ < source_.size() && source_[pos_] == '\n') {
      advance_to(pos_ + 1);
    }
    return pos_ > before && source_[pos_ - 1] == '\n';
  }

  // Tokens up to the closer; returns the marker before it ('-', '+' or '\0').
  char read_tokens(std::string_view closer, std::vector<Token>& tokens, int tag_line) {
    int depth = 0;
    while (true) {
      while (pos_ < source_.size() && is_space(source_[pos_])) advance_to(pos_ + 1);
      if (pos_ >= source_.size()) fail("line {}: unterminated tag (missing '{}')", tag_line, closer);
      const std::string_view rest = std::string_view(source_).substr(pos_);
      if (depth == 0) {
        if (rest.substr(0, closer.size()) == closer) {
          advance_to(pos_ + closer.size());
          return '\0';
        }
        if ((rest[0] == '-' || rest[0] == '+') && rest.substr(1, closer.size()) == closer) {
          advance_to(pos_ + 1 + closer.size());
          return rest[0];
        }
      }
      const char c = rest[0];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t n = 1;
        while (n < rest.size() && (std::isalnum(static_cast<unsigned char>(rest[n])) || rest[n] == '_')) ++n;
        tokens.push_back({Token::Type::Name, std::string(rest.substr(0, n)), {}, line_});
        advance_to(pos_ + n);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        read_number(rest, tokens);
      } else if (c == '"' || c == '\'') {
        read_string(rest, tokens);
      } else {
        static const char* const kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~",
                                                 "<", ">", "=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|"};
        std::string op;
        for (const char* candidate : kOperators) {
          if (rest.substr(0, std::string_view(candidate).size()) == candidate) {
            op = candidate;
            break;
          }
        }
        if (op.empty()) fail("line {}: unexpected character '{}'", line_, c);
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        tokens.push_back({Token::Type::Operator, op, {}, line_});
        advance_to(pos_ + op.size());
      }
    }
  }

  void read_number(std::string_view rest, std::vector<Token>& tokens) {
    size_t n = 0;
    bool is_float = false;
    auto digits = [&] {
      while (n < rest.size() && (std::isdigit(static_cast<unsigned char>(rest[n])) || rest[n] == '_')) ++n;
    };
    digits();
    if (n + 1 < rest.size() && rest[n] == '.' && std::isdigit(static_cast<unsigned char>(rest[n + 1]))) {
      is_float = true;
      ++n;
      digits();
    }
    if (n < rest.size() && (rest[n] == 'e' || rest[n] == 'E')) {
      size_t m = n + 1;
      if (m < rest.size() && (rest[m] == '+' || rest[m] == '-')) ++m;
      if (m < rest.size() && std::isdigit(static_cast<unsigned char>(rest[m]))) {
        is_float = true;
        n = m;
        digits();
      }
    }
    std::string text;
    for (char ch : rest.substr(0, n)) {
      if (ch != '_') text += ch;
    }
    Token token{is_float ? Token::Type::Float : Token::Type::Integer, text, {}, line_};
    try {
      token.number = is_float ? Json(std::stod(text)) : Json(std::stoll(text));
    } catch (const std::exception&) {
      fail("line {}: number out of range: {}", line_, text);
    }
    tokens.push_back(std::move(token));
    advance_to(pos_ + n);
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  // A quoted literal with Python's escapes.
  void read_string(std::string_view rest, std::vector<Token>& tokens) {
    const char quote = rest[0];
    const int start_line = line_;
    std::string value;
    size_t n = 1;
    while (true) {
      if (n >= rest.size()) fail("line {}: unterminated string", start_line);
      const char ch = rest[n];
      if (ch == quote) break;
      if (ch != '\\' || n + 1 >= rest.size()) {
        value += ch;
        ++n;
        continue;
      }
      const char escape = rest[n + 1];
      n += 2;
      switch (escape) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case '0': value += '\0'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t width = escape == 'x' ? 2 : escape == 'u' ? 4 : 8;
          if (n + width > rest.size()) fail("line {}: truncated \\{} escape", line_, escape);
          uint32_t cp = 0;
          for (size_t k = 0; k < width; ++k) {
            const char h = rest[n + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) fail("line {}: bad \\{} escape", line_, escape);
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
          }
          if (cp > 0x10ffff) fail("line {}: bad \\{} escape", line_, escape);
          append_utf8(value, cp);
          n += width;
          break;
        }
        default:  // unknown escapes stay as written, as in Python
          value += '\\';
          value += escape;
      }
    }
    tokens.push_back({Token::Type::String, std::move(value), {}, start_line});
    advance_to(pos_ + n + 1);
  }

  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
};

// ---------------------------------------------------------------------------
// Stage 2: expressions within one tag.

class ExpressionParser {
 public:
  ExpressionParser(const std::vector<Token>& tokens, int line) : tokens_(tokens), line_(line) {}

  bool at_end() const { return pos_ >= tokens_.size(); }
  const Token& peek(size_t ahead = 0) const {
    static const Token end{Token::Type::End, "", {}, 0};
    return pos_ + ahead < tokens_.size() ? tokens_[pos_ + ahead] : end;
  }
  bool next_is(std::string_view text, size_t ahead = 0) const {
    const Token& t = peek(ahead);
    return (t.type == Token::Type::Operator || t.type == Token::Type::Name) && t.text == text;
  }
  bool accept(std::string_view text) {
    if (!next_is(text)) return false;
    ++pos_;
    return true;
  }
  void expect(std::string_view text) {
    if (!accept(text)) fail("line {}: expected '{}', found {}", line(), text, describe(peek()));
  }
  std::string expect_name() {
    if (peek().type != Token::Type::Name) fail("line {}: expected a name, found {}", line(), describe(peek()));
    return tokens_[pos_++].text;
  }
  void expect_end() {
    if (!at_end()) fail("line {}: unexpected {}", line(), describe(peek()));
  }
  int line() const { return at_end() ? line_ : peek().line; }

  static std::string describe(const Token& t) {
    if (t.type == Token::Type::End) return "end of tag";
    if (t.type == Token::Type::String) return "string";
    return "'" + t.text + "'";
  }

  ExprPtr expression() {
    Depth guard(*this);
    ExprPtr value = or_expr();
    if (next_is("if")) {
      ++pos_;
      auto node = make(Expr::Kind::Conditional);
      node->args.push_back(std::move(value));
      node->args.push_back(or_expr());
      node->args.push_back(accept("else") ? expression() : nullptr);
      return node;
    }
    return value;
  }

  // Used by `for` targets: the iterable must not swallow `if` (a loop filter).
  ExprPtr expression_without_conditional() { return or_expr(); }

  // Where jinja2 accepts a bare tuple (`{{ a, b }}`, `{% if a, b %}`, `set x = a, b`,
  // `for x in a, b`); a tuple is a list here.
  ExprPtr tuple(bool with_conditional) {
    ExprPtr first = with_conditional ? expression() : or_expr();
    if (!next_is(",")) return first;
    std::vector<ExprPtr> items;
    items.push_back(std::move(first));
    while (accept(",") && !at_end() && !next_is("if")) items.push_back(with_conditional ? expression() : or_expr());
    return list_literal(std::move(items));
  }

 private:
  struct Depth {
    explicit Depth(ExpressionParser& p) : parser(p) {
      if (++parser.depth_ > kMaxNesting) fail("line {}: expression nested too deeply", parser.line());
    }
    ~Depth() { --parser.depth_; }
    ExpressionParser& parser;
  };

  ExprPtr make(Expr::Kind kind) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line();
    return e;
  }
  ExprPtr binary(Expr::Kind kind, std::string op, ExprPtr left, ExprPtr right) {
    auto e = make(kind);
    e->name = std::move(op);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr or_expr() {
    ExprPtr left = and_expr();
    while (accept("or")) left = binary(Expr::Kind::Or, "or", std::move(left), and_expr());
    return left;
  }
  ExprPtr and_expr() {
    ExprPtr left = not_expr();
    while (accept("and")) left = binary(Expr::Kind::And, "and", std::move(left), not_expr());
    return left;
  }
  ExprPtr not_expr() {
    if (next_is("not")) {
      Depth guard(*this);
      ++pos_;
      auto e = make(Expr::Kind::Not);
      e->args.push_back(not_expr());
      return e;
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr left = math1();
    while (true) {
      std::string op;
      for (const char* candidate : {"==", "!=", "<=", ">=", "<", ">"}) {
        if (peek().type == Token::Type::Operator && peek().text == candidate) op = candidate;
      }
      if (!op.empty()) {
        ++pos_;
      } else if (next_is("in")) {
        ++pos_;
        op = "in";
      } else if (next_is("not") && next_is("in", 1)) {
        pos_ += 2;
        op = "not in";
      } else {
        return left;
      }
      left = binary(Expr::Kind::Binary, op, std::move(left), math1());
    }
  }
  ExprPtr math1() {
    ExprPtr left = concat();
    while (peek().type == Token::Type::Operator && (peek().text == "+" || peek().text == "-")) {
      std::string op = tokens_[pos_++].text;
      left = binary(Expr::Kind::Binary, op, std::move(left), concat());
    }
    return left;
  }
  ExprPtr concat() {
    ExprPtr left = math2();
    while (peek().type == Token::Type::Operator && peek().text == "~") {
      ++pos_;
      left = binary(Expr::Kind::Binary, "~", std::move(left), math2());
    }
    return left;
  }
  ExprPtr math2() {
    ExprPtr left = power();
    while (peek().type == Token::Type::Operator &&
           (peek().text == "*" || peek().text == "/" || peek().text == "//" || peek().text == "%")) {
      std::string op = tokens_[pos_++].text;
      left = binary(Expr::Kind::Binary, op, std::move(left), power());
    }
    return left;
  }
  ExprPtr power() {
    ExprPtr left = unary(true);
    while (peek().type == Token::Type::Operator && peek().text == "**") {
      ++pos_;
      left = binary(Expr::Kind::Binary, "**", std::move(left), unary(true));
    }
    return left;
  }
  ExprPtr unary(bool with_filter) {
    Depth guard(*this);
    ExprPtr node;
    if (peek().type == Token::Type::Operator && (peek().text == "-" || peek().text == "+")) {
      const bool negate = tokens_[pos_++].text == "-";
      ExprPtr operand = unary(false);
      if (negate) {
        node = make(Expr::Kind::Negate);
        node->args.push_back(std::move(operand));
      } else {
        node = std::move(operand);
      }
    } else {
      node = primary();
    }
    node = postfix(std::move(node));
    if (!with_filter) return node;
    return filters_and_tests(std::move(node));
  }

  ExprPtr primary() {
    const Token& t = peek();
    if (t.type == Token::Type::End) fail("line {}: expected an expression, found end of tag", line_);
    if (t.type == Token::Type::String) {
      auto e = make(Expr::Kind::Literal);
      std::string text;
      while (peek().type == Token::Type::String) text += tokens_[pos_++].text;  // "a" "b" concatenates
      e->literal = text;
      return e;
    }
    if (t.type == Token::Type::Integer || t.type == Token::Type::Float) {
      auto e = make(Expr::Kind::Literal);
      e->literal = t.number;
      ++pos_;
      return e;
    }
    if (t.type == Token::Type::Name) {
      auto e = make(Expr::Kind::Literal);
      if (t.text == "true" || t.text == "True") {
        e->literal = true;
      } else if (t.text == "false" || t.text == "False") {
        e->literal = false;
      } else if (t.text == "none" || t.text == "None") {
        e->literal = nullptr;
      } else {
        e->kind = Expr::Kind::Name;
        e->name = t.text;
      }
      ++pos_;
      return e;
    }
    if (accept("(")) {
      if (accept(")")) return list_literal({});  // () is an empty tuple
      ExprPtr first = expression();
      if (!next_is(",")) {
        expect(")");
        return first;
      }
      std::vector<ExprPtr> items;
      items.push_back(std::move(first));
      while (accept(",") && !next_is(")")) items.push_back(expression());
      expect(")");
      return list_literal(std::move(items));  // tuples behave as lists here
    }
    if (accept("[")) {
      std::vector<ExprPtr> items;
      while (!next_is("]")) {
        items.push_back(expression());
        if (!accept(",")) break;
      }
      expect("]");
      return list_literal(std::move(items));
    }
    if (accept("{")) {
      auto e = make(Expr::Kind::Dict);
      while (!next_is("}")) {
        e->args.push_back(expression());
        expect(":");
        e->args.push_back(expression());
        if (!accept(",")) break;
      }
      expect("}");
      return e;
    }
    fail("line {}: unexpected {}", line(), describe(t));
  }

  ExprPtr list_literal(std::vector<ExprPtr> items) {
    auto e = make(Expr::Kind::List);
    e->args = std::move(items);
    return e;
  }

  ExprPtr postfix(ExprPtr node) {
    while (true) {
      if (accept(".")) {
        auto e = make(Expr::Kind::Attribute);
        if (peek().type == Token::Type::Integer) {  // foo.0 is foo[0]
          e->kind = Expr::Kind::Subscript;
          e->args.push_back(std::move(node));
          auto index = make(Expr::Kind::Literal);
          index->literal = tokens_[pos_++].number;
          e->args.push_back(std::move(index));
        } else {
          e->name = expect_name();
          e->args.push_back(std::move(node));
        }
        node = std::move(e);
      } else if (accept("[")) {
        node = subscript(std::move(node));
      } else if (next_is("(")) {
        node = call(std::move(node), Expr::Kind::Call, "");
      } else {
        return node;
      }
    }
  }

  ExprPtr subscript(ExprPtr target) {
    std::vector<ExprPtr> parts;
    bool is_slice = false;
    parts.push_back(next_is(":") ? nullptr : expression());
    while (parts.size() < 3 && accept(":")) {
      is_slice = true;
      parts.push_back(next_is(":") || next_is("]") ? nullptr : expression());
    }
    expect("]");
    auto e = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Subscript);
    e->args.push_back(std::move(target));
    for (auto& part : parts) e->args.push_back(std::move(part));
    if (is_slice) e->args.resize(4);
    return e;
  }

  // `(args)` after a callee, filter or test name.
  ExprPtr call(ExprPtr target, Expr::Kind kind, std::string name) {
    auto e = make(kind);
    e->name = std::move(name);
    e->args.push_back(std::move(target));
    if (!accept("(")) return e;
    while (!next_is(")")) {
      if (peek().type == Token::Type::Name && next_is("=", 1)) {
        std::string key = tokens_[pos_].text;
        pos_ += 2;
        e->keyword.emplace_back(std::move(key), expression());
      } else {
        if (!e->keyword.empty()) fail("line {}: positional argument after keyword argument", line());
        e->args.push_back(expression());
      }
      if (!accept(",")) break;
    }
    expect(")");
    return e;
  }

  ExprPtr filters_and_tests(ExprPtr node) {
    while (true) {
      if (accept("|")) {
        const std::string name = dotted_name();
        node = call(std::move(node), Expr::Kind::Filter, name);
      } else if (accept("is")) {
        const bool negated = accept("not");
        const std::string name = dotted_name();
        if (next_is("(")) {
          node = call(std::move(node), Expr::Kind::Test, name);
        } else {
          auto e = make(Expr::Kind::Test);
          e->name = name;
          e->args.push_back(std::move(node));
          const Token& t = peek();
          const bool takes_argument =
              (t.type == Token::Type::String || t.type == Token::Type::Integer || t.type == Token::Type::Float ||
               (t.type == Token::Type::Name && t.text != "else" && t.text != "or" && t.text != "and") ||
               next_is("[") || next_is("{"));
          if (takes_argument) e->args.push_back(postfix(primary()));
          node = std::move(e);
        }
        node->negated = negated;
      } else if (next_is("(")) {
        node = call(std::move(node), Expr::Kind::Call, "");
      } else {
        return node;
      }
    }
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (accept(".")) name += "." + expect_name();
    return name;
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int line_;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------
// Stage 2: statements.

class StatementParser {
 public:
  explicit StatementParser(std::vector<Segment> segments) : segments_(std::move(segments)) {}

  Body parse() {
    std::string ended_by;
    Body body = parse_body({}, ended_by, 0);
    return body;
  }

 private:
  // Parses nodes until a statement whose keyword is in `enders`; that keyword is
  // left in `ended_by` and its tag is the current segment.
  Body parse_body(const std::set<std::string>& enders, std::string& ended_by, int depth) {
    if (depth > kMaxNesting) fail("line {}: blocks nested too deeply", current_line());
    Body body;
    while (index_ < segments_.size()) {
      Segment& segment = segments_[index_];
      if (segment.type == Segment::Type::Text) {
        Node node = make(Node::Kind::Text, segment.line);
        node.text = std::move(segment.text);
        body.push_back(std::move(node));
        ++index_;
        continue;
      }
      ExpressionParser tokens(segment.tokens, segment.line);
      if (segment.type == Segment::Type::Output) {
        Node node = make(Node::Kind::Output, segment.line);
        node.expr = tokens.tuple(true);
        tokens.expect_end();
        body.push_back(std::move(node));
        ++index_;
        continue;
      }
      const std::string keyword = tokens.expect_name();
      if (enders.count(keyword)) {
        ended_by = keyword;
        return body;
      }
      ++index_;
      body.push_back(statement(keyword, tokens, segment.line, depth));
    }
    if (!enders.empty()) {
      fail("line {}: unexpected end of template, expected '{}'", last_line(), *enders.rbegin());
    }
    return body;
  }

  static Node make(Node::Kind kind, int line) {
    Node node;
    node.kind = kind;
    node.line = line;
    return node;
  }

  Node statement(const std::string& keyword, ExpressionParser& tokens, int line, int depth) {
    if (keyword == "if") return if_statement(tokens, line, depth);
    if (keyword == "for") return for_statement(tokens, line, depth);
    if (keyword == "set") return set_statement(tokens, line, depth);
    if (keyword == "macro") return macro_statement(tokens, line, depth);
    if (keyword == "break" || keyword == "continue") {
      tokens.expect_end();
      return make(keyword == "break" ? Node::Kind::Break : Node::Kind::Continue, line);
    }
    fail("line {}: unknown or unexpected tag '{}'", line, keyword);
  }

  // Re-parses the tag that ended a body (elif/else/end...) for its remaining tokens.
  ExpressionParser ending_tag() {
    const Segment& segment = segments_[index_++];
    ExpressionParser tokens(segment.tokens, segment.line);
    tokens.expect_name();
    return tokens;
  }

  Node if_statement(ExpressionParser& tokens, int line, int depth) {
    Node node = make(Node::Kind::If, line);
    ExprPtr condition = tokens.tuple(true);
    tokens.expect_end();
    while (true) {
      std::string ended_by;
      Body body = parse_body({"elif", "else", "endif"}, ended_by, depth + 1);
      node.branches.emplace_back(std::move(condition), std::move(body));
      ExpressionParser end = ending_tag();
      if (ended_by == "elif") {
        condition = end.tuple(true);
        end.expect_end();
        continue;
      }
      end.expect_end();
      if (ended_by == "else") {
        Body else_body = parse_body({"endif"}, ended_by, depth + 1);
        ending_tag().expect_end();
        node.branches.emplace_back(nullptr, std::move(else_body));
      }
      return node;
    }
  }

  Node for_statement(ExpressionParser& tokens, int line, int depth) {
    Node node = make(Node::Kind::For, line);
    do {
      node.names.push_back(tokens.expect_name());
    } while (tokens.accept(","));
    tokens.expect("in");
    node.expr = tokens.tuple(false);
    if (tokens.accept("if")) node.filter = tokens.expression_without_conditional();
    if (tokens.accept("recursive")) fail("line {}: recursive loops are not supported", line);
    tokens.expect_end();
    std::string ended_by;
    node.body = parse_body({"else", "endfor"}, ended_by, depth + 1);
    ending_tag().expect_end();
    if (ended_by == "else") {
      node.else_body = parse_body({"endfor"}, ended_by, depth + 1);
      ending_tag().expect_end();
    }
    return node;
  }

  Node set_statement(ExpressionParser& tokens, int line, int depth) {
    const std::string name = tokens.expect_name();
    if (tokens.at_end()) {  // {% set x %}...{% endset %}
      Node node = make(Node::Kind::SetBlock, line);
      node.names.push_back(name);
      std::string ended_by;
      node.body = parse_body({"endset"}, ended_by, depth + 1);
      ending_tag().expect_end();
      return node;
    }
    Node node = make(Node::Kind::Set, line);
    node.target = std::make_unique<Expr>();
    node.target->kind = Expr::Kind::Name;
    node.target->name = name;
    node.target->line = line;
    if (tokens.accept(".")) {
      auto attribute = std::make_unique<Expr>();
      attribute->kind = Expr::Kind::Attribute;
      attribute->line = line;
      attribute->name = tokens.expect_name();
      attribute->args.push_back(std::move(node.target));
      node.target = std::move(attribute);
    }
    tokens.expect("=");
    node.expr = tokens.tuple(true);
    tokens.expect_end();
    return node;
  }

  Node macro_statement(ExpressionParser& tokens, int line, int depth) {
    Node node = make(Node::Kind::Macro, line);
    node.names.push_back(tokens.expect_name());
    tokens.expect("(");
    while (!tokens.next_is(")")) {
      std::string param = tokens.expect_name();
      ExprPtr default_value = tokens.accept("=") ? tokens.expression() : nullptr;
      node.params.emplace_back(std::move(param), std::move(default_value));
      if (!tokens.accept(",")) break;
    }
    tokens.expect(")");
    tokens.expect_end();
    std::string ended_by;
    node.body = parse_body({"endmacro"}, ended_by, depth + 1);
    ending_tag().expect_end();
    return node;
  }

  int current_line() const { return index_ < segments_.size() ? segments_[index_].line : last_line(); }
  int last_line() const {
    for (size_t i = segments_.size(); i-- > 0;) {
      if (segments_[i].type != Segment::Type::Text) return segments_[i].line;
    }
    return 1;
  }

  std::vector<Segment> segments_;
  size_t index_ = 0;
};

}  // namespace

Body parse_template(std::string_view source) {
  return StatementParser(Splitter(source).split()).parse();
}

}  // namespace nibble::jinja
