#pragma once
// One streamed /v1/completions request over plain HTTP/1.1, timed as a serving
// benchmark needs: when each piece of text arrived, and the usage the server
// reported. Talks to any OpenAI-compatible server (nibble, vLLM, llama.cpp).
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "loadgen/workload.h"

namespace nibble::loadgen {

struct Endpoint {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;
  std::string path = "/v1/completions";
  std::string model;
  std::string api_key;  // empty: no Authorization header
};

struct RequestResult {
  bool ok = false;
  std::string error;  // HTTP status and body, or the transport error
  double ttft_seconds = 0;
  double e2e_seconds = 0;
  std::vector<double> inter_chunk_seconds;  // between consecutive text chunks
  std::int64_t chunks = 0;                  // text chunks (a token each, for most servers)
  std::optional<std::int64_t> prompt_tokens;     // from the usage chunk
  std::optional<std::int64_t> completion_tokens;
};

// Parses "http://host:port[/v1]" into an endpoint; throws nibble::Error otherwise.
Endpoint parse_base_url(const std::string& url);

struct SamplingChoice {
  double temperature = 0;
  bool ignore_eos = false;  // vLLM's extension (nibble has it too): exactly max_tokens tokens
  std::chrono::seconds timeout{600};
};

// Sends `request` with stream=true and stream_options.include_usage; never throws.
RequestResult run_streamed(const Endpoint& endpoint, const BenchRequest& request, const SamplingChoice& sampling);

}  // namespace nibble::loadgen
