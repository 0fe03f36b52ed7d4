// The HTTP transport alone, with a scripted handler and real sockets: keep-alive,
// size limits, slow clients, chunked streams written from another thread,
// disconnects reaching the handler, and the drain.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <regex>
#include <thread>
#include <vector>

#include "server/http_server.h"

namespace nibble::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// Answers by path: /echo returns the body, /stream streams three pieces from
// another thread, /hold streams one piece and then waits for a release or a
// disconnect.
class ScriptedHandler : public HttpHandler {
 public:
  void handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) override {
    ++handled;
    if (request.path == "/echo") {
      exchange->respond({200, "text/plain", request.method + " " + request.body,
                         {{"X-Seen", std::string(request.header("x-test"))}, {"X-Probe", request.probe ? "yes" : "no"}}});
    } else if (request.path == "/stream") {
      const std::lock_guard lock(mutex_);
      writers_.emplace_back([exchange] {
        exchange->start_stream(200, "text/event-stream", {});
        for (const char* piece : {"one ", "two ", "three"}) {
          exchange->stream(piece);
          std::this_thread::sleep_for(5ms);
        }
        exchange->end_stream();
      });
    } else if (request.path == "/hold") {
      exchange->on_disconnect([this] {
        const std::lock_guard lock(mutex_);
        disconnected = true;
        changed_.notify_all();
      });
      exchange->start_stream(200, "text/plain", {});
      exchange->stream("started");
      const std::lock_guard lock(mutex_);
      held = exchange;
      changed_.notify_all();
    } else if (request.path == "/throw") {
      throw std::runtime_error("handler bug");
    } else {
      exchange->respond({404, "text/plain", "no", {}});
    }
  }
  std::string error_body(int status, const std::string& message) const override {
    return "error " + std::to_string(status) + ": " + message;
  }

  // The /stream writers: joined before the server goes (TearDown), since the
  // client can have the last chunk while its writer is still returning from
  // end_stream()'s post, and destroying the server then races with that post.
  void join_writers() {
    std::vector<std::thread> writers;
    {
      const std::lock_guard lock(mutex_);
      writers.swap(writers_);
    }
    for (auto& writer : writers) writer.join();
  }

  bool wait_disconnected() {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [&] { return disconnected; });
  }
  std::shared_ptr<HttpExchange> wait_held() {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, 10s, [&] { return held != nullptr; });
    return held;
  }

  std::atomic<int> handled{0};
  bool disconnected = false;
  std::shared_ptr<HttpExchange> held;

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::thread> writers_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    limits_.max_body_bytes = 1000;
    limits_.header_timeout = 500ms;
    limits_.read_timeout = 2s;
    server_ = std::make_unique<HttpServer>("127.0.0.1", 0, limits_, handler_, 2);
  }
  void TearDown() override {
    handler_.join_writers();
    handler_.held.reset();  // exchanges go before their server
    server_.reset();
  }

  tcp::socket connect() {
    tcp::socket socket(io_);
    socket.connect({asio::ip::make_address("127.0.0.1"), server_->port()});
    return socket;
  }

  static http::response<http::string_body> exchange(tcp::socket& socket, http::verb method, const std::string& target,
                                                    const std::string& body = "") {
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, "test");
    request.set("X-Test", "yes");
    request.body() = body;
    request.prepare_payload();
    http::write(socket, request);
    return read_response(socket);
  }

  static http::response<http::string_body> read_response(tcp::socket& socket) {
    beast::flat_buffer buffer;
    http::response<http::string_body> response;
    http::read(socket, buffer, response);
    return response;
  }

  // True when the server closed the connection (a read gets EOF, not data).
  static bool closed_by_server(tcp::socket& socket) {
    char byte;
    beast::error_code ec;
    socket.read_some(asio::buffer(&byte, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }

  asio::io_context io_;
  HttpLimits limits_;
  ScriptedHandler handler_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpServerTest, AnswersSeveralRequestsOnOneKeptAliveConnection) {
  auto socket = connect();
  for (int i = 0; i < 3; ++i) {
    const auto response = exchange(socket, http::verb::post, "/echo?x=1", "body " + std::to_string(i));
    EXPECT_EQ(response.result_int(), 200);
    EXPECT_EQ(response.body(), "POST body " + std::to_string(i));
    EXPECT_EQ(response[http::field::server], "nibble");
    EXPECT_EQ(response["X-Seen"], "yes") << "headers are looked up case-insensitively";
    EXPECT_TRUE(response.keep_alive());
  }
  EXPECT_EQ(handler_.handled, 3);
}

TEST_F(HttpServerTest, ABodyOverTheLimitIsA413AndNeverReachesTheHandler) {
  auto socket = connect();
  const auto response = exchange(socket, http::verb::post, "/echo", std::string(1001, 'x'));
  EXPECT_EQ(response.result_int(), 413);
  EXPECT_EQ(response.body().rfind("error 413: ", 0), 0u) << response.body();
  EXPECT_FALSE(response.keep_alive());
  EXPECT_EQ(handler_.handled, 0);
  // A body at the limit is fine.
  auto again = connect();
  EXPECT_EQ(exchange(again, http::verb::post, "/echo", std::string(1000, 'x')).result_int(), 200);
}

TEST_F(HttpServerTest, GarbageIsA400AndTheServerGoesOn) {
  auto socket = connect();
  asio::write(socket, asio::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
  const auto response = read_response(socket);
  EXPECT_EQ(response.result_int(), 400);
  auto next = connect();
  EXPECT_EQ(exchange(next, http::verb::get, "/echo").result_int(), 200);
}

// Request smuggling: a body framing we do not read exactly as a proxy in front
// might (any coding but "chunked", or a Content-Length beside it) used to leave
// the "body" to be parsed as a second request on the same connection.
TEST_F(HttpServerTest, AnAmbiguousBodyFramingIsA400ThatClosesTheConnection) {
  const std::string smuggled = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";
  for (const std::string framing :
       {"Transfer-Encoding: gzip\r\n", "Transfer-Encoding: xchunked\r\n", "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked, identity\r\n", "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"}) {
    SCOPED_TRACE(framing);
    auto socket = connect();
    asio::write(socket, asio::buffer("POST /echo HTTP/1.1\r\nHost: t\r\n" + framing + "\r\n0\r\n\r\n" + smuggled));
    const auto response = read_response(socket);
    EXPECT_EQ(response.result_int(), 400);
    EXPECT_FALSE(response.keep_alive());
    EXPECT_TRUE(closed_by_server(socket)) << "nothing after the rejected request may be answered";
  }
  auto http10 = connect();
  asio::write(http10, asio::buffer("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled));
  EXPECT_EQ(read_response(http10).result_int(), 400);
  EXPECT_TRUE(closed_by_server(http10));
  EXPECT_EQ(handler_.handled, 0);

  // "chunked" alone (any case) is still read, and the next request on the connection answered.
  auto chunked = connect();
  asio::write(chunked, asio::buffer("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n"
                                    "5\r\nhello\r\n0\r\n\r\n" + smuggled));
  // Both answers may arrive in one segment: one buffer reads them.
  beast::flat_buffer buffer;
  http::response<http::string_body> first, second;
  http::read(chunked, buffer, first);
  http::read(chunked, buffer, second);
  EXPECT_EQ(first.result_int(), 200);
  EXPECT_EQ(first.body(), "POST hello");
  EXPECT_EQ(second.body(), "GET ");
  EXPECT_EQ(handler_.handled, 2);
}

// Idle connections up to --max-connections used to make /health unreachable until
// they timed out; the probe listener admits connections on a budget of its own.
TEST_F(HttpServerTest, AFloodOfIdleConnectionsDoesNotLockOutTheProbeListener) {
  HttpLimits limits = limits_;
  limits.max_connections = 8;
  limits.max_probe_connections = 2;
  limits.header_timeout = 60s;  // the flood outlives the test
  HttpServer server("127.0.0.1", 0, limits, handler_, 2, std::uint16_t{0});
  ASSERT_TRUE(server.probe_port().has_value());
  const auto open_to = [&](std::uint16_t port) {
    tcp::socket socket(io_);
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
    return socket;
  };
  std::vector<tcp::socket> flood;
  for (std::size_t i = 0; i < limits.max_connections; ++i) flood.push_back(open_to(server.port()));
  auto refused = open_to(server.port());
  EXPECT_TRUE(closed_by_server(refused)) << "the main port is full";

  auto probe = open_to(*server.probe_port());
  const auto response = exchange(probe, http::verb::get, "/echo");
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response["X-Probe"], "yes") << "the handler knows where a request came from";
  EXPECT_TRUE(response.keep_alive());
  // The probe budget is its own and bounded too.
  auto second_probe = open_to(*server.probe_port());
  auto third_probe = open_to(*server.probe_port());
  EXPECT_TRUE(closed_by_server(third_probe));
  EXPECT_EQ(exchange(second_probe, http::verb::get, "/echo").result_int(), 200);
  auto main_port_of_another_server = connect();
  EXPECT_EQ(exchange(main_port_of_another_server, http::verb::get, "/echo")["X-Probe"], "no");
}

// Each admitted connection counts until its session is released, from either
// listener; the count goes back to 0 once the clients have gone, whether the
// client closed first or the server did (a rejected request).
TEST_F(HttpServerTest, OpenConnectionsCountsSessionsUntilTheyAreReleased) {
  const auto wait_for_count = [&](std::size_t expected) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (server_->open_connections() != expected && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    return server_->open_connections();
  };
  EXPECT_EQ(server_->open_connections(), 0U);
  {
    auto first = connect();
    auto second = connect();
    EXPECT_EQ(exchange(first, http::verb::get, "/echo").result_int(), 200);
    EXPECT_EQ(exchange(second, http::verb::get, "/echo").result_int(), 200);
    EXPECT_EQ(wait_for_count(2), 2U) << "kept-alive connections stay open";
  }
  EXPECT_EQ(wait_for_count(0), 0U) << "closed by the clients";
  auto garbage = connect();
  asio::write(garbage, asio::buffer(std::string("NOT HTTP\r\n\r\n")));
  EXPECT_EQ(read_response(garbage).result_int(), 400);
  garbage.shutdown(tcp::socket::shutdown_send);
  EXPECT_TRUE(closed_by_server(garbage));
  EXPECT_EQ(wait_for_count(0), 0U) << "closed by the server after a rejection";
}

TEST_F(HttpServerTest, ASlowClientIsClosedAfterTheHeaderTimeoutWithoutBlockingOthers) {
  auto slow = connect();
  asio::write(slow, asio::buffer(std::string("POST /echo HTTP/1.1\r\nHost: x\r\n")));  // and nothing more
  const auto start = std::chrono::steady_clock::now();
  auto other = connect();
  EXPECT_EQ(exchange(other, http::verb::get, "/echo").result_int(), 200);
  EXPECT_TRUE(closed_by_server(slow));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 400ms);
  EXPECT_EQ(handler_.handled, 1);
}

TEST_F(HttpServerTest, AStreamWrittenFromAnotherThreadArrivesChunkedAndComplete) {
  auto socket = connect();
  const auto response = exchange(socket, http::verb::get, "/stream");
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_TRUE(response.chunked());
  EXPECT_EQ(response[http::field::content_type], "text/event-stream");
  EXPECT_EQ(response.body(), "one two three");
  // The connection stays usable after the stream's last chunk.
  EXPECT_EQ(exchange(socket, http::verb::get, "/echo").body(), "GET ");
}

TEST_F(HttpServerTest, AClientThatGoesAwayIsReportedToTheHandler) {
  {
    auto socket = connect();
    http::request<http::string_body> request{http::verb::get, "/hold", 11};
    request.set(http::field::host, "test");
    http::write(socket, request);
    ASSERT_NE(handler_.wait_held(), nullptr);
    char head[64];
    socket.read_some(asio::buffer(head));  // the stream has started
  }  // closed here
  EXPECT_TRUE(handler_.wait_disconnected());
  handler_.held->stream("ignored after the client left");
  handler_.held->end_stream();
}

TEST_F(HttpServerTest, AHandlerExceptionIsA500) {
  auto socket = connect();
  const auto response = exchange(socket, http::verb::get, "/throw");
  EXPECT_EQ(response.result_int(), 500);
  EXPECT_EQ(exchange(socket, http::verb::get, "/echo").result_int(), 200);
}

TEST_F(HttpServerTest, DrainingFinishesAnswersInProgressAndRefusesNewConnections) {
  auto idle = connect();
  EXPECT_EQ(exchange(idle, http::verb::get, "/echo").result_int(), 200);  // now idle, kept alive
  auto busy = connect();
  http::request<http::string_body> request{http::verb::get, "/hold", 11};
  request.set(http::field::host, "test");
  http::write(busy, request);
  const auto held = handler_.wait_held();
  ASSERT_NE(held, nullptr);

  server_->stop_accepting();
  EXPECT_TRUE(closed_by_server(idle)) << "an idle keep-alive connection closes at once";
  EXPECT_FALSE(server_->wait_until_idle(200ms)) << "the held answer is still in progress";
  beast::error_code ec;
  tcp::socket late(io_);
  late.connect({asio::ip::make_address("127.0.0.1"), server_->port()}, ec);
  EXPECT_TRUE(ec) << "no new connections while draining";

  held->stream(" and finished");
  held->end_stream();
  EXPECT_TRUE(server_->wait_until_idle(5s));
  const auto response = read_response(busy);
  EXPECT_EQ(response.body(), "started and finished");
  EXPECT_TRUE(closed_by_server(busy)) << "a draining server closes after the answer";
}

}  // namespace

TEST(RequestId, AUsableClientIdIsKeptAndAnythingElseGetsAFreshUuid) {
  EXPECT_EQ(request_id_for("trace-42_a.b:c/d+e=f@g~h"), "trace-42_a.b:c/d+e=f@g~h");
  EXPECT_EQ(request_id_for(std::string(300, 'x')), std::string(128, 'x')) << "cut to 128";
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  for (const std::string given : {"", "has space", "quote\"", "new\nline", "caf\xc3\xa9"}) {
    const std::string id = request_id_for(given);
    EXPECT_TRUE(std::regex_match(id, uuid)) << given << " -> " << id;
  }
  EXPECT_NE(request_id_for(""), request_id_for("")) << "generated ids differ";
}

}  // namespace nibble::server
