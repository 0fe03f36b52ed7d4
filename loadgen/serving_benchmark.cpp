#include "loadgen/serving_benchmark.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

namespace nibble::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double position = q * static_cast<double>(sorted.size() - 1);
  const auto below = static_cast<std::size_t>(position);
  const auto above = std::min(below + 1, sorted.size() - 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (position - static_cast<double>(below));
}

nlohmann::json latency_json(const LatencySummary& s) {
  return {{"mean_ms", s.mean * 1e3}, {"p50_ms", s.p50 * 1e3}, {"p99_ms", s.p99 * 1e3}};
}

// Requests in flight, bounded when a cap is set.
class Slots {
 public:
  explicit Slots(std::int64_t limit) : limit_(limit) {}
  void acquire() {
    std::unique_lock lock(mutex_);
    freed_.wait(lock, [&] { return limit_ <= 0 || used_ < limit_; });
    ++used_;
  }
  void release() {
    const std::lock_guard lock(mutex_);
    --used_;
    freed_.notify_one();
  }

 private:
  const std::int64_t limit_;
  std::int64_t used_ = 0;
  std::mutex mutex_;
  std::condition_variable freed_;
};

}  // namespace

LatencySummary summarize(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  return {mean, percentile(values, 0.5), percentile(values, 0.99)};
}

BenchmarkReport run_benchmark(const std::vector<BenchRequest>& requests, const BenchmarkOptions& options) {
  std::vector<RequestResult> results(requests.size());
  std::vector<std::thread> clients;
  Slots slots(options.max_concurrency);
  std::mt19937_64 rng(options.seed);
  const auto start = Clock::now();
  auto next_arrival = start;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (options.request_rate) {
      std::this_thread::sleep_until(next_arrival);
      std::exponential_distribution<double> gap(*options.request_rate);
      next_arrival += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    slots.acquire();
    clients.emplace_back([&, i] {
      results[i] = run_streamed(options.endpoint, requests[i], options.sampling);
      slots.release();
    });
  }
  for (auto& client : clients) client.join();

  BenchmarkReport report;
  report.duration_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> ttft, tpot, itl, e2e;
  for (const auto& r : results) {
    if (!r.ok) {
      ++report.failed;
      if (report.errors.size() < 5) report.errors.push_back(r.error);
      continue;
    }
    ++report.completed;
    const std::int64_t output = r.completion_tokens.value_or(r.chunks);
    report.output_tokens += output;
    report.prompt_tokens += r.prompt_tokens.value_or(0);
    ttft.push_back(r.ttft_seconds);
    e2e.push_back(r.e2e_seconds);
    if (output > 1) tpot.push_back((r.e2e_seconds - r.ttft_seconds) / static_cast<double>(output - 1));
    itl.insert(itl.end(), r.inter_chunk_seconds.begin(), r.inter_chunk_seconds.end());
  }
  const double seconds = std::max(report.duration_seconds, 1e-9);
  report.request_throughput = static_cast<double>(report.completed) / seconds;
  report.output_throughput = static_cast<double>(report.output_tokens) / seconds;
  report.total_token_throughput = static_cast<double>(report.output_tokens + report.prompt_tokens) / seconds;
  report.ttft = summarize(std::move(ttft));
  report.tpot = summarize(std::move(tpot));
  report.itl = summarize(std::move(itl));
  report.e2e = summarize(std::move(e2e));
  return report;
}

nlohmann::json BenchmarkReport::to_json() const {
  return {{"completed", completed},
          {"failed", failed},
          {"duration_s", duration_seconds},
          {"prompt_tokens", prompt_tokens},
          {"output_tokens", output_tokens},
          {"request_throughput", request_throughput},
          {"output_throughput", output_throughput},
          {"total_token_throughput", total_token_throughput},
          {"ttft", latency_json(ttft)},
          {"tpot", latency_json(tpot)},
          {"itl", latency_json(itl)},
          {"e2e", latency_json(e2e)},
          {"errors", errors}};
}

std::string BenchmarkReport::table() const {
  std::string out = fmt::format(
      "requests completed      {:>10}\nrequests failed         {:>10}\nduration (s)            {:>10.2f}\n"
      "prompt tokens           {:>10}\noutput tokens           {:>10}\nrequests/s              {:>10.2f}\n"
      "output tokens/s         {:>10.1f}\ntotal tokens/s          {:>10.1f}\n",
      completed, failed, duration_seconds, prompt_tokens, output_tokens, request_throughput, output_throughput,
      total_token_throughput);
  const auto row = [&](const char* name, const LatencySummary& s) {
    out += fmt::format("{:<6} ms  mean {:>9.1f}  p50 {:>9.1f}  p99 {:>9.1f}\n", name, s.mean * 1e3, s.p50 * 1e3,
                       s.p99 * 1e3);
  };
  row("TTFT", ttft);
  row("TPOT", tpot);
  row("ITL", itl);
  row("E2E", e2e);
  for (const auto& error : errors) out += "error: " + error + "\n";
  return out;
}

}  // namespace nibble::loadgen
