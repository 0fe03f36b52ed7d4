#include "loadgen/stream_client.h"

#include <utility>  // before Asio: its C++20 coroutine header needs std::exchange

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <regex>

#include "common/error.h"

namespace nibble::loadgen {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Splits server-sent events out of the bytes as they arrive.
class EventStream {
 public:
  template <typename OnEvent>
  void feed(std::string_view bytes, OnEvent&& on_event) {
    pending_.append(bytes);
    std::size_t end;
    while ((end = pending_.find("\n\n")) != std::string::npos) {
      std::string event = pending_.substr(0, end);
      pending_.erase(0, end + 2);
      std::string data;
      std::size_t start = 0;
      while (start <= event.size()) {
        const std::size_t newline = std::min(event.find('\n', start), event.size());
        const std::string_view line(event.data() + start, newline - start);
        if (line.rfind("data:", 0) == 0) data += std::string(line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5));
        start = newline + 1;
      }
      if (!data.empty()) on_event(data);
    }
  }

 private:
  std::string pending_;
};

}  // namespace

Endpoint parse_base_url(const std::string& url) {
  static const std::regex pattern(R"(http://([^/:]+)(?::(\d+))?(/.*)?)");
  std::smatch match;
  if (!std::regex_match(url, match, pattern)) fail("'{}' is not an http://host:port URL", url);
  Endpoint endpoint;
  endpoint.host = match[1];
  endpoint.port = match[2].matched ? static_cast<std::uint16_t>(std::stoi(match[2])) : 80;
  std::string base = match[3].matched ? std::string(match[3]) : "";
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (base.empty()) base = "/v1";
  endpoint.path = base + "/completions";
  return endpoint;
}

RequestResult run_streamed(const Endpoint& endpoint, const BenchRequest& request, const SamplingChoice& sampling) {
  RequestResult result;
  const auto start = Clock::now();
  try {
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(sampling.timeout);
    stream.connect(asio::ip::tcp::resolver(io).resolve(endpoint.host, std::to_string(endpoint.port)));
    nlohmann::json body = {{"model", endpoint.model},
                           {"prompt", request.prompt},
                           {"max_tokens", request.max_tokens},
                           {"temperature", sampling.temperature},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}}};
    if (sampling.ignore_eos) body["ignore_eos"] = true;
    http::request<http::string_body> message{http::verb::post, endpoint.path, 11};
    message.set(http::field::host, endpoint.host);
    message.set(http::field::content_type, "application/json");
    if (!endpoint.api_key.empty()) message.set(http::field::authorization, "Bearer " + endpoint.api_key);
    message.body() = body.dump();
    message.prepare_payload();
    http::write(stream, message);

    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::read_header(stream, buffer, parser);
    const int status = static_cast<int>(parser.get().result_int());
    std::string error_body;
    EventStream events;
    std::optional<Clock::time_point> last_chunk;
    bool done = false;
    std::array<char, 16384> data{};
    while (!parser.is_done()) {
      parser.get().body().data = data.data();
      parser.get().body().size = data.size();
      beast::error_code ec;
      http::read_some(stream, buffer, parser, ec);  // return with what arrived: each chunk is timed
      if (ec && ec != http::error::need_buffer) throw beast::system_error(ec);
      const std::string_view bytes(data.data(), data.size() - parser.get().body().size);
      if (status != 200) {
        error_body.append(bytes);
        continue;
      }
      events.feed(bytes, [&](const std::string& payload) {
        if (payload == "[DONE]") {
          done = true;
          return;
        }
        const auto chunk = nlohmann::json::parse(payload);
        if (chunk.contains("usage") && chunk["usage"].is_object()) {
          result.prompt_tokens = chunk["usage"].value("prompt_tokens", std::int64_t{0});
          result.completion_tokens = chunk["usage"].value("completion_tokens", std::int64_t{0});
        }
        if (!chunk.contains("choices") || chunk["choices"].empty()) return;
        const auto& text = chunk["choices"][0]["text"];
        if (!text.is_string() || text.get<std::string>().empty()) return;
        const auto now = Clock::now();
        if (last_chunk) {
          result.inter_chunk_seconds.push_back(std::chrono::duration<double>(now - *last_chunk).count());
        } else {
          result.ttft_seconds = std::chrono::duration<double>(now - start).count();
        }
        last_chunk = now;
        ++result.chunks;
      });
    }
    result.e2e_seconds = since(start);
    if (status != 200) {
      result.error = fmt::format("HTTP {}: {}", status, error_body.substr(0, 300));
    } else if (!done) {
      result.error = "the stream ended without [DONE]";
    } else {
      result.ok = result.chunks > 0;
      if (!result.ok) result.error = "no text came back";
    }
  } catch (const std::exception& e) {
    result.e2e_seconds = since(start);
    result.error = e.what();
  }
  return result;
}

}  // namespace nibble::loadgen
