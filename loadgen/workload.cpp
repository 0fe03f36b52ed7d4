#include "loadgen/workload.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <random>

#include "common/error.h"

namespace nibble::loadgen {
namespace {

// Common English words: prompts of real-looking text tokenize about one token a word.
constexpr std::array<const char*, 48> kWords{
    "the",   "of",    "and",   "to",    "in",    "a",      "is",    "that",  "for",    "it",    "as",    "was",
    "with",  "be",    "by",    "on",    "not",   "he",     "this",  "are",   "or",     "his",   "from",  "at",
    "which", "but",   "have",  "an",    "had",   "they",   "you",   "were",  "their",  "one",   "all",   "we",
    "can",   "her",   "has",   "there", "been",  "if",     "more",  "when",  "will",   "would", "who",   "so"};

std::int64_t log_normal(std::mt19937_64& rng, double median, double sigma, std::int64_t max) {
  std::lognormal_distribution<double> distribution(std::log(median), sigma);
  return std::clamp<std::int64_t>(std::llround(distribution(rng)), 1, max);
}

}  // namespace

std::vector<BenchRequest> synthetic_requests(const SyntheticWorkload& workload) {
  std::mt19937_64 rng(workload.seed);
  std::uniform_int_distribution<std::size_t> word(0, kWords.size() - 1);
  std::vector<BenchRequest> requests;
  for (std::int64_t i = 0; i < workload.count; ++i) {
    BenchRequest request;
    const auto words = log_normal(rng, workload.prompt_words_median, workload.sigma, workload.max_prompt_words);
    for (std::int64_t w = 0; w < words; ++w) {
      if (w > 0) request.prompt += ' ';
      request.prompt += kWords[word(rng)];
    }
    request.max_tokens = log_normal(rng, workload.output_tokens_median, workload.sigma, workload.max_output_tokens);
    requests.push_back(std::move(request));
  }
  return requests;
}

std::vector<BenchRequest> read_jsonl_requests(const std::filesystem::path& path, std::int64_t default_max_tokens) {
  std::ifstream in(path);
  if (!in) fail("cannot read {}", path.string());
  std::vector<BenchRequest> requests;
  std::string line;
  for (std::int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}:{}: not JSON: {}", path.string(), number, e.what());
    }
    if (!value.is_object() || !value.contains("prompt") || !value["prompt"].is_string()) {
      fail("{}:{}: expected {{\"prompt\": string, \"max_tokens\": integer (optional)}}", path.string(), number);
    }
    BenchRequest request{value["prompt"].get<std::string>(), default_max_tokens};
    if (value.contains("max_tokens")) {
      if (!value["max_tokens"].is_number_integer() || value["max_tokens"].get<std::int64_t>() < 1) {
        fail("{}:{}: max_tokens must be a positive integer", path.string(), number);
      }
      request.max_tokens = value["max_tokens"].get<std::int64_t>();
    }
    requests.push_back(std::move(request));
  }
  if (requests.empty()) fail("{} holds no requests", path.string());
  return requests;
}

}  // namespace nibble::loadgen
