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

// vLLM reports finish reasons as stop, length or abort.
std::string vllm_finished_reason(const std::string& reason) {
  return reason == "stop" || reason == "length" ? reason : "abort";
}

}  // namespace

// The series of vLLM's /metrics that nibble has an equivalent for, under vLLM's
// names and its `model_name` label (vllm/v1/metrics/loggers.py). Recorded from
// the same events as nibble's own; the histograms keep nibble's buckets, which
// quantile queries do not depend on.
struct ServerMetrics::VllmSeries {
  VllmSeries(const std::string& model, prometheus::Registry& r) {
    const prometheus::Labels labels{{"model_name", model}};
    const auto gauge = [&](const std::string& name, const std::string& help) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name(name).Help(help).Labels(labels).Register(r).Add({});
    };
    const auto counter = [&](const std::string& name, const std::string& help) -> prometheus::Counter& {
      return prometheus::BuildCounter().Name(name).Help(help).Labels(labels).Register(r).Add({});
    };
    const auto histogram = [&](const std::string& name, const std::string& help,
                               const Histogram::BucketBoundaries& buckets) -> Histogram& {
      return prometheus::BuildHistogram().Name(name).Help(help).Labels(labels).Register(r).Add({}, buckets);
    };
    running = &gauge("vllm:num_requests_running", "Number of requests in model execution batches.");
    waiting = &gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.");
    kv_cache_usage = &gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
    // The name before vLLM 0.10, still queried by its example dashboard and older recipes.
    gpu_cache_usage = &gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
    preemptions = &counter("vllm:num_preemptions_total", "Cumulative number of preemptions from the engine.");
    prefix_queries = &counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.");
    prefix_hits = &counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.");
    prompt_tokens_total = &counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.");
    generation_tokens_total = &counter("vllm:generation_tokens_total", "Number of generation tokens processed.");
    success = &prometheus::BuildCounter()
                   .Name("vllm:request_success_total")
                   .Help("Count of successfully processed requests.")
                   .Labels(labels)
                   .Register(r);
    time_to_first_token = &histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                     kFirstTokenSeconds);
    time_per_output_token = &histogram("vllm:time_per_output_token_seconds",
                                       "Histogram of time per output token in seconds.", kInterTokenSeconds);
    inter_token_latency = &histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                                     kInterTokenSeconds);
    e2e_latency = &histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             kRequestSeconds);
    queue_time = &histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                            kRequestSeconds);
    inference_time = &histogram("vllm:request_inference_time_seconds",
                                "Histogram of time spent in RUNNING phase for request.", kRequestSeconds);
    prefill_time = &histogram("vllm:request_prefill_time_seconds",
                              "Histogram of time spent in PREFILL phase for request.", kRequestSeconds);
    decode_time = &histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                             kRequestSeconds);
    prompt_tokens = &histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", kTokens);
    generation_tokens = &histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", kTokens);
    max_generation_tokens = &histogram("vllm:request_max_num_generation_tokens",
                                       "Histogram of maximum number of requested generation tokens.", kTokens);
  }

  prometheus::Gauge *running, *waiting, *kv_cache_usage, *gpu_cache_usage;
  prometheus::Counter *preemptions, *prefix_queries, *prefix_hits, *prompt_tokens_total, *generation_tokens_total;
  prometheus::Family<prometheus::Counter>* success;
  Histogram *time_to_first_token, *time_per_output_token, *inter_token_latency, *e2e_latency, *queue_time,
      *inference_time, *prefill_time, *decode_time, *prompt_tokens, *generation_tokens, *max_generation_tokens;
};

ServerMetrics::ServerMetrics(const std::string& model, MetricsCompat compat)
    : model_(model), registry_(std::make_shared<prometheus::Registry>()) {
  if (compat == MetricsCompat::Vllm) vllm_ = std::make_unique<VllmSeries>(model, *registry_);
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
  step_loop_stalled_ = &gauge("nibble_step_loop_stalled_seconds",
                              "How long the scheduler's step loop has had work without finishing a turn (0: idle or "
                              "moving); what /health/ready and /health/live judge.");
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
  load_progress_ = &gauge("nibble_model_load_progress",
                          "Fraction of the model's layers loaded (0 to 1; 1 once the model serves).");
  weight_bytes_ = &family(prometheus::BuildGauge(), "nibble_model_weight_bytes",
                          "Bytes of model weights held, by storage format.", model, r);
  parallel_ranks_ = &family(prometheus::BuildGauge(), "nibble_parallel_ranks",
                            "Ranks the model is split across, by kind (tensor, expert, pipeline); 1 each unsplit.", model, r);
  parallel_ranks_->Add({{"kind", "tensor"}}).Set(1);
  parallel_ranks_->Add({{"kind", "expert"}}).Set(1);
  parallel_ranks_->Add({{"kind", "pipeline"}}).Set(1);
  collective_calls_ = &family(prometheus::BuildCounter(), "nibble_collective_calls_total",
                              "Collectives this rank ran between the ranks of a split model, by kind.", model, r);
  collective_bytes_ = &family(prometheus::BuildCounter(), "nibble_collective_bytes_total",
                              "Bytes this rank sent or contributed in collectives, by kind.", model, r);
  collective_seconds_ = &family(prometheus::BuildCounter(), "nibble_collective_seconds_total",
                                "Seconds this rank spent in collectives (waiting included), by kind.", model, r);
  expert_tokens_ = &family(prometheus::BuildCounter(), "nibble_moe_expert_tokens_total",
                           "Mixture of experts: tokens routed to each expert, by layer and expert.", model, r);
  expert_imbalance_ = &family(prometheus::BuildGauge(), "nibble_moe_expert_load_imbalance",
                              "Mixture of experts: the last step's busiest expert's tokens over the mean per expert "
                              "(worst layer; 1 is even).",
                              model, r);
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

void ServerMetrics::set_load_progress(double fraction) { load_progress_->Set(fraction); }

void ServerMetrics::set_kv_cache_config(std::int64_t block_size, std::int64_t num_blocks, const std::string& dtype) {
  if (!vllm_) return;
  prometheus::BuildGauge()
      .Name("vllm:cache_config_info")
      .Help("Information of the LLMEngine CacheConfig.")
      .Labels({{"model_name", model_}})
      .Register(*registry_)
      .Add({{"block_size", std::to_string(block_size)},
            {"num_gpu_blocks", std::to_string(num_blocks)},
            {"cache_dtype", dtype},
            {"enable_prefix_caching", "True"}})
      .Set(1);
}

void ServerMetrics::set_model(double load_seconds, const std::map<std::string, std::uint64_t>& weight_bytes_by_format) {
  load_seconds_->Set(load_seconds);
  load_progress_->Set(1.0);
  for (const auto& [format, bytes] : weight_bytes_by_format) {
    weight_bytes_->Add({{"format", format}}).Set(static_cast<double>(bytes));
  }
}

void ServerMetrics::set_parallel_ranks(int tensor, int pipeline, int expert) {
  parallel_ranks_->Add({{"kind", "tensor"}}).Set(tensor);
  parallel_ranks_->Add({{"kind", "expert"}}).Set(expert);
  parallel_ranks_->Add({{"kind", "pipeline"}}).Set(pipeline);
}

void ServerMetrics::observe_collectives(const dist::CollectiveStats& stats) {
  const std::lock_guard lock(collectives_mutex_);
  for (std::size_t kind = 0; kind < dist::kCollectiveKinds; ++kind) {
    const auto& now = stats.by_kind[kind];
    const auto& before = last_collectives_.by_kind[kind];
    if (now.calls == before.calls) continue;
    const prometheus::Labels labels{{"collective", std::string(dist::collective_name(static_cast<dist::Collective>(kind)))}};
    collective_calls_->Add(labels).Increment(static_cast<double>(now.calls - before.calls));
    collective_bytes_->Add(labels).Increment(static_cast<double>(now.bytes - before.bytes));
    collective_seconds_->Add(labels).Increment(now.seconds - before.seconds);
  }
  last_collectives_ = stats;
}

void ServerMetrics::observe_expert_load(const engine::ExpertLoad& load) {
  if (load.layers.empty()) return;
  const std::lock_guard lock(experts_mutex_);
  if (expert_counters_.size() != load.layers.size()) {
    // Every series from the first observation on, zeros included (an idle expert shows).
    expert_counters_.clear();
    last_expert_load_ = {};
    for (std::size_t i = 0; i < load.layers.size(); ++i) {
      auto& counters = expert_counters_.emplace_back();
      for (std::size_t e = 0; e < load.tokens[i].size(); ++e) {
        counters.push_back(
            &expert_tokens_->Add({{"layer", std::to_string(load.layers[i])}, {"expert", std::to_string(e)}}));
      }
    }
  }
  for (std::size_t i = 0; i < load.layers.size(); ++i) {
    const auto& before = i < last_expert_load_.tokens.size() ? last_expert_load_.tokens[i] : std::vector<std::int64_t>{};
    for (std::size_t e = 0; e < load.tokens[i].size() && e < expert_counters_[i].size(); ++e) {
      const std::int64_t now = load.tokens[i][e], was = e < before.size() ? before[e] : 0;
      if (now > was) expert_counters_[i][e]->Increment(static_cast<double>(now - was));
    }
  }
  expert_imbalance_->Add({}).Set(load.last_step_imbalance);
  last_expert_load_ = load;
}

void ServerMetrics::set_load(const scheduler::SchedulerLoad& load) {
  const std::lock_guard lock(load_mutex_);
  running_->Set(static_cast<double>(load.running));
  waiting_->Set(static_cast<double>(load.waiting));
  kv_cache_usage_->Set(load.kv_cache_usage);
  kv_blocks_total_->Set(static_cast<double>(load.kv_blocks_total));
  kv_blocks_free_->Set(static_cast<double>(load.kv_blocks_free));
  // The scheduler counts totals; the counters advance by what is new since the last scrape.
  const auto delta = [](std::int64_t now, std::int64_t before) {
    return now > before ? static_cast<double>(now - before) : 0.0;
  };
  const double preempted = delta(load.preemptions, last_load_.preemptions);
  const double queried = delta(load.prefix_cache_queried_tokens, last_load_.prefix_cache_queried_tokens);
  const double hits = delta(load.prefix_cache_hit_tokens, last_load_.prefix_cache_hit_tokens);
  steps_total_->Increment(delta(load.steps, last_load_.steps));
  step_tokens_total_->Increment(delta(load.step_tokens, last_load_.step_tokens));
  preemptions_total_->Increment(preempted);
  prefix_cache_queried_total_->Increment(queried);
  prefix_cache_hits_total_->Increment(hits);
  copied_blocks_total_->Increment(delta(load.copied_blocks, last_load_.copied_blocks));
  prefix_cache_hit_ratio_->Set(load.prefix_cache_queried_tokens > 0
                                   ? static_cast<double>(load.prefix_cache_hit_tokens) /
                                         static_cast<double>(load.prefix_cache_queried_tokens)
                                   : 0.0);
  if (vllm_) {
    vllm_->running->Set(static_cast<double>(load.running));
    vllm_->waiting->Set(static_cast<double>(load.waiting));
    vllm_->kv_cache_usage->Set(load.kv_cache_usage);
    vllm_->gpu_cache_usage->Set(load.kv_cache_usage);
    vllm_->preemptions->Increment(preempted);
    vllm_->prefix_queries->Increment(queried);
    vllm_->prefix_hits->Increment(hits);
  }
  last_load_ = load;
}

void ServerMetrics::set_step_loop(const scheduler::StepLoopHealth& health) {
  step_loop_stalled_->Set(health.stalled_seconds);
}

void ServerMetrics::observe_queue_time(double seconds) {
  queue_time_->Observe(seconds);
  if (vllm_) vllm_->queue_time->Observe(seconds);
}
void ServerMetrics::observe_first_token(double seconds_since_arrival) {
  time_to_first_token_->Observe(seconds_since_arrival);
  if (vllm_) vllm_->time_to_first_token->Observe(seconds_since_arrival);
}
void ServerMetrics::observe_inter_token(double seconds) {
  inter_token_latency_->Observe(seconds);
  if (vllm_) {
    vllm_->inter_token_latency->Observe(seconds);
    vllm_->time_per_output_token->Observe(seconds);
  }
}

void ServerMetrics::observe_request_done(std::int64_t max_generation_tokens) {
  if (vllm_) vllm_->max_generation_tokens->Observe(static_cast<double>(max_generation_tokens));
}

void ServerMetrics::observe_finished(const Finished& request) {
  success_->Add({{"finish_reason", request.finish_reason}}).Increment();
  prompt_tokens_total_->Increment(static_cast<double>(request.prompt_tokens));
  generation_tokens_total_->Increment(static_cast<double>(request.generation_tokens));
  e2e_latency_->Observe(request.e2e_seconds);
  prefill_time_->Observe(request.prefill_seconds);
  decode_time_->Observe(request.decode_seconds);
  prompt_tokens_->Observe(static_cast<double>(request.prompt_tokens));
  generation_tokens_->Observe(static_cast<double>(request.generation_tokens));
  if (!vllm_) return;
  vllm_->success->Add({{"finished_reason", vllm_finished_reason(request.finish_reason)}}).Increment();
  vllm_->prompt_tokens_total->Increment(static_cast<double>(request.prompt_tokens));
  vllm_->generation_tokens_total->Increment(static_cast<double>(request.generation_tokens));
  vllm_->e2e_latency->Observe(request.e2e_seconds);
  vllm_->inference_time->Observe(request.prefill_seconds + request.decode_seconds);
  vllm_->prefill_time->Observe(request.prefill_seconds);
  vllm_->decode_time->Observe(request.decode_seconds);
  vllm_->prompt_tokens->Observe(static_cast<double>(request.prompt_tokens));
  vllm_->generation_tokens->Observe(static_cast<double>(request.generation_tokens));
}

void ServerMetrics::count_error(int status) { errors_->Add({{"code", std::to_string(status)}}).Increment(); }

std::string ServerMetrics::exposition() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

}  // namespace nibble::server
