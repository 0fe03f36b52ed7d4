#include "server/openapi.h"

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace nibble::server {
namespace {

using json = nlohmann::json;

json ref(const char* name) { return {{"$ref", std::string("#/components/schemas/") + name}}; }

json json_content(const json& schema) { return {{"application/json", {{"schema", schema}}}}; }

json error_responses(std::initializer_list<const char*> statuses) {
  json out = json::object();
  for (const char* status : statuses) {
    out[status] = {{"description", "An OpenAI error object"}, {"content", json_content(ref("Error"))}};
  }
  return out;
}

// A POST endpoint answering JSON, or server-sent events when the body asks to stream.
json generation_path(const char* summary, const char* request, const char* response, const char* chunk,
                     bool needs_key) {
  // 404: a "model" this server does not serve.
  json responses = error_responses({"400", "404", "413", "429", "503"});
  if (needs_key) responses.update(error_responses({"401"}));
  responses["200"] = {
      {"description", "The completion; with \"stream\": true, server-sent events of chunks ending with data: [DONE]"},
      {"content",
       {{"application/json", {{"schema", ref(response)}}},
        {"text/event-stream", {{"schema", {{"type", "string"}, {"description", std::string("data: <") + chunk + ">"}}}}}}}};
  json post = {{"summary", summary},
               {"requestBody", {{"required", true}, {"content", json_content(ref(request))}}},
               {"responses", responses}};
  if (!needs_key) post["security"] = json::array();
  return {{"post", post}};
}

// A POST endpoint answering JSON at once (no model step).
json post_path(const char* summary, const char* request, const char* response, bool needs_key) {
  json responses = error_responses({"400", "404", "413", "503"});
  if (needs_key) responses.update(error_responses({"401"}));
  responses["200"] = {{"description", "OK"}, {"content", json_content(ref(response))}};
  json post = {{"summary", summary},
               {"requestBody", {{"required", true}, {"content", json_content(ref(request))}}},
               {"responses", responses}};
  if (!needs_key) post["security"] = json::array();
  return {{"post", post}};
}

json get_path(const char* summary, const json& ok, bool needs_key, std::initializer_list<const char*> errors = {}) {
  json responses = error_responses(errors);
  if (needs_key) responses.update(error_responses({"401"}));
  responses["200"] = ok;
  json get = {{"summary", summary}, {"responses", responses}};
  if (!needs_key) get["security"] = json::array();
  return {{"get", get}};
}

// The numeric fields of one endpoint, from the table the parser enforces.
json numeric_properties(Endpoint endpoint, const RequestLimits& limits) {
  json out = json::object();
  for (const NumericField& field : numeric_fields(endpoint, limits)) {
    json schema = {{"type", field.integer ? "integer" : "number"}, {"maximum", field.maximum}};
    schema[field.exclusive_minimum ? "exclusiveMinimum" : "minimum"] = field.minimum;
    out[field.name] = std::move(schema);
  }
  return out;
}

json nullable_optionals(json schema);

// The output constraints (server/output_constraint.h). A schema, pattern or
// grammar the server cannot enforce is a 400 naming what it cannot do, which no
// JSON Schema can say in advance; the shapes here are what the parser checks.
json output_format_properties() {
  const json schema = {{"oneOf", {{{"type", "object"}}, {{"type", "boolean"}}}},
                       {"description",
                        "A JSON Schema (the subset in docs/structured-outputs.md; anything else is a 400 that names "
                        "the keyword)"}};
  const json strict_object = {{"type", "object"}, {"additionalProperties", false}};
  json text = strict_object, object = strict_object, with_schema = strict_object;
  text["required"] = {"type"};
  text["properties"] = {{"type", {{"type", "string"}, {"enum", {"text"}}}}};
  object["required"] = {"type"};
  object["properties"] = {{"type", {{"type", "string"}, {"enum", {"json_object"}}}}};
  json spec = strict_object;
  spec["required"] = json::array();
  spec["properties"] = {{"name", {{"type", "string"}, {"maxLength", 64}}},
                        {"description", {{"type", "string"}}},
                        {"strict", {{"type", "boolean"}}},
                        {"schema", schema}};
  with_schema["required"] = {"type", "json_schema"};
  with_schema["properties"] = {{"type", {{"type", "string"}, {"enum", {"json_schema"}}}},
                               {"json_schema", nullable_optionals(spec)}};
  return {
      {"response_format",
       {{"description", "text, json_object (one JSON object) or json_schema (valid against the schema)"},
        {"oneOf", {text, object, with_schema}}}},
      {"guided_json", {{"oneOf", {schema, {{"type", "string"}, {"description", "the schema as JSON text"}}}}}},
      {"guided_regex", {{"type", "string"}, {"description", "vLLM's extension: the whole output matches this regex"}}},
      {"guided_choice",
       {{"type", "array"},
        {"minItems", 1},
        {"items", {{"type", "string"}, {"minLength", 1}}},
        {"description", "vLLM's extension: the output is one of these strings"}}},
      {"guided_grammar",
       {{"type", "string"}, {"description", "vLLM's extension: a GBNF grammar (llama.cpp's format) starting at root"}}},
  };
}

// Accepted so official clients work, and ignored: they cannot change a local model's output.
json ignored_field_schema(const std::string& name) {
  json schema = name == "metadata"                ? json{{"type", "object"}, {"additionalProperties", {{"type", "string"}}}}
                : name == "service_tier"          ? json{{"type", "string"}}
                                                  : json{{"type", "boolean"}};
  schema["description"] = "Accepted and ignored (it cannot change this server's output)";
  return schema;
}

// Fields both generation endpoints accept.
json sampling_properties(Endpoint endpoint, const RequestLimits& limits) {
  const json stop_string = {{"type", "string"}, {"minLength", 1}};
  const json stop_list = {{"type", "array"}, {"items", stop_string}, {"maxItems", limits.max_stop}};
  json properties = {
      {"model", {{"type", "string"}, {"description", "The served model's id; any other is a 404"}}},
      {"stop", {{"oneOf", json::array({stop_string, stop_list})}}},
      {"logit_bias",
       {{"type", "object"},
        {"description", "Token id (below the vocabulary size) -> bias"},
        {"additionalProperties", {{"type", "number"}, {"minimum", -kMaxLogitBias}, {"maximum", kMaxLogitBias}}}}},
      {"user", {{"type", "string"}}},
      {"ignore_eos", {{"type", "boolean"}, {"description", "vLLM's extension: do not stop at end-of-sequence"}}},
      {"stream", {{"type", "boolean"}}},
      {"stream_options",
       {{"type", "object"},
        {"description", "Only with \"stream\": true"},
        {"additionalProperties", false},
        {"properties", {{"include_usage", {{"type", "boolean"}}}}}}}};
  properties.update(numeric_properties(endpoint, limits));
  properties["top_k"]["description"] = "-1 or 0: off";
  properties.update(output_format_properties());
  for (const auto& name : ignored_fields()) properties[name] = ignored_field_schema(name);
  return properties;
}

json usage_schema() {
  return {{"type", "object"},
          {"properties",
           {{"prompt_tokens", {{"type", "integer"}}},
            {"completion_tokens", {{"type", "integer"}}},
            {"total_tokens", {{"type", "integer"}}}}}};
}

json response_schema(const char* object, const json& choice) {
  return {{"type", "object"},
          {"properties",
           {{"id", {{"type", "string"}}},
            {"object", {{"type", "string"}, {"enum", {object}}}},
            {"created", {{"type", "integer"}}},
            {"model", {{"type", "string"}}},
            {"system_fingerprint", {{"type", "string"}}},
            {"choices", {{"type", "array"}, {"items", choice}}},
            {"usage", usage_schema()}}}};
}

// `schema` or null, in JSON Schema 2020-12 (OpenAPI 3.1) terms.
json or_null(json schema) {
  if (schema.contains("oneOf")) {
    schema["oneOf"].push_back({{"type", "null"}});
  } else {
    schema["type"] = {schema["type"], "null"};
    if (schema.contains("enum")) schema["enum"].push_back(nullptr);
  }
  return schema;
}

// The server reads an explicit null as "not given" (as OpenAI's clients send it),
// so every optional property may be null.
json nullable_optionals(json schema) {
  const json& required = schema["required"];
  for (auto& [name, property] : schema["properties"].items()) {
    if (std::find(required.begin(), required.end(), name) == required.end()) property = or_null(std::move(property));
  }
  return schema;
}

// One chat message. "content" is required except from the assistant (whose turn
// may be empty), which is how the server checks it.
json message_schema() {
  const json text_part = {{"type", "object"},
                          {"required", {"type", "text"}},
                          {"properties", {{"type", {{"type", "string"}, {"enum", {"text"}}}}, {"text", {{"type", "string"}}}}}};
  const json content = {{"oneOf", {{{"type", "string"}}, {{"type", "array"}, {"items", text_part}}}}};
  const json tool_function = nullable_optionals({{"type", "object"},
                                                 {"required", {"name"}},
                                                 {"additionalProperties", false},
                                                 {"properties",
                                                  {{"name", {{"type", "string"}}},
                                                   {"arguments", {{"type", "string"}, {"description", "JSON text"}}}}}});
  const json tool_call = nullable_optionals({{"type", "object"},
                                             {"required", {"function"}},
                                             {"additionalProperties", false},
                                             {"properties",
                                              {{"id", {{"type", "string"}}},
                                               {"type", {{"type", "string"}, {"enum", {"function"}}}},
                                               {"function", tool_function}}}});
  const auto message = [&](std::initializer_list<const char*> roles, bool content_required) {
    json role_names = json::array();
    for (const char* role : roles) role_names.push_back(role);
    json required = json::array({"role"});
    if (content_required) required.push_back("content");
    json schema = {{"type", "object"},
                   {"required", required},
                   {"additionalProperties", false},
                   {"properties",
                    {{"role", {{"type", "string"}, {"enum", role_names}}},
                     {"content", content},
                     {"name", {{"type", "string"}}}}}};
    if (*roles.begin() == std::string("assistant")) {
      schema["properties"]["tool_calls"] = {{"type", "array"}, {"items", tool_call}};
      schema["properties"]["refusal"] = {{"type", "string"}};
    }
    if (*roles.begin() == std::string("tool")) {
      schema["required"].push_back("tool_call_id");
      schema["properties"]["tool_call_id"] = {{"type", "string"}};
    }
    return nullable_optionals(std::move(schema));
  };
  return {{"oneOf",
           {message({"system", "developer", "user"}, true), message({"assistant"}, false), message({"tool"}, true)}}};
}

// Rules between fields, which the parser checks after each field's own range.
// Each is written as alternatives (anyOf) of plain conditions; without them
// the document would allow requests the server rejects (schemathesis ST202).

json is_true(const char* flag) { return {{"required", {flag}}, {"properties", {{flag, {{"enum", {true}}}}}}}; }

// `field` (not null) only when `flag` is true.
json only_when_true(const char* field, const char* flag) {
  return {{"anyOf",
           {{{"not", {{"required", {field}}}}}, {{"properties", {{field, {{"enum", {nullptr}}}}}}}, is_true(flag)}}};
}

// At most one output format, and none beside ignore_eos (the parser's rules).
// `properties` holds vacuously for an absent field, so {"properties": {f: null}}
// says "absent or null" with no `not`, which keeps schemathesis' generator fast.
json output_format_rules() {
  const std::vector<std::string> formats = {"response_format", "guided_json", "guided_regex", "guided_choice",
                                            "guided_grammar"};
  const json null_only = {{"enum", {nullptr}}};
  json at_most_one = json::array();
  for (const auto& kept : formats) {
    json others = json::object();
    for (const auto& f : formats) {
      if (f != kept) others[f] = null_only;
    }
    at_most_one.push_back({{"properties", others}});
  }
  json none = json::object();
  for (const auto& f : formats) none[f] = null_only;
  const json no_ignore_eos = {{"properties", {{"ignore_eos", {{"enum", {nullptr, false}}}}}}};
  return json::array({{{"anyOf", at_most_one}}, {{"anyOf", {no_ignore_eos, {{"properties", none}}}}}});
}

// best_of is at least n (n defaults to 1), and above n only without streaming.
// Relations between two numbers have no JSON Schema keyword, so this lists one
// alternative per value of n (at most max_n).
json best_of_rule(const RequestLimits& limits) {
  json alternatives = {{{"not", {{"required", {"best_of"}}}}}, {{"properties", {{"best_of", {{"enum", {nullptr}}}}}}}};
  const json not_streaming = {{"properties", {{"stream", {{"enum", {false, nullptr}}}}}}};
  for (int n = 1; n <= limits.max_n; ++n) {
    json n_is = {{"properties", {{"n", {{"enum", n == 1 ? json{1, nullptr} : json{n}}}}}}};
    if (n > 1) n_is["required"] = {"n"};
    const json at_least_n = {{"properties", {{"best_of", {{"minimum", n}}}}}};
    const json exactly_n = {{"properties", {{"best_of", {{"maximum", n}}}}}};
    alternatives.push_back({{"allOf", {n_is, at_least_n, {{"anyOf", {not_streaming, exactly_n}}}}}});
  }
  return {{"anyOf", alternatives}};
}

// A regular expression for the decimal numbers 0..max, leading zeros allowed:
// the token ids logit_bias keys may name.
std::string decimal_at_most(std::int64_t max) {
  const std::string digits = std::to_string(max);
  const std::size_t length = digits.size();
  std::vector<std::string> alternatives{"[0-9]"};  // every 1-digit number (max >= 9 or fixed below)
  if (length == 1) alternatives = {fmt::format("[0-{}]", digits)};
  for (std::size_t shorter = 2; shorter < length; ++shorter) {
    alternatives.push_back(fmt::format("[1-9][0-9]{{{}}}", shorter - 1));
  }
  if (length > 1) {
    // As many digits as max: equal up to position i, then a smaller digit.
    for (std::size_t i = 0; i < length; ++i) {
      const char low = i == 0 ? '1' : '0';
      if (digits[i] > low) {
        const std::string rest = i + 1 < length ? fmt::format("[0-9]{{{}}}", length - i - 1) : "";
        alternatives.push_back(fmt::format("{}[{}-{}]{}", digits.substr(0, i), low, static_cast<char>(digits[i] - 1), rest));
      }
    }
    alternatives.push_back(digits);
  }
  return "^0*(" + fmt::format("{}", fmt::join(alternatives, "|")) + ")$";
}

json schemas(const RequestLimits& limits) {
  json completion_request = {{"type", "object"}, {"required", {"model", "prompt"}}, {"additionalProperties", false}};
  completion_request["properties"] = sampling_properties(Endpoint::Completions, limits);
  json token_id = {{"type", "integer"}, {"minimum", 0}};
  if (limits.vocab_size > 0) token_id["maximum"] = limits.vocab_size - 1;  // known once the model is loaded
  completion_request["properties"]["prompt"] = {
      {"oneOf",
       {{{"type", "string"}},
        {{"type", "array"}, {"minItems", 1}, {"items", {{"type", "string"}}}},
        {{"type", "array"}, {"minItems", 1}, {"items", token_id}},
        {{"type", "array"}, {"minItems", 1}, {"items", {{"type", "array"}, {"minItems", 1}, {"items", token_id}}}}}}};
  completion_request["properties"]["max_tokens"]["description"] = "0 only with \"echo\": true";
  completion_request["properties"]["best_of"]["description"] = "At least n; not with \"stream\" when above n";
  completion_request["properties"]["echo"] = {{"type", "boolean"}};
  completion_request["allOf"] = output_format_rules();
  for (json rule : {
      only_when_true("stream_options", "stream"),
      {{"anyOf", {{{"not", {{"required", {"max_tokens"}}, {"properties", {{"max_tokens", {{"enum", {0}}}}}}}}},
                  is_true("echo")}}},
      best_of_rule(limits)}) {
    completion_request["allOf"].push_back(std::move(rule));
  }

  json chat_request = {{"type", "object"}, {"required", {"model", "messages"}}, {"additionalProperties", false}};
  chat_request["properties"] = sampling_properties(Endpoint::ChatCompletions, limits);
  chat_request["properties"]["messages"] = {{"type", "array"}, {"minItems", 1}, {"items", message_schema()}};
  chat_request["properties"]["logprobs"] = {{"type", "boolean"}};
  chat_request["properties"]["tools"] = {
      {"type", "array"},
      {"items",
       {{"type", "object"},
        {"required", {"type", "function"}},
        {"additionalProperties", false},
        {"properties",
         {{"type", {{"type", "string"}, {"enum", {"function"}}}},
          {"function",
           {{"type", "object"},
            {"required", {"name"}},
            {"additionalProperties", false},
            {"properties",
             {{"name", {{"type", "string"}, {"pattern", "^[A-Za-z0-9_-]{1,64}$"}}},
              {"description", {{"type", "string"}}},
              {"parameters", {{"type", "object"}, {"description", "JSON Schema of the arguments"}}},
              {"strict", {{"type", "boolean"}}}}}}}}}}},
      {"description", "Function names must differ"}};
  chat_request["properties"]["tool_choice"] = {
      {"description",
       "required, or a named function, needs tools (a named one must be among them; a 400 otherwise); auto "
       "without tools is none"},
      {"oneOf",
       {{{"type", "string"}, {"enum", {"none", "auto", "required"}}},
        {{"type", "object"},
         {"required", {"type", "function"}},
         {"additionalProperties", false},
         {"properties",
          {{"type", {{"type", "string"}, {"enum", {"function"}}}},
           {"function",
            {{"type", "object"},
             {"required", {"name"}},
             {"additionalProperties", false},
             {"properties", {{"name", {{"type", "string"}}}}}}}}}}}}};
  chat_request["properties"]["parallel_tool_calls"] = {{"type", "boolean"}};
  chat_request["properties"]["top_logprobs"]["description"] = "Only with \"logprobs\": true";
  chat_request["allOf"] = output_format_rules();
  chat_request["allOf"].push_back(only_when_true("stream_options", "stream"));
  chat_request["allOf"].push_back(only_when_true("top_logprobs", "logprobs"));
  if (limits.vocab_size > 0) {
    for (json* request : {&completion_request, &chat_request}) {
      (*request)["properties"]["logit_bias"]["propertyNames"] = {{"pattern", decimal_at_most(limits.vocab_size - 1)}};
    }
  }

  const json finish_reason = or_null({{"type", "string"}, {"enum", {"stop", "length", "tool_calls", "error"}}});
  const json completion_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"text", {{"type", "string"}}},
        {"logprobs", or_null({{"type", "object"}})},
        {"finish_reason", finish_reason}}}};
  const json chat_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"message",
         {{"type", "object"},
          {"properties",
           {{"role", {{"type", "string"}}},
            {"content", or_null({{"type", "string"}})},
            {"tool_calls", {{"type", "array"}, {"items", {{"type", "object"}}}}}}}}},
        {"logprobs", or_null({{"type", "object"}})},
        {"finish_reason", finish_reason}}}};
  const json chunk_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"delta",
         {{"type", "object"},
          {"properties",
           {{"role", {{"type", "string"}}},
            {"content", {{"type", "string"}}},
            {"tool_calls", {{"type", "array"}, {"items", {{"type", "object"}}}}}}}}},
        {"logprobs", or_null({{"type", "object"}})},
        {"finish_reason", finish_reason}}}};

  const json model = {{"type", "object"},
                      {"properties",
                       {{"id", {{"type", "string"}}},
                        {"object", {{"type", "string"}, {"enum", {"model"}}}},
                        {"created", {{"type", "integer"}}},
                        {"owned_by", {{"type", "string"}}},
                        {"max_model_len", {{"type", "integer"}}}}}};
  const json error = {
      {"type", "object"},
      {"required", {"error"}},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"required", {"message", "type"}},
          {"properties",
           {{"message", {{"type", "string"}}},
            {"type", {{"type", "string"}}},
            {"param", or_null({{"type", "string"}})},
            {"code", or_null({{"type", "string"}})}}}}}}}};

  // The Responses API: the chat request it translates to (server/responses_request.h).
  const json text_part = nullable_optionals({{"type", "object"},
                          {"required", {"type", "text"}},
                          {"additionalProperties", false},
                          {"properties",
                           {{"type", {{"type", "string"}, {"enum", {"input_text", "output_text"}}}},
                            {"text", {{"type", "string"}}},
                            {"annotations", {{"type", "array"}}}}}});
  const json input_message = nullable_optionals({
      {"type", "object"},
      {"required", {"role", "content"}},
      {"additionalProperties", false},
      {"properties",
       {{"type", {{"type", "string"}, {"enum", {"message"}}}},
        {"role", {{"type", "string"}, {"enum", {"user", "system", "developer", "assistant"}}}},
        {"content", {{"oneOf", {{{"type", "string"}}, {{"type", "array"}, {"items", text_part}}}}}},
        {"id", {{"type", "string"}}},
        {"status", {{"type", "string"}}}}}});
  const json function_call = nullable_optionals({{"type", "object"},
                              {"required", {"type", "call_id", "name", "arguments"}},
                              {"additionalProperties", false},
                              {"properties",
                               {{"type", {{"type", "string"}, {"enum", {"function_call"}}}},
                                {"call_id", {{"type", "string"}}},
                                {"name", {{"type", "string"}}},
                                {"arguments", {{"type", "string"}}},
                                {"id", {{"type", "string"}}},
                                {"status", {{"type", "string"}}}}}});
  const json function_output = nullable_optionals({{"type", "object"},
                                {"required", {"type", "call_id", "output"}},
                                {"additionalProperties", false},
                                {"properties",
                                 {{"type", {{"type", "string"}, {"enum", {"function_call_output"}}}},
                                  {"call_id", {{"type", "string"}}},
                                  {"output", {{"type", "string"}}},
                                  {"id", {{"type", "string"}}},
                                  {"status", {{"type", "string"}}}}}});
  json responses_request = {{"type", "object"}, {"required", {"model", "input"}}, {"additionalProperties", false}};
  const json chat_properties = chat_request["properties"];
  json& rp = responses_request["properties"];
  for (const char* key : {"model", "temperature", "top_p", "seed", "stream", "user", "parallel_tool_calls", "store",
                          "metadata", "service_tier"}) {
    rp[key] = chat_properties[key];
  }
  rp["max_output_tokens"] = chat_properties["max_completion_tokens"];
  rp["input"] = {{"oneOf",
                  {{{"type", "string"}},
                   {{"type", "array"},
                    {"minItems", 1},
                    {"items", {{"oneOf", {input_message, function_call, function_output}}}}}}}};
  rp["instructions"] = {{"type", "string"}};
  rp["truncation"] = {{"type", "string"}, {"enum", {"disabled"}}};
  rp["tools"] = {{"type", "array"},
                 {"items",
                  {{"type", "object"},
                   {"required", {"type", "name"}},
                   {"additionalProperties", false},
                   {"properties",
                    {{"type", {{"type", "string"}, {"enum", {"function"}}}},
                     {"name", {{"type", "string"}, {"pattern", "^[A-Za-z0-9_-]{1,64}$"}}},
                     {"description", {{"type", "string"}}},
                     {"parameters", {{"type", "object"}, {"description", "JSON Schema of the arguments"}}},
                     {"strict", {{"type", "boolean"}}}}}}},
                 {"description", "Function tools; names must differ"}};
  rp["tool_choice"] = {{"description", chat_properties["tool_choice"]["description"]},
                       {"oneOf",
                        {{{"type", "string"}, {"enum", {"none", "auto", "required"}}},
                         {{"type", "object"},
                          {"required", {"type", "name"}},
                          {"additionalProperties", false},
                          {"properties", {{"type", {{"type", "string"}, {"enum", {"function"}}}}, {"name", {{"type", "string"}}}}}}}}};
  json formats = chat_properties["response_format"]["oneOf"];
  json schema_format = {{"type", "object"},
                        {"required", {"type"}},
                        {"additionalProperties", false},
                        {"properties", formats[2]["properties"]["json_schema"]["properties"]}};
  schema_format["properties"]["type"] = {{"type", "string"}, {"enum", {"json_schema"}}};
  rp["text"] = {{"type", "object"},
                {"additionalProperties", false},
                {"properties", {{"format", {{"oneOf", {formats[0], formats[1], schema_format}}}}}}};
  responses_request = nullable_optionals(std::move(responses_request));
  // vLLM's /tokenize: a prompt (as /v1/completions) or messages (as /v1/chat/completions).
  json tokenize_request = {
      {"type", "object"},
      {"additionalProperties", false},
      {"required", json::array()},
      {"properties",
       {{"model", {{"type", "string"}, {"description", "Optional; when given, the served model's id"}}},
        {"prompt", {{"type", "string"}}},
        {"messages", {{"type", "array"}, {"minItems", 1}, {"items", message_schema()}}},
        {"add_special_tokens",
         {{"type", "boolean"}, {"description", "Default true with a prompt (BOS), false with messages"}}},
        {"add_generation_prompt", {{"type", "boolean"}, {"description", "Messages only; default true"}}},
        {"return_token_strs", {{"type", "boolean"}}}}}};
  tokenize_request = nullable_optionals(std::move(tokenize_request));
  tokenize_request["oneOf"] = {{{"required", {"prompt"}}, {"properties", {{"prompt", {{"type", "string"}}}}}},
                               {{"required", {"messages"}}, {"properties", {{"messages", {{"type", "array"}}}}}}};
  json detokenize_request = {{"type", "object"},
                             {"additionalProperties", false},
                             {"required", {"tokens"}},
                             {"properties", {{"model", {{"type", "string"}}}, {"tokens", {{"type", "array"}, {"items", token_id}}}}}};
  detokenize_request = nullable_optionals(std::move(detokenize_request));
  const json tokenize_response = {{"type", "object"},
                                  {"required", {"count", "max_model_len", "tokens"}},
                                  {"properties",
                                   {{"count", {{"type", "integer"}}},
                                    {"max_model_len", {{"type", "integer"}}},
                                    {"tokens", {{"type", "array"}, {"items", {{"type", "integer"}}}}},
                                    {"token_strs", {{"type", "array"}, {"items", {{"type", "string"}}}}}}}};
  const json detokenize_response = {
      {"type", "object"}, {"required", {"prompt"}}, {"properties", {{"prompt", {{"type", "string"}}}}}};

  completion_request = nullable_optionals(std::move(completion_request));
  chat_request = nullable_optionals(std::move(chat_request));
  const json response = {{"type", "object"},
                         {"properties",
                          {{"id", {{"type", "string"}}},
                           {"object", {{"type", "string"}, {"enum", {"response"}}}},
                           {"created_at", {{"type", "integer"}}},
                           {"status", {{"type", "string"}}},
                           {"model", {{"type", "string"}}},
                           {"output", {{"type", "array"}, {"items", {{"type", "object"}}}}},
                           {"usage", {{"type", "object"}}}}}};
  return {{"ResponsesRequest", responses_request},
          {"Response", response},
          {"CompletionRequest", completion_request},
          {"Completion", response_schema("text_completion", completion_choice)},
          {"ChatCompletionRequest", chat_request},
          {"ChatCompletion", response_schema("chat.completion", chat_choice)},
          {"ChatCompletionChunk", response_schema("chat.completion.chunk", chunk_choice)},
          {"TokenizeRequest", tokenize_request},
          {"Tokenize", tokenize_response},
          {"DetokenizeRequest", detokenize_request},
          {"Detokenize", detokenize_response},
          {"Model", model},
          {"ModelList",
           {{"type", "object"},
            {"properties", {{"object", {{"type", "string"}, {"enum", {"list"}}}}, {"data", {{"type", "array"}, {"items", ref("Model")}}}}}}},
          {"Error", error}};
}

}  // namespace

json openapi_document(const DocumentOptions& options) {
  const bool keyed_api = options.api_key;
  const bool keyed_probes = options.api_key && !options.public_probes;
  const json plain_json = {{"description", "OK"}, {"content", json_content({{"type", "object"}})}};
  json paths = {
      {"/v1/completions",
       generation_path("Complete prompts (special tokens written in a prompt are matched as tokens)",
                       "CompletionRequest", "Completion", "Completion", keyed_api)},
      {"/v1/chat/completions",
       generation_path("Answer a conversation (rendered with the model's chat template; message text is plain "
                       "text, never special tokens)",
                       "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", keyed_api)},
      {"/v1/responses",
       generation_path("OpenAI's Responses API, stateless (previous_response_id and stored responses are refused)",
                       "ResponsesRequest", "Response", "Response stream event", keyed_api)},
      {"/v1/models",
       get_path("The served model", {{"description", "OK"}, {"content", json_content(ref("ModelList"))}}, keyed_api,
                {"503"})},
      {"/v1/models/{model}",
       get_path("One model; 404 for any id but the served model's",
                {{"description", "OK"}, {"content", json_content(ref("Model"))}}, keyed_api, {"404", "503"})},
      {"/tokenize",
       post_path("The token ids a prompt (as /v1/completions) or messages (as /v1/chat/completions) run on "
                 "(vLLM's shape)",
                 "TokenizeRequest", "Tokenize", keyed_api)},
      {"/detokenize", post_path("Token ids back to text (vLLM's shape)", "DetokenizeRequest", "Detokenize", keyed_api)},
      {"/health", get_path("The same as /health/ready", plain_json, keyed_probes)},
      {"/health/ready",
       get_path("Readiness: 200 when the model is loaded, the server is not draining and the step loop has made "
                "progress within --readiness-stall-seconds; 503 otherwise",
                plain_json, keyed_probes)},
      {"/health/live",
       get_path("Liveness: 503 only when the step loop has had work without progress for longer than "
                "--liveness-stall-seconds; 200 otherwise (loading and draining included)",
                plain_json, keyed_probes)},
      {"/metrics",
       get_path("Prometheus metrics",
                {{"description", "Text exposition format 0.0.4"},
                 {"content", {{"text/plain", {{"schema", {{"type", "string"}}}}}}}},
                keyed_probes)},
      {"/version", get_path("The server version", plain_json, keyed_probes)},
      {"/openapi.json", get_path("This document", plain_json, keyed_probes)},
  };
  paths["/v1/models/{model}"]["get"]["parameters"] = {
      {{"name", "model"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}}}}};
  // 3.1: its schemas are JSON Schema 2020-12, which can say what 3.0 cannot
  // (propertyNames for logit_bias keys), so generated clients and schemathesis
  // know the same rules the parser enforces.
  json document = {{"openapi", "3.1.0"},
                   {"info",
                    {{"title", "nibble"},
                     {"version", options.version},
                     {"description", "OpenAI-compatible inference server for compressed (quantized and pruned) LLMs"}}},
                   {"paths", paths},
                   {"components", {{"schemas", schemas(options.limits)}}}};
  if (options.api_key) {
    // Routes that need no key say so with an empty "security" of their own.
    document["components"]["securitySchemes"] = {{"bearer", {{"type", "http"}, {"scheme", "bearer"}}}};
    document["security"] = {{{"bearer", json::array()}}};
  }
  return document;
}

}  // namespace nibble::server
