#include "server/openai_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "common/whole_number.h"

#include <spdlog/spdlog.h>

namespace nibble::server {
namespace {

using json = nlohmann::json;

std::string type_name(const json& value) {
  if (value.is_null()) return "null";
  if (value.is_boolean()) return "a boolean";
  if (value.is_number_integer() || value.is_number_unsigned()) return "an integer";
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_array()) return "an array";
  return "an object";
}

// JSON Schema (so /openapi.json, and clients built from it) counts 2.0 as an
// integer; so do Python's OpenAI servers. Whole-valued numbers become integers
// before the fields are read, so integer fields take them. Iterative: a body may
// nest thousands of levels deep.
json whole_numbers_as_integers(json body) {
  std::vector<json*> pending{&body};
  while (!pending.empty()) {
    json* value = pending.back();
    pending.pop_back();
    if (value->is_number_float()) {
      if (const auto whole = whole_int64(value->get<double>())) *value = *whole;
    } else if (value->is_structured()) {
      for (auto& element : *value) pending.push_back(&element);
    }
  }
  return body;
}

ApiError wrong_type(const std::string& param, const json& value, std::string_view wanted) {
  return ApiError::invalid(param, fmt::format("'{}' must be {}, got {}", param, wanted, type_name(value)),
                           "invalid_type");
}

// The fields of one request object, read by type. Which fields are read is
// recorded, so anything left over is reported as unrecognized; fields the API
// defines but this server does not serve are rejected by name.
class Fields {
 public:
  Fields(const json& object, std::set<std::string> unsupported)
      : object_(object), unsupported_(std::move(unsupported)) {}

  const json* find(const std::string& key) {
    read_.insert(key);
    const auto it = object_.find(key);
    // An explicit null means "default", as the OpenAI clients send it.
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<bool> boolean(const std::string& key) {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(key, *v, "a boolean");
    return v->get<bool>();
  }

  // An integer field within the range its table entry gives.
  std::optional<std::int64_t> integer(const NumericField& spec) {
    const json* v = find(spec.name);
    if (v == nullptr) return std::nullopt;
    if (!spec.integer) throw std::logic_error(spec.name + " is not an integer field");
    if (!v->is_number_integer() && !v->is_number_unsigned()) throw wrong_type(spec.name, *v, "an integer");
    const auto low = spec.minimum.get<std::int64_t>(), high = spec.maximum.get<std::int64_t>();
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(high)) {
      throw out_of_range(spec);
    }
    const auto value = v->get<std::int64_t>();
    if (value < low || (spec.exclusive_minimum && value == low) || value > high) throw out_of_range(spec);
    return value;
  }

  // A number field within the range its table entry gives.
  std::optional<double> number(const NumericField& spec) {
    const json* v = find(spec.name);
    if (v == nullptr) return std::nullopt;
    if (spec.integer) throw std::logic_error(spec.name + " is an integer field");
    if (!v->is_number()) throw wrong_type(spec.name, *v, "a number");
    const auto value = v->get<double>();
    const auto low = spec.minimum.get<double>(), high = spec.maximum.get<double>();
    if (!std::isfinite(value) || value < low || (spec.exclusive_minimum && value == low) || value > high) {
      throw out_of_range(spec);
    }
    return value;
  }

  std::optional<std::string> string(const std::string& key) {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) throw wrong_type(key, *v, "a string");
    return v->get<std::string>();
  }

  // After every known field was read: the first unsupported or unknown one is an error.
  void reject_the_rest() const {
    for (const auto& [key, value] : object_.items()) {
      if (read_.contains(key)) continue;
      if (unsupported_.contains(key)) {
        if (value.is_null()) continue;
        throw ApiError::invalid(key, fmt::format("'{}' is not supported by this server", key), "unsupported_parameter");
      }
      const std::string name = log::clip(key);
      throw ApiError::invalid(name, fmt::format("Unrecognized request argument supplied: {}", name),
                              "unrecognized_argument");
    }
  }

 private:
  static ApiError out_of_range(const NumericField& spec) {
    return ApiError::invalid(spec.name,
                             spec.exclusive_minimum ? fmt::format("'{}' must be greater than {} and at most {}",
                                                                  spec.name, spec.minimum.dump(), spec.maximum.dump())
                                                    : fmt::format("'{}' must be between {} and {}", spec.name,
                                                                  spec.minimum.dump(), spec.maximum.dump()),
                             "out_of_range");
  }

  const json& object_;
  std::set<std::string> unsupported_;
  std::set<std::string> read_;
};

// The table of numeric fields, looked up by name.
class NumericTable {
 public:
  NumericTable(Endpoint endpoint, const RequestLimits& limits) : fields_(numeric_fields(endpoint, limits)) {}
  const NumericField& operator[](std::string_view name) const {
    for (const auto& field : fields_) {
      if (field.name == name) return field;
    }
    throw std::logic_error(fmt::format("no limits for '{}'", name));
  }

 private:
  std::vector<NumericField> fields_;
};

std::string required_model(Fields& fields) {
  const auto model = fields.string("model");
  if (!model) throw ApiError::invalid("model", "'model' is required", "missing_required_parameter");
  return *model;
}

TokenId token_id(const json& value, const std::string& param, const RequestLimits& limits) {
  if (!value.is_number_integer() && !value.is_number_unsigned()) throw wrong_type(param, value, "a token id");
  const auto id = value.get<std::int64_t>();
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(limits.vocab_size)) {
    throw ApiError::invalid(param, fmt::format("token id {} is outside the vocabulary (size {})",
                                               value.get<std::uint64_t>(), limits.vocab_size));
  }
  if (id < 0 || id >= limits.vocab_size) {
    throw ApiError::invalid(param, fmt::format("token id {} is outside the vocabulary (size {})", id, limits.vocab_size));
  }
  return static_cast<TokenId>(id);
}

std::vector<TokenId> token_ids(const json& array, const std::string& param, const RequestLimits& limits) {
  std::vector<TokenId> ids;
  ids.reserve(array.size());
  for (const auto& value : array) ids.push_back(token_id(value, param, limits));
  return ids;
}

// string | [string] | [int] | [[int]]
std::vector<Prompt> parse_prompts(Fields& fields, const RequestLimits& limits) {
  const json* v = fields.find("prompt");
  if (v == nullptr) throw ApiError::invalid("prompt", "'prompt' is required", "missing_required_parameter");
  if (v->is_string()) return {Prompt{v->get<std::string>(), {}}};
  if (!v->is_array()) throw wrong_type("prompt", *v, "a string, an array of strings or an array of token ids");
  if (v->empty()) throw ApiError::invalid("prompt", "'prompt' must not be empty");
  const json& first = v->front();
  std::vector<Prompt> prompts;
  if (first.is_number()) {
    prompts.push_back(Prompt{std::nullopt, token_ids(*v, "prompt", limits)});
    return prompts;
  }
  for (const auto& item : *v) {
    if (item.is_string()) {
      prompts.push_back(Prompt{item.get<std::string>(), {}});
    } else if (item.is_array() && !item.empty()) {
      prompts.push_back(Prompt{std::nullopt, token_ids(item, "prompt", limits)});
    } else {
      throw wrong_type("prompt", item, "a string or a non-empty array of token ids in each element");
    }
  }
  return prompts;
}

std::vector<std::string> parse_stop(Fields& fields, const RequestLimits& limits) {
  const json* v = fields.find("stop");
  if (v == nullptr) return {};
  std::vector<std::string> stop;
  if (v->is_string()) {
    stop.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& item : *v) {
      if (!item.is_string()) throw wrong_type("stop", item, "a string in each element");
      stop.push_back(item.get<std::string>());
    }
  } else {
    throw wrong_type("stop", *v, "a string or an array of strings");
  }
  if (static_cast<int>(stop.size()) > limits.max_stop) {
    throw ApiError::invalid("stop", fmt::format("'stop' takes at most {} strings", limits.max_stop));
  }
  for (const auto& s : stop) {
    if (s.empty()) throw ApiError::invalid("stop", "'stop' strings must not be empty");
  }
  return stop;
}

std::map<TokenId, float> parse_logit_bias(Fields& fields, const RequestLimits& limits) {
  const json* v = fields.find("logit_bias");
  if (v == nullptr) return {};
  if (!v->is_object()) throw wrong_type("logit_bias", *v, "an object of token id -> bias");
  std::map<TokenId, float> bias;
  for (const auto& [key, value] : v->items()) {
    // Decimal digits only (what /openapi.json's key pattern allows): stoll alone
    // would also take " 5", "+5" and "-0".
    std::int64_t id = -1;
    if (!key.empty() && std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      const std::string significant = key.substr(std::min(key.find_first_not_of('0'), key.size() - 1));
      if (significant.size() <= 18) id = std::stoll(significant);  // longer: beyond any vocabulary
    }
    if (id < 0 || id >= limits.vocab_size) {
      throw ApiError::invalid("logit_bias", fmt::format("'{}' is not a token id of this model", log::clip(key)));
    }
    if (!value.is_number()) throw wrong_type("logit_bias", value, "a number for each token");
    const double b = value.get<double>();
    if (!std::isfinite(b) || b < -kMaxLogitBias || b > kMaxLogitBias) {
      throw ApiError::invalid("logit_bias",
                              fmt::format("'logit_bias' values must be between {} and {}", -kMaxLogitBias, kMaxLogitBias),
                              "out_of_range");
    }
    bias[static_cast<TokenId>(id)] = static_cast<float>(b);
  }
  return bias;
}

// A JSON Schema given as an object (or a boolean schema), or as JSON text (vLLM's guided_json allows both).
nlohmann::ordered_json schema_value(const json& v, const std::string& param) {
  if (v.is_object() || v.is_boolean()) return nlohmann::ordered_json(v);
  if (v.is_string()) {
    try {
      auto parsed = nlohmann::ordered_json::parse(v.get<std::string>());
      if (parsed.is_object() || parsed.is_boolean()) return parsed;
    } catch (const nlohmann::json::exception&) {
    }
    throw ApiError::invalid(param, fmt::format("'{}' must be a JSON Schema object (or its JSON text)", param));
  }
  throw wrong_type(param, v, "a JSON Schema object");
}

OutputFormat parse_response_format(const json& v) {
  const std::string param = "response_format";
  if (!v.is_object()) throw wrong_type(param, v, "an object");
  Fields fields(v, {});
  const auto type = fields.string("type");
  if (!type) throw ApiError::invalid(param + ".type", "'response_format.type' is required", "missing_required_parameter");
  OutputFormat format;
  format.param = param;
  if (*type == "text") {
    format.kind = OutputFormat::Kind::Text;
  } else if (*type == "json_object") {
    format.kind = OutputFormat::Kind::JsonObject;
  } else if (*type == "json_schema") {
    format.kind = OutputFormat::Kind::JsonSchema;
    const json* spec = fields.find("json_schema");
    if (spec == nullptr) {
      throw ApiError::invalid(param + ".json_schema", "'response_format.json_schema' is required for type json_schema",
                              "missing_required_parameter");
    }
    if (!spec->is_object()) throw wrong_type(param + ".json_schema", *spec, "an object");
    Fields inner(*spec, {});
    const auto name = inner.string("name");
    if (name && name->size() > 64) {
      throw ApiError::invalid(param + ".json_schema.name", "'response_format.json_schema.name' is at most 64 characters");
    }
    inner.string("description");
    inner.boolean("strict");  // nibble always enforces the schema
    const json* schema = inner.find("schema");
    format.param = param + ".json_schema.schema";
    format.schema = schema ? schema_value(*schema, format.param) : nlohmann::ordered_json::object();
    if (schema && schema->is_object()) format.schema_pointer = "/response_format/json_schema/schema";
    try {
      inner.reject_the_rest();
    } catch (const ApiError& e) {
      throw ApiError::invalid(param + ".json_schema." + e.param().value_or(""), e.what(), e.code());
    }
  } else {
    throw ApiError::invalid(param + ".type",
                            fmt::format("response_format type '{}' is not supported (text, json_object, json_schema)",
                                        log::clip(*type)));
  }
  try {
    fields.reject_the_rest();
  } catch (const ApiError& e) {
    throw ApiError::invalid(param + "." + e.param().value_or(""), e.what(), e.code());
  }
  return format;
}

// response_format or one guided_* field; more than one is ambiguous.
OutputFormat parse_output_format(Fields& fields) {
  std::vector<OutputFormat> given;
  if (const json* v = fields.find("response_format")) given.push_back(parse_response_format(*v));
  if (const json* v = fields.find("guided_json")) {
    OutputFormat f{OutputFormat::Kind::JsonSchema, schema_value(*v, "guided_json"), {}, {}, "guided_json", {}};
    if (v->is_object()) f.schema_pointer = "/guided_json";
    given.push_back(std::move(f));
  }
  if (const auto pattern = fields.string("guided_regex")) {
    given.push_back({OutputFormat::Kind::Regex, {}, *pattern, {}, "guided_regex", {}});
  }
  if (const json* v = fields.find("guided_choice")) {
    if (!v->is_array() || v->empty()) throw wrong_type("guided_choice", *v, "a non-empty array of strings");
    OutputFormat f{OutputFormat::Kind::Choice, {}, {}, {}, "guided_choice", {}};
    for (const auto& choice : *v) {
      if (!choice.is_string() || choice.get<std::string>().empty()) {
        throw wrong_type("guided_choice", choice, "a non-empty string in each element");
      }
      f.choices.push_back(choice.get<std::string>());
    }
    given.push_back(std::move(f));
  }
  if (const auto grammar = fields.string("guided_grammar")) {
    given.push_back({OutputFormat::Kind::Grammar, {}, *grammar, {}, "guided_grammar", {}});
  }
  if (given.size() > 1) {
    const auto field = [](const OutputFormat& f) { return f.param.substr(0, f.param.find('.')); };
    throw ApiError::invalid(field(given[1]), fmt::format("'{}' and '{}' cannot be combined: give one output format",
                                                         field(given[0]), field(given[1])));
  }
  return given.empty() ? OutputFormat{} : std::move(given.front());
}

std::vector<ToolFunction> parse_tools(Fields& fields) {
  std::vector<ToolFunction> tools;
  const json* v = fields.find("tools");
  if (v == nullptr) return tools;
  if (!v->is_array()) throw wrong_type("tools", *v, "an array");
  for (std::size_t i = 0; i < v->size(); ++i) {
    const std::string at = fmt::format("tools[{}]", i);
    const json& t = (*v)[i];
    if (!t.is_object()) throw wrong_type(at, t, "an object");
    Fields tool(t, {});
    const auto type = tool.string("type");
    if (type != "function") throw ApiError::invalid(at + ".type", "tools must have type 'function'");
    const json* function = tool.find("function");
    if (function == nullptr || !function->is_object()) {
      throw ApiError::invalid(at + ".function", "'function' (an object) is required", "missing_required_parameter");
    }
    Fields f(*function, {});
    ToolFunction out;
    const auto name = f.string("name");
    if (!name || name->empty() || name->size() > 64 ||
        !std::all_of(name->begin(), name->end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; })) {
      throw ApiError::invalid(at + ".function.name", "function names are 1-64 letters, digits, '_' or '-'");
    }
    for (const auto& other : tools) {
      if (other.name == *name) throw ApiError::invalid(at + ".function.name", fmt::format("function '{}' is defined twice", *name));
    }
    out.name = *name;
    out.description = f.string("description").value_or("");
    if (const json* parameters = f.find("parameters")) {
      if (!parameters->is_object()) throw wrong_type(at + ".function.parameters", *parameters, "a JSON Schema object");
      out.parameters = nlohmann::ordered_json(*parameters);
      out.parameters_pointer = fmt::format("/tools/{}/function/parameters", i);
    } else {
      out.parameters = {{"type", "object"}, {"properties", nlohmann::ordered_json::object()}};
    }
    f.boolean("strict");  // arguments are always enforced where they are constrained
    try {
      f.reject_the_rest();
      tool.reject_the_rest();
    } catch (const ApiError& e) {
      throw ApiError::invalid(at + "." + e.param().value_or(""), e.what(), e.code());
    }
    tools.push_back(std::move(out));
  }
  return tools;
}

ToolChoice parse_tool_choice(Fields& fields, const std::vector<ToolFunction>& tools) {
  ToolChoice choice;
  choice.mode = tools.empty() ? ToolChoice::Mode::None : ToolChoice::Mode::Auto;
  const json* v = fields.find("tool_choice");
  if (v == nullptr) return choice;
  if (v->is_string()) {
    const auto mode = v->get<std::string>();
    if (mode == "none") choice.mode = ToolChoice::Mode::None;
    else if (mode == "auto") choice.mode = ToolChoice::Mode::Auto;
    else if (mode == "required") choice.mode = ToolChoice::Mode::Required;
    else throw ApiError::invalid("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", ...}");
  } else if (v->is_object()) {
    Fields named(*v, {});
    if (named.string("type") != "function") throw ApiError::invalid("tool_choice.type", "tool_choice type must be 'function'");
    const json* function = named.find("function");
    if (function == nullptr || !function->is_object() || !function->contains("name") || !(*function)["name"].is_string()) {
      throw ApiError::invalid("tool_choice.function", "'tool_choice.function.name' is required", "missing_required_parameter");
    }
    Fields f(*function, {});
    choice.mode = ToolChoice::Mode::Named;
    choice.name = *f.string("name");
    try {
      f.reject_the_rest();
      named.reject_the_rest();
    } catch (const ApiError& e) {
      throw ApiError::invalid("tool_choice." + e.param().value_or(""), e.what(), e.code());
    }
    const bool known = std::any_of(tools.begin(), tools.end(), [&](const ToolFunction& t) { return t.name == choice.name; });
    if (!known) throw ApiError::invalid("tool_choice", fmt::format("tool_choice names '{}', which is not in 'tools'", log::clip(choice.name)));
  } else {
    throw wrong_type("tool_choice", *v, "a string or an object");
  }
  // auto among no tools is none; required has nothing to call.
  if (tools.empty() && choice.mode == ToolChoice::Mode::Auto) choice.mode = ToolChoice::Mode::None;
  if (tools.empty() && choice.mode == ToolChoice::Mode::Required) {
    throw ApiError::invalid("tool_choice", "tool_choice 'required' needs 'tools'");
  }
  return choice;
}

void ignore_client_defaults(Fields& fields) {
  if (fields.boolean("store")) spdlog::debug("request_field_ignored field=store");
  if (fields.string("service_tier")) spdlog::debug("request_field_ignored field=service_tier");
  if (const json* metadata = fields.find("metadata")) {
    const bool strings = metadata->is_object() && std::all_of(metadata->begin(), metadata->end(),
                                                              [](const json& v) { return v.is_string(); });
    if (!strings) throw wrong_type("metadata", *metadata, "an object of strings");
    spdlog::debug("request_field_ignored field=metadata");
  }
}

// The sampling and output fields both endpoints take.
GenerationOptions parse_options(Fields& fields, const NumericTable& table, const RequestLimits& limits) {
  GenerationOptions o;
  auto& s = o.sampling;
  s.temperature = fields.number(table["temperature"]).value_or(1.0);
  s.top_p = fields.number(table["top_p"]).value_or(1.0);
  s.top_k = fields.integer(table["top_k"]).value_or(0);
  if (s.top_k < 0) s.top_k = 0;  // -1 is vLLM's spelling of "off"
  s.min_p = fields.number(table["min_p"]).value_or(0.0);
  s.presence_penalty = fields.number(table["presence_penalty"]).value_or(0.0);
  s.frequency_penalty = fields.number(table["frequency_penalty"]).value_or(0.0);
  s.repetition_penalty = fields.number(table["repetition_penalty"]).value_or(1.0);
  if (const auto seed = fields.integer(table["seed"])) {
    s.seed = static_cast<std::uint64_t>(*seed);
    o.seeded = true;
  }
  o.n = static_cast<int>(fields.integer(table["n"]).value_or(1));
  o.stop = parse_stop(fields, limits);
  o.logit_bias = parse_logit_bias(fields, limits);
  o.stream = fields.boolean("stream").value_or(false);
  if (const json* options = fields.find("stream_options")) {
    if (!o.stream) throw ApiError::invalid("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!options->is_object()) throw wrong_type("stream_options", *options, "an object");
    Fields inner(*options, {});
    o.include_usage = inner.boolean("include_usage").value_or(false);
    inner.reject_the_rest();
  }
  o.user = fields.string("user").value_or("");
  // vLLM's extension, which benchmarks use to get exactly max_tokens tokens.
  o.ignore_eos = fields.boolean("ignore_eos").value_or(false);
  o.format = parse_output_format(fields);
  if (o.ignore_eos && !o.format.param.empty()) {
    throw ApiError::invalid("ignore_eos", "'ignore_eos' cannot be combined with an output format");
  }
  ignore_client_defaults(fields);
  try {
    s.validate();
  } catch (const Error& e) {
    throw ApiError(400, "invalid_request_error", e.what());
  }
  return o;
}

std::string message_content(const json& message, std::size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  const auto it = message.find("content");
  if (it == message.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) throw wrong_type(param, *it, "a string or an array of content parts");
  // Text parts are joined with newlines (as vLLM does); other kinds need a model that reads them.
  std::string text;
  for (const auto& part : *it) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      throw wrong_type(param, part, "an object with a 'type' in each element");
    }
    const auto type = part["type"].get<std::string>();
    if (type != "text") {
      throw ApiError::invalid(
          param, fmt::format("content parts of type '{}' are not supported by this model", log::clip(type)),
          "unsupported_content");
    }
    if (!part.contains("text") || !part["text"].is_string()) {
      throw wrong_type(param + ".text", part.value("text", json()), "a string");
    }
    if (!text.empty()) text += '\n';
    text += part["text"].get<std::string>();
  }
  return text;
}

// An assistant message's tool_calls: [{id, type: function, function: {name, arguments}}].
std::vector<ToolCall> parse_message_tool_calls(const json& v, const std::string& where) {
  const std::string param = where + ".tool_calls";
  if (!v.is_array()) throw wrong_type(param, v, "an array");
  std::vector<ToolCall> calls;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", param, i);
    const json& c = v[i];
    if (!c.is_object()) throw wrong_type(at, c, "an object");
    Fields call(c, {});
    ToolCall out;
    out.id = call.string("id").value_or("");
    if (const auto type = call.string("type"); type && *type != "function") {
      throw ApiError::invalid(at + ".type", "tool call type must be 'function'");
    }
    const json* function = call.find("function");
    if (function == nullptr || !function->is_object()) {
      throw ApiError::invalid(at + ".function", "'function' (an object with name and arguments) is required");
    }
    Fields f(*function, {});
    const auto name = f.string("name");
    if (!name) throw ApiError::invalid(at + ".function.name", "'name' is required", "missing_required_parameter");
    out.name = *name;
    out.arguments = f.string("arguments").value_or("{}");
    try {
      f.reject_the_rest();
      call.reject_the_rest();
    } catch (const ApiError& e) {
      throw ApiError::invalid(at + "." + e.param().value_or(""), e.what(), e.code());
    }
    calls.push_back(std::move(out));
  }
  return calls;
}

std::vector<ChatMessage> parse_messages(Fields& fields) {
  const json* v = fields.find("messages");
  if (v == nullptr) throw ApiError::invalid("messages", "'messages' is required", "missing_required_parameter");
  if (!v->is_array()) throw wrong_type("messages", *v, "an array");
  if (v->empty()) throw ApiError::invalid("messages", "'messages' must not be empty");
  std::vector<ChatMessage> messages;
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) throw wrong_type(where, m, "an object");
    Fields message(m, {"function_call", "audio"});
    ChatMessage out;
    const auto role = message.string("role");
    if (!role) throw ApiError::invalid(where + ".role", "'role' is required", "missing_required_parameter");
    if (*role != "system" && *role != "developer" && *role != "user" && *role != "assistant" && *role != "tool") {
      throw ApiError::invalid(where + ".role",
                              fmt::format("role '{}' is not supported (system, developer, user, assistant, tool)",
                                          log::clip(*role)));
    }
    out.role = *role;
    message.find("content");
    out.content = message_content(m, i);
    if (out.role != "assistant" && (!m.contains("content") || m["content"].is_null())) {
      throw ApiError::invalid(where + ".content", "'content' is required", "missing_required_parameter");
    }
    out.name = message.string("name");
    if (const json* calls = message.find("tool_calls")) {
      if (out.role != "assistant") throw ApiError::invalid(where + ".tool_calls", "only assistant messages have 'tool_calls'");
      out.tool_calls = parse_message_tool_calls(*calls, where);
    }
    out.tool_call_id = message.string("tool_call_id");
    if (out.role == "tool" && !out.tool_call_id) {
      throw ApiError::invalid(where + ".tool_call_id", "tool messages need 'tool_call_id'", "missing_required_parameter");
    }
    message.string("refusal");  // an assistant turn's refusal text: nothing to render
    try {
      message.reject_the_rest();
    } catch (const ApiError& e) {
      throw ApiError::invalid(where + "." + e.param().value_or(""), e.what(), e.code());
    }
    messages.push_back(std::move(out));
  }
  return messages;
}

}  // namespace

const std::vector<std::string>& ignored_fields() {
  static const std::vector<std::string> names = {"store", "metadata", "service_tier"};
  return names;
}

void restore_schema_order(OutputFormat& format, std::string_view body) {
  if (format.schema_pointer.empty()) return;
  try {
    const auto ordered = nlohmann::ordered_json::parse(body);
    format.schema = ordered.at(nlohmann::ordered_json::json_pointer(format.schema_pointer));
  } catch (const nlohmann::json::exception&) {
    // Keep the sorted copy: the same schema, keys in another order.
  }
}

void restore_schema_order(CompletionRequest& request, std::string_view body) {
  restore_schema_order(request.options.format, body);
}

void restore_schema_order(ChatRequest& request, std::string_view body) {
  restore_schema_order(request.options.format, body);
  if (request.tools.empty()) return;
  try {
    const auto ordered = nlohmann::ordered_json::parse(body);
    for (auto& tool : request.tools) {
      if (!tool.parameters_pointer.empty()) {
        tool.parameters = ordered.at(nlohmann::ordered_json::json_pointer(tool.parameters_pointer));
      }
    }
  } catch (const nlohmann::json::exception&) {
    // Keep the sorted copies.
  }
}

json parse_request_body(std::string_view body) {
  // The top-level field being read, so a value the parser cannot hold (1e400, a
  // 400-digit integer) is reported against the field that carried it.
  std::string field;
  const json::parser_callback_t track_field = [&field](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) field = parsed.get<std::string>();
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(body, track_field);
  } catch (const json::out_of_range&) {
    // nlohmann's message quotes the whole number, which may be most of the body.
    if (field.empty()) {
      throw ApiError(400, "invalid_request_error", "The request body holds a number too large to represent",
                     std::nullopt, "invalid_json");
    }
    const std::string name = log::clip(field);
    throw ApiError::invalid(name, fmt::format("'{}' holds a number too large to represent", name), "out_of_range");
  } catch (const json::exception& e) {
    throw ApiError(400, "invalid_request_error",
                   fmt::format("The request body is not valid JSON: {}", log::clip(e.what())), std::nullopt,
                   "invalid_json");
  }
  if (!parsed.is_object()) {
    throw ApiError(400, "invalid_request_error", "The request body must be a JSON object", std::nullopt, "invalid_json");
  }
  return parsed;
}

std::vector<NumericField> numeric_fields(Endpoint endpoint, const RequestLimits& limits) {
  const auto number = [](std::string name, double low, double high, bool exclusive_low = false) {
    return NumericField{std::move(name), false, low, high, exclusive_low};
  };
  const auto integer = [](std::string name, std::int64_t low, std::int64_t high) {
    return NumericField{std::move(name), true, low, high, false};
  };
  std::vector<NumericField> fields = {
      number("temperature", 0, 2),
      number("top_p", 0, 1, true),
      integer("top_k", -1, std::numeric_limits<std::int32_t>::max()),  // -1 and 0: off
      number("min_p", 0, 1),
      number("presence_penalty", -2, 2),
      number("frequency_penalty", -2, 2),
      number("repetition_penalty", 0, 2, true),
      integer("seed", std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()),
      integer("n", 1, limits.max_n),
  };
  if (endpoint == Endpoint::Completions) {
    fields.push_back(integer("max_tokens", 0, limits.max_tokens));  // 0 only with echo
    fields.push_back(integer("logprobs", 0, limits.max_logprobs));
    fields.push_back(integer("best_of", 1, limits.max_n));
  } else {
    fields.push_back(integer("max_tokens", 1, limits.max_tokens));
    fields.push_back(integer("max_completion_tokens", 1, limits.max_tokens));
    fields.push_back(integer("top_logprobs", 0, limits.max_logprobs));
  }
  return fields;
}

CompletionRequest parse_completion_request(const json& raw_body, const RequestLimits& limits) {
  const NumericTable table(Endpoint::Completions, limits);
  const json body = whole_numbers_as_integers(raw_body);
  Fields fields(body, {"suffix"});
  CompletionRequest r;
  r.model = required_model(fields);
  r.prompts = parse_prompts(fields, limits);
  r.options = parse_options(fields, table, limits);
  r.options.max_tokens = fields.integer(table["max_tokens"]).value_or(16);
  r.echo = fields.boolean("echo").value_or(false);
  if (*r.options.max_tokens == 0 && !r.echo) {
    throw ApiError::invalid("max_tokens", "'max_tokens' must be at least 1 (0 only with 'echo')", "out_of_range");
  }
  if (const auto logprobs = fields.integer(table["logprobs"])) r.logprobs = static_cast<int>(*logprobs);
  r.best_of = static_cast<int>(fields.integer(table["best_of"]).value_or(r.options.n));
  if (r.best_of < r.options.n) throw ApiError::invalid("best_of", "'best_of' must be at least 'n'");
  if (r.options.stream && r.best_of > r.options.n) {
    throw ApiError::invalid("best_of", "'best_of' greater than 'n' cannot be streamed");
  }
  fields.reject_the_rest();
  return r;
}

ChatRequest parse_chat_request(const json& raw_body, const RequestLimits& limits) {
  const json body = whole_numbers_as_integers(raw_body);
  Fields fields(body, {"functions", "function_call", "audio", "modalities", "prediction", "reasoning_effort",
                       "web_search_options"});
  const NumericTable table(Endpoint::ChatCompletions, limits);
  ChatRequest r;
  r.model = required_model(fields);
  r.messages = parse_messages(fields);
  r.options = parse_options(fields, table, limits);
  // max_completion_tokens is the newer name; a request may carry either or both
  // (the newer wins). Both are read, so neither is left over as "unrecognized".
  const auto max_completion_tokens = fields.integer(table["max_completion_tokens"]);
  const auto max_tokens = fields.integer(table["max_tokens"]);
  r.options.max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;
  r.tools = parse_tools(fields);
  r.tool_choice = parse_tool_choice(fields, r.tools);
  r.parallel_tool_calls = fields.boolean("parallel_tool_calls").value_or(true);
  const bool forced = r.tool_choice.mode == ToolChoice::Mode::Required || r.tool_choice.mode == ToolChoice::Mode::Named;
  if (forced && r.options.format.kind != OutputFormat::Kind::Text) {
    throw ApiError::invalid(r.options.format.param, fmt::format("'{}' cannot be combined with tool_choice required or a "
                                                                "named function (the call's format is the output's)",
                                                                r.options.format.param));
  }
  r.logprobs = fields.boolean("logprobs").value_or(false);
  if (const auto top = fields.integer(table["top_logprobs"])) {
    if (!r.logprobs) throw ApiError::invalid("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    r.top_logprobs = static_cast<int>(*top);
  }
  fields.reject_the_rest();
  return r;
}

TokenizeRequest parse_tokenize_request(const json& body) {
  Fields fields(body, {"tools", "chat_template", "chat_template_kwargs", "mm_processor_kwargs", "continue_final_message"});
  TokenizeRequest r;
  r.model = fields.string("model");
  const bool has_prompt = body.contains("prompt") && !body["prompt"].is_null();
  const bool has_messages = body.contains("messages") && !body["messages"].is_null();
  if (has_prompt == has_messages) {
    throw ApiError::invalid(has_prompt ? "messages" : "prompt", "give either 'prompt' or 'messages'",
                            has_prompt ? "invalid_value" : "missing_required_parameter");
  }
  if (has_prompt) {
    r.prompt = fields.string("prompt");
    fields.find("messages");  // null
  } else {
    r.messages = parse_messages(fields);
    fields.find("prompt");  // null
  }
  r.add_generation_prompt = fields.boolean("add_generation_prompt").value_or(true);
  // vLLM's defaults: BOS for a raw prompt, none for messages (the template writes it).
  r.add_special_tokens = fields.boolean("add_special_tokens").value_or(has_prompt);
  r.return_token_strs = fields.boolean("return_token_strs").value_or(false);
  fields.reject_the_rest();
  return r;
}

DetokenizeRequest parse_detokenize_request(const json& raw_body, const RequestLimits& limits) {
  const json body = whole_numbers_as_integers(raw_body);
  Fields fields(body, {});
  DetokenizeRequest r;
  r.model = fields.string("model");
  const json* tokens = fields.find("tokens");
  if (tokens == nullptr) throw ApiError::invalid("tokens", "'tokens' is required", "missing_required_parameter");
  if (!tokens->is_array()) throw wrong_type("tokens", *tokens, "an array of token ids");
  r.tokens = token_ids(*tokens, "tokens", limits);
  fields.reject_the_rest();
  return r;
}

}  // namespace nibble::server
