#pragma once
// The parsed form of a template: expressions and statements, each remembering its
// source line so errors can point at it. Built by parse_template (jinja_parse.cpp),
// walked by the renderer (jinja.cpp).
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja_value.h"

namespace nibble::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,      // literal
    Name,         // name
    List,         // args: items
    Dict,         // args: key, value, key, value...
    Attribute,    // args[0].name
    Subscript,    // args[0][args[1]]
    Slice,        // args[0][args[1]:args[2]:args[3]] (null parts allowed)
    Call,         // args[0](args[1..], keyword)
    Filter,       // args[0] | name(args[1..], keyword)
    Test,         // args[0] is [not] name(args[1..])
    Not,          // not args[0]
    Negate,       // -args[0]
    Binary,       // args[0] name args[1]; name is the operator ("+", "in", "not in", ...)
    And,          // args[0] and args[1]
    Or,           // args[0] or args[1]
    Conditional,  // args[0] if args[1] else args[2] (args[2] may be null)
  };
  Kind kind = Kind::Literal;
  int line = 0;
  std::string name;
  Json literal;
  bool negated = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // branches: (condition or null for else, body)
    For,       // for targets in expr [if filter]: body [else: else_body]
    Set,       // set target = expr (target: Name or Attribute)
    SetBlock,  // set names[0]: body
    Macro,     // macro names[0](params): body
    Break,
    Continue,
  };
  Kind kind = Kind::Text;
  int line = 0;
  std::string text;
  ExprPtr expr, target, filter;
  std::vector<std::string> names;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::pair<std::string, ExprPtr>> params;
  Body body, else_body;
};

// Limits that keep hostile templates from exhausting the stack.
inline constexpr int kMaxNesting = 128;

// Parses with HF's settings (trim_blocks, lstrip_blocks); throws Error("line N: ...").
Body parse_template(std::string_view source);

}  // namespace nibble::jinja
