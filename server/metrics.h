#pragma once
// The Prometheus series nibble serves on /metrics (names and meaning documented in
// the README), every one labelled with the served model. Only the server records
// into them; what the scheduler knows (running and waiting requests, KV-cache use)
// is copied in at scrape time, so the scheduler does not depend on prometheus-cpp.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "engine/model.h"
#include "scheduler/scheduler.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace nibble::server {

// Which names /metrics uses besides nibble's own.
enum class MetricsCompat {
  None,
  // Also vLLM's names and labels (vllm:num_requests_waiting{model_name=...},
  // vllm:request_success_total{finished_reason=...}, ...), so vLLM's Grafana
  // dashboard, autoscaling recipes written for vLLM and the Gateway API Inference
  // Extension's endpoint picker work unchanged.
  Vllm,
};

class ServerMetrics {
 public:
  explicit ServerMetrics(const std::string& model, MetricsCompat compat = MetricsCompat::None);
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Once the KV cache is made: its shape (exported as vLLM's cache_config_info
  // with MetricsCompat::Vllm, which routers read the block size from).
  void set_kv_cache_config(std::int64_t block_size, std::int64_t num_blocks, const std::string& dtype);
  // While loading: the fraction of layers bound (0..1).
  void set_load_progress(double fraction);
  // Once, after loading: seconds it took and the weight bytes by storage format.
  void set_model(double load_seconds, const std::map<std::string, std::uint64_t>& weight_bytes_by_format);
  // At each scrape, from the scheduler.
  void set_load(const scheduler::SchedulerLoad& load);
  void set_step_loop(const scheduler::StepLoopHealth& health);
  // A model split across ranks: how many by kind ("tensor", "pipeline"), once.
  void set_parallel_ranks(int tensor, int pipeline, int expert = 1);
  // This rank's collectives so far (cumulative; the counters advance by the
  // difference), from the thread that runs them.
  void observe_collectives(const dist::CollectiveStats& stats);
  // Mixture of experts: the tokens each expert of each layer ran so far
  // (cumulative; the counters advance by the difference) and the last step's
  // imbalance, from the thread that runs the steps. Nothing for dense models.
  void observe_expert_load(const engine::ExpertLoad& load);

  // Per request (one completion of n), as its events arrive.
  void observe_queue_time(double seconds);
  void observe_first_token(double seconds_since_arrival);
  void observe_inter_token(double seconds);
  struct Finished {
    std::string finish_reason;  // stop, length, ...
    std::int64_t prompt_tokens = 0;
    std::int64_t generation_tokens = 0;
    double e2e_seconds = 0;
    double prefill_seconds = 0;
    double decode_seconds = 0;
  };
  void observe_finished(const Finished& request);
  // Per request, once all its choices ended: the most tokens one of them generated.
  void observe_request_done(std::int64_t max_generation_tokens);
  // A request answered with an error status (400, 401, 413, 429, 503, ...).
  void count_error(int status);

  // The text exposition format (version 0.0.4) of every series.
  std::string exposition() const;

 private:
  struct VllmSeries;  // the vLLM-named copies (metrics.cpp)

  std::string model_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<VllmSeries> vllm_;  // with MetricsCompat::Vllm
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_cache_usage_;
  prometheus::Gauge* kv_blocks_total_;
  prometheus::Gauge* kv_blocks_free_;
  prometheus::Gauge* prefix_cache_hit_ratio_;
  prometheus::Gauge* step_loop_stalled_;
  prometheus::Counter* steps_total_;
  prometheus::Counter* step_tokens_total_;
  prometheus::Counter* preemptions_total_;
  prometheus::Counter* copied_blocks_total_;
  prometheus::Counter* prefix_cache_queried_total_;
  prometheus::Counter* prefix_cache_hits_total_;
  std::mutex load_mutex_;              // scrapes may overlap
  scheduler::SchedulerLoad last_load_;  // counters advance by the difference
  prometheus::Gauge* load_seconds_;
  prometheus::Gauge* load_progress_;
  prometheus::Family<prometheus::Gauge>* weight_bytes_;
  prometheus::Family<prometheus::Gauge>* parallel_ranks_;
  prometheus::Family<prometheus::Counter>* collective_calls_;
  prometheus::Family<prometheus::Counter>* collective_bytes_;
  prometheus::Family<prometheus::Counter>* collective_seconds_;
  std::mutex collectives_mutex_;
  prometheus::Family<prometheus::Counter>* expert_tokens_;
  prometheus::Family<prometheus::Gauge>* expert_imbalance_;
  std::mutex experts_mutex_;
  engine::ExpertLoad last_expert_load_;
  std::vector<std::vector<prometheus::Counter*>> expert_counters_;  // [MoE layer][expert]
  dist::CollectiveStats last_collectives_;
  prometheus::Counter* prompt_tokens_total_;
  prometheus::Counter* generation_tokens_total_;
  prometheus::Family<prometheus::Counter>* success_;
  prometheus::Family<prometheus::Counter>* errors_;
  prometheus::Histogram* time_to_first_token_;
  prometheus::Histogram* inter_token_latency_;
  prometheus::Histogram* e2e_latency_;
  prometheus::Histogram* queue_time_;
  prometheus::Histogram* prefill_time_;
  prometheus::Histogram* decode_time_;
  prometheus::Histogram* prompt_tokens_;
  prometheus::Histogram* generation_tokens_;
};

}  // namespace nibble::server
