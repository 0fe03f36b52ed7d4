// The /metrics exposition: every series the README documents, labelled with the
// model, with the values recorded and the LLM latency buckets.
#include <gtest/gtest.h>

#include <sstream>

#include "server/metrics.h"

namespace nibble::server {
namespace {

// The value of the sample line that starts with `series` (name plus labels), or -1.
double sample(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

TEST(ServerMetrics, RecordedValuesAppearInTheExposition) {
  ServerMetrics metrics("smollm2");
  metrics.set_load_progress(0.25);
  EXPECT_EQ(sample(metrics.exposition(), "nibble_model_load_progress{model=\"smollm2\"}"), 0.25) << "loading";
  metrics.set_model(0.42, {{"int4", 1000}, {"f16", 500}});
  metrics.set_load({2, 3, 0.25, 10, 40, 1, 100, 75, 2});
  metrics.set_load({2, 3, 0.25, 12, 44, 1, 100, 75, 5, 64, 60});  // counters advance by the difference
  metrics.observe_queue_time(0.2);
  metrics.observe_first_token(0.03);
  metrics.observe_first_token(3.0);
  metrics.observe_inter_token(0.004);
  metrics.observe_finished({"stop", 12, 30, 1.5, 0.1, 1.2});
  metrics.observe_finished({"length", 5, 16, 0.8, 0.05, 0.6});
  metrics.count_error(400);
  metrics.count_error(400);
  metrics.count_error(503);
  metrics.set_step_loop({2.5, 7});
  const std::string text = metrics.exposition();

  EXPECT_EQ(sample(text, "nibble_requests_running{model=\"smollm2\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_requests_waiting{model=\"smollm2\"}"), 3);
  EXPECT_EQ(sample(text, "nibble_kv_cache_usage_ratio{model=\"smollm2\"}"), 0.25);
  EXPECT_EQ(sample(text, "nibble_kv_cache_blocks{model=\"smollm2\"}"), 64);
  EXPECT_EQ(sample(text, "nibble_kv_cache_free_blocks{model=\"smollm2\"}"), 60);
  EXPECT_EQ(sample(text, "nibble_scheduler_steps_total{model=\"smollm2\"}"), 12);
  EXPECT_EQ(sample(text, "nibble_step_loop_stalled_seconds{model=\"smollm2\"}"), 2.5);
  EXPECT_EQ(sample(text, "nibble_scheduler_step_tokens_total{model=\"smollm2\"}"), 44);
  EXPECT_EQ(sample(text, "nibble_preemptions_total{model=\"smollm2\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_kv_cache_copied_blocks_total{model=\"smollm2\"}"), 5);
  EXPECT_EQ(sample(text, "nibble_prefix_cache_hit_tokens_total{model=\"smollm2\"}"), 75);
  EXPECT_EQ(sample(text, "nibble_prefix_cache_hit_ratio{model=\"smollm2\"}"), 0.75);
  EXPECT_EQ(sample(text, "nibble_model_load_seconds{model=\"smollm2\"}"), 0.42);
  EXPECT_EQ(sample(text, "nibble_model_load_progress{model=\"smollm2\"}"), 1) << "loaded";
  EXPECT_EQ(sample(text, "nibble_model_weight_bytes{model=\"smollm2\",format=\"int4\"}"), 1000);
  EXPECT_EQ(sample(text, "nibble_prompt_tokens_total{model=\"smollm2\"}"), 17);
  EXPECT_EQ(sample(text, "nibble_generation_tokens_total{model=\"smollm2\"}"), 46);
  EXPECT_EQ(sample(text, "nibble_request_success_total{model=\"smollm2\",finish_reason=\"stop\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_request_success_total{model=\"smollm2\",finish_reason=\"length\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_request_errors_total{model=\"smollm2\",code=\"400\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_request_errors_total{model=\"smollm2\",code=\"503\"}"), 1);
  // Cumulative buckets: 0.03 s falls in le=0.04, 3 s only from le=5.
  EXPECT_EQ(sample(text, "nibble_time_to_first_token_seconds_bucket{model=\"smollm2\",le=\"0.04\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_time_to_first_token_seconds_bucket{model=\"smollm2\",le=\"5\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_time_to_first_token_seconds_count{model=\"smollm2\"}"), 2);
  EXPECT_DOUBLE_EQ(sample(text, "nibble_time_to_first_token_seconds_sum{model=\"smollm2\"}"), 3.03);
  EXPECT_EQ(sample(text, "nibble_inter_token_latency_seconds_count{model=\"smollm2\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_e2e_request_latency_seconds_count{model=\"smollm2\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_request_queue_time_seconds_count{model=\"smollm2\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_request_prefill_time_seconds_count{model=\"smollm2\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_request_decode_time_seconds_count{model=\"smollm2\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_request_prompt_tokens_bucket{model=\"smollm2\",le=\"5\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_request_generation_tokens_bucket{model=\"smollm2\",le=\"20\"}"), 1);
}

TEST(ServerMetrics, EverySeriesCarriesTheModelLabelAndHelp) {
  ServerMetrics metrics("m");
  metrics.set_model(1.0, {{"f32", 4}});
  metrics.count_error(429);
  metrics.observe_finished({"stop", 1, 1, 0.1, 0.01, 0.05});
  const std::string text = metrics.exposition();
  std::istringstream lines(text);
  std::string line;
  int samples = 0, helps = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP nibble_", 0) == 0) ++helps;
    if (line.empty() || line[0] == '#') continue;
    ++samples;
    EXPECT_EQ(line.rfind("nibble_", 0), 0u) << line;
    EXPECT_NE(line.find("model=\"m\""), std::string::npos) << line;
  }
  // Every family the README lists; the collective counters appear with their
  // first collective (a split model), nibble_parallel_ranks always.
  EXPECT_EQ(helps, 29);
  EXPECT_GT(samples, 29);
}

TEST(ServerMetrics, CollectivesAdvanceByWhatRanSinceTheLastObservation) {
  ServerMetrics metrics("m");
  metrics.set_parallel_ranks(4, 1, 2);
  dist::CollectiveStats stats;
  stats[dist::Collective::AllReduce] = {10, 4000, 0.5};
  metrics.observe_collectives(stats);
  stats[dist::Collective::AllReduce] = {25, 10000, 1.25};
  stats[dist::Collective::AllGather] = {2, 64, 0.01};
  metrics.observe_collectives(stats);
  const std::string text = metrics.exposition();
  EXPECT_EQ(sample(text, "nibble_parallel_ranks{model=\"m\",kind=\"tensor\"}"), 4);
  EXPECT_EQ(sample(text, "nibble_parallel_ranks{model=\"m\",kind=\"pipeline\"}"), 1);
  EXPECT_EQ(sample(text, "nibble_parallel_ranks{model=\"m\",kind=\"expert\"}"), 2);
  EXPECT_EQ(sample(text, "nibble_collective_calls_total{model=\"m\",collective=\"all_reduce\"}"), 25);
  EXPECT_EQ(sample(text, "nibble_collective_bytes_total{model=\"m\",collective=\"all_reduce\"}"), 10000);
  EXPECT_DOUBLE_EQ(sample(text, "nibble_collective_seconds_total{model=\"m\",collective=\"all_reduce\"}"), 1.25);
  EXPECT_EQ(sample(text, "nibble_collective_calls_total{model=\"m\",collective=\"all_gather\"}"), 2);
}

// Mixture of experts: per layer and expert, the tokens routed so far (the counters
// advance by the difference of the engine's running totals; an idle expert shows
// as 0), and the last step's imbalance.
TEST(ServerMetrics, ExpertLoadBecomesCountersPerLayerAndExpert) {
  ServerMetrics metrics("m");
  engine::ExpertLoad load;
  load.layers = {0, 2};
  load.tokens = {{3, 0, 1}, {2, 2, 0}};
  load.last_step_imbalance = 2.25;
  metrics.observe_expert_load(load);
  load.tokens = {{7, 0, 5}, {4, 6, 2}};
  load.last_step_imbalance = 1.5;
  metrics.observe_expert_load(load);
  const std::string text = metrics.exposition();
  EXPECT_EQ(sample(text, "nibble_moe_expert_tokens_total{model=\"m\",expert=\"0\",layer=\"0\"}"), 7);
  EXPECT_EQ(sample(text, "nibble_moe_expert_tokens_total{model=\"m\",expert=\"1\",layer=\"0\"}"), 0);
  EXPECT_EQ(sample(text, "nibble_moe_expert_tokens_total{model=\"m\",expert=\"2\",layer=\"0\"}"), 5);
  EXPECT_EQ(sample(text, "nibble_moe_expert_tokens_total{model=\"m\",expert=\"1\",layer=\"2\"}"), 6);
  EXPECT_DOUBLE_EQ(sample(text, "nibble_moe_expert_load_imbalance{model=\"m\"}"), 1.5);
  // A dense model's (empty) load adds nothing.
  ServerMetrics dense("d");
  dense.observe_expert_load({});
  EXPECT_EQ(dense.exposition().find("nibble_moe_expert_tokens_total{"), std::string::npos);
}

// --metrics-compat vllm: the same events under vLLM's names and labels, next to
// nibble's own (which stay as they are).
TEST(ServerMetrics, VllmCompatibleNamesCarryTheSameValues) {
  ServerMetrics metrics("smollm2", MetricsCompat::Vllm);
  metrics.set_load({2, 3, 0.25, 10, 40, 1, 100, 75, 2});
  metrics.set_load({2, 3, 0.5, 12, 44, 4, 120, 80, 5, 64, 60});
  metrics.observe_queue_time(0.2);
  metrics.observe_first_token(0.03);
  metrics.observe_inter_token(0.004);
  metrics.observe_finished({"stop", 12, 30, 1.5, 0.1, 1.2});
  metrics.observe_finished({"cancelled", 5, 16, 0.8, 0.05, 0.6});
  metrics.observe_request_done(30);
  metrics.set_kv_cache_config(16, 640, "float32");
  const std::string text = metrics.exposition();
  const auto vllm = [&](const std::string& name, const std::string& more_labels = "") {
    return sample(text, name + "{model_name=\"smollm2\"" + more_labels + "}");
  };
  EXPECT_EQ(vllm("vllm:num_requests_running"), 2);
  EXPECT_EQ(vllm("vllm:num_requests_waiting"), 3);
  EXPECT_EQ(vllm("vllm:kv_cache_usage_perc"), 0.5);
  EXPECT_EQ(vllm("vllm:gpu_cache_usage_perc"), 0.5);
  EXPECT_EQ(vllm("vllm:num_preemptions_total"), 4);
  EXPECT_EQ(vllm("vllm:prefix_cache_queries_total"), 120);
  EXPECT_EQ(vllm("vllm:prefix_cache_hits_total"), 80);
  EXPECT_EQ(vllm("vllm:prompt_tokens_total"), 17);
  EXPECT_EQ(vllm("vllm:generation_tokens_total"), 46);
  EXPECT_EQ(vllm("vllm:request_success_total", ",finished_reason=\"stop\""), 1);
  EXPECT_EQ(vllm("vllm:request_success_total", ",finished_reason=\"abort\""), 1) << "cancelled is vLLM's abort";
  EXPECT_EQ(vllm("vllm:time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(vllm("vllm:time_per_output_token_seconds_count"), 1);
  EXPECT_EQ(vllm("vllm:inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(vllm("vllm:e2e_request_latency_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(vllm("vllm:request_inference_time_seconds_sum"), 1.3 + 0.65);
  EXPECT_EQ(vllm("vllm:request_queue_time_seconds_count"), 1);
  EXPECT_EQ(vllm("vllm:request_prefill_time_seconds_count"), 2);
  EXPECT_EQ(vllm("vllm:request_decode_time_seconds_count"), 2);
  EXPECT_EQ(vllm("vllm:request_prompt_tokens_count"), 2);
  EXPECT_EQ(vllm("vllm:request_generation_tokens_count"), 2);
  EXPECT_EQ(vllm("vllm:request_max_num_generation_tokens_sum"), 30);
  EXPECT_EQ(vllm("vllm:cache_config_info",
                 ",block_size=\"16\",cache_dtype=\"float32\",enable_prefix_caching=\"True\",num_gpu_blocks=\"640\""),
            1);
  // nibble's own series are unchanged beside them.
  EXPECT_EQ(sample(text, "nibble_preemptions_total{model=\"smollm2\"}"), 4);
  EXPECT_EQ(sample(text, "nibble_request_success_total{model=\"smollm2\",finish_reason=\"cancelled\"}"), 1);
  // Without the option there is no vllm: series at all.
  EXPECT_EQ(ServerMetrics("smollm2").exposition().find("vllm:"), std::string::npos);
}

}  // namespace
}  // namespace nibble::server
