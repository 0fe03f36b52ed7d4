#pragma once
// What jinja2 and Python give a template for free: operators, attribute and item
// access, string/dict methods, filters and tests, each with Python's semantics so
// renders match jinja2 byte for byte. `line` only labels errors.
#include <string>
#include <vector>

#include "chat/jinja_value.h"

namespace nibble::jinja {

// `a op b` for + - * / // % ** ~ == != < > <= >= in, "not in".
Value binary_operation(const std::string& op, const Value& a, const Value& b, int line, size_t max_size);

// `object.name`: dict keys, string and dict methods, namespace attributes.
Value get_attribute(const Value& object, const std::string& name, int line);

// `object[key]`: list/string index (negative from the end), dict key.
Value get_item(const Value& object, const Value& key, int line);

// `object[start:stop:step]` on lists and strings; undefined parts are omitted.
Value get_slice(const Value& object, const Value& start, const Value& stop, const Value& step, int line);

// What `for x in v` visits: list items, dict keys, string code points, nothing for Undefined.
std::vector<Value> iterate(const Value& v, int line);

// `value | name(args)`.
Value apply_filter(const std::string& name, const Value& input, CallArgs& args, int line);

// `value is name(args)`.
bool apply_test(const std::string& name, const Value& input, const std::vector<Value>& args, int line);

// Using an Undefined where a value is needed: jinja2's UndefinedError, in its words.
[[noreturn]] void undefined_error(const Value& v, int line);

// A Value as JSON data for storing in lists and namespaces (Undefined becomes None).
Json to_json(const Value& v);

}  // namespace nibble::jinja
