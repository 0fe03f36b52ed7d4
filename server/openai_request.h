#pragma once
// The bodies of POST /v1/completions and /v1/chat/completions, parsed and checked
// field by field before any work starts. Every rejection is an ApiError (400 with
// the field in `param`) worded like OpenAI's, so clients see familiar errors:
// unknown fields, fields we do not serve (suffix, tools, ...), wrong JSON types and
// out-of-range values are all named.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/token.h"
#include "engine/sampler.h"
#include "server/api_error.h"
#include "server/tool_calls.h"

namespace nibble::server {

// What the server allows, from its flags and the loaded model.
struct RequestLimits {
  std::int64_t vocab_size = 0;         // token ids (prompts, logit_bias) must be below it
  std::int64_t max_tokens = 1 << 20;   // per request (--max-tokens)
  int max_n = 128;                     // completions per request (n, best_of)
  int max_logprobs = 20;               // top-N alternatives per token
  int max_stop = 4;                    // stop strings, as OpenAI
};

// The output constraint a request asks for: OpenAI's response_format, or one of
// vLLM's guided_json / guided_regex / guided_choice / guided_grammar (GBNF).
struct OutputFormat {
  enum class Kind { Text, JsonObject, JsonSchema, Regex, Choice, Grammar };
  Kind kind = Kind::Text;
  nlohmann::ordered_json schema;     // JsonSchema
  std::string text;                  // Regex: the pattern; Grammar: GBNF
  std::vector<std::string> choices;  // Choice
  std::string param;                 // the field it came from, named in errors
  // JsonSchema: where in the body the schema is (a JSON pointer), so it can be
  // read again with its properties in the client's order (restore_schema_order).
  std::string schema_pointer;
};

// Options both endpoints share. Sampling defaults are OpenAI's (temperature 1, top_p 1).
struct GenerationOptions {
  std::optional<std::int64_t> max_tokens;  // none: until the context is full
  engine::SamplingParams sampling;
  bool seeded = false;                     // `seed` given: the same request gives the same text
  int n = 1;
  std::vector<std::string> stop;
  std::map<TokenId, float> logit_bias;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string user;
  bool ignore_eos = false;  // vLLM's extension: do not stop at end-of-sequence tokens
  OutputFormat format;
};

// One prompt of /v1/completions: text to tokenize, or the token ids as sent.
struct Prompt {
  std::optional<std::string> text;
  std::vector<TokenId> ids;
};

struct CompletionRequest {
  std::string model;
  std::vector<Prompt> prompts;  // one completion set (n of them) per prompt
  GenerationOptions options;
  int best_of = 1;              // candidates generated per prompt; the n most likely are returned
  std::optional<int> logprobs;  // top-N alternatives per token
  bool echo = false;            // return the prompt before the completion
};

struct ChatMessage {
  std::string role;  // system, developer, user, assistant, tool
  std::string content;
  std::optional<std::string> name;
  std::vector<ToolCall> tool_calls;         // assistant: the calls it made
  std::optional<std::string> tool_call_id;  // tool: which call this answers
};

struct ToolChoice {
  enum class Mode { None, Auto, Required, Named };
  Mode mode = Mode::Auto;
  std::string name;  // Named
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  GenerationOptions options;
  bool logprobs = false;
  int top_logprobs = 0;
  std::vector<ToolFunction> tools;
  ToolChoice tool_choice;  // default: auto with tools, none without
  bool parallel_tool_calls = true;
};

// POST /tokenize (vLLM's shape): a prompt as /v1/completions tokenizes it, or
// messages as /v1/chat/completions renders and tokenizes them.
struct TokenizeRequest {
  std::optional<std::string> model;  // optional; when given, the served model's id
  std::optional<std::string> prompt;
  std::vector<ChatMessage> messages;  // used when there is no prompt
  bool add_special_tokens = true;     // prompt: BOS as a completion gets it; messages: default false
  bool add_generation_prompt = true;  // messages only
  bool return_token_strs = false;     // also each token's text
};

// POST /detokenize (vLLM's shape): token ids back to text.
struct DetokenizeRequest {
  std::optional<std::string> model;
  std::vector<TokenId> tokens;
};

// The numeric fields of a request body and the values each accepts. The parser
// enforces exactly these and /openapi.json declares exactly these, so the two
// cannot disagree. Bounds are JSON numbers so integer bounds stay exact.
struct NumericField {
  std::string name;
  bool integer = false;
  nlohmann::json minimum, maximum;
  bool exclusive_minimum = false;  // > minimum rather than >=
};

enum class Endpoint { Completions, ChatCompletions };

inline constexpr double kMaxLogitBias = 100;  // logit_bias values lie in [-100, 100]

std::vector<NumericField> numeric_fields(Endpoint endpoint, const RequestLimits& limits);

// A request body as JSON; malformed JSON or a non-object is a 400.
nlohmann::json parse_request_body(std::string_view body);

CompletionRequest parse_completion_request(const nlohmann::json& body, const RequestLimits& limits);
ChatRequest parse_chat_request(const nlohmann::json& body, const RequestLimits& limits);
TokenizeRequest parse_tokenize_request(const nlohmann::json& body);
DetokenizeRequest parse_detokenize_request(const nlohmann::json& body, const RequestLimits& limits);

// The parsed body's objects have sorted keys; a JSON Schema's properties are
// generated in the order the client wrote them, so the schema is read again from
// the raw body (a body that parsed once parses again).
void restore_schema_order(OutputFormat& format, std::string_view body);
void restore_schema_order(CompletionRequest& request, std::string_view body);
void restore_schema_order(ChatRequest& request, std::string_view body);

// Fields that official clients send by default and that cannot change what a
// local model generates: accepted and ignored (with a debug log), as vLLM does.
const std::vector<std::string>& ignored_fields();

}  // namespace nibble::server
