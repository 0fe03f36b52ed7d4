#pragma once
// The requests a serving benchmark sends: a seeded synthetic mix shaped like
// ShareGPT conversations (log-normal prompt and output lengths, clipped), or the
// lines of a JSONL file ({"prompt": "...", "max_tokens": N}).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace nibble::loadgen {

struct BenchRequest {
  std::string prompt;
  std::int64_t max_tokens = 128;
};

struct SyntheticWorkload {
  std::int64_t count = 200;
  double prompt_words_median = 120;  // ShareGPT's prompts: a long tail over a median of ~100-200 tokens
  double output_tokens_median = 128;
  double sigma = 0.8;                // log-normal spread of both
  std::int64_t max_prompt_words = 1024;
  std::int64_t max_output_tokens = 512;
  std::uint64_t seed = 0;
};

std::vector<BenchRequest> synthetic_requests(const SyntheticWorkload& workload);

// Throws nibble::Error naming the line for anything that is not such an object.
std::vector<BenchRequest> read_jsonl_requests(const std::filesystem::path& path, std::int64_t default_max_tokens);

}  // namespace nibble::loadgen
