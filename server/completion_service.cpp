#include "server/completion_service.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>
#include <span>
#include <utility>

#include "common/error.h"
#include "server/openai_response.h"
#include "server/stop_strings.h"

namespace nibble::server {
namespace {

using json = nlohmann::json;
using scheduler::Clock;

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<std::uint32_t>(rng()));
}

std::int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One choice of a request: the text so far and how it ended.
struct Choice {
  int index = 0;
  std::size_t prompt = 0;  // which prompt of the request
  std::string text;        // echo + generated text, stop strings removed
  std::string echo;        // the prompt's text when echoed
  std::vector<TokenId> echo_ids;  // the prompt's tokens when echoed with logprobs
  std::vector<TokenLogprob> logprobs;
  std::vector<std::int64_t> text_offset;
  std::int64_t generated = 0;
  std::optional<std::string> finish_reason;
  double logprob_sum = 0;  // of the tokens in `text`, to rank best_of candidates
  std::int64_t text_tokens = 0;
  bool opened = false;  // streaming: its first chunk went out
  std::unique_ptr<IncrementalDecoder> decoder;
  std::unique_ptr<StopStringFilter> stop;
  std::unique_ptr<ToolCallSplitter> tool_splitter;  // chat with tools: text after a call's start is held
  std::vector<ToolCall> tool_calls;
  std::shared_ptr<scheduler::Ticket> ticket;
  std::optional<Clock::time_point> last_token;
};
using Choices = std::vector<std::unique_ptr<Choice>>;

}  // namespace

// The endpoints differ only in the JSON their choices become.
class ResponseShape {
 public:
  virtual ~ResponseShape() = default;
  virtual bool chat() const = 0;
  // Streaming: what opens a choice before its first text (chat names the role).
  virtual std::optional<json> opening_chunk(const ResponseHeader& header, const Choice& choice) const = 0;
  // Streaming: new text, with its tokens' log-probabilities (and offsets into
  // the choice's text) when asked for.
  virtual json delta_chunk(const ResponseHeader& header, const Choice& choice, const std::string& text,
                           std::span<const TokenLogprob> entries, std::span<const std::int64_t> offsets) const = 0;
  virtual json closing_chunk(const ResponseHeader& header, const Choice& choice) const = 0;
  // Streaming, chat only: the choice's tool calls, once they are complete.
  virtual json tool_calls_chunk(const ResponseHeader&, const Choice&) const { return nullptr; }
  // Streaming: the last event before [DONE] (the Responses API's response.completed);
  // null: none. A chunk that is a JSON array is several events.
  virtual json final_event(const ResponseHeader&, const std::vector<const Choice*>&, const Usage&) const {
    return nullptr;
  }
  virtual bool numbered_events() const { return false; }  // events carry sequence_number
  // `choices` in the order returned; their position is their index.
  virtual json response(const ResponseHeader& header, const std::vector<const Choice*>& choices, bool with_logprobs,
                        const Usage& usage) const = 0;
};

namespace {

class CompletionShape final : public ResponseShape {
 public:
  bool chat() const override { return false; }
  std::optional<json> opening_chunk(const ResponseHeader&, const Choice&) const override { return std::nullopt; }
  json delta_chunk(const ResponseHeader& header, const Choice& choice, const std::string& text,
                   std::span<const TokenLogprob> entries, std::span<const std::int64_t> offsets) const override {
    CompletionChoice delta;
    delta.index = choice.index;
    delta.text = text;
    if (!entries.empty()) {
      delta.logprobs = std::vector<TokenLogprob>(entries.begin(), entries.end());
      delta.text_offset.assign(offsets.begin(), offsets.end());
    }
    return completion_chunk(header, {delta});
  }
  json closing_chunk(const ResponseHeader& header, const Choice& choice) const override {
    CompletionChoice last;
    last.index = choice.index;
    last.finish_reason = choice.finish_reason;
    return completion_chunk(header, {last});
  }
  json response(const ResponseHeader& header, const std::vector<const Choice*>& choices, bool with_logprobs,
                const Usage& usage) const override {
    std::vector<CompletionChoice> out;
    for (const auto& c : choices) {
      CompletionChoice choice;
      choice.index = static_cast<int>(out.size());
      choice.text = c->text;
      if (with_logprobs) {
        choice.logprobs = c->logprobs;
        choice.text_offset = c->text_offset;
      }
      choice.finish_reason = c->finish_reason;
      out.push_back(std::move(choice));
    }
    return completion_response(header, out, usage);
  }
};

class ChatShape final : public ResponseShape {
 public:
  bool chat() const override { return true; }
  std::optional<json> opening_chunk(const ResponseHeader& header, const Choice& choice) const override {
    ChatChoice first;
    first.index = choice.index;
    first.role = "assistant";
    return chat_chunk(header, {first});
  }
  json delta_chunk(const ResponseHeader& header, const Choice& choice, const std::string& text,
                   std::span<const TokenLogprob> entries, std::span<const std::int64_t>) const override {
    ChatChoice delta;
    delta.index = choice.index;
    delta.content = text;
    if (!entries.empty()) delta.logprobs = std::vector<TokenLogprob>(entries.begin(), entries.end());
    return chat_chunk(header, {delta});
  }
  json closing_chunk(const ResponseHeader& header, const Choice& choice) const override {
    ChatChoice last;
    last.index = choice.index;
    last.finish_reason = choice.finish_reason;
    return chat_chunk(header, {last});
  }
  json tool_calls_chunk(const ResponseHeader& header, const Choice& choice) const override {
    ChatChoice delta;
    delta.index = choice.index;
    delta.tool_calls = choice.tool_calls;
    return chat_chunk(header, {delta});
  }
  json response(const ResponseHeader& header, const std::vector<const Choice*>& choices, bool with_logprobs,
                const Usage& usage) const override {
    std::vector<ChatChoice> out;
    for (const auto& c : choices) {
      ChatChoice choice;
      choice.index = static_cast<int>(out.size());
      choice.content = c->text;
      choice.tool_calls = c->tool_calls;
      if (with_logprobs) choice.logprobs = c->logprobs;
      choice.finish_reason = c->finish_reason;
      out.push_back(std::move(choice));
    }
    return chat_response(header, out, usage);
  }
};

// The Responses API (stateless): a response object whose output holds a message
// item and function_call items, and its typed, numbered stream events.
class ResponsesShape final : public ResponseShape {
 public:
  explicit ResponsesShape(json echo) : echo_(std::move(echo)) {}
  bool chat() const override { return true; }
  bool numbered_events() const override { return true; }

  std::optional<json> opening_chunk(const ResponseHeader& header, const Choice&) const override {
    const json in_progress = object(header, "in_progress", {}, Usage{});
    json item = message_item(header, "", "in_progress");
    item["content"] = json::array();
    return json::array({{{"type", "response.created"}, {"response", in_progress}},
                        {{"type", "response.in_progress"}, {"response", in_progress}},
                        {{"type", "response.output_item.added"}, {"output_index", 0}, {"item", item}},
                        {{"type", "response.content_part.added"},
                         {"item_id", message_id(header)},
                         {"output_index", 0},
                         {"content_index", 0},
                         {"part", text_part("")}}});
  }
  json delta_chunk(const ResponseHeader& header, const Choice&, const std::string& text, std::span<const TokenLogprob>,
                   std::span<const std::int64_t>) const override {
    if (text.empty()) return nullptr;
    return {{"type", "response.output_text.delta"}, {"item_id", message_id(header)}, {"output_index", 0},
            {"content_index", 0},                   {"delta", text},                  {"logprobs", json::array()}};
  }
  json tool_calls_chunk(const ResponseHeader&, const Choice& choice) const override {
    json events = json::array();
    for (std::size_t i = 0; i < choice.tool_calls.size(); ++i) {
      const ToolCall& call = choice.tool_calls[i];
      const int index = static_cast<int>(i) + 1;
      json item = call_item(call, "in_progress");
      item["arguments"] = "";
      events.push_back({{"type", "response.output_item.added"}, {"output_index", index}, {"item", item}});
      events.push_back({{"type", "response.function_call_arguments.delta"}, {"item_id", item["id"]},
                        {"output_index", index}, {"delta", call.arguments}});
      events.push_back({{"type", "response.function_call_arguments.done"}, {"item_id", item["id"]},
                        {"output_index", index}, {"name", call.name}, {"arguments", call.arguments}});
      events.push_back({{"type", "response.output_item.done"}, {"output_index", index}, {"item", call_item(call, "completed")}});
    }
    return events;
  }
  json closing_chunk(const ResponseHeader& header, const Choice& choice) const override {
    return json::array({{{"type", "response.output_text.done"}, {"item_id", message_id(header)}, {"output_index", 0},
                         {"content_index", 0}, {"text", choice.text}, {"logprobs", json::array()}},
                        {{"type", "response.content_part.done"}, {"item_id", message_id(header)}, {"output_index", 0},
                         {"content_index", 0}, {"part", text_part(choice.text)}},
                        {{"type", "response.output_item.done"}, {"output_index", 0},
                         {"item", message_item(header, choice.text, "completed")}}});
  }
  json response(const ResponseHeader& header, const std::vector<const Choice*>& choices, bool,
                const Usage& usage) const override {
    return object(header, status(choices), choices, usage);
  }
  json final_event(const ResponseHeader& header, const std::vector<const Choice*>& choices,
                   const Usage& usage) const override {
    const std::string state = status(choices);
    return {{"type", state == "incomplete" ? "response.incomplete" : "response.completed"},
            {"response", object(header, state, choices, usage)}};
  }

 private:
  static std::string status(const std::vector<const Choice*>& choices) {
    for (const auto* c : choices) {
      if (c->finish_reason == "length") return "incomplete";
    }
    return "completed";
  }
  static std::string message_id(const ResponseHeader& header) { return "msg_" + header.id.substr(5); }
  static json text_part(const std::string& text) {
    return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}};
  }
  static json message_item(const ResponseHeader& header, const std::string& text, const char* state) {
    return {{"type", "message"},
            {"id", message_id(header)},
            {"status", state},
            {"role", "assistant"},
            {"content", json::array({text_part(text)})}};
  }
  static json call_item(const ToolCall& call, const char* state) {
    return {{"type", "function_call"}, {"id", "fc_" + call.id.substr(5)}, {"call_id", call.id},
            {"name", call.name},       {"arguments", call.arguments},     {"status", state}};
  }
  json object(const ResponseHeader& header, const std::string& state, const std::vector<const Choice*>& choices,
              const Usage& usage) const {
    json output = json::array();
    for (const auto* c : choices) {
      if (!c->text.empty() || c->tool_calls.empty()) output.push_back(message_item(header, c->text, "completed"));
      for (const auto& call : c->tool_calls) output.push_back(call_item(call, "completed"));
    }
    json out = {{"id", header.id},
                {"object", "response"},
                {"created_at", header.created},
                {"status", state},
                {"model", header.model},
                {"output", std::move(output)},
                {"error", nullptr},
                {"incomplete_details", state == "incomplete" ? json{{"reason", "max_output_tokens"}} : json(nullptr)},
                {"instructions", echo_.value("instructions", json(nullptr))},
                {"max_output_tokens", echo_.value("max_output_tokens", json(nullptr))},
                {"temperature", echo_.value("temperature", json(1.0))},
                {"top_p", echo_.value("top_p", json(1.0))},
                {"tools", echo_.value("tools", json::array())},
                {"tool_choice", echo_.value("tool_choice", json("auto"))},
                {"parallel_tool_calls", echo_.value("parallel_tool_calls", json(true))},
                {"text", echo_.value("text", json{{"format", {{"type", "text"}}}})},
                {"metadata", echo_.value("metadata", json::object())},
                {"store", false},
                {"usage",
                 {{"input_tokens", usage.prompt_tokens},
                  {"input_tokens_details", {{"cached_tokens", 0}}},
                  {"output_tokens", usage.completion_tokens},
                  {"output_tokens_details", {{"reasoning_tokens", 0}}},
                  {"total_tokens", usage.prompt_tokens + usage.completion_tokens}}}};
    for (const char* key : {"instructions", "max_output_tokens", "temperature", "top_p", "tool_choice", "parallel_tool_calls", "text", "metadata"}) {
      if (out[key].is_null() && std::string(key) != "instructions" && std::string(key) != "max_output_tokens") out.erase(key);
    }
    return out;
  }

  json echo_;
};

// What a call needs to know of its request, whichever endpoint it came from.
struct CallOptions {
  bool stream = false;
  bool include_usage = false;
  bool want_logprobs = false;
  int n = 1;        // choices returned per prompt
  int best_of = 1;  // candidates generated per prompt (not streamed when above n)
  std::optional<ToolCallFormat> tool_calls;  // chat with tools: parse calls out of the text
};

// One request in flight: its choices, their text so far, and where output goes.
class GenerationCall final : public RunningRequest {
 public:
  GenerationCall(const ResponseShape& shape, const CallOptions& options, const Tokenizer& tokenizer,
                 ServerMetrics& metrics, ResponseHeader header, std::shared_ptr<ResponseOutput> output,
                 std::int64_t prompt_tokens)
      : shape_(shape),
        tokenizer_(tokenizer),
        metrics_(metrics),
        header_(std::move(header)),
        output_(std::move(output)),
        options_(options),
        arrival_(Clock::now()),
        prompt_tokens_(prompt_tokens) {}

  void cancel() override {
    const std::lock_guard lock(mutex_);
    for (auto& choice : choices_) {
      if (choice->ticket) choice->ticket->cancel();
    }
  }

  // The request was refused after some choices were queued: they end silently.
  void abandon() {
    const std::lock_guard lock(mutex_);
    abandoned_ = true;
    for (auto& choice : choices_) {
      if (choice->ticket) choice->ticket->cancel();
    }
  }

  Choices& choices() { return choices_; }
  // A shape made for this request (the Responses API's echoes the request) lives with it.
  void keep_shape(std::shared_ptr<const ResponseShape> shape) { own_shape_ = std::move(shape); }
  void set_remaining(std::size_t n) { remaining_ = n; }

  // Submits under the call's lock, so a choice's first event finds its ticket.
  template <typename Submit>
  void attach(const std::vector<Choice*>& group, Submit&& submit) {
    const std::lock_guard lock(mutex_);
    auto tickets = submit();
    for (std::size_t i = 0; i < group.size(); ++i) group[i]->ticket = std::move(tickets.at(i));
  }

  void on_token(Choice& choice, const engine::TokenStep& step) {
    const std::lock_guard lock(mutex_);
    if (abandoned_) return;
    const auto now = Clock::now();
    if (choice.last_token) {
      metrics_.observe_inter_token(seconds(now - *choice.last_token));
    } else {
      metrics_.observe_first_token(seconds(now - arrival_));
    }
    choice.last_token = now;
    ++choice.generated;
    if (choice.finish_reason) return;  // already stopped by a stop string
    open(choice);
    choice.logprob_sum += step.logprob;
    ++choice.text_tokens;
    auto out = choice.stop->push(choice.decoder->push(step.token));
    if (choice.tool_splitter) out.text = choice.tool_splitter->push(out.text);
    std::optional<TokenLogprob> entry;
    if (options_.want_logprobs) {
      entry = TokenLogprob{tokenizer_.token_bytes(step.token), step.logprob, {}};
      for (const auto& [id, logprob] : step.top) entry->top.emplace_back(tokenizer_.token_bytes(id), logprob);
      choice.text_offset.push_back(static_cast<std::int64_t>(choice.text.size()));
      choice.logprobs.push_back(*entry);
    }
    choice.text += out.text;
    if (out.stopped) {
      choice.finish_reason = "stop";
      choice.ticket->cancel();
    }
    if (options_.stream && (!out.text.empty() || entry)) {
      const auto entries = entry ? std::span(choice.logprobs).last(1) : std::span<const TokenLogprob>();
      const auto offsets = entry ? std::span(choice.text_offset).last(1) : std::span<const std::int64_t>();
      emit(shape_.delta_chunk(header_, choice, out.text, entries, offsets));
    }
  }

  // Echo with logprobs: the prompt's tokens open the choice's logprobs, the first
  // without a value (nothing before it predicts it), as OpenAI reports them.
  void on_prompt_logprobs(Choice& choice, const std::vector<engine::TokenStep>& steps) {
    const std::lock_guard lock(mutex_);
    if (abandoned_ || choice.echo_ids.empty()) return;
    IncrementalDecoder decoder(tokenizer_);
    std::int64_t offset = 0;
    for (std::size_t i = 0; i < choice.echo_ids.size(); ++i) {
      const TokenId id = choice.echo_ids[i];
      TokenLogprob entry{tokenizer_.token_bytes(id), std::nullopt, {}};
      if (i > 0 && i - 1 < steps.size()) {
        entry.logprob = steps[i - 1].logprob;
        for (const auto& [alternative, logprob] : steps[i - 1].top) {
          entry.top.emplace_back(tokenizer_.token_bytes(alternative), logprob);
        }
      }
      choice.logprobs.push_back(std::move(entry));
      choice.text_offset.push_back(offset);
      offset += static_cast<std::int64_t>(decoder.push(id).size());
    }
  }

  void on_finished(Choice& choice, const scheduler::SequenceEnd& end) {
    const std::lock_guard lock(mutex_);
    if (abandoned_) return;
    open(choice);
    if (!choice.finish_reason) {
      const auto out = choice.stop->push(choice.decoder->flush());
      auto rest = out.text + choice.stop->flush();
      if (choice.tool_splitter) rest = choice.tool_splitter->push(rest);
      choice.text += rest;
      choice.finish_reason = finish_reason_text(end);
      if (end.reason == scheduler::FinishReason::Error) error_ = ApiError(500, "server_error", end.error);
      if (end.reason == scheduler::FinishReason::ConstraintDeadEnd) {
        error_ = ApiError(400, "invalid_request_error", end.error, std::nullopt, "constraint_dead_end");
      }
      if (options_.stream && !rest.empty()) {
        emit(shape_.delta_chunk(header_, choice, rest, {}, {}));
      }
    }
    finish_tool_calls(choice);
    completion_tokens_ += choice.generated;
    metrics_.observe_queue_time(end.queue_seconds);
    metrics_.observe_finished({*choice.finish_reason, end.prompt_tokens, choice.generated,
                               seconds(Clock::now() - arrival_), end.prefill_seconds, end.decode_seconds});
    if (options_.stream) emit(shape_.closing_chunk(header_, choice));
    if (--remaining_ == 0) finish_request();
  }

 private:
  static std::string finish_reason_text(const scheduler::SequenceEnd& end) {
    switch (end.reason) {
      case scheduler::FinishReason::Stop:
        return "stop";
      case scheduler::FinishReason::Length:
      case scheduler::FinishReason::Timeout:
        return "length";
      case scheduler::FinishReason::Cancelled:
        return "cancelled";
      case scheduler::FinishReason::Error:
      case scheduler::FinishReason::ConstraintDeadEnd:
        return "error";
    }
    return "error";
  }

  // The text held since a call may have started: its calls, or (not calls after
  // all) more content. A choice that called tools finishes with "tool_calls".
  void finish_tool_calls(Choice& choice) {
    if (!choice.tool_splitter) return;
    auto parsed = choice.tool_splitter->finish();
    choice.tool_splitter.reset();
    if (!parsed.content.empty()) {
      choice.text += parsed.content;
      if (options_.stream) emit(shape_.delta_chunk(header_, choice, parsed.content, {}, {}));
    }
    if (parsed.calls.empty()) return;
    choice.tool_calls = std::move(parsed.calls);
    if (choice.finish_reason == "stop") choice.finish_reason = "tool_calls";
    if (options_.stream) emit(shape_.tool_calls_chunk(header_, choice));
  }

  // One event, or each of an array of them; numbered where the shape wants it.
  void emit(json event) {
    if (event.is_null()) return;
    if (event.is_array()) {
      for (auto& e : event) emit(std::move(e));
      return;
    }
    if (shape_.numbered_events()) event["sequence_number"] = next_event_++;
    output_->stream_event(sse_event(event));
  }

  void open(Choice& choice) {
    if (!options_.stream || choice.opened) return;
    choice.opened = true;
    if (auto chunk = shape_.opening_chunk(header_, choice)) emit(*chunk);
    // The echoed prompt (and its tokens' logprobs, which are all there by now) comes first.
    if (!choice.echo.empty() || !choice.logprobs.empty()) {
      output_->stream_event(
          sse_event(shape_.delta_chunk(header_, choice, choice.echo, choice.logprobs, choice.text_offset)));
    }
  }

  void finish_request() {
    std::int64_t most_generated = 0;
    for (const auto& choice : choices_) most_generated = std::max(most_generated, choice->generated);
    metrics_.observe_request_done(most_generated);
    const Usage usage{prompt_tokens_, completion_tokens_};
    output_->summary(header_.id, usage);
    if (options_.stream) {
      if (error_) {
        output_->stream_event(sse_event(error_->body()));
      } else if (auto last = shape_.final_event(header_, returned_choices(), usage); !last.is_null()) {
        emit(std::move(last));
      } else if (options_.include_usage) {
        output_->stream_event(sse_event(usage_chunk(header_, shape_.chat(), usage)));
      }
      output_->stream_event(sse_done());
      output_->stream_end();
      return;
    }
    if (error_) {
      output_->fail(*error_);
      return;
    }
    output_->finish(to_json_text(shape_.response(header_, returned_choices(), options_.want_logprobs, usage)));
  }

  // All choices in index order; with best_of, the n of each prompt's candidates
  // with the highest log-probability per token (OpenAI's "best"), best first.
  std::vector<const Choice*> returned_choices() const {
    std::vector<const Choice*> out;
    const auto group = static_cast<std::size_t>(options_.best_of);
    for (std::size_t first = 0; first < choices_.size(); first += group) {
      std::vector<const Choice*> candidates;
      for (std::size_t i = first; i < first + group; ++i) candidates.push_back(choices_[i].get());
      if (options_.best_of > options_.n) {
        const auto per_token = [](const Choice* c) {
          return c->text_tokens > 0 ? c->logprob_sum / static_cast<double>(c->text_tokens) : 0.0;
        };
        std::stable_sort(candidates.begin(), candidates.end(),
                         [&](const Choice* a, const Choice* b) { return per_token(a) > per_token(b); });
        candidates.resize(static_cast<std::size_t>(options_.n));
      }
      out.insert(out.end(), candidates.begin(), candidates.end());
    }
    return out;
  }

  const ResponseShape& shape_;
  const Tokenizer& tokenizer_;
  ServerMetrics& metrics_;
  const ResponseHeader header_;
  const std::shared_ptr<ResponseOutput> output_;
  const CallOptions options_;
  const Clock::time_point arrival_;
  const std::int64_t prompt_tokens_;
  std::mutex mutex_;
  Choices choices_;
  std::size_t remaining_ = 0;
  std::int64_t completion_tokens_ = 0;
  std::optional<ApiError> error_;
  std::int64_t next_event_ = 0;
  std::shared_ptr<const ResponseShape> own_shape_;
  bool abandoned_ = false;
};

// Forwards one sequence's events to its choice of the call.
class ChoiceSink final : public scheduler::SequenceSink {
 public:
  ChoiceSink(std::shared_ptr<GenerationCall> call, Choice& choice) : call_(std::move(call)), choice_(choice) {}
  void on_started(const scheduler::SequenceStart&) override {}
  void on_prompt_logprobs(const std::vector<engine::TokenStep>& steps) override {
    call_->on_prompt_logprobs(choice_, steps);
  }
  void on_token(const engine::TokenStep& step) override { call_->on_token(choice_, step); }
  void on_finished(const scheduler::SequenceEnd& end) override { call_->on_finished(choice_, end); }

 private:
  std::shared_ptr<GenerationCall> call_;
  Choice& choice_;
};


const CompletionShape kCompletionShape;
const ChatShape kChatShape;

ResponseHeader new_header(const char* id_prefix, const ServedModel& model) {
  return {random_id(id_prefix), unix_seconds(), model.name, model.system_fingerprint};
}

// One choice per (prompt, n); `echo` starts each text with its prompt.
void add_choices(GenerationCall& call, const Tokenizer& tokenizer, const std::vector<std::vector<TokenId>>& prompts,
                 const GenerationOptions& options, int candidates_per_prompt, bool echo, bool echo_logprobs,
                 std::optional<ToolCallFormat> tool_calls = std::nullopt) {
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    for (int j = 0; j < candidates_per_prompt; ++j) {
      auto choice = std::make_unique<Choice>();
      choice->index = static_cast<int>(p) * candidates_per_prompt + j;
      choice->prompt = p;
      choice->decoder = std::make_unique<IncrementalDecoder>(tokenizer);
      // The text continues the prompt's: a SentencePiece space before the first
      // token separates it from the prompt and is kept (echo's text is the two joined).
      choice->decoder->follow(prompts[p]);
      choice->stop = std::make_unique<StopStringFilter>(options.stop);
      if (tool_calls) choice->tool_splitter = std::make_unique<ToolCallSplitter>(*tool_calls);
      if (echo) {
        choice->echo = tokenizer.decode(prompts[p], true);
        choice->text = choice->echo;
        if (echo_logprobs) choice->echo_ids = prompts[p];
      }
      call.choices().push_back(std::move(choice));
    }
  }
  call.set_remaining(call.choices().size());
}

// Queues every choice of `call`, one group per prompt (its choices share the
// prompt's computation); a full scheduler abandons what was queued and is a 429.
void submit_choices(scheduler::Scheduler& scheduler, const std::shared_ptr<GenerationCall>& call,
                    const std::vector<std::vector<TokenId>>& prompts, const GenerationOptions& options,
                    int top_logprobs, int prompt_logprobs, const ServedModel& model,
                    std::optional<std::chrono::milliseconds> request_timeout,
                    const std::shared_ptr<const engine::TokenConstraint>& constraint) {
  const auto deadline = request_timeout ? std::optional(Clock::now() + *request_timeout) : std::nullopt;
  std::random_device entropy;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    scheduler::SequenceRequest sequence;
    sequence.prompt = prompts[p];
    sequence.sampling = options.sampling;
    sequence.max_tokens =
        options.max_tokens.value_or(model.context_length - static_cast<std::int64_t>(sequence.prompt.size()));
    if (!options.ignore_eos) sequence.stop_tokens = model.stop_tokens;
    sequence.logit_bias = options.logit_bias;
    sequence.constraint = constraint;
    sequence.top_logprobs = top_logprobs;
    sequence.prompt_logprobs = prompt_logprobs;
    sequence.deadline = deadline;
    std::vector<Choice*> group;
    std::vector<scheduler::ForkedChoice> forked;
    for (auto& choice : call->choices()) {
      if (choice->prompt != p) continue;
      group.push_back(choice.get());
      // The same seed gives the same text; choices of one request still differ.
      const std::uint64_t seed = options.seeded ? options.sampling.seed + static_cast<std::uint64_t>(choice->index)
                                                : (static_cast<std::uint64_t>(entropy()) << 32) ^ entropy();
      forked.push_back({seed, std::make_shared<ChoiceSink>(call, *choice)});
    }
    try {
      call->attach(group, [&] { return scheduler.submit_group(std::move(sequence), std::move(forked)); });
    } catch (const scheduler::Overloaded& e) {
      call->abandon();
      throw ApiError(429, "rate_limit_exceeded", fmt::format("The server is busy ({}); retry later", e.what()),
                     std::nullopt, "overloaded");
    }
  }
}

}  // namespace

CompletionService::CompletionService(const Tokenizer& tokenizer, scheduler::Scheduler& scheduler,
                                     ServerMetrics& metrics, ServedModel model,
                                     std::optional<std::chrono::milliseconds> request_timeout)
    : tokenizer_(tokenizer),
      scheduler_(scheduler),
      metrics_(metrics),
      model_(std::move(model)),
      chat_prompts_(tokenizer, model_.special_tokens_in_messages),
      constraints_(tokenizer,
                   model_.vocab_size > 0 ? static_cast<std::size_t>(model_.vocab_size) : tokenizer.vocab_size(),
                   model_.stop_tokens),
      request_timeout_(request_timeout) {}

void CompletionService::check_model(const std::string& requested) const {
  if (requested != model_.name) {
    throw ApiError(404, "invalid_request_error", fmt::format("The model '{}' does not exist", requested), "model",
                   "model_not_found");
  }
}

void CompletionService::check_chat_template() const {
  if (!model_.chat_template) {
    throw ApiError::invalid("messages",
                            fmt::format("The model '{}' has no chat template; use /v1/completions, or start the "
                                        "server with --chat-template",
                                        model_.name),
                            "chat_template_missing");
  }
}

nlohmann::ordered_json CompletionService::template_messages(const std::vector<ChatMessage>& messages) const {
  using ojson = nlohmann::ordered_json;
  ojson out = ojson::array();
  for (const auto& m : messages) {
    // Templates know "system"; "developer" is OpenAI's newer name for it.
    ojson message = {{"role", m.role == "developer" ? "system" : m.role}, {"content", m.content}};
    if (m.name) message["name"] = *m.name;
    if (m.tool_call_id) message["tool_call_id"] = *m.tool_call_id;
    if (!m.tool_calls.empty()) {
      if (model_.template_renders_tool_calls) {
        // As transformers expects them: arguments as an object, not JSON text.
        ojson calls = ojson::array();
        for (const auto& c : m.tool_calls) {
          ojson arguments;
          try {
            arguments = ojson::parse(c.arguments);
          } catch (const nlohmann::json::exception&) {
            arguments = c.arguments;
          }
          calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", arguments}}}});
        }
        message["tool_calls"] = std::move(calls);
      } else {
        const std::string text = tool_calls_text(model_.tool_call_format, m.tool_calls);
        message["content"] = m.content.empty() ? text : m.content + "\n" + text;
      }
    }
    out.push_back(std::move(message));
  }
  return out;
}

nlohmann::json CompletionService::tokenize(const TokenizeRequest& request) const {
  if (request.model) check_model(*request.model);
  std::vector<TokenId> ids;
  if (request.prompt) {
    ids = tokenizer_.encode(*request.prompt, request.add_special_tokens);
  } else {
    check_chat_template();
    try {
      ids = chat_prompts_.encode(*model_.chat_template, template_messages(request.messages),
                                 request.add_generation_prompt).ids;
    } catch (const Error& e) {
      throw ApiError::invalid("messages",
                              fmt::format("The model's chat template refused the conversation: {}", e.what()),
                              "chat_template_error");
    }
    const auto bos = tokenizer_.bos_id();
    if (request.add_special_tokens && bos && (ids.empty() || ids.front() != *bos)) ids.insert(ids.begin(), *bos);
  }
  nlohmann::json out = {{"count", ids.size()}, {"max_model_len", model_.context_length}, {"tokens", ids}};
  if (request.return_token_strs) {
    nlohmann::json strs = nlohmann::json::array();
    for (const TokenId id : ids) strs.push_back(tokenizer_.token_bytes(id));
    out["token_strs"] = std::move(strs);
  }
  return out;
}

nlohmann::json CompletionService::detokenize(const DetokenizeRequest& request) const {
  if (request.model) check_model(*request.model);
  return {{"prompt", tokenizer_.decode(request.tokens, false)}};
}

void CompletionService::check_length(std::int64_t prompt_tokens, const GenerationOptions& options,
                                     const char* prompt_param) const {
  if (prompt_tokens == 0) throw ApiError::invalid(prompt_param, "the prompt has no tokens");
  const std::int64_t wanted = prompt_tokens + options.max_tokens.value_or(0);
  if (wanted > model_.context_length) {
    throw ApiError::invalid(
        options.max_tokens ? "max_tokens" : prompt_param,
        fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the "
                    "prompt, {} for the completion). Please reduce the prompt or the completion length.",
                    model_.context_length, wanted, prompt_tokens, options.max_tokens.value_or(0)),
        "context_length_exceeded");
  }
}

std::shared_ptr<RunningRequest> CompletionService::start(const CompletionRequest& request,
                                                         std::shared_ptr<ResponseOutput> output) {
  check_model(request.model);
  const auto constraint = constraints_.compile(request.options.format);
  // Tokenize and check every prompt before anything is submitted.
  std::vector<std::vector<TokenId>> prompts;
  std::int64_t prompt_tokens = 0;
  for (const auto& prompt : request.prompts) {
    prompts.push_back(prompt.text ? tokenizer_.encode(*prompt.text, true) : prompt.ids);
    check_length(static_cast<std::int64_t>(prompts.back().size()), request.options, "prompt");
    prompt_tokens += static_cast<std::int64_t>(prompts.back().size());
  }
  const CallOptions options{request.options.stream, request.options.include_usage, request.logprobs.has_value(),
                            request.options.n, request.best_of, std::nullopt};
  auto call = std::make_shared<GenerationCall>(kCompletionShape, options, tokenizer_, metrics_,
                                               new_header("cmpl-", model_), output, prompt_tokens);
  const bool echo_logprobs = request.echo && request.logprobs.has_value();
  add_choices(*call, tokenizer_, prompts, request.options, request.best_of, request.echo, echo_logprobs);
  // Ranking best_of candidates needs each token's log-probability.
  const int top_logprobs = request.logprobs.value_or(request.best_of > request.options.n ? 0 : -1);
  submit_choices(scheduler_, call, prompts, request.options, top_logprobs,
                 echo_logprobs ? *request.logprobs : -1, model_,
                 request_timeout_, constraint);
  return call;
}

std::pair<nlohmann::ordered_json, nlohmann::ordered_json> CompletionService::chat_variables(
    const ChatRequest& request) const {
  using ojson = nlohmann::ordered_json;
  const ToolCallFormat format = model_.tool_call_format;
  ojson messages = template_messages(request.messages);
  ojson extra = ojson::object();
  if (!request.tools.empty() && request.tool_choice.mode != ToolChoice::Mode::None) {
    if (model_.template_renders_tools) {
      ojson tools = ojson::array();
      for (const auto& t : request.tools) {
        tools.push_back({{"type", "function"},
                         {"function", {{"name", t.name}, {"description", t.description}, {"parameters", t.parameters}}}});
      }
      extra["tools"] = std::move(tools);
    } else {
      // The template cannot show them: a system message does, in the model's call format.
      const std::string prompt = tools_prompt(format, request.tools);
      if (!messages.empty() && messages[0]["role"] == "system") {
        messages[0]["content"] = messages[0]["content"].get<std::string>() + "\n\n" + prompt;
      } else {
        messages.insert(messages.begin(), ojson{{"role", "system"}, {"content", prompt}});
      }
    }
  }
  return {std::move(messages), std::move(extra)};
}

std::shared_ptr<const engine::TokenConstraint> CompletionService::chat_constraint(const ChatRequest& request) {
  const auto mode = request.tool_choice.mode;
  if (mode != ToolChoice::Mode::Required && mode != ToolChoice::Mode::Named) {
    return constraints_.compile(request.options.format);
  }
  std::vector<ToolFunction> functions;
  for (const auto& t : request.tools) {
    if (mode == ToolChoice::Mode::Required || t.name == request.tool_choice.name) functions.push_back(t);
  }
  return constraints_.compile_tool_calls(model_.tool_call_format, functions, request.parallel_tool_calls ? 4 : 1);
}

std::shared_ptr<RunningRequest> CompletionService::start(const ChatRequest& request,
                                                         std::shared_ptr<ResponseOutput> output) {
  return start_chat(request, std::move(output), nullptr);
}

std::shared_ptr<RunningRequest> CompletionService::start(const ResponsesRequest& request,
                                                         std::shared_ptr<ResponseOutput> output) {
  return start_chat(request.chat, std::move(output), std::make_shared<const ResponsesShape>(request.echo));
}

std::shared_ptr<RunningRequest> CompletionService::start_chat(const ChatRequest& request,
                                                              std::shared_ptr<ResponseOutput> output,
                                                              std::shared_ptr<const ResponseShape> shape) {
  check_model(request.model);
  check_chat_template();
  const auto [messages, extra] = chat_variables(request);
  std::vector<std::vector<TokenId>> prompts;
  try {
    prompts.push_back(chat_prompts_.encode(*model_.chat_template, messages, true, extra).ids);
  } catch (const Error& e) {
    throw ApiError::invalid("messages", fmt::format("The model's chat template refused the conversation: {}", e.what()),
                            "chat_template_error");
  }
  const auto prompt_tokens = static_cast<std::int64_t>(prompts[0].size());
  check_length(prompt_tokens, request.options, "messages");
  const auto constraint = chat_constraint(request);

  const bool tools_on = !request.tools.empty() && request.tool_choice.mode != ToolChoice::Mode::None;
  const CallOptions options{request.options.stream, request.options.include_usage, request.logprobs,
                            request.options.n, request.options.n,
                            tools_on ? std::optional(model_.tool_call_format) : std::nullopt};
  auto call = std::make_shared<GenerationCall>(shape ? *shape : kChatShape, options, tokenizer_, metrics_,
                                               new_header(shape ? "resp_" : "chatcmpl-", model_), output, prompt_tokens);
  call->keep_shape(std::move(shape));
  add_choices(*call, tokenizer_, prompts, request.options, request.options.n, false, false, options.tool_calls);
  submit_choices(scheduler_, call, prompts, request.options, request.logprobs ? request.top_logprobs : -1, -1, model_,
                 request_timeout_, constraint);
  return call;
}

}  // namespace nibble::server
