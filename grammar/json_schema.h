#pragma once
// JSON Schema (and OpenAI's json_object mode) as a grammar whose every complete
// output parses as JSON and validates against the schema. Supported: type (and
// type lists), properties, required, additionalProperties (false, or a schema for
// map-like objects without properties), enum, const, items, minItems, maxItems,
// anyOf, oneOf (as anyOf: exact when the branches are disjoint, as Pydantic's
// are), allOf of one schema, $ref into the document ($defs, definitions, "#"),
// string minLength/maxLength, pattern, format (date, time, date-time, uuid),
// boolean schemas, and the annotations (title, description, default, examples,
// $schema, $id, $comment, deprecated, readOnly, writeOnly, discriminator).
// Anything else fails with the keyword and where it is, never ignored.
//
// What the output looks like: properties in the schema's order (a property not
// required may be left out); an object without additionalProperties: false gets
// no extra properties unless it declares no properties at all (then its
// additionalProperties schema, or any value, is used for any key); whitespace
// between tokens is none, one space, or one newline and up to 24 spaces/tabs;
// integers have at most 16 digits, fractions at most 20, exponents at most 3.
#include <nlohmann/json.hpp>

#include "grammar/grammar.h"

namespace nibble::grammar {

// Throws nibble::Error: "unsupported JSON Schema keyword 'x' at /properties/a", ...
Grammar json_schema_grammar(const nlohmann::ordered_json& schema);

// Values of `schema` min..max times, each written prefix + value + suffix, joined
// by `separator` (tool calls: "<tool_call>\n" + call + "\n</tool_call>").
struct JsonRepeat {
  std::string prefix, suffix, separator;
  int min = 1, max = 1;
};
Grammar json_schema_grammar(const nlohmann::ordered_json& schema, const JsonRepeat& repeat);
// Any JSON object (response_format json_object).
Grammar json_object_grammar();

}  // namespace nibble::grammar
