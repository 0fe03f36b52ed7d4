#pragma once
// The values a chat template computes with. Data (strings, numbers, lists, dicts)
// lives in an ordered JSON tree so dicts keep insertion order the way Python's do;
// the few things JSON cannot hold (jinja2's Undefined, a mutable namespace(), a
// callable) sit beside it.
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nibble::jinja {

using Json = nlohmann::ordered_json;

struct Value;

// Arguments of a call: positional, then keyword (in source order).
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

using Function = std::function<Value(CallArgs&)>;

struct Value {
  enum class Kind { Undefined, Data, Namespace, Callable };

  Kind kind = Kind::Undefined;
  Json data;                            // Kind::Data
  // Kind::Namespace: shared so `set ns.x` is seen by every copy; holds Values because
  // jinja2 keeps an Undefined assigned to an attribute as Undefined.
  std::shared_ptr<std::map<std::string, Value>> attributes;
  std::shared_ptr<const Function> call; // Kind::Callable
  std::string message;                  // Undefined: what jinja2's UndefinedError says about it

  // A name no scope holds: "'name' is undefined".
  static Value undefined(std::string_view name) {
    std::string message = "'";
    message.append(name).append("' is undefined");
    return undefined_because(std::move(message));
  }
  // An Undefined whose error says MESSAGE, in jinja2's words ("'list object' has no attribute 'x'").
  static Value undefined_because(std::string message) {
    Value v;
    v.message = std::move(message);
    return v;
  }
  static Value of(Json j) {
    Value v;
    v.kind = Kind::Data;
    v.data = std::move(j);
    return v;
  }
  static Value function(Function f) {
    Value v;
    v.kind = Kind::Callable;
    v.call = std::make_shared<const Function>(std::move(f));
    return v;
  }

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_data() const { return kind == Kind::Data; }
  bool is_string() const { return is_data() && data.is_string(); }
  bool is_number() const { return is_data() && data.is_number(); }
  bool is_list() const { return is_data() && data.is_array(); }
  bool is_dict() const { return is_data() && data.is_object(); }
  bool is_none() const { return is_data() && data.is_null(); }
};

// Python's bool(): empty containers, "", 0, None and Undefined are false.
bool truthy(const Value& v);

// Python's str(): what `{{ v }}` prints (Undefined prints nothing).
std::string to_str(const Value& v);

// Python's repr() of data, as str() of a list or dict shows its items.
std::string python_repr(const Json& j);

// json.dumps(j, ensure_ascii=False, indent=indent) with Python's separators; indent < 0 is None.
std::string python_json_dumps(const Json& j, int indent);

// Python's repr of a float (shortest round trip, "1.0" not "1").
std::string python_float(double d);

// UTF-8 helpers: Python strings index code points, not bytes.
std::vector<std::string> code_points(const std::string& s);

}  // namespace nibble::jinja
