#include "chat/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace nibble::jinja {

void undefined_error(const Value& v, int line) {
  if (v.message.empty()) fail("line {}: undefined value used", line);
  fail("line {}: {}", line, v.message);
}

namespace {

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::Namespace: return "Namespace";
    case Value::Kind::Callable: return "function";
    case Value::Kind::Data: break;
  }
  const Json& j = v.data;
  if (j.is_null()) return "NoneType";
  if (j.is_boolean()) return "bool";
  if (j.is_number_float()) return "float";
  if (j.is_number()) return "int";
  if (j.is_string()) return "str";
  if (j.is_array()) return "list";
  return "dict";
}

// jinja2's object_type_repr: how its errors name the type of a value.
std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  if (v.kind == Value::Kind::Namespace) return "jinja2.utils.Namespace object";
  return std::string(type_name(v)) + " object";
}

// The Undefined jinja2 returns for `object.name` (and `object['name']`) when there is none.
Value missing_attribute(const Value& object, const std::string& name) {
  return Value::undefined_because(fmt::format("'{}' has no attribute {}", object_type_repr(object), python_repr(Json(name))));
}

// ... and for `object[key]` with a key that is not a string.
Value missing_element(const Value& object, const Value& key) {
  return Value::undefined_because(
      fmt::format("{} has no element {}", object_type_repr(object), key.is_data() ? python_repr(key.data) : to_str(key)));
}

const std::string& str(const Value& v) { return v.data.get_ref<const std::string&>(); }

bool is_int(const Value& v) { return v.is_data() && (v.data.is_number_integer() || v.data.is_boolean()); }
int64_t as_int(const Value& v) { return v.data.is_boolean() ? (v.data.get<bool>() ? 1 : 0) : v.data.get<int64_t>(); }
bool is_numeric(const Value& v) { return v.is_data() && (v.data.is_number() || v.data.is_boolean()); }
double as_double(const Value& v) { return v.data.is_boolean() ? as_int(v) : v.data.get<double>(); }

int64_t require_int(const Value& v, const char* what, int line) {
  if (!is_int(v)) fail("line {}: {} must be an integer, not {}", line, what, type_name(v));
  return as_int(v);
}
const std::string& require_string(const Value& v, const char* what, int line) {
  if (v.is_undefined()) undefined_error(v, line);
  if (!v.is_string()) fail("line {}: {} must be a string, not {}", line, what, type_name(v));
  return str(v);
}

// Arguments by position or keyword, as Python binds them.
const Value* argument(CallArgs& args, size_t position, std::string_view keyword) {
  if (position < args.positional.size()) return &args.positional[position];
  for (auto& [key, value] : args.keyword) {
    if (key == keyword) return &value;
  }
  return nullptr;
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  if (is_numeric(a) && is_numeric(b)) {
    if (is_int(a) && is_int(b)) return as_int(a) == as_int(b);
    return as_double(a) == as_double(b);
  }
  if (a.kind != b.kind) return false;
  if (a.kind == Value::Kind::Namespace) return a.attributes == b.attributes;
  if (a.kind == Value::Kind::Callable) return a.call == b.call;
  return a.data == b.data;
}

// Python's whitespace for str.strip()/split() without arguments (ASCII plus the
// common Unicode spaces).
bool is_python_space(const std::string& cp) {
  static const char* const kSpaces[] = {" ", "\t", "\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x1f",
                                        "\xc2\x85", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "\xe2\x80\xa9"};
  for (const char* s : kSpaces) {
    if (cp == s) return true;
  }
  return false;
}

std::string strip(const std::string& s, const Value* chars, bool left, bool right, int line) {
  const std::vector<std::string> points = code_points(s);
  std::vector<std::string> set;
  const bool whitespace = chars == nullptr || chars->is_none() || chars->is_undefined();
  if (!whitespace) set = code_points(require_string(*chars, "strip characters", line));
  auto strippable = [&](const std::string& cp) {
    return whitespace ? is_python_space(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t begin = 0, end = points.size();
  if (left) {
    while (begin < end && strippable(points[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strippable(points[end - 1])) --end;
  }
  std::string out;
  for (size_t i = begin; i < end; ++i) out += points[i];
  return out;
}

Json split(const std::string& s, const Value* separator, const Value* max_splits, int line) {
  int64_t remaining = max_splits && !max_splits->is_undefined() ? require_int(*max_splits, "maxsplit", line) : -1;
  Json parts = Json::array();
  if (separator == nullptr || separator->is_none() || separator->is_undefined()) {
    const std::vector<std::string> points = code_points(s);
    size_t i = 0;
    while (true) {
      while (i < points.size() && is_python_space(points[i])) ++i;
      if (i == points.size()) break;
      std::string word;
      if (remaining == 0) {
        for (; i < points.size(); ++i) word += points[i];
        // Python strips trailing whitespace of the unsplit remainder.
        parts.push_back(strip(word, nullptr, false, true, line));
        break;
      }
      while (i < points.size() && !is_python_space(points[i])) word += points[i++];
      parts.push_back(word);
      --remaining;
    }
    return parts;
  }
  const std::string& sep = require_string(*separator, "separator", line);
  if (sep.empty()) fail("line {}: empty separator", line);
  size_t start = 0;
  while (remaining != 0) {
    const size_t found = s.find(sep, start);
    if (found == std::string::npos) break;
    parts.push_back(s.substr(start, found - start));
    start = found + sep.size();
    --remaining;
  }
  parts.push_back(s.substr(start));
  return parts;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count,
                    size_t max_size, int line) {
  std::string out;
  auto check = [&] {
    if (out.size() > max_size) fail("line {}: replace() result is too large", line);
  };
  if (from.empty()) {  // Python inserts `to` around every character
    const std::vector<std::string> points = code_points(s);
    for (size_t i = 0; i <= points.size(); ++i) {
      if (count < 0 || static_cast<int64_t>(i) < count) out += to;
      if (i < points.size()) out += points[i];
      check();
    }
    return out;
  }
  size_t start = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t found = s.find(from, start);
    if (found == std::string::npos) break;
    out += s.substr(start, found - start) + to;
    start = found + from.size();
    check();
  }
  return out + s.substr(start);
}

std::string ascii_upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string ascii_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool ascii_alpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }

std::string capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

std::string title(const std::string& s) {
  std::string out;
  bool previous_is_letter = false;
  for (char c : s) {
    if (ascii_alpha(c)) {
      out += static_cast<char>(previous_is_letter ? std::tolower(static_cast<unsigned char>(c))
                                                  : std::toupper(static_cast<unsigned char>(c)));
      previous_is_letter = true;
    } else {
      out += c;
      previous_is_letter = (static_cast<unsigned char>(c) >= 0x80) && previous_is_letter;
    }
  }
  return out;
}

bool affix_matches(const std::string& s, const Value& affix, bool at_start, int line) {
  auto one = [&](const Value& candidate) {
    const std::string& a = require_string(candidate, at_start ? "startswith() prefix" : "endswith() suffix", line);
    if (a.size() > s.size()) return false;
    return at_start ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_list()) {
    return std::any_of(affix.data.begin(), affix.data.end(), [&](const Json& j) { return one(Value::of(j)); });
  }
  return one(affix);
}

Value string_method(const std::string& s, const std::string& name, int line) {
  auto method = [](auto body) { return Value::function(body); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return method([s, name, line](CallArgs& args) {
      return Value::of(strip(s, argument(args, 0, "chars"), name != "rstrip", name != "lstrip", line));
    });
  }
  if (name == "split") {
    return method([s, line](CallArgs& args) {
      return Value::of(split(s, argument(args, 0, "sep"), argument(args, 1, "maxsplit"), line));
    });
  }
  if (name == "startswith" || name == "endswith") {
    return method([s, name, line](CallArgs& args) {
      const Value* affix = argument(args, 0, "");
      if (!affix) fail("line {}: {}() needs an argument", line, name);
      return Value::of(affix_matches(s, *affix, name == "startswith", line));
    });
  }
  if (name == "upper") return method([s](CallArgs&) { return Value::of(ascii_upper(s)); });
  if (name == "lower") return method([s](CallArgs&) { return Value::of(ascii_lower(s)); });
  if (name == "title") return method([s](CallArgs&) { return Value::of(title(s)); });
  if (name == "capitalize") return method([s](CallArgs&) { return Value::of(capitalize(s)); });
  if (name == "replace") {
    return method([s, line](CallArgs& args) {
      const Value* from = argument(args, 0, "old");
      const Value* to = argument(args, 1, "new");
      const Value* count = argument(args, 2, "count");
      if (!from || !to) fail("line {}: replace() needs two arguments", line);
      return Value::of(replace(s, require_string(*from, "replace() old", line), require_string(*to, "replace() new", line),
                               count ? require_int(*count, "replace() count", line) : -1, std::string::npos / 2, line));
    });
  }
  return Value();  // not a method: the caller says what is missing
}

Value dict_method(const Json& dict, const std::string& name, int line) {
  if (name == "get") {
    return Value::function([dict, line](CallArgs& args) {
      const Value* key = argument(args, 0, "key");
      if (!key) fail("line {}: get() needs a key", line);
      const Value* fallback = argument(args, 1, "default");
      if (key->is_string()) {
        auto found = dict.find(str(*key));
        if (found != dict.end()) return Value::of(*found);
      }
      return fallback ? *fallback : Value::of(nullptr);
    });
  }
  if (name == "items") {
    return Value::function([dict](CallArgs&) {
      Json pairs = Json::array();
      for (const auto& [key, value] : dict.items()) pairs.push_back(Json::array({key, value}));
      return Value::of(std::move(pairs));
    });
  }
  if (name == "keys" || name == "values") {
    return Value::function([dict, name](CallArgs&) {
      Json out = Json::array();
      for (const auto& [key, value] : dict.items()) out.push_back(name == "keys" ? Json(key) : value);
      return Value::of(std::move(out));
    });
  }
  return Value();
}

// Python's index rules: negative counts from the end; false when out of range.
bool normalize_index(int64_t& index, size_t size) {
  if (index < 0) index += static_cast<int64_t>(size);
  return index >= 0 && index < static_cast<int64_t>(size);
}

int compare_values(const Value& a, const Value& b, const std::string& op, int line) {
  if (is_numeric(a) && is_numeric(b)) {
    if (is_int(a) && is_int(b)) return as_int(a) < as_int(b) ? -1 : as_int(a) > as_int(b);
    return as_double(a) < as_double(b) ? -1 : as_double(a) > as_double(b);
  }
  if (a.is_string() && b.is_string()) return str(a).compare(str(b)) < 0 ? -1 : str(a) == str(b) ? 0 : 1;
  if (a.is_undefined()) undefined_error(a, line);
  if (b.is_undefined()) undefined_error(b, line);
  fail("line {}: '{}' not supported between {} and {}", line, op, type_name(a), type_name(b));
}

bool contains(const Value& haystack, const Value& needle, int line) {
  if (haystack.is_undefined()) return false;  // jinja2's Undefined iterates as empty
  if (haystack.is_string()) {
    return str(haystack).find(require_string(needle, "left operand of 'in <string>'", line)) != std::string::npos;
  }
  if (haystack.is_list()) {
    return std::any_of(haystack.data.begin(), haystack.data.end(),
                       [&](const Json& item) { return values_equal(Value::of(item), needle); });
  }
  if (haystack.is_dict()) return needle.is_string() && haystack.data.contains(str(needle));
  if (haystack.kind == Value::Kind::Namespace) return needle.is_string() && haystack.attributes->contains(str(needle));
  fail("line {}: argument of type '{}' is not iterable", line, type_name(haystack));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b, int line, size_t max_size) {
  if (a.is_undefined()) undefined_error(a, line);
  if (b.is_undefined()) undefined_error(b, line);
  if (op == "+" && a.is_string() && b.is_string()) return Value::of(str(a) + str(b));
  if (op == "+" && a.is_list() && b.is_list()) {
    Json out = a.data;
    for (const Json& item : b.data) out.push_back(item);
    return Value::of(std::move(out));
  }
  if (op == "*" && (a.is_string() || a.is_list()) && is_int(b)) {
    const int64_t times = std::max<int64_t>(0, as_int(b));
    const size_t unit = a.is_string() ? str(a).size() : a.data.size();
    if (unit != 0 && static_cast<uint64_t>(times) > max_size / unit) fail("line {}: repeated value is too large", line);
    Json out = a.is_string() ? Json(std::string()) : Json::array();
    for (int64_t i = 0; i < times; ++i) {
      if (a.is_string()) {
        out.get_ref<std::string&>() += str(a);
      } else {
        for (const Json& item : a.data) out.push_back(item);
      }
    }
    return Value::of(std::move(out));
  }
  if (op == "*" && is_int(a) && (b.is_string() || b.is_list())) return arithmetic(op, b, a, line, max_size);
  if (!is_numeric(a) || !is_numeric(b)) {
    fail("line {}: unsupported operand types for {}: '{}' and '{}'", line, op, type_name(a), type_name(b));
  }
  const bool integers = is_int(a) && is_int(b);
  if (op == "/") {
    if (as_double(b) == 0.0) fail("line {}: division by zero", line);
    return Value::of(as_double(a) / as_double(b));
  }
  if (integers) {
    // Python integers do not overflow; ours are 64-bit, so overflow is an error, not UB.
    const int64_t x = as_int(a), y = as_int(b);
    int64_t result = 0;
    auto checked = [&](bool overflowed) {
      if (overflowed) fail("line {}: integer overflow in {}", line, op);
      return Value::of(result);
    };
    if (op == "+") return checked(__builtin_add_overflow(x, y, &result));
    if (op == "-") return checked(__builtin_sub_overflow(x, y, &result));
    if (op == "*") return checked(__builtin_mul_overflow(x, y, &result));
    if (op == "//" || op == "%") {
      if (y == 0) fail("line {}: integer division or modulo by zero", line);
      if (y == -1) return op == "//" ? checked(__builtin_sub_overflow(int64_t{0}, x, &result)) : Value::of(int64_t{0});
      int64_t quotient = x / y, remainder = x % y;
      if (remainder != 0 && ((remainder < 0) != (y < 0))) {
        --quotient;
        remainder += y;
      }
      return Value::of(op == "//" ? quotient : remainder);
    }
    if (op == "**" && y >= 0) {
      result = 1;
      for (int64_t i = 0; i < y; ++i) {
        if (__builtin_mul_overflow(result, x, &result)) fail("line {}: integer overflow in **", line);
        if (result == 0 || result == 1) break;  // further factors change nothing (x is 0 or 1)
        if (result == -1 && x == -1) {
          result = ((y - i - 1) % 2 == 0) ? -1 : 1;
          break;
        }
      }
      return Value::of(result);
    }
  }
  const double x = as_double(a), y = as_double(b);
  if (op == "+") return Value::of(x + y);
  if (op == "-") return Value::of(x - y);
  if (op == "*") return Value::of(x * y);
  if (op == "**") return Value::of(std::pow(x, y));
  if (y == 0.0) fail("line {}: float division by zero", line);
  const double quotient = std::floor(x / y);
  if (op == "//") return Value::of(quotient);
  return Value::of(x - quotient * y);
}

int64_t float_to_int(double d, int line) {
  if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) fail("line {}: cannot convert {} to a 64-bit integer", line, d);
  return static_cast<int64_t>(d);
}

Json list_of(const Value& v, int line) {
  Json out = Json::array();
  for (const Value& item : iterate(v, line)) out.push_back(to_json(item));
  return out;
}

// selectattr/rejectattr/select/reject: keep items whose test (default: truthiness) passes.
Value select_items(const Value& input, CallArgs& args, bool by_attribute, bool keep, int line) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    const Value* a = argument(args, next++, "attribute");
    if (!a) fail("line {}: selectattr/rejectattr need an attribute name", line);
    attribute = require_string(*a, "attribute", line);
  }
  const Value* test = next < args.positional.size() ? &args.positional[next++] : nullptr;
  std::vector<Value> test_args(args.positional.begin() + static_cast<std::ptrdiff_t>(std::min(next, args.positional.size())),
                               args.positional.end());
  Json out = Json::array();
  for (const Value& item : iterate(input, line)) {
    Value subject = item;
    if (by_attribute) {
      for (size_t start = 0; start <= attribute.size();) {  // "a.b" walks nested attributes
        const size_t dot = std::min(attribute.find('.', start), attribute.size());
        subject = get_attribute(subject, attribute.substr(start, dot - start), line);
        start = dot + 1;
      }
    }
    const bool passed =
        test ? apply_test(require_string(*test, "test name", line), subject, test_args, line) : truthy(subject);
    if (passed == keep) out.push_back(to_json(item));
  }
  return Value::of(std::move(out));
}

}  // namespace

Json to_json(const Value& v) {
  if (v.is_data()) return v.data;
  if (v.kind == Value::Kind::Namespace) {
    Json out = Json::object();
    for (const auto& [key, value] : *v.attributes) out[key] = to_json(value);
    return out;
  }
  return nullptr;
}

Value binary_operation(const std::string& op, const Value& a, const Value& b, int line, size_t max_size) {
  if (op == "~") return Value::of(to_str(a) + to_str(b));
  if (op == "==") return Value::of(values_equal(a, b));
  if (op == "!=") return Value::of(!values_equal(a, b));
  if (op == "<") return Value::of(compare_values(a, b, op, line) < 0);
  if (op == ">") return Value::of(compare_values(a, b, op, line) > 0);
  if (op == "<=") return Value::of(compare_values(a, b, op, line) <= 0);
  if (op == ">=") return Value::of(compare_values(a, b, op, line) >= 0);
  if (op == "in") return Value::of(contains(b, a, line));
  if (op == "not in") return Value::of(!contains(b, a, line));
  return arithmetic(op, a, b, line, max_size);
}

Value get_attribute(const Value& object, const std::string& name, int line) {
  if (object.is_undefined()) undefined_error(object, line);
  if (object.kind == Value::Kind::Namespace) {
    auto found = object.attributes->find(name);
    if (found != object.attributes->end()) return found->second;
  } else if (object.is_dict()) {
    Value method = dict_method(object.data, name, line);
    if (!method.is_undefined()) return method;
    auto found = object.data.find(name);
    if (found != object.data.end()) return Value::of(*found);
  } else if (object.is_string()) {
    Value method = string_method(str(object), name, line);
    if (!method.is_undefined()) return method;
  }
  return missing_attribute(object, name);
}

// jinja2's getitem: the item, else (for a string key) the attribute of that name.
Value get_item(const Value& object, const Value& key, int line) {
  if (object.is_undefined()) undefined_error(object, line);
  if (object.is_dict() && key.is_string()) {
    auto found = object.data.find(str(key));
    if (found != object.data.end()) return Value::of(*found);
  } else if ((object.is_list() || object.is_string()) && is_int(key)) {
    int64_t index = as_int(key);
    if (object.is_list()) {
      if (normalize_index(index, object.data.size())) return Value::of(object.data[static_cast<size_t>(index)]);
    } else {
      const std::vector<std::string> points = code_points(str(object));
      if (normalize_index(index, points.size())) return Value::of(points[static_cast<size_t>(index)]);
    }
    return missing_element(object, key);
  }
  if (key.is_string()) return get_attribute(object, str(key), line);
  return missing_element(object, key);
}

Value get_slice(const Value& object, const Value& start, const Value& stop, const Value& step, int line) {
  if (object.is_undefined()) undefined_error(object, line);
  std::vector<Json> items;
  if (object.is_list()) {
    items.assign(object.data.begin(), object.data.end());
  } else if (object.is_string()) {
    for (auto& cp : code_points(str(object))) items.emplace_back(cp);
  } else {
    fail("line {}: '{}' object is not subscriptable", line, type_name(object));
  }
  const auto size = static_cast<int64_t>(items.size());
  auto given = [](const Value& v) { return !v.is_undefined() && !v.is_none(); };
  const int64_t stride = given(step) ? require_int(step, "slice step", line) : 1;
  if (stride == 0) fail("line {}: slice step cannot be zero", line);
  // Python's slice.indices().
  auto bound = [&](const Value& v, int64_t fallback) {
    if (!given(v)) return fallback;
    int64_t i = require_int(v, "slice index", line);
    if (i < 0) i += size;
    if (stride > 0) return std::clamp<int64_t>(i, 0, size);
    return std::clamp<int64_t>(i, -1, size - 1);
  };
  const int64_t first = bound(start, stride > 0 ? 0 : size - 1);
  const int64_t last = bound(stop, stride > 0 ? size : -1);
  std::vector<Json> picked;
  for (int64_t i = first; stride > 0 ? i < last : i > last; i += stride) picked.push_back(items[static_cast<size_t>(i)]);
  if (object.is_list()) return Value::of(Json(picked));
  std::string out;
  for (const Json& cp : picked) out += cp.get<std::string>();
  return Value::of(out);
}

std::vector<Value> iterate(const Value& v, int line) {
  std::vector<Value> out;
  if (v.is_undefined()) return out;
  if (v.is_list()) {
    for (const Json& item : v.data) out.push_back(Value::of(item));
  } else if (v.is_dict()) {
    for (const auto& [key, value] : v.data.items()) out.push_back(Value::of(key));
  } else if (v.is_string()) {
    for (auto& cp : code_points(str(v))) out.push_back(Value::of(cp));
  } else {
    fail("line {}: '{}' object is not iterable", line, type_name(v));
  }
  return out;
}

Value apply_filter(const std::string& name, const Value& input, CallArgs& args, int line) {
  auto needs_data = [&] {
    if (input.is_undefined()) undefined_error(input, line);
  };
  if (name == "default" || name == "d") {
    const Value* fallback = argument(args, 0, "default_value");
    const Value* boolean = argument(args, 1, "boolean");
    const bool use_fallback = input.is_undefined() || (boolean && truthy(*boolean) && !truthy(input));
    return use_fallback ? (fallback ? *fallback : Value::of("")) : input;
  }
  if (name == "length" || name == "count") {
    if (input.is_undefined()) return Value::of(0);
    if (input.is_string()) return Value::of(static_cast<int64_t>(code_points(str(input)).size()));
    if (input.is_list() || input.is_dict()) return Value::of(static_cast<int64_t>(input.data.size()));
    fail("line {}: object of type '{}' has no len()", line, type_name(input));
  }
  if (name == "safe") return input;
  if (name == "string") return Value::of(to_str(input));
  if (name == "trim") return Value::of(strip(to_str(input), argument(args, 0, "chars"), true, true, line));
  if (name == "lower") return Value::of(ascii_lower(to_str(input)));
  if (name == "upper") return Value::of(ascii_upper(to_str(input)));
  if (name == "capitalize") return Value::of(capitalize(to_str(input)));
  if (name == "title") return Value::of(title(to_str(input)));
  if (name == "replace") {
    const Value* from = argument(args, 0, "old");
    const Value* to = argument(args, 1, "new");
    const Value* count = argument(args, 2, "count");
    if (!from || !to) fail("line {}: replace needs two arguments", line);
    return Value::of(replace(to_str(input), to_str(*from), to_str(*to),
                             count && !count->is_none() ? require_int(*count, "replace count", line) : -1,
                             std::string::npos / 2, line));
  }
  if (name == "first" || name == "last") {
    const std::vector<Value> items = iterate(input, line);
    if (items.empty()) return Value::undefined_because(fmt::format("No {} item, sequence was empty.", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const Value* separator = argument(args, 0, "d");
    const Value* attribute = argument(args, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(input, line)) {
      if (!first) out += separator ? to_str(*separator) : "";
      first = false;
      out += to_str(attribute ? get_item(item, *attribute, line) : item);
    }
    return Value::of(out);
  }
  if (name == "tojson") {
    needs_data();
    if (input.kind == Value::Kind::Callable) fail("line {}: a function is not JSON serializable", line);
    const Value* indent = argument(args, 0, "indent");
    const int spaces = indent && !indent->is_none() ? static_cast<int>(require_int(*indent, "indent", line)) : -1;
    return Value::of(python_json_dumps(to_json(input), spaces));
  }
  if (name == "int") {
    const Value* fallback = argument(args, 0, "default");
    if (is_int(input)) return Value::of(as_int(input));
    if (input.is_number()) return Value::of(float_to_int(as_double(input), line));
    if (input.is_string()) {
      try {
        size_t used = 0;
        const std::string text = strip(str(input), nullptr, true, true, line);
        const double parsed = std::stod(text, &used);
        if (used == text.size()) return Value::of(float_to_int(parsed, line));
      } catch (const std::exception&) {
      }
    }
    return fallback ? *fallback : Value::of(0);
  }
  if (name == "float") {
    if (is_numeric(input)) return Value::of(as_double(input));
    if (input.is_string()) {
      try {
        return Value::of(std::stod(str(input)));
      } catch (const std::exception&) {
      }
    }
    const Value* fallback = argument(args, 0, "default");
    return fallback ? *fallback : Value::of(0.0);
  }
  if (name == "abs") {
    needs_data();
    if (is_int(input)) return binary_operation(as_int(input) < 0 ? "-" : "+", Value::of(0), input, line, 0);
    if (input.is_number()) return Value::of(std::fabs(as_double(input)));
    fail("line {}: bad operand type for abs(): '{}'", line, type_name(input));
  }
  if (name == "list") return Value::of(list_of(input, line));
  if (name == "reverse") {
    if (input.is_string()) return get_slice(input, Value(), Value(), Value::of(-1), line);
    Json items = list_of(input, line);
    std::reverse(items.begin(), items.end());
    return Value::of(std::move(items));
  }
  if (name == "items") {
    if (input.is_undefined()) return Value::of(Json::array());
    if (!input.is_dict()) fail("line {}: items filter needs a mapping, not {}", line, type_name(input));
    CallArgs none;
    return (*dict_method(input.data, "items", line).call)(none);
  }
  if (name == "selectattr" || name == "rejectattr") return select_items(input, args, true, name == "selectattr", line);
  if (name == "select" || name == "reject") return select_items(input, args, false, name == "select", line);
  if (name == "map") {  // map(attribute='x', default=...) or map('filter', args...)
    const Value* attribute = nullptr;
    const Value* fallback = nullptr;
    for (auto& [key, value] : args.keyword) {
      if (key == "attribute") attribute = &value;
      if (key == "default") fallback = &value;
    }
    if (!attribute && args.positional.empty()) fail("line {}: map needs a filter name or attribute=", line);
    Json out = Json::array();
    for (const Value& item : iterate(input, line)) {
      if (attribute) {
        const Value found = get_attribute(item, require_string(*attribute, "attribute", line), line);
        out.push_back(to_json(found.is_undefined() && fallback ? *fallback : found));
      } else {
        CallArgs rest{{args.positional.begin() + 1, args.positional.end()}, {}};
        out.push_back(to_json(apply_filter(require_string(args.positional[0], "filter name", line), item, rest, line)));
      }
    }
    return Value::of(std::move(out));
  }
  fail("line {}: unknown filter '{}'", line, name);
}

bool apply_test(const std::string& name, const Value& input, const std::vector<Value>& args, int line) {
  auto operand = [&]() -> const Value& {
    if (args.empty()) fail("line {}: test '{}' needs an argument", line, name);
    return args[0];
  };
  if (name == "defined") return !input.is_undefined();
  if (name == "undefined") return input.is_undefined();
  if (name == "none") return input.is_none();
  if (name == "string") return input.is_string();
  if (name == "mapping") return input.is_dict();
  if (name == "sequence") return input.is_string() || input.is_list() || input.is_dict();
  if (name == "iterable") return input.is_undefined() || input.is_string() || input.is_list() || input.is_dict();
  if (name == "number") return is_numeric(input);
  if (name == "integer") return input.is_data() && input.data.is_number_integer();
  if (name == "float") return input.is_data() && input.data.is_number_float();
  if (name == "boolean") return input.is_data() && input.data.is_boolean();
  if (name == "true") return input.is_data() && input.data.is_boolean() && input.data.get<bool>();
  if (name == "false") return input.is_data() && input.data.is_boolean() && !input.data.get<bool>();
  if (name == "callable") return input.kind == Value::Kind::Callable;
  if (name == "lower") return input.is_string() && ascii_lower(str(input)) == str(input);
  if (name == "upper") return input.is_string() && ascii_upper(str(input)) == str(input);
  if (name == "odd" || name == "even") {
    const int64_t n = require_int(input, "odd/even operand", line);
    return (n % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const int64_t divisor = require_int(operand(), "divisor", line);
    if (divisor == 0) fail("line {}: division by zero", line);
    return require_int(input, "divisibleby operand", line) % divisor == 0;
  }
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return values_equal(input, operand());
  if (name == "ne" || name == "!=") return !values_equal(input, operand());
  if (name == "in") return contains(operand(), input, line);
  for (const auto& [test, op] : {std::pair{"gt", ">"}, {"greaterthan", ">"}, {"lt", "<"}, {"lessthan", "<"},
                                 {"ge", ">="}, {"le", "<="}, {">", ">"}, {"<", "<"}, {">=", ">="}, {"<=", "<="}}) {
    if (name == test) return truthy(binary_operation(op, input, operand(), line, 0));
  }
  fail("line {}: unknown test '{}'", line, name);
}

}  // namespace nibble::jinja
