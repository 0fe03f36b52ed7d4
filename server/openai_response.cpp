#include "server/openai_response.h"

namespace nibble::server {
namespace {

using json = nlohmann::json;

json base(const ResponseHeader& header, const char* object) {
  return {{"id", header.id},
          {"object", object},
          {"created", header.created},
          {"model", header.model},
          {"system_fingerprint", header.system_fingerprint}};
}

json usage_json(const Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

json optional_text(const std::optional<std::string>& value) { return value ? json(*value) : json(); }

// Text that JSON can carry: invalid UTF-8 (a token holding part of a character)
// is replaced when the document is dumped, so strings are stored as they are.
json completion_logprobs(const CompletionChoice& choice) {
  if (!choice.logprobs) return nullptr;
  json tokens = json::array(), token_logprobs = json::array(), top = json::array();
  for (const auto& t : *choice.logprobs) {
    tokens.push_back(t.text);
    if (!t.logprob) {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(*t.logprob);
    json alternatives = json::object();
    for (const auto& [text, logprob] : t.top) alternatives[text] = logprob;
    top.push_back(std::move(alternatives));
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top},
          {"text_offset", choice.text_offset}};
}

json bytes_of(const std::string& text) {
  json bytes = json::array();
  for (const unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

json chat_logprobs(const std::optional<std::vector<TokenLogprob>>& logprobs) {
  if (!logprobs) return nullptr;
  json content = json::array();
  for (const auto& t : *logprobs) {
    json top = json::array();
    for (const auto& [text, logprob] : t.top) {
      top.push_back({{"token", text}, {"logprob", logprob}, {"bytes", bytes_of(text)}});
    }
    content.push_back({{"token", t.text},
                       {"logprob", t.logprob ? json(*t.logprob) : json(nullptr)},
                       {"bytes", bytes_of(t.text)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

json completion_choices(const std::vector<CompletionChoice>& choices) {
  json out = json::array();
  for (const auto& c : choices) {
    out.push_back({{"index", c.index},
                   {"text", c.text},
                   {"logprobs", completion_logprobs(c)},
                   {"finish_reason", optional_text(c.finish_reason)}});
  }
  return out;
}

}  // namespace

json completion_response(const ResponseHeader& header, const std::vector<CompletionChoice>& choices,
                         const Usage& usage) {
  json out = base(header, "text_completion");
  out["choices"] = completion_choices(choices);
  out["usage"] = usage_json(usage);
  return out;
}

json completion_chunk(const ResponseHeader& header, const std::vector<CompletionChoice>& choices) {
  json out = base(header, "text_completion");
  out["choices"] = completion_choices(choices);
  return out;
}

namespace {

// message.tool_calls, or a chunk's delta.tool_calls (which number the calls).
json tool_calls_json(const std::vector<ToolCall>& calls, bool indexed) {
  json list = json::array();
  for (std::size_t i = 0; i < calls.size(); ++i) {
    json call = {{"id", calls[i].id},
                 {"type", "function"},
                 {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (indexed) call["index"] = i;
    list.push_back(std::move(call));
  }
  return list;
}

}  // namespace

json chat_response(const ResponseHeader& header, const std::vector<ChatChoice>& choices, const Usage& usage) {
  json out = base(header, "chat.completion");
  json list = json::array();
  for (const auto& c : choices) {
    json message = {{"role", "assistant"}, {"content", c.content}, {"refusal", nullptr}};
    if (!c.tool_calls.empty()) {
      if (c.content.empty()) message["content"] = nullptr;
      message["tool_calls"] = tool_calls_json(c.tool_calls, false);
    }
    list.push_back({{"index", c.index},
                    {"message", std::move(message)},
                    {"logprobs", chat_logprobs(c.logprobs)},
                    {"finish_reason", optional_text(c.finish_reason)}});
  }
  out["choices"] = std::move(list);
  out["usage"] = usage_json(usage);
  return out;
}

json chat_chunk(const ResponseHeader& header, const std::vector<ChatChoice>& choices) {
  json out = base(header, "chat.completion.chunk");
  json list = json::array();
  for (const auto& c : choices) {
    json delta = json::object();
    if (c.role) delta["role"] = *c.role;
    if (!c.content.empty() || c.role) delta["content"] = c.content;
    if (!c.tool_calls.empty()) delta["tool_calls"] = tool_calls_json(c.tool_calls, true);
    list.push_back({{"index", c.index},
                    {"delta", std::move(delta)},
                    {"logprobs", chat_logprobs(c.logprobs)},
                    {"finish_reason", optional_text(c.finish_reason)}});
  }
  out["choices"] = std::move(list);
  return out;
}

json usage_chunk(const ResponseHeader& header, bool chat, const Usage& usage) {
  json out = base(header, chat ? "chat.completion.chunk" : "text_completion");
  out["choices"] = json::array();
  out["usage"] = usage_json(usage);
  return out;
}

std::string to_json_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& value) { return "data: " + to_json_text(value) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

}  // namespace nibble::server
