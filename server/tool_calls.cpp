#include "server/tool_calls.h"

#include <fmt/format.h>

#include <random>

#include "common/error.h"
#include "grammar/json_schema.h"

namespace nibble::server {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kMistralTag = "[TOOL_CALLS]";

std::string new_call_id() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("call_{:016x}{:08x}", rng(), static_cast<std::uint32_t>(rng()));
}

std::string_view trim(std::string_view s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return {};
  const auto end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// {"name": ..., "arguments"|"parameters": {...}} as a call; none when it is not one.
std::optional<ToolCall> call_of(const ojson& object) {
  if (!object.is_object() || !object.contains("name") || !object["name"].is_string()) return std::nullopt;
  const ojson* arguments = nullptr;
  for (const char* key : {"arguments", "parameters"}) {
    if (object.contains(key)) arguments = &object[key];
  }
  ToolCall call;
  call.id = new_call_id();
  call.name = object["name"].get<std::string>();
  if (arguments == nullptr) {
    call.arguments = "{}";
  } else if (arguments->is_string()) {
    call.arguments = arguments->get<std::string>();  // some models write the JSON text
  } else if (arguments->is_object()) {
    call.arguments = arguments->dump();
  } else {
    return std::nullopt;
  }
  return call;
}

std::optional<ojson> parse_json(std::string_view text) {
  try {
    return ojson::parse(text);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

ParsedToolCalls parse_hermes(std::string_view text) {
  ParsedToolCalls out;
  const auto first = text.find(kHermesOpen);
  if (first == std::string_view::npos) return {std::string(text), {}};
  for (auto at = first; at != std::string_view::npos; at = text.find(kHermesOpen, at)) {
    const auto body = at + kHermesOpen.size();
    const auto close = text.find(kHermesClose, body);
    if (close == std::string_view::npos) return {std::string(text), {}};
    const auto json = parse_json(trim(text.substr(body, close - body)));
    const auto call = json ? call_of(*json) : std::nullopt;
    if (!call) return {std::string(text), {}};
    out.calls.push_back(*call);
    at = close + kHermesClose.size();
    if (!trim(text.substr(at, text.find(kHermesOpen, at) - at)).empty()) return {std::string(text), {}};
  }
  out.content = std::string(trim(text.substr(0, first)));
  return out;
}

ParsedToolCalls parse_llama3(std::string_view text) {
  const std::string_view body = trim(text);
  if (body.empty() || body.front() != '{') return {std::string(text), {}};
  const auto json = parse_json(body);
  const auto call = json ? call_of(*json) : std::nullopt;
  if (!call) return {std::string(text), {}};
  return {"", {*call}};
}

ParsedToolCalls parse_mistral(std::string_view text) {
  std::string_view body = trim(text);
  if (body.substr(0, kMistralTag.size()) == kMistralTag) body = trim(body.substr(kMistralTag.size()));
  if (body.empty() || body.front() != '[') return {std::string(text), {}};
  const auto json = parse_json(body);
  if (!json || !json->is_array() || json->empty()) return {std::string(text), {}};
  ParsedToolCalls out;
  for (const auto& item : *json) {
    const auto call = call_of(item);
    if (!call) return {std::string(text), {}};
    out.calls.push_back(*call);
  }
  return out;
}

}  // namespace

std::optional<ToolCallFormat> tool_call_format_named(std::string_view name) {
  if (name == "hermes") return ToolCallFormat::Hermes;
  if (name == "llama3_json") return ToolCallFormat::Llama3Json;
  if (name == "mistral") return ToolCallFormat::Mistral;
  return std::nullopt;
}

const char* tool_call_format_name(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::Hermes:
      return "hermes";
    case ToolCallFormat::Llama3Json:
      return "llama3_json";
    case ToolCallFormat::Mistral:
      return "mistral";
  }
  return "hermes";
}

ToolCallFormat tool_call_format_of_template(std::string_view source) {
  if (source.find(kMistralTag) != std::string_view::npos) return ToolCallFormat::Mistral;
  if (source.find("<|python_tag|>") != std::string_view::npos || source.find("ipython") != std::string_view::npos) {
    return ToolCallFormat::Llama3Json;
  }
  return ToolCallFormat::Hermes;
}

ParsedToolCalls parse_tool_calls(ToolCallFormat format, std::string_view text) {
  switch (format) {
    case ToolCallFormat::Hermes:
      return parse_hermes(text);
    case ToolCallFormat::Llama3Json:
      return parse_llama3(text);
    case ToolCallFormat::Mistral:
      return parse_mistral(text);
  }
  return {std::string(text), {}};
}

std::string ToolCallSplitter::push(std::string_view text) {
  held_ += text;
  if (calls_started_) return "";
  if (format_ == ToolCallFormat::Hermes) {
    const auto at = held_.find(kHermesOpen);
    std::size_t keep = held_.size();
    if (at != std::string::npos) {
      calls_started_ = true;
      keep = at;
    } else {
      // Hold back an end of the text that may be the start of the marker.
      for (std::size_t n = std::min(held_.size(), kHermesOpen.size() - 1); n > 0; --n) {
        if (kHermesOpen.substr(0, n) == std::string_view(held_).substr(held_.size() - n)) {
          keep = held_.size() - n;
          break;
        }
      }
    }
    std::string out = held_.substr(0, keep);
    held_.erase(0, keep);
    return out;
  }
  if (past_start_) {
    std::string out;
    out.swap(held_);
    return out;
  }
  // JSON formats: a call is the whole output, so the first non-space byte decides.
  const auto first = held_.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const char opener = format_ == ToolCallFormat::Llama3Json ? '{' : '[';
  if (held_[first] == opener) {
    calls_started_ = true;
    return "";
  }
  past_start_ = true;
  std::string out;
  out.swap(held_);
  return out;
}

ParsedToolCalls ToolCallSplitter::finish() {
  if (!calls_started_) {
    ParsedToolCalls out{held_, {}};
    held_.clear();
    return out;
  }
  ParsedToolCalls out = parse_tool_calls(format_, held_);
  held_.clear();
  return out;
}

grammar::Grammar forced_tool_call_grammar(ToolCallFormat format, const std::vector<ToolFunction>& functions,
                                          int max_calls) {
  const char* arguments_key = format == ToolCallFormat::Llama3Json ? "parameters" : "arguments";
  ojson call = {{"anyOf", ojson::array()}};
  for (const auto& f : functions) {
    ojson one = {{"type", "object"},
                 {"properties", {{"name", {{"const", f.name}}}, {arguments_key, f.parameters}}},
                 {"required", {"name", arguments_key}},
                 {"additionalProperties", false}};
    call["anyOf"].push_back(std::move(one));
  }
  switch (format) {
    case ToolCallFormat::Hermes:
      return grammar::json_schema_grammar(call, {std::string(kHermesOpen) + "\n", "\n" + std::string(kHermesClose),
                                                 "\n", 1, std::max(1, max_calls)});
    case ToolCallFormat::Llama3Json:
      return grammar::json_schema_grammar(call, {"", "", "", 1, 1});
    case ToolCallFormat::Mistral: {
      // [TOOL_CALLS] is a special token no grammar can write; the array alone is parsed as calls.
      const ojson calls = {{"type", "array"}, {"items", call}, {"minItems", 1}, {"maxItems", std::max(1, max_calls)}};
      return grammar::json_schema_grammar(calls);
    }
  }
  fail("unknown tool call format");
}

std::string tools_prompt(ToolCallFormat format, const std::vector<ToolFunction>& tools) {
  std::string definitions;
  for (const auto& t : tools) {
    ojson d = {{"type", "function"}, {"function", {{"name", t.name}, {"description", t.description}, {"parameters", t.parameters}}}};
    definitions += d.dump() + "\n";
  }
  switch (format) {
    case ToolCallFormat::Hermes:
      return "You may call one or more functions to assist with the user query.\n\nYou are provided with function "
             "signatures within <tools></tools> XML tags:\n<tools>\n" +
             definitions +
             "</tools>\n\nFor each function call, return a json object with function name and arguments within "
             "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
             "<args-json-object>}\n</tool_call>";
    case ToolCallFormat::Llama3Json:
      return "Given the following functions, please respond with a JSON for a function call with its proper "
             "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
             "\"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n" +
             definitions;
    case ToolCallFormat::Mistral:
      return "You can call these functions by answering [TOOL_CALLS] followed by a JSON list of "
             "{\"name\": ..., \"arguments\": {...}} objects:\n" +
             definitions;
  }
  return definitions;
}

std::string tool_calls_text(ToolCallFormat format, const std::vector<ToolCall>& calls) {
  const auto object = [&](const ToolCall& c) {
    const char* key = format == ToolCallFormat::Llama3Json ? "parameters" : "arguments";
    ojson arguments = parse_json(c.arguments).value_or(ojson(c.arguments));
    return ojson{{"name", c.name}, {key, std::move(arguments)}};
  };
  std::string out;
  switch (format) {
    case ToolCallFormat::Hermes:
      for (const auto& c : calls) {
        if (!out.empty()) out += "\n";
        out += std::string(kHermesOpen) + "\n" + object(c).dump() + "\n" + std::string(kHermesClose);
      }
      return out;
    case ToolCallFormat::Llama3Json:
      return calls.empty() ? "" : object(calls.front()).dump();
    case ToolCallFormat::Mistral: {
      ojson list = ojson::array();
      for (const auto& c : calls) list.push_back(object(c));
      return std::string(kMistralTag) + list.dump();
    }
  }
  return out;
}

}  // namespace nibble::server
