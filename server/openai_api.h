#pragma once
// The routes nibble serves over HTTP: the OpenAI endpoints, vLLM's /tokenize and
// /detokenize, the probes (/health, /health/live, /health/ready), /metrics,
// /version and /openapi.json, with API-key checks, readiness (503 while the model
// loads or the server drains) and OpenAI error objects for every failure. It
// turns HTTP requests into CompletionService calls and their output back into
// HTTP; it holds no model logic.
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "scheduler/scheduler.h"
#include "server/completion_service.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_request.h"

namespace nibble::server {

// How long the scheduler's step loop may go without progress (a step in
// progress, or work waiting for one) before the probes say so: readiness first
// (stop sending traffic), then liveness (restart the process).
struct HealthThresholds {
  double readiness_stall_seconds = 10;
  double liveness_stall_seconds = 60;
};

struct ApiOptions {
  std::optional<std::string> api_key;  // none: no authentication
  bool public_probes = true;           // /health and /metrics without the key
  std::string version;                 // for /version and the OpenAPI document
  int retry_after_seconds = 1;         // the Retry-After of 429 and 503 answers
  HealthThresholds health;
  // How the model is split across ranks, for /version.
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int expert_parallel_size = 1;
};

class OpenAiApi final : public HttpHandler {
 public:
  OpenAiApi(ApiOptions options, ServerMetrics& metrics);

  // The model is loaded: serve it. `service` and `scheduler` must outlive the
  // HTTP server's last request.
  void set_ready(CompletionService& service, scheduler::Scheduler& scheduler, RequestLimits limits);
  // Shutting down: /health says so and new generation requests get a 503.
  void set_draining();

  void handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) override;
  std::string error_body(int status, const std::string& message) const override;

 private:
  struct Ready {
    CompletionService* service;
    scheduler::Scheduler* scheduler;
    RequestLimits limits;
  };

  void route(const HttpRequest& request, HttpExchange& exchange, const std::shared_ptr<HttpExchange>& handle);
  void check_key(const HttpRequest& request) const;
  Ready ready_or_503() const;
  void models(const std::string& path, HttpExchange& exchange) const;
  // GET /health and /health/ready: 200 only when the model is loaded, the server
  // is not draining and the step loop has not stalled past the readiness threshold.
  void readiness(HttpExchange& exchange) const;
  // GET /health/live: 503 only when the step loop has stalled past the liveness
  // threshold (loading and draining are alive).
  void liveness(HttpExchange& exchange) const;
  std::optional<scheduler::StepLoopHealth> step_loop() const;
  void metrics(HttpExchange& exchange) const;
  void openapi(HttpExchange& exchange) const;
  // POST /tokenize and /detokenize.
  void tokens(const HttpRequest& request, HttpExchange& exchange) const;
  template <typename Request, typename Parse>
  void generate(const HttpRequest& request, const std::shared_ptr<HttpExchange>& exchange, Parse parse);
  void fail(HttpExchange& exchange, const ApiError& error) const;

  const ApiOptions options_;
  ServerMetrics& metrics_;
  std::atomic<bool> draining_{false};
  mutable std::atomic<bool> stall_logged_{false};  // one warning per stall
  mutable std::mutex mutex_;
  std::optional<Ready> ready_;
};

}  // namespace nibble::server
