// `nibble bench serve`: a serving benchmark against a running OpenAI-compatible
// server (nibble's or anyone's): throughput and latency percentiles, as a table
// and optionally JSON.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "cli/commands.h"
#include "common/error.h"
#include "loadgen/serving_benchmark.h"

namespace nibble::cli {
namespace {

struct BenchServeOptions {
  std::string base_url = "http://127.0.0.1:8000/v1";
  std::string model;
  std::string api_key;
  std::int64_t num_prompts = 200;
  double request_rate = std::numeric_limits<double>::infinity();
  std::int64_t max_concurrency = 0;
  std::string dataset;
  double input_words_median = 120;
  double output_tokens_median = 128;
  std::int64_t max_output_tokens = 512;
  std::uint64_t seed = 0;
  double temperature = 0;
  bool ignore_eos = false;
  std::string result_json;
};

void run_bench_serve(const BenchServeOptions& options) {
  loadgen::BenchmarkOptions benchmark;
  benchmark.endpoint = loadgen::parse_base_url(options.base_url);
  benchmark.endpoint.model = options.model;
  benchmark.endpoint.api_key = options.api_key;
  benchmark.sampling.temperature = options.temperature;
  benchmark.sampling.ignore_eos = options.ignore_eos;
  if (std::isfinite(options.request_rate)) benchmark.request_rate = options.request_rate;
  benchmark.max_concurrency = options.max_concurrency;
  benchmark.seed = options.seed;

  std::vector<loadgen::BenchRequest> requests;
  if (!options.dataset.empty()) {
    requests = loadgen::read_jsonl_requests(options.dataset, static_cast<std::int64_t>(options.output_tokens_median));
    if (static_cast<std::int64_t>(requests.size()) > options.num_prompts) {
      requests.resize(static_cast<std::size_t>(options.num_prompts));
    }
  } else {
    loadgen::SyntheticWorkload workload;
    workload.count = options.num_prompts;
    workload.prompt_words_median = options.input_words_median;
    workload.output_tokens_median = options.output_tokens_median;
    workload.max_output_tokens = options.max_output_tokens;
    workload.seed = options.seed;
    requests = loadgen::synthetic_requests(workload);
  }
  const auto report = loadgen::run_benchmark(requests, benchmark);
  std::printf("%s", report.table().c_str());
  if (!options.result_json.empty()) {
    std::ofstream out(options.result_json);
    if (!out) fail("cannot write {}", options.result_json);
    auto json = report.to_json();
    json["base_url"] = options.base_url;
    json["model"] = options.model;
    json["num_prompts"] = requests.size();
    json["request_rate"] = std::isfinite(options.request_rate) ? nlohmann::json(options.request_rate) : nlohmann::json("inf");
    json["max_concurrency"] = options.max_concurrency;
    out << json.dump(2) << "\n";
  }
  if (report.completed == 0) fail("no request completed");
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto options = std::make_shared<BenchServeOptions>();
  CLI::App* cmd = bench->add_subcommand(
      "serve", "Load a running OpenAI-compatible server (nibble, vLLM, llama.cpp) and report throughput and latency");
  cmd->add_option("--base-url", options->base_url, "The server's API root")->capture_default_str();
  cmd->add_option("--model", options->model, "Model id to request")->required();
  cmd->add_option("--api-key", options->api_key, "Bearer key, if the server wants one");
  cmd->add_option("--num-prompts", options->num_prompts, "Requests to send")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--request-rate", options->request_rate, "Poisson arrivals per second (inf: all at once)")
      ->capture_default_str();
  cmd->add_option("--max-concurrency", options->max_concurrency, "Requests in flight at most (0: no cap)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--dataset", options->dataset, "JSONL of {\"prompt\", \"max_tokens\"} (default: synthetic)");
  cmd->add_option("--input-words-median", options->input_words_median, "Synthetic prompts: median length in words")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--output-tokens-median", options->output_tokens_median, "Synthetic: median max_tokens")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-output-tokens", options->max_output_tokens, "Synthetic: the longest max_tokens")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", options->seed, "Seed of the workload and the arrivals")->capture_default_str();
  cmd->add_option("--temperature", options->temperature, "Sampling temperature of every request")
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", options->ignore_eos, "Ask for exactly max_tokens tokens (vLLM's and nibble's extension)");
  cmd->add_option("--result-json", options->result_json, "Also write the report as JSON here");
  cmd->callback([options] { run_bench_serve(*options); });
}

}  // namespace nibble::cli
