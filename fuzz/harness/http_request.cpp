// Raw bytes through the HTTP transport (server/http_server.cpp, Boost.Beast): a
// real HttpServer on 127.0.0.1, started once, gets each input on a fresh TCP
// connection, which is then half-closed; the harness reads whatever the server
// answers until it closes. Driving the real server (rather than Beast's parser
// alone) covers nibble's own framing checks (Transfer-Encoding / Content-Length
// smuggling, Expect: 100-continue, limits, pipelining, keep-alive) and how the
// session turns a parse into an HttpRequest.
// Checked: no crash/UB/leak in the server, every answer is an HTTP/1.x status
// line, the server releases each connection's session once the client has gone,
// and it keeps accepting connections after every input.
// Waiting for that release also keeps each input's allocations and frees inside
// its own run: libFuzzer re-runs any input that leaves more mallocs than frees
// under a full LeakSanitizer scan, which took a quarter of the time before.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "fuzz_util.h"
#include "server/http_server.h"

namespace {

using nibble::server::HttpExchange;
using nibble::server::HttpRequest;
using nibble::server::HttpResponse;

// Answers every request at once; /stream answers with a chunked stream, so both
// ways of writing a response are exercised after arbitrary requests.
class EchoHandler final : public nibble::server::HttpHandler {
 public:
  void handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) override {
    exchange->annotate("fuzz=1");
    if (request.path == "/stream") {
      exchange->start_stream(200, "text/event-stream", {});
      exchange->stream("data: " + std::to_string(request.body.size()) + "\n\n");
      exchange->end_stream();
      return;
    }
    exchange->respond(HttpResponse{.status = 200,
                                   .content_type = "text/plain",
                                   .body = request.method + " " + request.path + " " +
                                           std::to_string(request.headers.size()) + " " +
                                           std::to_string(request.body.size()) + " " +
                                           std::string(request.header("content-type")),
                                   .headers = {}});
  }
  std::string error_body(int status, const std::string& message) const override {
    return std::to_string(status) + " " + message;
  }
};

EchoHandler handler;
std::unique_ptr<nibble::server::HttpServer> server;

// A connect() that a signal interrupts (libFuzzer's timer is a SIGALRM every few
// seconds; a busy machine can delay the handshake) goes on in the background:
// wait up to 5 s for it, as for any other answer, instead of calling it a failure.
bool connected_after(int fd) {
  if (errno != EINTR) return false;
  pollfd writable{.fd = fd, .events = POLLOUT, .revents = 0};
  int ready = 0;
  do {
    ready = ::poll(&writable, 1, 5000);
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) errno = ETIMEDOUT;
  if (ready != 1) return false;
  int error = 0;
  socklen_t length = sizeof error;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
  errno = error;
  return error == 0;
}

int connect_to_server() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) nibble::fuzz::violated("socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(server->port());
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 && !connected_after(fd)) {
    const std::string why = std::string("the server stopped accepting connections: ") + std::strerror(errno);
    nibble::fuzz::violated(why.c_str());
  }
  // Closed with a reset, not a FIN: tens of thousands of inputs a minute would
  // otherwise leave as many TIME_WAIT entries on the server's port, and a new
  // connection whose client port repeats one of them can be refused (seen at
  // ~75k inputs in 30 s), which is the loopback's limit, not the server's.
  const linger abort_on_close{.l_onoff = 1, .l_linger = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  // Bounded: a server that neither answers nor closes is a bug, not a hang.
  const timeval timeout{.tv_sec = 5, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Small limits so inputs reach them; the timeouts only matter for inputs that
  // stop mid-request, and the half-close ends those at once.
  nibble::server::HttpLimits limits;
  limits.max_body_bytes = 2048;
  limits.max_header_bytes = 1024;
  limits.header_timeout = std::chrono::seconds(2);
  limits.read_timeout = std::chrono::seconds(2);
  server = std::make_unique<nibble::server::HttpServer>("127.0.0.1", 0, limits, handler, 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const int fd = connect_to_server();
  std::size_t sent = 0;
  while (sent < size) {
    const auto n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server closed early (a rejected request): fine
    sent += static_cast<std::size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  char buffer[4096];
  for (;;) {
    const auto n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) nibble::fuzz::violated("the server neither answered nor closed");
      break;  // reset by the server after a rejection
    }
    answer.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (!answer.empty() && answer.rfind("HTTP/1.", 0) != 0) nibble::fuzz::violated("an answer without a status line");
  // The session goes once its last handler has run, which may be just after the
  // socket closed; 5 s (the receive timeout) without that is a leaked session.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (server->open_connections() != 0) {
    if (std::chrono::steady_clock::now() > deadline) nibble::fuzz::violated("the server kept a closed connection's session");
    std::this_thread::yield();
  }
  return 0;
}
