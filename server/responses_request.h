#pragma once
// POST /v1/responses (OpenAI's Responses API), stateless: the body is translated
// into the Chat Completions request it means (instructions -> a system message,
// input items -> messages, function_call / function_call_output items -> assistant
// tool_calls / tool messages, flat function tools -> chat tools, text.format ->
// response_format, max_output_tokens -> max_completion_tokens) and checked by
// the chat parser. previous_response_id, conversation and background need state
// this server does not keep: a 400 says so.
#include <string_view>

#include <nlohmann/json.hpp>

#include "server/openai_request.h"

namespace nibble::server {

struct ResponsesRequest {
  ChatRequest chat;
  nlohmann::json echo;  // request fields the response object repeats (instructions, tools, text, ...)
};

ResponsesRequest parse_responses_request(const nlohmann::json& body, const RequestLimits& limits);
void restore_schema_order(ResponsesRequest& request, std::string_view body);

}  // namespace nibble::server
