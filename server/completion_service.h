#pragma once
// /v1/completions and /v1/chat/completions without HTTP: turns the prompts (or
// the messages, through the model's chat template) into tokens, submits one
// scheduler group per prompt (a sequence per choice, the prompt computed once
// where the scheduler can), turns their token events into text
// (stop strings, echo, log-probabilities) and hands the caller either stream
// chunks as they come or the whole response at the end. The HTTP layer only
// moves bytes.
#include <chrono>
#include <cstdint>
#include <optional>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/chat_template.h"
#include "scheduler/scheduler.h"
#include "server/api_error.h"
#include "server/chat_prompt.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "server/output_constraint.h"
#include "server/responses_request.h"
#include "tokenizer/tokenizer.h"

namespace nibble::server {

class ResponseShape;  // how choices become JSON (completion_service.cpp)

struct ServedModel {
  std::string name;                 // the id clients send as "model"
  std::int64_t context_length = 0;  // prompt + completion tokens
  std::vector<TokenId> stop_tokens;  // end-of-sequence ids
  std::string system_fingerprint;
  // The model's chat template (or --chat-template); none: chat requests are refused.
  std::shared_ptr<const ChatTemplate> chat_template;
  // Special tokens written in chat message text are matched as tokens, as they are
  // in /v1/completions prompts (--allow-special-tokens-in-messages); by default
  // only the template's own markup can produce them.
  bool special_tokens_in_messages = false;
  std::int64_t vocab_size = 0;  // the model's logits (0: the tokenizer's)
  // How this model writes tool calls (--tool-call-parser, or from its template),
  // and whether its template renders `tools` and assistant `tool_calls` itself;
  // where it does not, the tools are described in a system message and past calls
  // written into the assistant's text, in the model's format.
  ToolCallFormat tool_call_format = ToolCallFormat::Hermes;
  bool template_renders_tools = false;
  bool template_renders_tool_calls = false;
};

// Where a request's output goes. Called from the scheduler's event thread; an
// implementation hands the text to its connection and returns.
class ResponseOutput {
 public:
  virtual ~ResponseOutput() = default;
  virtual void stream_event(std::string sse_text) = 0;  // streaming: one event ("data: ...\n\n")
  virtual void finish(std::string json_text) = 0;        // not streaming: the whole body, 200
  virtual void fail(const ApiError& error) = 0;          // before any output: the error instead
  virtual void stream_end() = 0;                          // streaming: after the last event
  // Before finish() / stream_end(): the response id and token counts, for logs.
  virtual void summary(const std::string& /*response_id*/, const Usage& /*usage*/) {}
};

// A running request; cancel() (client gone) stops all its sequences at their next step.
class RunningRequest {
 public:
  virtual ~RunningRequest() = default;
  virtual void cancel() = 0;
};

class CompletionService {
 public:
  // A request still generating `request_timeout` after it arrived ends as if
  // its max_tokens were reached (finish_reason "length").
  CompletionService(const Tokenizer& tokenizer, scheduler::Scheduler& scheduler, ServerMetrics& metrics,
                    ServedModel model, std::optional<std::chrono::milliseconds> request_timeout = std::nullopt);

  // Validates what needs the model (prompt length, model name), submits, and
  // returns at once. Throws ApiError (400/404 for the request, 429 when the
  // scheduler is full); afterwards everything arrives through `output`.
  std::shared_ptr<RunningRequest> start(const CompletionRequest& request, std::shared_ptr<ResponseOutput> output);
  // The same for chat: a template that refuses the conversation is a 400.
  std::shared_ptr<RunningRequest> start(const ChatRequest& request, std::shared_ptr<ResponseOutput> output);
  // The Responses API: a chat request answered as a response object / its events.
  std::shared_ptr<RunningRequest> start(const ResponsesRequest& request, std::shared_ptr<ResponseOutput> output);

  // POST /tokenize and /detokenize (vLLM's shapes): the ids a completion or chat
  // request would run on, and text back from ids. Answered at once, off the model.
  nlohmann::json tokenize(const TokenizeRequest& request) const;
  nlohmann::json detokenize(const DetokenizeRequest& request) const;

  const ServedModel& model() const { return model_; }

 private:
  const Tokenizer& tokenizer_;
  scheduler::Scheduler& scheduler_;
  ServerMetrics& metrics_;
  ServedModel model_;
  ChatPromptEncoder chat_prompts_;
  OutputConstraints constraints_;
  std::optional<std::chrono::milliseconds> request_timeout_;

  void check_model(const std::string& requested) const;
  // Chat, answered in `shape` (none: Chat Completions).
  std::shared_ptr<RunningRequest> start_chat(const ChatRequest& request, std::shared_ptr<ResponseOutput> output,
                                             std::shared_ptr<const ResponseShape> shape);
  // The template's messages and extra variables (tools) for a chat request.
  std::pair<nlohmann::ordered_json, nlohmann::ordered_json> chat_variables(const ChatRequest& request) const;
  // The output constraint: response_format, or the forced call of tool_choice required / named.
  std::shared_ptr<const engine::TokenConstraint> chat_constraint(const ChatRequest& request);
  nlohmann::ordered_json template_messages(const std::vector<ChatMessage>& messages) const;
  void check_chat_template() const;
  void check_length(std::int64_t prompt_tokens, const GenerationOptions& options, const char* prompt_param) const;
};

}  // namespace nibble::server
