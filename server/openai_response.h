#pragma once
// The JSON nibble answers with, in OpenAI's exact shapes: text_completion and
// chat.completion objects, their streaming chunks, usage, log-probabilities, and
// the server-sent-event framing. Pure functions of what was generated, so the
// formats are tested without a model or a socket.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/tool_calls.h"

namespace nibble::server {

// What every response object carries.
struct ResponseHeader {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  std::int64_t created = 0;  // Unix seconds
  std::string model;
  std::string system_fingerprint;
};

struct Usage {
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
};

// One token with its log-probability and the most likely alternatives. `text` is
// the token's bytes; it may be part of a UTF-8 character, which JSON text shows as
// U+FFFD while chat's `bytes` keeps the exact bytes.
struct TokenLogprob {
  std::string text;
  std::optional<float> logprob;  // none for a prompt's first token (nothing before it to predict it)
  std::vector<std::pair<std::string, float>> top;
};

struct CompletionChoice {
  int index = 0;
  std::string text;
  // Present when the request asked for logprobs; `text_offset` per token is
  // relative to the start of `text` (echoed prompt included).
  std::optional<std::vector<TokenLogprob>> logprobs;
  std::vector<std::int64_t> text_offset;
  std::optional<std::string> finish_reason;  // none while streaming
};

struct ChatChoice {
  int index = 0;
  std::optional<std::string> role;  // the first chunk of a streamed choice says "assistant"
  std::string content;
  // The calls parsed out of the text; in a response, content is null when there
  // are calls and no other text. In a chunk, each call whole (OpenAI's clients
  // join argument pieces, so one piece is a valid stream).
  std::vector<ToolCall> tool_calls;
  std::optional<std::vector<TokenLogprob>> logprobs;
  std::optional<std::string> finish_reason;
};

nlohmann::json completion_response(const ResponseHeader& header, const std::vector<CompletionChoice>& choices,
                                   const Usage& usage);
nlohmann::json completion_chunk(const ResponseHeader& header, const std::vector<CompletionChoice>& choices);
nlohmann::json chat_response(const ResponseHeader& header, const std::vector<ChatChoice>& choices, const Usage& usage);
nlohmann::json chat_chunk(const ResponseHeader& header, const std::vector<ChatChoice>& choices);
// The last chunk of a stream with stream_options.include_usage: no choices, only usage.
nlohmann::json usage_chunk(const ResponseHeader& header, bool chat, const Usage& usage);

// JSON text that is always valid UTF-8 (a token's partial character becomes U+FFFD).
std::string to_json_text(const nlohmann::json& value);
// One server-sent event carrying `value`, and the stream's final event.
std::string sse_event(const nlohmann::json& value);
std::string sse_done();

}  // namespace nibble::server
