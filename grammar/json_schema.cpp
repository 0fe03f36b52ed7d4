#include "grammar/json_schema.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "grammar/regex.h"

namespace nibble::grammar {
namespace {

using json = nlohmann::ordered_json;

constexpr int kMaxDepth = 64;  // schema nesting, so a hostile schema cannot exhaust the stack

const std::set<std::string>& annotations() {
  static const std::set<std::string> names = {"title",    "description", "default",  "examples",  "$schema",
                                              "$id",      "$comment",    "deprecated", "readOnly", "writeOnly",
                                              "discriminator", "$defs",  "definitions"};
  return names;
}

const std::set<std::string>& supported() {
  static const std::set<std::string> names = {"type",      "properties", "required",  "additionalProperties",
                                              "enum",      "const",      "items",     "minItems",
                                              "maxItems",  "anyOf",      "oneOf",     "allOf",
                                              "$ref",      "minLength",  "maxLength", "pattern",
                                              "format"};
  return names;
}

std::string pointer_escape(const std::string& key) {
  std::string out;
  for (const char c : key) {
    if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

std::string where(const std::string& path) { return path.empty() ? "the schema's root" : path; }

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const json& root) : root_(root) {}

  Grammar compile(const JsonRepeat& wrap = {}) {
    const RuleId root = b_.declare("root");
    const RuleId value = b_.declare("value_of_schema");
    b_.define(value, seq({literal(wrap.prefix), schema(root_, "", 0), literal(wrap.suffix)}));
    if (wrap.min < 1 || wrap.max < wrap.min) fail("bad repetition {}..{} of a JSON value", wrap.min, wrap.max);
    b_.define(root, seq({ref(value), repeat(seq({literal(wrap.separator), ref(value)}), wrap.min - 1, wrap.max - 1)}));
    return b_.build(root);
  }

  Grammar any_object() {
    const RuleId root = b_.declare("root");
    b_.define(root, ref(object_any()));
    return b_.build(root);
  }

 private:
  // Shared pieces, made on first use.
  RuleId once(std::optional<RuleId>& slot, const char* name, auto&& make) {
    if (!slot) {
      slot = b_.declare(name);
      b_.define(*slot, make());
    }
    return *slot;
  }
  Expr ws() {
    return ref(once(ws_, "ws", [] {
      return optional(alt({literal(" "), seq({literal("\n"), repeat(bytes(ByteSet::of(' ')), 0, 24)}),
                           seq({literal("\n"), repeat(bytes(ByteSet::of('\t')), 0, 6)})}));
    }));
  }
  Expr separator() { return seq({ws(), literal(","), ws()}); }
  Expr json_char() {
    return ref(once(char_, "char", [] { return json_string_char(); }));
  }
  RuleId string_any() {
    return once(string_, "string", [&] { return seq({literal("\""), star(json_char()), literal("\"")}); });
  }
  RuleId integer() {
    return once(integer_, "integer", [] {
      return seq({optional(literal("-")),
                  alt({literal("0"), seq({bytes(ByteSet::range('1', '9')), repeat(bytes(ByteSet::range('0', '9')), 0, 15)})})});
    });
  }
  RuleId number() {
    return once(number_, "number", [&] {
      const Expr digit = bytes(ByteSet::range('0', '9'));
      ByteSet e = ByteSet::of('e');
      e.add('E', 'E');
      ByteSet sign = ByteSet::of('-');
      sign.add('+', '+');
      return seq({ref(integer()), optional(seq({literal("."), repeat(digit, 1, 20)})),
                  optional(seq({bytes(e), optional(bytes(sign)), repeat(digit, 1, 3)}))});
    });
  }
  RuleId value_any() {
    if (!value_) {
      value_ = b_.declare("value");
      b_.define(*value_, alt({ref(object_any()), ref(array_any()), ref(string_any()), ref(number()), literal("true"),
                              literal("false"), literal("null")}));
    }
    return *value_;
  }
  RuleId object_any() {
    if (!object_) {
      object_ = b_.declare("object");
      const Expr member = seq({ref(string_any()), ws(), literal(":"), ws(), ref(value_any())});
      b_.define(*object_, seq({literal("{"), ws(), optional(seq({member, star(seq({separator(), member})), ws()})),
                               literal("}")}));
    }
    return *object_;
  }
  RuleId array_any() {
    if (!array_) {
      array_ = b_.declare("array");
      b_.define(*array_, seq({literal("["), ws(),
                              optional(seq({ref(value_any()), star(seq({separator(), ref(value_any())})), ws()})),
                              literal("]")}));
    }
    return *array_;
  }

  static Expr nothing() { return alt({}); }

  // The rule for a "$ref" target, compiled once (references may recurse).
  Expr reference(const std::string& target, const std::string& path) {
    if (const auto found = refs_.find(target); found != refs_.end()) return ref(found->second);
    if (target.empty() || target[0] != '#') fail("only references into the schema itself are supported ($ref '{}' at {})", target, where(path));
    const json* node = &root_;
    std::string pointer = target.substr(1);
    std::size_t at = 0;
    while (at < pointer.size()) {
      if (pointer[at] != '/') fail("$ref '{}' at {} is not a JSON pointer", target, where(path));
      const std::size_t next = pointer.find('/', at + 1);
      const std::string escaped = pointer.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
      std::string key;  // ~1 is '/', ~0 is '~'
      for (std::size_t i = 0; i < escaped.size(); ++i) {
        if (escaped[i] == '~' && i + 1 < escaped.size() && (escaped[i + 1] == '0' || escaped[i + 1] == '1')) {
          key += escaped[++i] == '1' ? '/' : '~';
        } else {
          key += escaped[i];
        }
      }
      if (node->is_object() && node->contains(key)) {
        node = &(*node)[key];
      } else if (node->is_array() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos &&
                 std::stoul(key) < node->size()) {
        node = &(*node)[std::stoul(key)];
      } else {
        fail("$ref '{}' at {} points at nothing", target, where(path));
      }
      at = next == std::string::npos ? pointer.size() : next;
    }
    const RuleId rule = b_.declare("ref" + target);
    refs_.emplace(target, rule);
    b_.define(rule, schema(*node, target.substr(1), 0));
    return ref(rule);
  }

  static bool value_has_type(const json& v, const std::string& type) {
    if (type == "string") return v.is_string();
    if (type == "integer") return v.is_number_integer() || v.is_number_unsigned();
    if (type == "number") return v.is_number();
    if (type == "boolean") return v.is_boolean();
    if (type == "null") return v.is_null();
    if (type == "object") return v.is_object();
    if (type == "array") return v.is_array();
    return false;
  }

  static std::vector<std::string> types(const json& s, const std::string& path) {
    const auto it = s.find("type");
    if (it == s.end()) return {};
    std::vector<std::string> out;
    const auto add = [&](const json& t) {
      if (!t.is_string()) fail("'type' at {} must be a string or an array of strings", where(path));
      const auto name = t.get<std::string>();
      static const std::set<std::string> known = {"string", "integer", "number", "boolean", "null", "object", "array"};
      if (!known.contains(name)) fail("unknown type '{}' at {}", name, where(path));
      out.push_back(name);
    };
    if (it->is_array()) {
      for (const auto& t : *it) add(t);
    } else {
      add(*it);
    }
    return out;
  }

  static std::int64_t count(const json& s, const char* key, const std::string& path) {
    const auto& v = s[key];
    if (!v.is_number_integer() && !v.is_number_unsigned()) fail("'{}' at {} must be a non-negative integer", key, where(path));
    const auto n = v.get<std::int64_t>();
    if (n < 0) fail("'{}' at {} must be a non-negative integer", key, where(path));
    return n;
  }

  Expr schema(const json& s, const std::string& path, int depth) {
    if (depth > kMaxDepth) fail("the schema nests deeper than {} levels (at {})", kMaxDepth, where(path));
    if (s.is_boolean()) return s.get<bool>() ? ref(value_any()) : nothing();
    if (!s.is_object()) fail("the schema at {} must be an object or a boolean", where(path));
    for (const auto& [key, value] : s.items()) {
      if (!annotations().contains(key) && !supported().contains(key)) {
        fail("unsupported JSON Schema keyword '{}' at {}", key, where(path));
      }
    }
    std::set<std::string> constraints;
    for (const auto& [key, value] : s.items()) {
      if (supported().contains(key)) constraints.insert(key);
    }
    const auto alone = [&](const char* key) {
      for (const auto& other : constraints) {
        if (other != key && !(other == "type" && (std::string(key) == "enum" || std::string(key) == "const"))) {
          fail("'{}' combined with '{}' at {} is not supported", key, other, where(path));
        }
      }
    };
    if (s.contains("$ref")) {
      alone("$ref");
      if (!s["$ref"].is_string()) fail("'$ref' at {} must be a string", where(path));
      return reference(s["$ref"].get<std::string>(), path);
    }
    const auto wanted = types(s, path);
    const auto typed = [&](const json& v) {
      if (wanted.empty()) return true;
      for (const auto& t : wanted) {
        if (value_has_type(v, t)) return true;
      }
      return false;
    };
    if (s.contains("const")) {
      alone("const");
      return typed(s["const"]) ? literal(s["const"].dump()) : nothing();
    }
    if (s.contains("enum")) {
      alone("enum");
      if (!s["enum"].is_array()) fail("'enum' at {} must be an array", where(path));
      std::vector<Expr> options;
      for (const auto& v : s["enum"]) {
        if (typed(v)) options.push_back(literal(v.dump()));
      }
      return alt(std::move(options));
    }
    for (const char* combinator : {"anyOf", "oneOf", "allOf"}) {
      if (!s.contains(combinator)) continue;
      alone(combinator);
      const auto& branches = s[combinator];
      if (!branches.is_array() || branches.empty()) fail("'{}' at {} must be a non-empty array", combinator, where(path));
      if (std::string(combinator) == "allOf") {
        if (branches.size() != 1) fail("'allOf' with more than one schema at {} is not supported", where(path));
        return schema(branches[0], path + "/allOf/0", depth + 1);
      }
      std::vector<Expr> options;
      for (std::size_t i = 0; i < branches.size(); ++i) {
        options.push_back(schema(branches[i], fmt::format("{}/{}/{}", path, combinator, i), depth + 1));
      }
      return alt(std::move(options));
    }
    std::vector<std::string> kinds = wanted;
    if (kinds.empty()) {
      // No type: the keywords say which kind is meant; none, any value.
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) kinds = {"object"};
      else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) kinds = {"array"};
      else if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern") || s.contains("format")) kinds = {"string"};
      else return ref(value_any());
    }
    std::vector<Expr> options;
    for (const auto& kind : kinds) options.push_back(typed_schema(s, kind, path, depth));
    return alt(std::move(options));
  }

  Expr typed_schema(const json& s, const std::string& kind, const std::string& path, int depth) {
    if (kind == "null") return literal("null");
    if (kind == "boolean") return alt({literal("true"), literal("false")});
    if (kind == "integer") return ref(integer());
    if (kind == "number") return ref(number());
    if (kind == "string") return string_schema(s, path);
    if (kind == "array") return array_schema(s, path, depth);
    return object_schema(s, path, depth);
  }

  Expr string_schema(const json& s, const std::string& path) {
    const bool has_length = s.contains("minLength") || s.contains("maxLength");
    if (s.contains("pattern")) {
      if (has_length || s.contains("format")) fail("'pattern' combined with a length or format at {} is not supported", where(path));
      if (!s["pattern"].is_string()) fail("'pattern' at {} must be a string", where(path));
      try {
        return seq({literal("\""), regex_expr(s["pattern"].get<std::string>(), RegexMatch::Search, true), literal("\"")});
      } catch (const Error& e) {
        fail("'pattern' at {}: {}", where(path), e.what());
      }
    }
    if (s.contains("format")) {
      if (has_length) fail("'format' combined with a length at {} is not supported", where(path));
      if (!s["format"].is_string()) fail("'format' at {} must be a string", where(path));
      const auto format = s["format"].get<std::string>();
      static const std::map<std::string, std::string> formats = {
          {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
          {"time", R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
          {"date-time",
           R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
          {"uuid", R"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"},
      };
      const auto found = formats.find(format);
      if (found == formats.end()) fail("unsupported string format '{}' at {}", format, where(path));
      return seq({literal("\""), regex_expr(found->second, RegexMatch::Full, true), literal("\"")});
    }
    if (!has_length) return ref(string_any());
    const auto min = s.contains("minLength") ? count(s, "minLength", path) : 0;
    const auto max = s.contains("maxLength") ? count(s, "maxLength", path) : -1;
    if (min > 10000 || max > 10000) fail("string lengths above 10000 at {} are not supported", where(path));
    if (max >= 0 && max < min) return nothing();
    return seq({literal("\""), repeat(json_char(), static_cast<int>(min), static_cast<int>(max)), literal("\"")});
  }

  Expr array_schema(const json& s, const std::string& path, int depth) {
    const Expr item = s.contains("items") ? schema(s["items"], path + "/items", depth + 1) : ref(value_any());
    const auto min = s.contains("minItems") ? count(s, "minItems", path) : 0;
    const auto max = s.contains("maxItems") ? count(s, "maxItems", path) : -1;
    if (min > 10000 || max > 10000) fail("array lengths above 10000 at {} are not supported", where(path));
    if (max >= 0 && max < min) return nothing();
    // The item once, as a rule, so repetitions refer to it.
    const RuleId item_rule = b_.add(fmt::format("items{}", b_.size()), item);
    const Expr one = ref(item_rule);
    const Expr more = seq({separator(), one});
    Expr body;
    if (max == 0) return seq({literal("["), ws(), literal("]")});
    const int rest_max = max < 0 ? -1 : static_cast<int>(max - 1);
    const Expr items = seq({one, repeat(more, static_cast<int>(std::max<std::int64_t>(min - 1, 0)), rest_max), ws()});
    return seq({literal("["), ws(), min == 0 ? optional(items) : items, literal("]")});
  }

  Expr object_schema(const json& s, const std::string& path, int depth) {
    std::vector<std::pair<std::string, Expr>> members;  // key literal + ':' + value, in schema order
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) fail("'required' at {} must be an array of strings", where(path));
      for (const auto& r : s["required"]) {
        if (!r.is_string()) fail("'required' at {} must be an array of strings", where(path));
        required.insert(r.get<std::string>());
      }
    }
    std::vector<bool> is_required;
    if (s.contains("properties")) {
      if (!s["properties"].is_object()) fail("'properties' at {} must be an object", where(path));
      for (const auto& [key, sub] : s["properties"].items()) {
        const Expr value = schema(sub, path + "/properties/" + pointer_escape(key), depth + 1);
        members.emplace_back(key, seq({literal(json(key).dump()), ws(), literal(":"), ws(), value}));
        is_required.push_back(required.contains(key));
      }
    }
    for (const auto& r : required) {
      bool declared = false;
      for (const auto& m : members) declared = declared || m.first == r;
      if (!declared) {
        // A required key without a schema takes any value.
        members.emplace_back(r, seq({literal(json(r).dump()), ws(), literal(":"), ws(), ref(value_any())}));
        is_required.push_back(true);
      }
    }
    // Map-like objects (no properties): any key, values from additionalProperties.
    if (members.empty()) {
      const json extra = s.contains("additionalProperties") ? s["additionalProperties"] : json(true);
      if (extra.is_boolean() && !extra.get<bool>()) return seq({literal("{"), ws(), literal("}")});
      const Expr value = schema(extra, path + "/additionalProperties", depth + 1);
      const RuleId member = b_.add(fmt::format("member{}", b_.size()),
                                   seq({ref(string_any()), ws(), literal(":"), ws(), value}));
      return seq({literal("{"), ws(), optional(seq({ref(member), star(seq({separator(), ref(member)})), ws()})),
                  literal("}")});
    }
    // after[k]: members k.. once something came before (each after a comma);
    // first[k]: members k.. when nothing came yet.
    const std::size_t n = members.size();
    std::vector<RuleId> after(n + 1), first(n + 1);
    for (std::size_t k = 0; k <= n; ++k) {
      after[k] = b_.declare(fmt::format("after{}", b_.size()));
      first[k] = b_.declare(fmt::format("first{}", b_.size()));
    }
    b_.define(after[n], seq({}));
    b_.define(first[n], seq({}));
    for (std::size_t k = n; k-- > 0;) {
      const RuleId member = b_.add(fmt::format("member{}", b_.size()), std::move(members[k].second));
      const Expr present_after = seq({separator(), ref(member), ref(after[k + 1])});
      const Expr present_first = seq({ref(member), ref(after[k + 1])});
      b_.define(after[k], is_required[k] ? present_after : alt({present_after, ref(after[k + 1])}));
      b_.define(first[k], is_required[k] ? present_first : alt({present_first, ref(first[k + 1])}));
    }
    return seq({literal("{"), ws(), ref(first[0]), ws(), literal("}")});
  }

  const json& root_;
  GrammarBuilder b_;
  std::map<std::string, RuleId> refs_;
  std::optional<RuleId> ws_, char_, string_, integer_, number_, value_, object_, array_;
};

}  // namespace

Grammar json_schema_grammar(const nlohmann::ordered_json& schema) { return SchemaCompiler(schema).compile(); }

Grammar json_schema_grammar(const nlohmann::ordered_json& schema, const JsonRepeat& repeat) {
  return SchemaCompiler(schema).compile(repeat);
}

Grammar json_object_grammar() { return SchemaCompiler(nlohmann::ordered_json::object()).any_object(); }

}  // namespace nibble::grammar
