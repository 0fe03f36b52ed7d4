// Walks the syntax tree: statements write to the output, expressions evaluate to
// Values. Scopes follow jinja2: a for loop body gets a fresh scope each iteration
// (so `set` inside it does not leak; namespace() is how templates carry state out),
// `if` shares the enclosing scope, a macro call gets its own.
#include "chat/jinja.h"

#include "chat/jinja_builtins.h"
#include "chat/jinja_syntax.h"
#include "common/error.h"

namespace nibble::jinja {
namespace {

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const Json& variables, const std::map<std::string, Value>& functions, const RenderLimits& limits)
      : limits_(limits) {
    scopes_.emplace_back();
    install_builtins(scopes_.back());
    for (const auto& [name, fn] : functions) scopes_.back()[name] = fn;
    if (!variables.is_object()) fail("template variables must be a JSON object");
    for (const auto& [name, value] : variables.items()) scopes_.back()[name] = Value::of(value);
    scopes_.emplace_back();  // the template's own top-level sets
  }

  std::string render(const Body& body) {
    std::string out;
    if (run(body, out) != Flow::Normal) fail("break or continue outside a loop");
    return out;
  }

 private:
  using Scope = std::map<std::string, Value>;

  void install_builtins(Scope& scope) {
    scope["range"] = Value::function([this](CallArgs& args) { return range(args); });
    scope["namespace"] = Value::function([](CallArgs& args) {
      Value ns;
      ns.kind = Value::Kind::Namespace;
      ns.attributes = std::make_shared<std::map<std::string, Value>>();
      for (const Value& initial : args.positional) {
        if (!initial.is_dict()) continue;
        for (const auto& [key, value] : initial.data.items()) (*ns.attributes)[key] = Value::of(value);
      }
      for (const auto& [key, value] : args.keyword) (*ns.attributes)[key] = value;
      return ns;
    });
  }

  Value range(CallArgs& args) {
    if (args.positional.empty() || args.positional.size() > 3) fail("range() takes 1 to 3 integer arguments");
    std::vector<int64_t> bounds;
    for (const Value& v : args.positional) {
      if (!v.is_data() || !v.data.is_number_integer()) fail("range() arguments must be integers");
      bounds.push_back(v.data.get<int64_t>());
    }
    const int64_t start = bounds.size() > 1 ? bounds[0] : 0;
    const int64_t stop = bounds.size() > 1 ? bounds[1] : bounds[0];
    const int64_t step = bounds.size() > 2 ? bounds[2] : 1;
    if (step == 0) fail("range() step must not be zero");
    Json out = Json::array();
    for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
      count_iteration();
      out.push_back(i);
      if (__builtin_add_overflow(i, step, &i)) break;  // past the int64 range means past stop
    }
    return Value::of(std::move(out));
  }

  void count_iteration() {
    if (++iterations_ > limits_.max_loop_iterations) {
      fail("template ran more than {} loop iterations", limits_.max_loop_iterations);
    }
  }

  void emit(std::string& out, std::string_view text) {
    if (out.size() + text.size() > limits_.max_output_bytes) {
      fail("template output exceeds {} bytes", limits_.max_output_bytes);
    }
    out += text;
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      auto found = scope->find(name);
      if (found != scope->end()) return found->second;
    }
    return Value::undefined(name);
  }

  // -- statements ----------------------------------------------------------

  Flow run(const Body& body, std::string& out) {
    for (const Node& node : body) {
      const Flow flow = run(node, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow run(const Node& node, std::string& out) {
    switch (node.kind) {
      case Node::Kind::Text: emit(out, node.text); return Flow::Normal;
      case Node::Kind::Output: emit(out, to_str(eval(*node.expr))); return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [condition, body] : node.branches) {
          if (!condition || truthy(eval(*condition))) return run(body, out);
        }
        return Flow::Normal;
      case Node::Kind::For: return run_for(node, out);
      case Node::Kind::Set: assign(node); return Flow::Normal;
      case Node::Kind::SetBlock: {
        std::string captured;
        const Flow flow = run(node.body, captured);
        scopes_.back()[node.names[0]] = Value::of(captured);
        return flow;
      }
      case Node::Kind::Macro: scopes_.back()[node.names[0]] = make_macro(node); return Flow::Normal;
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  void assign(const Node& node) {
    Value value = eval(*node.expr);
    if (node.target->kind == Expr::Kind::Name) {
      scopes_.back()[node.target->name] = std::move(value);
      return;
    }
    const std::string& holder = node.target->args[0]->name;
    Value ns = lookup(holder);
    if (ns.kind != Value::Kind::Namespace) {
      fail("line {}: cannot set attribute '{}' on '{}': it is not a namespace()", node.line, node.target->name, holder);
    }
    (*ns.attributes)[node.target->name] = std::move(value);
  }

  void bind_targets(Scope& scope, const std::vector<std::string>& names, const Value& item, int line) {
    if (names.size() == 1) {
      scope[names[0]] = item;
      return;
    }
    const std::vector<Value> parts = iterate(item, line);
    if (parts.size() != names.size()) {
      fail("line {}: cannot unpack {} values into {} loop variables", line, parts.size(), names.size());
    }
    for (size_t i = 0; i < names.size(); ++i) scope[names[i]] = parts[i];
  }

  Flow run_for(const Node& node, std::string& out) {
    std::vector<Value> items = iterate(eval(*node.expr), node.line);
    if (node.filter) {
      std::vector<Value> kept;
      for (Value& item : items) {
        count_iteration();
        scopes_.emplace_back();
        bind_targets(scopes_.back(), node.names, item, node.line);
        const bool keep = truthy(eval(*node.filter));
        scopes_.pop_back();
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return run(node.else_body, out);
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      count_iteration();
      Json loop = {{"index", i + 1},          {"index0", i},         {"revindex", length - i},
                   {"revindex0", length - i - 1}, {"first", i == 0}, {"last", i == length - 1},
                   {"length", length}};
      if (i > 0) loop["previtem"] = to_json(items[static_cast<size_t>(i - 1)]);
      if (i + 1 < length) loop["nextitem"] = to_json(items[static_cast<size_t>(i + 1)]);
      scopes_.emplace_back();
      scopes_.back()["loop"] = Value::of(std::move(loop));
      bind_targets(scopes_.back(), node.names, items[static_cast<size_t>(i)], node.line);
      // An exception ends the whole render, so scopes need no unwinding on that path.
      const Flow flow = run(node.body, out);
      scopes_.pop_back();
      if (flow == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Node& node) {
    return Value::function([this, &node](CallArgs& args) {
      if (++call_depth_ > limits_.max_call_depth) fail("line {}: macro calls nested too deeply", node.line);
      if (args.positional.size() > node.params.size()) {
        fail("line {}: macro '{}' takes {} arguments, got {}", node.line, node.names[0], node.params.size(),
             args.positional.size());
      }
      Scope scope;
      for (size_t i = 0; i < node.params.size(); ++i) {
        const auto& [param, default_value] = node.params[i];
        if (i < args.positional.size()) {
          scope[param] = args.positional[i];
        } else {
          scope[param] = default_value ? eval(*default_value)
                                       : Value::undefined_because(fmt::format("parameter '{}' was not provided", param));
        }
      }
      for (auto& [key, value] : args.keyword) scope[key] = value;
      scopes_.push_back(std::move(scope));
      std::string captured;
      run(node.body, captured);
      scopes_.pop_back();
      --call_depth_;
      return Value::of(captured);
    });
  }

  // -- expressions ---------------------------------------------------------

  CallArgs eval_arguments(const Expr& e) {
    CallArgs args;
    for (size_t i = 1; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
    for (const auto& [key, value] : e.keyword) args.keyword.emplace_back(key, eval(*value));
    return args;
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return Value::of(e.literal);
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List: {
        Json items = Json::array();
        for (const auto& item : e.args) items.push_back(to_json(eval(*item)));
        return Value::of(std::move(items));
      }
      case Expr::Kind::Dict: {
        Json dict = Json::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value key = eval(*e.args[i]);
          dict[key.is_string() ? key.data.get<std::string>() : to_str(key)] = to_json(eval(*e.args[i + 1]));
        }
        return Value::of(std::move(dict));
      }
      case Expr::Kind::Attribute: return get_attribute(eval(*e.args[0]), e.name, e.line);
      case Expr::Kind::Subscript: return get_item(eval(*e.args[0]), eval(*e.args[1]), e.line);
      case Expr::Kind::Slice: {
        auto part = [&](size_t i) { return e.args[i] ? eval(*e.args[i]) : Value(); };
        return get_slice(eval(*e.args[0]), part(1), part(2), part(3), e.line);
      }
      case Expr::Kind::Call: {
        const Value callee = eval(*e.args[0]);
        if (callee.kind != Value::Kind::Callable) {
          if (callee.is_undefined()) undefined_error(callee, e.line);
          fail("line {}: '{}' is not callable", e.line, to_str(callee));
        }
        CallArgs args = eval_arguments(e);
        return (*callee.call)(args);
      }
      case Expr::Kind::Filter: {
        const Value input = eval(*e.args[0]);
        CallArgs args = eval_arguments(e);
        return apply_filter(e.name, input, args, e.line);
      }
      case Expr::Kind::Test: {
        const Value input = eval(*e.args[0]);
        std::vector<Value> args;
        for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        return Value::of(apply_test(e.name, input, args, e.line) != e.negated);
      }
      case Expr::Kind::Not: return Value::of(!truthy(eval(*e.args[0])));
      case Expr::Kind::Negate: {
        const Value operand = eval(*e.args[0]);
        if (operand.is_data() && operand.data.is_number_float()) return Value::of(-operand.data.get<double>());
        return binary_operation("-", Value::of(0), operand, e.line, 0);
      }
      case Expr::Kind::Binary:
        return binary_operation(e.name, eval(*e.args[0]), eval(*e.args[1]), e.line, limits_.max_output_bytes);
      case Expr::Kind::And: {
        Value left = eval(*e.args[0]);
        return truthy(left) ? eval(*e.args[1]) : left;
      }
      case Expr::Kind::Or: {
        Value left = eval(*e.args[0]);
        return truthy(left) ? left : eval(*e.args[1]);
      }
      case Expr::Kind::Conditional:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined_because(fmt::format(
            "the inline if-expression on line {} evaluated to false and no else section was defined.", e.line));
    }
    return Value();
  }

  const RenderLimits& limits_;
  std::vector<Scope> scopes_;
  size_t iterations_ = 0;
  int call_depth_ = 0;
};

}  // namespace

Template::Template(std::string_view source) : body_(std::make_shared<const Body>(parse_template(source))) {}

std::string Template::render(const Json& variables, const std::map<std::string, Value>& functions,
                             const RenderLimits& limits) const {
  return Renderer(variables, functions, limits).render(*body_);
}

}  // namespace nibble::jinja
