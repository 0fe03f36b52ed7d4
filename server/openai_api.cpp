#include "server/openai_api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <string_view>

#include "common/error.h"
#include "common/log.h"
#include "server/openapi.h"

namespace nibble::server {
namespace {

using json = nlohmann::json;

// The key check must not reveal how much of a guess was right: every byte of the
// longer string is looked at whatever matched before.
bool same_secret(std::string_view given, std::string_view expected) {
  const std::size_t n = std::max(given.size(), expected.size());
  unsigned difference = given.size() == expected.size() ? 0U : 1U;
  for (std::size_t i = 0; i < n; ++i) {
    const auto a = i < given.size() ? static_cast<unsigned char>(given[i]) : 0U;
    const auto b = i < expected.size() ? static_cast<unsigned char>(expected[i]) : 0U;
    difference |= a ^ b;
  }
  return difference == 0;
}

HttpResponse json_response(int status, const json& body) { return {status, "application/json", to_json_text(body), {}}; }

// The model's output on its way to one HTTP exchange.
class HttpOutput final : public ResponseOutput {
 public:
  HttpOutput(std::shared_ptr<HttpExchange> exchange, std::function<void(HttpExchange&, const ApiError&)> fail)
      : exchange_(std::move(exchange)), fail_(std::move(fail)) {}

  // Events of one request come one at a time (the service serializes them).
  void stream_event(std::string sse_text) override {
    if (!started_) {
      started_ = true;
      exchange_->start_stream(200, "text/event-stream",
                              {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
    }
    exchange_->stream(std::move(sse_text));
  }
  void finish(std::string json_text) override { exchange_->respond({200, "application/json", std::move(json_text), {}}); }
  void fail(const ApiError& error) override { fail_(*exchange_, error); }
  void stream_end() override { exchange_->end_stream(); }
  void summary(const std::string& response_id, const Usage& usage) override {
    exchange_->annotate(fmt::format("response_id={} prompt_tokens={} completion_tokens={}", response_id,
                                    usage.prompt_tokens, usage.completion_tokens));
  }

 private:
  std::shared_ptr<HttpExchange> exchange_;
  std::function<void(HttpExchange&, const ApiError&)> fail_;
  bool started_ = false;
};

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct Route {
  std::string_view path;
  std::string_view method;
  bool prefix;  // also matches path + "/..."
  bool public_probe;  // public unless --no-public-probes: says nothing about the model's data
};

// Every path nibble serves and the one method each accepts.
constexpr Route kRoutes[] = {
    {"/v1/completions", "POST", false, false},
    {"/v1/chat/completions", "POST", false, false},
    {"/v1/responses", "POST", false, false},
    {"/v1/models", "GET", true, false},
    {"/tokenize", "POST", false, false},
    {"/detokenize", "POST", false, false},
    {"/health", "GET", false, true},
    {"/health/live", "GET", false, true},
    {"/health/ready", "GET", false, true},
    {"/metrics", "GET", false, true},
    {"/version", "GET", false, true},
    {"/openapi.json", "GET", false, true},
};

// What the probe listener (--probe-port) serves: the orchestrator's probes and its scrapes.
bool probe_listener_path(std::string_view path) {
  return path == "/health" || path == "/health/live" || path == "/health/ready" || path == "/metrics";
}

const Route* find_route(std::string_view path) {
  for (const auto& route : kRoutes) {
    if (path == route.path) return &route;
    if (route.prefix && path.size() > route.path.size() + 1 && path.substr(0, route.path.size()) == route.path &&
        path[route.path.size()] == '/') {
      return &route;
    }
  }
  return nullptr;
}

const std::int64_t kStartedAt = unix_now();

}  // namespace

OpenAiApi::OpenAiApi(ApiOptions options, ServerMetrics& metrics) : options_(std::move(options)), metrics_(metrics) {}

void OpenAiApi::set_ready(CompletionService& service, scheduler::Scheduler& scheduler, RequestLimits limits) {
  const std::lock_guard lock(mutex_);
  ready_ = Ready{&service, &scheduler, limits};
}

void OpenAiApi::set_draining() { draining_ = true; }

std::string OpenAiApi::error_body(int status, const std::string& message) const {
  const char* type = status == 413 || status == 431 || status < 500 ? "invalid_request_error" : "server_error";
  return to_json_text(ApiError(status, type, message).body());
}

void OpenAiApi::fail(HttpExchange& exchange, const ApiError& error) const {
  metrics_.count_error(error.status());
  HttpResponse response = json_response(error.status(), error.body());
  if (error.status() == 429 || error.status() == 503) {
    response.headers.emplace_back("Retry-After", std::to_string(options_.retry_after_seconds));
  }
  if (error.status() == 401) response.headers.emplace_back("WWW-Authenticate", "Bearer");
  exchange.respond(std::move(response));
}

void OpenAiApi::handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) {
  try {
    route(request, *exchange, exchange);
  } catch (const ApiError& error) {
    fail(*exchange, error);
  } catch (const Error& error) {
    // Input the model side could not take (a tokenizer limit, ...): the client's to fix.
    fail(*exchange, ApiError(400, "invalid_request_error", error.what()));
  } catch (const std::exception& error) {
    spdlog::error("request_failed id={} request_id={} path={} error=\"{}\"", request.id,
                  log::quoted(request.request_id), log::clip(request.path),
                  log::clip(error.what()));
    fail(*exchange, ApiError(500, "server_error", "Internal server error"));
  }
}

void OpenAiApi::route(const HttpRequest& request, HttpExchange& exchange,
                      const std::shared_ptr<HttpExchange>& handle) {
  // The probe listener exists so probes answer while the main port is flooded;
  // it serves them and nothing else.
  if (request.probe && !probe_listener_path(request.path)) {
    throw ApiError(404, "invalid_request_error",
                   "Only /health, /health/live, /health/ready and /metrics are served on the probe port");
  }
  const Route* route = find_route(request.path);
  // With a key set, everything but the public probes asks for it before anything
  // else is said: a 404 or 405 to a caller without the key would tell it which
  // routes exist.
  const bool public_probe = route != nullptr && options_.public_probes && route->public_probe;
  if (!public_probe) check_key(request);
  if (route == nullptr) {
    throw ApiError(404, "invalid_request_error", fmt::format("Invalid URL ({} {})", log::clip(request.method, 20), log::clip(request.path)));
  }
  if (request.method != route->method) {
    ApiError error(405, "invalid_request_error",
                   fmt::format("Method {} is not allowed for {}; use {}", log::clip(request.method, 20), request.path,
                               route->method));
    metrics_.count_error(405);
    HttpResponse response = json_response(405, error.body());
    response.headers.emplace_back("Allow", std::string(route->method));
    exchange.respond(std::move(response));
    return;
  }

  if (request.path == "/health" || request.path == "/health/ready") return readiness(exchange);
  if (request.path == "/health/live") return liveness(exchange);
  if (request.path == "/metrics") return metrics(exchange);
  if (request.path == "/version") {
    return exchange.respond(json_response(
        200, {{"version", options_.version},
              {"parallel",
               {{"tensor", options_.tensor_parallel_size},
                {"expert", options_.expert_parallel_size},
                {"pipeline", options_.pipeline_parallel_size},
                {"ranks", options_.tensor_parallel_size * options_.expert_parallel_size *
                              options_.pipeline_parallel_size}}}}));
  }
  if (request.path == "/openapi.json") return openapi(exchange);
  if (route->path == "/v1/models") return models(request.path, exchange);
  if (request.path == "/v1/completions") {
    return generate<CompletionRequest>(request, handle, parse_completion_request);
  }
  if (request.path == "/v1/responses") return generate<ResponsesRequest>(request, handle, parse_responses_request);
  if (request.path == "/tokenize" || request.path == "/detokenize") return tokens(request, exchange);
  return generate<ChatRequest>(request, handle, parse_chat_request);
}

void OpenAiApi::check_key(const HttpRequest& request) const {
  if (!options_.api_key) return;
  const std::string_view authorization = request.header("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.substr(0, kBearer.size()) != kBearer ||
      !same_secret(authorization.substr(kBearer.size()), *options_.api_key)) {
    throw ApiError(401, "invalid_request_error",
                   authorization.empty() ? "You didn't provide an API key (Authorization: Bearer <key>)"
                                         : "Incorrect API key provided",
                   std::nullopt, "invalid_api_key");
  }
}

OpenAiApi::Ready OpenAiApi::ready_or_503() const {
  const std::lock_guard lock(mutex_);
  if (!ready_) throw ApiError(503, "server_error", "The model is still loading; retry shortly", std::nullopt, "loading");
  return *ready_;
}

std::optional<scheduler::StepLoopHealth> OpenAiApi::step_loop() const {
  scheduler::Scheduler* scheduler = nullptr;
  {
    const std::lock_guard lock(mutex_);
    if (!ready_) return std::nullopt;
    scheduler = ready_->scheduler;
  }
  return scheduler->health();
}

namespace {

json stalled_body(const scheduler::StepLoopHealth& loop) {
  return {{"status", "stalled"}, {"stalled_seconds", loop.stalled_seconds}};
}

}  // namespace

void OpenAiApi::readiness(HttpExchange& exchange) const {
  const auto loop = step_loop();
  if (draining_) return exchange.respond(json_response(503, {{"status", "draining"}}));
  if (!loop) return exchange.respond(json_response(503, {{"status", "loading"}}));
  if (loop->stalled_seconds > options_.health.readiness_stall_seconds) {
    if (!stall_logged_.exchange(true)) {
      spdlog::warn("step_loop_stalled seconds={:.1f} readiness_threshold={} liveness_threshold={}",
                   loop->stalled_seconds, options_.health.readiness_stall_seconds,
                   options_.health.liveness_stall_seconds);
    }
    return exchange.respond(json_response(503, stalled_body(*loop)));
  }
  stall_logged_ = false;
  exchange.respond(json_response(200, {{"status", "ok"}}));
}

void OpenAiApi::liveness(HttpExchange& exchange) const {
  const auto loop = step_loop();
  if (loop && loop->stalled_seconds > options_.health.liveness_stall_seconds) {
    return exchange.respond(json_response(503, stalled_body(*loop)));
  }
  const char* status = draining_ ? "draining" : loop ? "ok" : "loading";
  exchange.respond(json_response(200, {{"status", status}}));
}

void OpenAiApi::openapi(HttpExchange& exchange) const {
  DocumentOptions document{options_.version, options_.api_key.has_value(), options_.public_probes, RequestLimits{}};
  {
    const std::lock_guard lock(mutex_);
    if (ready_) document.limits = ready_->limits;
  }
  exchange.respond(json_response(200, openapi_document(document)));
}

void OpenAiApi::metrics(HttpExchange& exchange) const {
  std::optional<Ready> ready;
  {
    const std::lock_guard lock(mutex_);
    ready = ready_;
  }
  if (ready) {
    metrics_.set_load(ready->scheduler->load());
    metrics_.set_step_loop(ready->scheduler->health());
  }
  exchange.respond({200, "text/plain; version=0.0.4; charset=utf-8", metrics_.exposition(), {}});
}

void OpenAiApi::models(const std::string& path, HttpExchange& exchange) const {
  const Ready ready = ready_or_503();
  const ServedModel& model = ready.service->model();
  const json card = {{"id", model.name},
                     {"object", "model"},
                     {"created", kStartedAt},
                     {"owned_by", "nibble"},
                     {"max_model_len", model.context_length}};
  if (path == "/v1/models") {
    return exchange.respond(json_response(200, {{"object", "list"}, {"data", json::array({card})}}));
  }
  const std::string id = path.substr(std::string_view("/v1/models/").size());
  if (id != model.name) {
    throw ApiError(404, "invalid_request_error", fmt::format("The model '{}' does not exist", id), "model",
                   "model_not_found");
  }
  exchange.respond(json_response(200, card));
}

void OpenAiApi::tokens(const HttpRequest& request, HttpExchange& exchange) const {
  const Ready ready = ready_or_503();
  const json answer = [&] {
    try {
      const json body = parse_request_body(request.body);
      if (request.path == "/tokenize") return ready.service->tokenize(parse_tokenize_request(body));
      return ready.service->detokenize(parse_detokenize_request(body, ready.limits));
    } catch (const nlohmann::json::exception& e) {
      throw ApiError(400, "invalid_request_error", fmt::format("Invalid request: {}", log::clip(e.what())));
    }
  }();
  exchange.respond(json_response(200, answer));
}

template <typename Request, typename Parse>
void OpenAiApi::generate(const HttpRequest& request, const std::shared_ptr<HttpExchange>& exchange, Parse parse) {
  if (draining_) {
    throw ApiError(503, "server_error", "The server is shutting down", std::nullopt, "shutting_down");
  }
  const Ready ready = ready_or_503();
  const Request parsed = [&] {
    try {
      Request parsed_request = parse(parse_request_body(request.body), ready.limits);
      restore_schema_order(parsed_request, request.body);
      return parsed_request;
    } catch (const nlohmann::json::exception& e) {
      // Whatever the field checks missed is still the request's fault, never a 500.
      throw ApiError(400, "invalid_request_error", fmt::format("Invalid request: {}", log::clip(e.what())));
    }
  }();
  auto output = std::make_shared<HttpOutput>(
      exchange, [this](HttpExchange& target, const ApiError& error) { fail(target, error); });
  const std::weak_ptr<RunningRequest> running = ready.service->start(parsed, output);
  // A client that goes away takes its generation with it.
  exchange->on_disconnect([running] {
    if (const auto alive = running.lock()) alive->cancel();
  });
}

}  // namespace nibble::server
