#pragma once
// HTTP/1.1 transport on Boost.Beast: accepts connections on a few I/O threads,
// reads requests within size and time limits (so a slow or hostile client cannot
// pin a connection or memory), hands each request to an HttpHandler and writes
// what it answers — a whole response or a chunked stream — from any thread.
// Knows nothing of OpenAI or models; a client that goes away is reported to the
// handler so the work it asked for can stop.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nibble::server {

struct HttpLimits {
  std::size_t max_body_bytes = std::size_t{1} << 20;    // larger: 413
  std::size_t max_header_bytes = std::size_t{16} << 10;  // larger: 431
  // Waiting for a request's headers, idle keep-alive time included.
  std::chrono::milliseconds header_timeout{std::chrono::seconds(10)};
  // Receiving the body, and each write to a client that does not read.
  std::chrono::milliseconds read_timeout{std::chrono::seconds(30)};
  std::size_t max_connections = 1024;  // beyond: accepted and closed at once
  // Connections on the probe listener, counted apart from the others so a flood
  // of idle connections on the main port cannot make /health unreachable.
  std::size_t max_probe_connections = 16;
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::uint64_t id = 0;  // per server, in arrival order (for logs)
  // The client's X-Request-Id when it is a usable one (request_id_for), otherwise
  // generated; echoed in the answer's X-Request-Id and on every log line of the request.
  std::string request_id;
  std::string method;    // as sent: GET, POST, ...
  std::string path;      // the target without its query string
  std::string body;
  HttpHeaders headers;
  std::string remote;  // peer address
  bool probe = false;  // arrived on the probe listener

  // The first header of that name (case-insensitive), or "".
  std::string_view header(std::string_view name) const;
};

// The request id to use for a request whose X-Request-Id header is `given`: it
// is kept when it is 1 to 128 characters of [A-Za-z0-9._~:/+=@-] (cut to 128
// when longer), so it is safe in a header and a log line; otherwise (absent,
// spaces, quotes, control bytes, ...) a random UUID replaces it.
std::string request_id_for(std::string_view given);

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  HttpHeaders headers;
};

// One request's answer. Every method may be called from any thread; calls after
// the answer is complete, or after the client went away, are ignored. Holders
// must let go of it before the HttpServer is destroyed (it keeps the connection).
class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  virtual void respond(HttpResponse response) = 0;
  // A streamed answer: the head now (chunked transfer), then any number of
  // pieces, then the end.
  virtual void start_stream(int status, std::string content_type, HttpHeaders headers) = 0;
  virtual void stream(std::string data) = 0;
  virtual void end_stream() = 0;
  // Runs once if the client disconnects before the answer is complete (at once
  // when that already happened).
  virtual void on_disconnect(std::function<void()> callback) = 0;
  // key=value pairs added to the request's log line (ids, token counts).
  virtual void annotate(std::string key_values) = 0;
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // Called on an I/O thread; answer now or later through `exchange`. An
  // exception escaping here is answered with a 500 and logged.
  virtual void handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) = 0;
  // The body of the error responses the transport writes itself (413, 431, 400
  // for unparsable HTTP, 500), so they look like the handler's own.
  virtual std::string error_body(int status, const std::string& message) const = 0;
};

class HttpServer {
 public:
  // Binds now (throws nibble::Error when it cannot, e.g. the port is taken) and
  // serves on `io_threads` threads until stop(). With `probe_port`, a second
  // listener on the same host takes up to max_probe_connections connections of
  // its own; its requests carry `probe` so the handler can limit what they reach.
  HttpServer(const std::string& host, std::uint16_t port, HttpLimits limits, HttpHandler& handler, int io_threads,
             std::optional<std::uint16_t> probe_port = std::nullopt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  std::uint16_t port() const;  // the bound port (useful with port 0)
  std::optional<std::uint16_t> probe_port() const;  // the probe listener's bound port, if any
  // Connections admitted on either listener whose session is still alive (its
  // memory not yet released); 0 once every client has gone and been cleaned up.
  std::size_t open_connections() const;

  // Graceful shutdown, step 1: no new connections; idle keep-alive connections
  // close; connections with a request in flight close after their answer.
  void stop_accepting();
  // Step 2: waits until no answer is in progress (true) or `timeout` passes.
  bool wait_until_idle(std::chrono::milliseconds timeout);
  // Step 3: closes everything and joins the I/O threads.
  void stop();

  class Impl;  // the Asio machinery, shared with the connections in http_server.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble::server
