#pragma once
// A serving benchmark in the manner of vLLM's benchmark_serving: requests arrive
// as a Poisson process at a given rate (or all at once) under an optional cap on
// concurrency, each streamed; the report has request and token throughput and
// TTFT / TPOT / ITL / E2E latency (mean, p50, p99). It only speaks the OpenAI
// HTTP API, so it measures nibble, vLLM or llama.cpp's server alike.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loadgen/stream_client.h"
#include "loadgen/workload.h"

namespace nibble::loadgen {

struct BenchmarkOptions {
  Endpoint endpoint;
  SamplingChoice sampling;
  std::optional<double> request_rate;  // requests per second, Poisson; none: all at once
  std::int64_t max_concurrency = 0;    // requests in flight at most; 0: no cap
  std::uint64_t seed = 0;              // for the arrival times
};

struct LatencySummary {
  double mean = 0, p50 = 0, p99 = 0;  // seconds
};

struct BenchmarkReport {
  std::int64_t completed = 0;
  std::int64_t failed = 0;
  double duration_seconds = 0;
  std::int64_t prompt_tokens = 0;  // as the server counted them (usage)
  std::int64_t output_tokens = 0;
  double request_throughput = 0;  // completed requests per second
  double output_throughput = 0;   // output tokens per second
  double total_token_throughput = 0;
  LatencySummary ttft, tpot, itl, e2e;
  std::vector<std::string> errors;  // the first few failures

  nlohmann::json to_json() const;
  std::string table() const;
};

// Mean and the 50th / 99th percentiles (linear interpolation, as numpy).
LatencySummary summarize(std::vector<double> values);

BenchmarkReport run_benchmark(const std::vector<BenchRequest>& requests, const BenchmarkOptions& options);

}  // namespace nibble::loadgen
