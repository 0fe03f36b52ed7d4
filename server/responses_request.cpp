#include "server/responses_request.h"

#include <fmt/format.h>

#include <set>

#include "common/log.h"

namespace nibble::server {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError::invalid(param, message); }

void only_keys(const json& item, std::initializer_list<const char*> keys, const std::string& at);

// One content value: a string, or input_text / output_text parts (joined as chat text parts).
json content_of(const json& content, const std::string& param) {
  if (content.is_string()) return content;
  if (!content.is_array()) bad(param, fmt::format("'{}' must be a string or an array of text parts", param));
  json parts = json::array();
  for (std::size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string at = fmt::format("{}[{}]", param, i);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) bad(at, "each part needs a 'type'");
    const auto type = part["type"].get<std::string>();
    if (type != "input_text" && type != "output_text") {
      bad(at + ".type", fmt::format("content parts of type '{}' are not supported by this model", log::clip(type)));
    }
    if (!part.contains("text") || !part["text"].is_string()) bad(at + ".text", "'text' must be a string");
    only_keys(part, {"type", "text", "annotations"}, at);
    parts.push_back({{"type", "text"}, {"text", part["text"]}});
  }
  return parts;
}

std::string string_field(const json& item, const char* key, const std::string& at) {
  if (!item.contains(key) || !item[key].is_string()) bad(at + "." + key, fmt::format("'{}' must be a string", key));
  return item[key].get<std::string>();
}

void only_keys(const json& item, std::initializer_list<const char*> keys, const std::string& at) {
  for (const auto& [key, value] : item.items()) {
    bool known = false;
    for (const char* k : keys) known = known || key == k;
    if (!known) bad(at + "." + log::clip(key), fmt::format("Unrecognized field '{}'", log::clip(key)));
    // Fields read only to be accepted: still of their documented type (or null).
    if ((key == "id" || key == "status") && !value.is_null() && !value.is_string()) {
      bad(at + "." + key, fmt::format("'{}' must be a string", key));
    }
    if (key == "annotations" && !value.is_null() && !value.is_array()) bad(at + "." + key, "'annotations' must be an array");
  }
}

// input: a string (one user message) or message / function_call / function_call_output items.
json messages_of(const json& body) {
  json messages = json::array();
  if (body.contains("instructions") && !body["instructions"].is_null()) {
    if (!body["instructions"].is_string()) bad("instructions", "'instructions' must be a string");
    messages.push_back({{"role", "system"}, {"content", body["instructions"]}});
  }
  if (!body.contains("input") || body["input"].is_null()) {
    throw ApiError::invalid("input", "'input' is required", "missing_required_parameter");
  }
  const json& input = body["input"];
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return messages;
  }
  if (!input.is_array()) bad("input", "'input' must be a string or an array of items");
  if (input.empty()) bad("input", "'input' must not be empty");
  for (std::size_t i = 0; i < input.size(); ++i) {
    const json& item = input[i];
    const std::string at = fmt::format("input[{}]", i);
    if (!item.is_object()) bad(at, "each input item must be an object");
    const std::string type = item.contains("type") && item["type"].is_string() ? item["type"].get<std::string>()
                                                                                : (item.contains("type") ? "" : "message");
    if (type == "message") {
      only_keys(item, {"type", "role", "content", "id", "status"}, at);
      const auto role = string_field(item, "role", at);
      if (!item.contains("content")) throw ApiError::invalid(at + ".content", "'content' is required", "missing_required_parameter");
      messages.push_back({{"role", role}, {"content", content_of(item["content"], at + ".content")}});
    } else if (type == "function_call") {
      only_keys(item, {"type", "call_id", "name", "arguments", "id", "status"}, at);
      const json call = {{"id", string_field(item, "call_id", at)},
                         {"type", "function"},
                         {"function", {{"name", string_field(item, "name", at)}, {"arguments", string_field(item, "arguments", at)}}}};
      // Calls in a row are one assistant turn.
      if (!messages.empty() && messages.back()["role"] == "assistant" && messages.back().contains("tool_calls")) {
        messages.back()["tool_calls"].push_back(call);
      } else {
        messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({call})}});
      }
    } else if (type == "function_call_output") {
      only_keys(item, {"type", "call_id", "output", "id", "status"}, at);
      messages.push_back({{"role", "tool"}, {"tool_call_id", string_field(item, "call_id", at)},
                          {"content", string_field(item, "output", at)}});
    } else {
      bad(at + ".type", fmt::format("input items of type '{}' are not supported (message, function_call, "
                                    "function_call_output)", log::clip(type)));
    }
  }
  return messages;
}

}  // namespace

ResponsesRequest parse_responses_request(const json& body, const RequestLimits& limits) {
  for (const char* stateful : {"previous_response_id", "conversation", "background"}) {
    if (body.contains(stateful) && !body[stateful].is_null() && !(body[stateful].is_boolean() && !body[stateful].get<bool>())) {
      throw ApiError::invalid(stateful, fmt::format("'{}' needs server-side state, which this server does not keep: "
                                                    "send the whole conversation in 'input'", stateful),
                              "unsupported_parameter");
    }
  }
  static const std::set<std::string> copied = {"model", "temperature", "top_p", "stream", "user", "parallel_tool_calls",
                                               "store", "metadata", "service_tier", "seed"};
  static const std::set<std::string> handled = {"input", "instructions", "tools", "tool_choice", "text",
                                                "max_output_tokens", "previous_response_id", "conversation",
                                                "background", "truncation"};
  json chat = json::object();
  for (const auto& [key, value] : body.items()) {
    if (copied.contains(key)) {
      chat[key] = value;
    } else if (!handled.contains(key)) {
      const std::string name = log::clip(key);
      throw ApiError::invalid(name, fmt::format("Unrecognized request argument supplied: {}", name), "unrecognized_argument");
    }
  }
  if (body.contains("truncation") && !body["truncation"].is_null() && body["truncation"] != "disabled") {
    bad("truncation", "only 'truncation': 'disabled' is supported");
  }
  chat["messages"] = messages_of(body);
  if (body.contains("max_output_tokens")) chat["max_completion_tokens"] = body["max_output_tokens"];
  std::vector<std::string> pointers;  // each tool's parameters, for restore_schema_order
  if (body.contains("tools") && !body["tools"].is_null()) {
    if (!body["tools"].is_array()) bad("tools", "'tools' must be an array");
    json tools = json::array();
    for (std::size_t i = 0; i < body["tools"].size(); ++i) {
      const json& t = body["tools"][i];
      const std::string at = fmt::format("tools[{}]", i);
      if (!t.is_object() || t.value("type", json()) != "function") bad(at + ".type", "only function tools are supported");
      only_keys(t, {"type", "name", "description", "parameters", "strict"}, at);
      json function = json::object();
      for (const char* key : {"name", "description", "parameters", "strict"}) {
        if (t.contains(key)) function[key] = t[key];
      }
      tools.push_back({{"type", "function"}, {"function", function}});
    }
    chat["tools"] = std::move(tools);
  }
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const json& choice = body["tool_choice"];
    if (choice.is_object()) {
      only_keys(choice, {"type", "name"}, "tool_choice");
      if (choice.value("type", json()) != "function" || !choice.contains("name")) {
        bad("tool_choice", "a named tool_choice is {\"type\": \"function\", \"name\": ...}");
      }
      chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", choice["name"]}}}};
    } else {
      chat["tool_choice"] = choice;
    }
  }
  if (body.contains("text") && !body["text"].is_null()) {
    const json& text = body["text"];
    if (!text.is_object()) bad("text", "'text' must be an object");
    only_keys(text, {"format"}, "text");
    if (text.contains("format") && !text["format"].is_null()) {
      const json& format = text["format"];
      if (!format.is_object() || !format.contains("type")) bad("text.format", "'text.format' needs a 'type'");
      if (format["type"] == "json_schema") {
        only_keys(format, {"type", "name", "schema", "strict", "description"}, "text.format");
        json spec = json::object();
        for (const char* key : {"name", "schema", "strict", "description"}) {
          if (format.contains(key)) spec[key] = format[key];
        }
        chat["response_format"] = {{"type", "json_schema"}, {"json_schema", spec}};
      } else {
        chat["response_format"] = format;
      }
    }
  }
  ResponsesRequest out;
  out.chat = parse_chat_request(chat, limits);
  if (out.chat.options.n != 1) bad("n", "'n' is not part of the Responses API");
  if (out.chat.options.format.kind == OutputFormat::Kind::JsonSchema && !out.chat.options.format.schema_pointer.empty()) {
    out.chat.options.format.schema_pointer = "/text/format/schema";
  }
  for (std::size_t i = 0; i < out.chat.tools.size(); ++i) {
    if (!out.chat.tools[i].parameters_pointer.empty()) out.chat.tools[i].parameters_pointer = fmt::format("/tools/{}/parameters", i);
  }
  for (const char* key : {"instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature", "top_p",
                          "parallel_tool_calls", "metadata", "user"}) {
    if (body.contains(key)) out.echo[key] = body[key];
  }
  if (!out.echo.is_object()) out.echo = json::object();
  return out;
}

void restore_schema_order(ResponsesRequest& request, std::string_view body) { restore_schema_order(request.chat, body); }

}  // namespace nibble::server
