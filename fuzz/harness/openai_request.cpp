// Request bodies of POST /v1/completions and /v1/chat/completions
// (server/openai_request.h) as they arrive: raw bytes. Every rejection must be an
// ApiError (a 400 naming the field); any other exception would be a 500.
// Accepted requests must respect the limits they were parsed against.
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "server/api_error.h"
#include "server/openai_request.h"

namespace {

// Small limits, so that the boundaries are reachable from short inputs.
const nibble::server::RequestLimits kLimits{.vocab_size = 49152, .max_tokens = 4096, .max_n = 8, .max_logprobs = 5,
                                            .max_stop = 4};

void check_options(const nibble::server::GenerationOptions& options) {
  if (options.n < 1 || options.n > kLimits.max_n) nibble::fuzz::violated("n outside [1, max_n]");
  if (options.max_tokens && (*options.max_tokens < 0 || *options.max_tokens > kLimits.max_tokens)) {
    nibble::fuzz::violated("max_tokens outside its limit");
  }
  if (static_cast<int>(options.stop.size()) > kLimits.max_stop) nibble::fuzz::violated("too many stop strings");
  for (const auto& [id, bias] : options.logit_bias) {
    if (id < 0 || id >= kLimits.vocab_size) nibble::fuzz::violated("logit_bias id outside the vocabulary");
    if (!(bias >= -nibble::server::kMaxLogitBias && bias <= nibble::server::kMaxLogitBias)) {
      nibble::fuzz::violated("logit_bias value outside [-100, 100]");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  nlohmann::json body;
  try {
    body = nibble::server::parse_request_body(bytes);
  } catch (const nibble::server::ApiError&) {
    return 0;
  }
  try {
    const auto request = nibble::server::parse_completion_request(body, kLimits);
    check_options(request.options);
    if (request.best_of < request.options.n || request.best_of > kLimits.max_n) nibble::fuzz::violated("best_of");
    for (const auto& prompt : request.prompts) {
      for (const auto id : prompt.ids) {
        if (id < 0 || id >= kLimits.vocab_size) nibble::fuzz::violated("prompt id outside the vocabulary");
      }
    }
    if (request.logprobs && (*request.logprobs < 0 || *request.logprobs > kLimits.max_logprobs)) {
      nibble::fuzz::violated("logprobs outside its limit");
    }
  } catch (const nibble::server::ApiError&) {
  }
  try {
    const auto request = nibble::server::parse_chat_request(body, kLimits);
    check_options(request.options);
    if (request.top_logprobs < 0 || request.top_logprobs > kLimits.max_logprobs) nibble::fuzz::violated("top_logprobs");
  } catch (const nibble::server::ApiError&) {
  }
  return 0;
}
