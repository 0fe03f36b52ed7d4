#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <string>

namespace nibble::server {
namespace {

using prometheus::Histogram;

// Buckets for LLM latencies: a first token takes milliseconds on a small model and
// seconds behind a long prompt; a whole request can take minutes.
const Histogram::BucketBoundaries kFirstTokenSeconds{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                                      0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kInterTokenSeconds{0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
                                                      0.05,  0.075,  0.1,   0.15, 0.2,   0.3,  0.4,   0.5,  0.75,
                                                      1.0,   2.5,    5.0};
const Histogram::BucketBoundaries kRequestSeconds{0.05, 0.1,  0.25, 0.5,  1.0,   2.5,   5.0,   10.0,  15.0,  20.0,
                                                  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0};
const Histogram::BucketBoundaries kTokens{1,    2,    5,     10,    20,    50,    100,    200,   500,
                                          1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000};

template <typename Builder>
auto& family(Builder builder, const std::string& name, const std::string& help, const std::string& model,
             prometheus::Registry& registry) {
  return builder.Name(name).Help(help).Labels({{"model", model}}).Register(registry);
}

}  // namespace

ServerMetrics::ServerMetrics(const std::string& model)
    : model_(model), registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  const auto gauge = [&](const std::string& name, const std::string& help) -> prometheus::Gauge& {
    return family(prometheus::BuildGauge(), name, help, model, r).Add({});
  };
  const auto counter = [&](const std::string& name, const std::string& help) -> prometheus::Counter& {
    return family(prometheus::BuildCounter(), name, help, model, r).Add({});
  };
  const auto histogram = [&](const std::string& name, const std::string& help,
                             const Histogram::BucketBoundaries& buckets) -> Histogram& {
    return family(prometheus::BuildHistogram(), name, help, model, r).Add({}, buckets);
  };
  running_ = &gauge("nibble_requests_running", "Sequences on the model now.");
  waiting_ = &gauge("nibble_requests_waiting", "Sequences queued for the model.");
  kv_cache_usage_ = &gauge("nibble_kv_cache_usage_ratio", "Fraction of the KV cache in use (0 to 1).");
  kv_blocks_total_ = &gauge("nibble_kv_cache_blocks", "KV-cache blocks in all (0: the scheduler has none).");
  kv_blocks_free_ = &gauge("nibble_kv_cache_free_blocks",
                           "KV-cache blocks an allocation can take (cached prefixes included); the total when idle.");
  prefix_cache_hit_ratio_ = &gauge("nibble_prefix_cache_hit_ratio",
                                   "Prompt tokens found in the prefix cache over prompt tokens looked up, since start.");
  steps_total_ = &counter("nibble_scheduler_steps_total", "Forward passes (batched steps) run.");
  step_tokens_total_ = &counter("nibble_scheduler_step_tokens_total",
                                "Tokens computed over all steps (per step: rate of this over rate of steps).");
  preemptions_total_ = &counter("nibble_preemptions_total",
                                "Sequences preempted (KV blocks freed, recomputed later) when the cache ran out.");
  prefix_cache_queried_total_ = &counter("nibble_prefix_cache_queried_tokens_total",
                                         "Prompt tokens looked up in the prefix cache.");
  prefix_cache_hits_total_ = &counter("nibble_prefix_cache_hit_tokens_total", "Prompt tokens found in the prefix cache.");
  copied_blocks_total_ = &counter("nibble_kv_cache_copied_blocks_total",
                                  "KV blocks copied on write (a forked n>1 choice wrote into a block it shared).");
  load_seconds_ = &gauge("nibble_model_load_seconds", "Seconds it took to load the model.");
  weight_bytes_ = &family(prometheus::BuildGauge(), "nibble_model_weight_bytes",
                          "Bytes of model weights held, by storage format.", model, r);
  prompt_tokens_total_ = &counter("nibble_prompt_tokens_total", "Prompt tokens processed.");
  generation_tokens_total_ = &counter("nibble_generation_tokens_total", "Tokens generated.");
  success_ = &family(prometheus::BuildCounter(), "nibble_request_success_total",
                     "Sequences that finished, by finish_reason.", model, r);
  errors_ = &family(prometheus::BuildCounter(), "nibble_request_errors_total",
                    "Requests answered with an error, by HTTP status code.", model, r);
  time_to_first_token_ = &histogram("nibble_time_to_first_token_seconds",
                                    "From the request's arrival to its first generated token.", kFirstTokenSeconds);
  inter_token_latency_ = &histogram("nibble_inter_token_latency_seconds", "Between consecutive generated tokens.",
                                    kInterTokenSeconds);
  e2e_latency_ = &histogram("nibble_e2e_request_latency_seconds", "From arrival to the last token.", kRequestSeconds);
  queue_time_ = &histogram("nibble_request_queue_time_seconds", "Waiting for the model.", kRequestSeconds);
  prefill_time_ = &histogram("nibble_request_prefill_time_seconds", "Processing the prompt.", kRequestSeconds);
  decode_time_ = &histogram("nibble_request_decode_time_seconds", "Generating after the first token.",
                            kRequestSeconds);
  prompt_tokens_ = &histogram("nibble_request_prompt_tokens", "Prompt length per sequence.", kTokens);
  generation_tokens_ = &histogram("nibble_request_generation_tokens", "Tokens generated per sequence.", kTokens);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::set_model(double load_seconds, const std::map<std::string, std::uint64_t>& weight_bytes_by_format) {
  load_seconds_->Set(load_seconds);
  for (const auto& [format, bytes] : weight_bytes_by_format) {
    weight_bytes_->Add({{"format", format}}).Set(static_cast<double>(bytes));
  }
}

void ServerMetrics::set_load(const scheduler::SchedulerLoad& load) {
  const std::lock_guard lock(load_mutex_);
  running_->Set(static_cast<double>(load.running));
  waiting_->Set(static_cast<double>(load.waiting));
  kv_cache_usage_->Set(load.kv_cache_usage);
  kv_blocks_total_->Set(static_cast<double>(load.kv_blocks_total));
  kv_blocks_free_->Set(static_cast<double>(load.kv_blocks_free));
  const auto advance = [](prometheus::Counter* counter, std::int64_t now, std::int64_t before) {
    if (now > before) counter->Increment(static_cast<double>(now - before));
  };
  advance(steps_total_, load.steps, last_load_.steps);
  advance(step_tokens_total_, load.step_tokens, last_load_.step_tokens);
  advance(preemptions_total_, load.preemptions, last_load_.preemptions);
  advance(prefix_cache_queried_total_, load.prefix_cache_queried_tokens, last_load_.prefix_cache_queried_tokens);
  advance(prefix_cache_hits_total_, load.prefix_cache_hit_tokens, last_load_.prefix_cache_hit_tokens);
  advance(copied_blocks_total_, load.copied_blocks, last_load_.copied_blocks);
  prefix_cache_hit_ratio_->Set(load.prefix_cache_queried_tokens > 0
                                   ? static_cast<double>(load.prefix_cache_hit_tokens) /
                                         static_cast<double>(load.prefix_cache_queried_tokens)
                                   : 0.0);
  last_load_ = load;
}

void ServerMetrics::observe_queue_time(double seconds) { queue_time_->Observe(seconds); }
void ServerMetrics::observe_first_token(double seconds_since_arrival) {
  time_to_first_token_->Observe(seconds_since_arrival);
}
void ServerMetrics::observe_inter_token(double seconds) { inter_token_latency_->Observe(seconds); }

void ServerMetrics::observe_finished(const Finished& request) {
  success_->Add({{"finish_reason", request.finish_reason}}).Increment();
  prompt_tokens_total_->Increment(static_cast<double>(request.prompt_tokens));
  generation_tokens_total_->Increment(static_cast<double>(request.generation_tokens));
  e2e_latency_->Observe(request.e2e_seconds);
  prefill_time_->Observe(request.prefill_seconds);
  decode_time_->Observe(request.decode_seconds);
  prompt_tokens_->Observe(static_cast<double>(request.prompt_tokens));
  generation_tokens_->Observe(static_cast<double>(request.generation_tokens));
}

void ServerMetrics::count_error(int status) { errors_->Add({{"code", std::to_string(status)}}).Increment(); }

std::string ServerMetrics::exposition() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

}  // namespace nibble::server
