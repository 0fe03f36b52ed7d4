#include "server/completion_service.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>
#include <utility>

#include "server/openai_response.h"
#include "server/stop_strings.h"

namespace nibble::server {
namespace {

using scheduler::Clock;

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<std::uint32_t>(rng()));
}

std::int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One request in flight: its choices, their text so far, and where output goes.
class CompletionCall final : public RunningRequest {
 public:
  struct Choice {
    int index = 0;
    std::size_t prompt = 0;  // which prompt of the request
    std::string text;        // echo + generated text, stop strings removed
    std::vector<TokenLogprob> logprobs;
    std::vector<std::int64_t> text_offset;
    std::int64_t generated = 0;
    std::optional<std::string> finish_reason;
    std::unique_ptr<IncrementalDecoder> decoder;
    std::unique_ptr<StopStringFilter> stop;
    std::shared_ptr<scheduler::Ticket> ticket;
    std::optional<Clock::time_point> last_token;
  };

  CompletionCall(const CompletionRequest& request, const Tokenizer& tokenizer, ServerMetrics& metrics,
                 ResponseHeader header, std::shared_ptr<ResponseOutput> output, std::int64_t prompt_tokens)
      : tokenizer_(tokenizer),
        metrics_(metrics),
        header_(std::move(header)),
        output_(std::move(output)),
        stream_(request.options.stream),
        include_usage_(request.options.include_usage),
        want_logprobs_(request.logprobs.has_value()),
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

  std::vector<std::unique_ptr<Choice>>& choices() { return choices_; }
  void set_remaining(std::size_t n) { remaining_ = n; }

  // Submits under the call's lock, so the choice's first event finds its ticket.
  template <typename Submit>
  void attach(Choice& choice, Submit&& submit) {
    const std::lock_guard lock(mutex_);
    choice.ticket = submit();
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
    const auto out = choice.stop->push(choice.decoder->push(step.token));
    std::optional<TokenLogprob> entry;
    if (want_logprobs_) {
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
    if (stream_ && (!out.text.empty() || entry)) {
      CompletionChoice delta;
      delta.index = choice.index;
      delta.text = out.text;
      if (entry) {
        delta.logprobs = std::vector<TokenLogprob>{*entry};
        delta.text_offset = {choice.text_offset.back()};
      }
      output_->stream_event(sse_event(completion_chunk(header_, {delta})));
    }
  }

  void on_finished(Choice& choice, const scheduler::SequenceEnd& end) {
    const std::lock_guard lock(mutex_);
    if (abandoned_) return;
    if (!choice.finish_reason) {
      const auto out = choice.stop->push(choice.decoder->flush());
      choice.text += out.text + choice.stop->flush();
      switch (end.reason) {
        case scheduler::FinishReason::Stop:
          choice.finish_reason = "stop";
          break;
        case scheduler::FinishReason::Length:
        case scheduler::FinishReason::Timeout:
          choice.finish_reason = "length";
          break;
        case scheduler::FinishReason::Cancelled:
          choice.finish_reason = "cancelled";
          break;
        case scheduler::FinishReason::Error:
          error_ = end.error;
          choice.finish_reason = "error";
          break;
      }
      if (stream_ && !out.text.empty()) {
        CompletionChoice rest;
        rest.index = choice.index;
        rest.text = out.text;
        output_->stream_event(sse_event(completion_chunk(header_, {rest})));
      }
    }
    completion_tokens_ += choice.generated;
    metrics_.observe_queue_time(end.queue_seconds);
    metrics_.observe_finished({*choice.finish_reason, end.prompt_tokens, choice.generated,
                               seconds(Clock::now() - arrival_), end.prefill_seconds, end.decode_seconds});
    if (stream_) {
      CompletionChoice last;
      last.index = choice.index;
      last.finish_reason = choice.finish_reason;
      output_->stream_event(sse_event(completion_chunk(header_, {last})));
    }
    if (--remaining_ == 0) finish_request();
  }

 private:
  void finish_request() {
    const Usage usage{prompt_tokens_, completion_tokens_};
    if (stream_) {
      if (error_) {
        output_->stream_event(sse_event(ApiError(500, "server_error", *error_).body()));
      } else if (include_usage_) {
        output_->stream_event(sse_event(usage_chunk(header_, false, usage)));
      }
      output_->stream_event(sse_done());
      output_->stream_end();
      return;
    }
    if (error_) {
      metrics_.count_error(500);
      output_->fail(ApiError(500, "server_error", *error_));
      return;
    }
    std::vector<CompletionChoice> choices;
    for (const auto& c : choices_) {
      CompletionChoice out;
      out.index = c->index;
      out.text = c->text;
      if (want_logprobs_) {
        out.logprobs = c->logprobs;
        out.text_offset = c->text_offset;
      }
      out.finish_reason = c->finish_reason;
      choices.push_back(std::move(out));
    }
    output_->finish(to_json_text(completion_response(header_, choices, usage)));
  }

  const Tokenizer& tokenizer_;
  ServerMetrics& metrics_;
  const ResponseHeader header_;
  const std::shared_ptr<ResponseOutput> output_;
  const bool stream_;
  const bool include_usage_;
  const bool want_logprobs_;
  const Clock::time_point arrival_;
  const std::int64_t prompt_tokens_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Choice>> choices_;
  std::size_t remaining_ = 0;
  std::int64_t completion_tokens_ = 0;
  std::optional<std::string> error_;
  bool abandoned_ = false;
};

// Forwards one sequence's events to its choice of the call.
class ChoiceSink final : public scheduler::SequenceSink {
 public:
  ChoiceSink(std::shared_ptr<CompletionCall> call, CompletionCall::Choice& choice)
      : call_(std::move(call)), choice_(choice) {}
  void on_started(const scheduler::SequenceStart&) override {}
  void on_token(const engine::TokenStep& step) override { call_->on_token(choice_, step); }
  void on_finished(const scheduler::SequenceEnd& end) override { call_->on_finished(choice_, end); }

 private:
  std::shared_ptr<CompletionCall> call_;
  CompletionCall::Choice& choice_;
};

}  // namespace

CompletionService::CompletionService(const Tokenizer& tokenizer, scheduler::Scheduler& scheduler,
                                     ServerMetrics& metrics, ServedModel model)
    : tokenizer_(tokenizer), scheduler_(scheduler), metrics_(metrics), model_(std::move(model)) {}

std::shared_ptr<RunningRequest> CompletionService::start(const CompletionRequest& request,
                                                         std::shared_ptr<ResponseOutput> output) {
  if (request.model != model_.name) {
    throw ApiError(404, "invalid_request_error", fmt::format("The model '{}' does not exist", request.model), "model",
                   "model_not_found");
  }
  if (request.best_of != request.options.n) {
    throw ApiError::invalid("best_of", "'best_of' different from 'n' is not supported yet", "unsupported_parameter");
  }
  if (request.echo && request.logprobs) {
    throw ApiError::invalid("echo", "'echo' together with 'logprobs' is not supported yet", "unsupported_parameter");
  }
  // Tokenize and check every prompt before anything is submitted.
  std::vector<std::vector<TokenId>> prompts;
  std::int64_t prompt_tokens = 0;
  for (const auto& prompt : request.prompts) {
    prompts.push_back(prompt.text ? tokenizer_.encode(*prompt.text, true) : prompt.ids);
    const auto length = static_cast<std::int64_t>(prompts.back().size());
    if (length == 0) throw ApiError::invalid("prompt", "the prompt has no tokens");
    const std::int64_t wanted = length + request.options.max_tokens.value_or(0);
    if (wanted > model_.context_length) {
      throw ApiError::invalid(
          request.options.max_tokens ? "max_tokens" : "prompt",
          fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the "
                      "prompt, {} for the completion). Please reduce the prompt or the completion length.",
                      model_.context_length, wanted, length, request.options.max_tokens.value_or(0)),
          "context_length_exceeded");
    }
    prompt_tokens += length;
  }

  const ResponseHeader header{random_id("cmpl-"), unix_seconds(), model_.name, model_.system_fingerprint};
  auto call = std::make_shared<CompletionCall>(request, tokenizer_, metrics_, header, output, prompt_tokens);
  const int n = request.options.n;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    for (int j = 0; j < n; ++j) {
      auto choice = std::make_unique<CompletionCall::Choice>();
      choice->index = static_cast<int>(p) * n + j;
      choice->prompt = p;
      choice->decoder = std::make_unique<IncrementalDecoder>(tokenizer_);
      choice->stop = std::make_unique<StopStringFilter>(request.options.stop);
      if (request.echo) choice->text = tokenizer_.decode(prompts[p], true);
      call->choices().push_back(std::move(choice));
    }
  }
  call->set_remaining(call->choices().size());

  std::random_device entropy;
  for (auto& choice : call->choices()) {
    scheduler::SequenceRequest sequence;
    sequence.prompt = prompts[choice->prompt];
    sequence.sampling = request.options.sampling;
    // The same seed gives the same text; choices of one request still differ.
    sequence.sampling.seed = request.options.seeded ? request.options.sampling.seed + static_cast<std::uint64_t>(choice->index)
                                                    : (static_cast<std::uint64_t>(entropy()) << 32) ^ entropy();
    sequence.max_tokens = request.options.max_tokens.value_or(model_.context_length -
                                                              static_cast<std::int64_t>(sequence.prompt.size()));
    sequence.stop_tokens = model_.stop_tokens;
    sequence.logit_bias = request.options.logit_bias;
    sequence.top_logprobs = request.logprobs ? *request.logprobs : -1;
    try {
      call->attach(*choice, [&] {
        return scheduler_.submit(std::move(sequence), std::make_shared<ChoiceSink>(call, *choice));
      });
    } catch (const scheduler::Overloaded& e) {
      call->abandon();
      throw ApiError(429, "rate_limit_exceeded", fmt::format("The server is busy ({}); retry later", e.what()),
                     std::nullopt, "overloaded");
    }
  }
  return call;
}

}  // namespace nibble::server
