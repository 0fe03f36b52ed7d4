#include "server/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/log.h"

namespace nibble::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

bool same_letters(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

std::string serialize(const HttpResponse& response, unsigned version, bool keep_alive) {
  http::response<http::string_body> message{static_cast<http::status>(response.status), version};
  message.set(http::field::server, "nibble");
  message.set(http::field::content_type, response.content_type);
  for (const auto& [name, value] : response.headers) message.set(name, value);
  message.keep_alive(keep_alive);
  message.body() = response.body;
  message.prepare_payload();
  std::ostringstream out;
  out << message;
  return out.str();
}

// The head of a streamed answer: chunked on HTTP/1.1; HTTP/1.0 gets the body
// until the connection closes.
std::string stream_head(int status, const std::string& content_type, const HttpHeaders& headers, unsigned version,
                        bool keep_alive) {
  http::response<http::empty_body> message{static_cast<http::status>(status), version};
  message.set(http::field::server, "nibble");
  message.set(http::field::content_type, content_type);
  for (const auto& [name, value] : headers) message.set(name, value);
  message.keep_alive(keep_alive);
  if (version >= 11) message.chunked(true);
  std::ostringstream out;
  out << message.base();
  return out.str();
}

// Why a request's body framing cannot be trusted, if it cannot (RFC 9112 §6.1, §6.3).
// The only transfer coding we read is "chunked", alone: with any other, or with a
// Content-Length beside it, where the body ends is ambiguous, and a proxy in front
// may see a different end than we do — the bytes after it would be read as a second
// ("smuggled") request.
std::optional<std::string> framing_fault(const http::request_header<>& header) {
  int transfer_encodings = 0;
  bool content_length = false;
  std::string_view coding;
  for (const auto& field : header) {
    if (field.name() == http::field::transfer_encoding) {
      ++transfer_encodings;
      coding = std::string_view(field.value().data(), field.value().size());
    } else if (field.name() == http::field::content_length) {
      content_length = true;
    }
  }
  if (transfer_encodings == 0) return std::nullopt;
  if (header.version() < 11) return "Transfer-Encoding is not defined for HTTP/1.0";
  if (content_length) return "both Transfer-Encoding and Content-Length";
  if (transfer_encodings > 1 || !same_letters(coding, "chunked")) {
    return "unsupported Transfer-Encoding (only \"chunked\" is accepted)";
  }
  return std::nullopt;
}

std::string chunk(const std::string& data, bool chunked) {
  return chunked ? fmt::format("{:x}\r\n{}\r\n", data.size(), data) : data;
}

}  // namespace

std::string request_id_for(std::string_view given) {
  constexpr std::size_t kMaxLength = 128;
  given = given.substr(0, kMaxLength);
  const auto usable = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || std::string_view("._~:/+=@-").find(c) != std::string_view::npos;
  };
  if (!given.empty() && std::all_of(given.begin(), given.end(), usable)) return std::string(given);
  thread_local std::mt19937_64 random{std::random_device{}()};
  const std::uint64_t high = random(), low = random();
  // Version 4, variant 1.
  return fmt::format("{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", high >> 32, (high >> 16) & 0xFFFF, high & 0xFFF,
                     0x8000 | ((low >> 48) & 0x3FFF), low & 0xFFFFFFFFFFFFULL);
}

std::string_view HttpRequest::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (same_letters(key, name)) return value;
  }
  return {};
}

class Session;

class HttpServer::Impl {
 public:
  // A listening socket and how many connections it admitted are alive. The main
  // and probe listeners count apart, so filling one cannot lock out the other.
  struct Listener {
    Listener(asio::io_context& io, bool is_probe) : acceptor(asio::make_strand(io)), probe(is_probe) {}
    tcp::acceptor acceptor;
    const bool probe;
    std::uint16_t port = 0;
  };

  Impl(HttpLimits limits, HttpHandler& handler) : limits_(limits), handler_(handler), main_(io_, false) {}

  void open(const std::string& host, std::uint16_t port, std::optional<std::uint16_t> probe_port);
  void run(int io_threads);
  void accept(Listener& listener);
  void stop_accepting();
  bool wait_until_idle(std::chrono::milliseconds timeout);
  void stop();
  std::size_t open_connections() {
    const std::lock_guard lock(mutex_);
    return open_[0] + open_[1];
  }

  // Sessions count the answers in progress, for draining.
  void busy_begin() {
    const std::lock_guard lock(mutex_);
    ++busy_;
  }
  void busy_end() {
    const std::lock_guard lock(mutex_);
    --busy_;
    idle_.notify_all();
  }
  void add(const std::shared_ptr<Session>& session);
  void remove(Session* session, bool probe) {
    const std::lock_guard lock(mutex_);
    sessions_.erase(session);
    --open_[probe ? 1 : 0];
  }

  const HttpLimits limits_;
  HttpHandler& handler_;
  std::atomic<std::uint64_t> next_request_id_{1};
  std::atomic<bool> draining_{false};

 private:
  // Declared before io_: sessions destroyed with io_'s pending handlers unregister here.
  std::mutex mutex_;
  std::condition_variable idle_;
  std::map<Session*, std::weak_ptr<Session>> sessions_;
  std::array<std::size_t, 2> open_{};  // sessions alive from the main and the probe listener
  int busy_ = 0;

  asio::io_context io_;

 public:
  Listener main_;
  std::optional<Listener> probe_;

 private:
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
};

class Exchange;

// One connection: reads requests one after another, hands each to the handler
// and writes its answer. Everything runs on the connection's strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server, bool probe)
      : stream_(std::move(socket)), server_(server), probe_(probe) {
    boost::system::error_code ec;
    const auto peer = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = fmt::format("{}:{}", peer.address().to_string(), peer.port());
  }
  ~Session() { server_.remove(this, probe_); }

  auto executor() { return stream_.get_executor(); }
  void start() {
    asio::dispatch(executor(), [self = shared_from_this()] { self->read_header(); });
  }
  // Draining: a connection waiting for its next request closes now.
  void close_if_idle() {
    asio::dispatch(executor(), [self = shared_from_this()] {
      if (!self->exchange_) self->close();
    });
  }
  // After the I/O threads stopped: an answer still being written then leaves the
  // exchange held by this connection and this connection by the exchange; dropping
  // that link lets both go with the handlers the io_context still holds.
  void drop_exchange_after_stop() { exchange_.reset(); }

  // Used by Exchange, on the strand.
  void send(std::string bytes) {
    if (closed_) return;
    outbox_.push_back(std::move(bytes));
    if (!writing_) write_next();
  }
  void answer_complete() {
    answered_ = true;
    if (!writing_) after_answer();
  }
  void client_gone();
  unsigned version() const { return version_; }
  bool keep_alive() const { return keep_alive_ && !server_.draining_; }
  void no_keep_alive() { keep_alive_ = false; }
  bool closed() const { return closed_; }
  const std::string& remote() const { return remote_; }

 private:
  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_.limits_.max_header_bytes));
    parser_->body_limit(server_.limits_.max_body_bytes);
    stream_.expires_after(server_.limits_.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    if (const auto fault = framing_fault(parser_->get())) {
      return reject(400, fmt::format("Malformed HTTP request: {}", *fault), *fault);
    }
    const auto expect = parser_->get()[http::field::expect];
    if (same_letters(std::string_view(expect.data(), expect.size()), "100-continue")) {
      // curl and others wait for this before sending a large body.
      continue_ = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(stream_, asio::buffer(continue_), [self = shared_from_this()](beast::error_code e, std::size_t) {
        if (e) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(server_.limits_.read_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_body(ec); });
  }

  void on_body(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    dispatch_request();
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted || ec == beast::error::timeout || ec == http::error::partial_message) {
      if (ec == beast::error::timeout) spdlog::debug("http_timeout remote={}", remote_);
      return close();
    }
    int status = 400;
    std::string message = fmt::format("Malformed HTTP request: {}", ec.message());
    if (ec == http::error::body_limit) {
      status = 413;
      message = fmt::format("The request body is larger than the server's limit of {} bytes",
                            server_.limits_.max_body_bytes);
    } else if (ec == http::error::header_limit) {
      status = 431;
      message = fmt::format("The request headers are larger than the server's limit of {} bytes",
                            server_.limits_.max_header_bytes);
    }
    reject(status, message, ec.message());
  }

  // Answers a request we will not serve once, then closes: what follows on the
  // connection cannot be trusted to start at a request boundary.
  void reject(int status, const std::string& message, const std::string& reason) {
    spdlog::info("http_request_rejected remote={} status={} reason=\"{}\"", remote_, status, reason);
    keep_alive_ = false;
    server_.busy_begin();
    answered_ = false;
    busy_ = true;
    send(serialize({status, "application/json", server_.handler_.error_body(status, message), {}}, 11, false));
    answer_complete();
  }

  void dispatch_request();

  void write_next() {
    writing_ = true;
    stream_.expires_after(server_.limits_.read_timeout);
    asio::async_write(stream_, asio::buffer(outbox_.front()),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_written(ec); });
  }

  void on_written(beast::error_code ec) {
    writing_ = false;
    if (ec) {
      // The client stopped reading (timeout) or went away.
      outbox_.clear();
      client_gone();
      return;
    }
    outbox_.pop_front();
    if (!outbox_.empty()) return write_next();
    stream_.expires_never();
    if (answered_) after_answer();
  }

  void after_answer() {
    if (closed_) return end_exchange();
    if (keep_alive()) {
      end_exchange();
      return read_header();
    }
    // Send our FIN and let the client read the answer before the socket goes:
    // closing with unread request bytes would reset the connection and could
    // destroy the answer (a 413 to a client still sending its body).
    end_exchange();
    boost::system::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::chrono::seconds(2));
    discard_until_closed();
  }

  void discard_until_closed() {
    stream_.async_read_some(asio::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->discard_until_closed();
    });
  }

  void end_exchange();

  // Watches for the client going away while its answer is produced. Readiness
  // alone proves nothing (epoll may report it for bytes already read), so a
  // non-blocking peek decides: end of stream or an error means gone; data is a
  // pipelined request, left for the next read; nothing yet means watch again.
  void watch_for_disconnect(std::uint64_t request) {
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(), request](beast::error_code ec) {
      if (ec || self->current_request_ != request || self->closed_) return;
      char byte = 0;
      const auto peeked = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (peeked > 0) return;
      if (peeked < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return self->watch_for_disconnect(request);
      }
      self->client_gone();
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    if (busy_) end_exchange();
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  const bool probe_;  // from the probe listener
  std::string remote_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string continue_;
  std::array<char, 4096> discard_{};
  std::deque<std::string> outbox_;
  bool writing_ = false;
  bool answered_ = false;
  bool busy_ = false;  // counted in the server's answers in progress
  bool closed_ = false;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  std::uint64_t current_request_ = 0;
  std::shared_ptr<Exchange> exchange_;
};

// The handler's hold on one request. Calls hop onto the connection's strand.
class Exchange final : public HttpExchange, public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(std::shared_ptr<Session> session, const HttpRequest& request)
      : session_(std::move(session)),
        id_(request.id),
        request_id_(request.request_id),
        method_(request.method),
        path_(request.path) {}

  void respond(HttpResponse response) override {
    response.headers.emplace_back("X-Request-Id", request_id_);
    on_strand([response = std::move(response)](Exchange& self) mutable {
      if (self.done() || self.streaming_) return;
      self.status_ = response.status;
      self.session_->send(serialize(response, self.session_->version(), self.session_->keep_alive()));
      self.finish();
    });
  }

  void start_stream(int status, std::string content_type, HttpHeaders headers) override {
    headers.emplace_back("X-Request-Id", request_id_);
    on_strand([status, content_type = std::move(content_type), headers = std::move(headers)](Exchange& self) {
      if (self.done() || self.streaming_) return;
      self.streaming_ = true;
      self.status_ = status;
      self.chunked_ = self.session_->version() >= 11;
      if (!self.chunked_) self.session_->no_keep_alive();  // the end of the body is the end of the connection
      self.session_->send(
          stream_head(status, content_type, headers, self.session_->version(), self.session_->keep_alive()));
    });
  }

  void stream(std::string data) override {
    if (data.empty()) return;  // an empty chunk would end the stream
    on_strand([data = std::move(data)](Exchange& self) {
      if (self.done() || !self.streaming_) return;
      self.session_->send(chunk(data, self.chunked_));
    });
  }

  void end_stream() override {
    on_strand([](Exchange& self) {
      if (self.done() || !self.streaming_) return;
      if (self.chunked_) self.session_->send("0\r\n\r\n");
      self.finish();
    });
  }

  void on_disconnect(std::function<void()> callback) override {
    on_strand([callback = std::move(callback)](Exchange& self) mutable {
      if (self.gone_) return callback();
      if (!self.done_) self.on_gone_ = std::move(callback);
    });
  }

  void annotate(std::string key_values) override {
    on_strand([key_values = std::move(key_values)](Exchange& self) {
      if (!self.notes_.empty()) self.notes_ += ' ';
      self.notes_ += key_values;
    });
  }

  // On the strand, from the session.
  // The log line waits for the handler to let go (its counts come last).
  ~Exchange() override {
    if (gone_) log();
  }

  void client_gone() {
    if (done_ || gone_) return;
    gone_ = true;
    status_ = 499;  // nginx's "client closed request", for the log
    if (on_gone_) std::exchange(on_gone_, nullptr)();
  }
  bool done() const { return done_ || gone_; }

 private:
  template <typename F>
  void on_strand(F&& f) {
    asio::dispatch(session_->executor(), [self = shared_from_this(), f = std::forward<F>(f)]() mutable { f(*self); });
  }

  void finish() {
    done_ = true;
    on_gone_ = nullptr;
    log();
    session_->answer_complete();
  }

  void log() const {
    spdlog::info("http_request id={} request_id={} method={} path={} status={} seconds={:.3f} remote={}{}{}", id_,
                 log::quoted(request_id_), log::clip(method_, 20), log::clip(path_),
                 status_, std::chrono::duration<double>(Clock::now() - start_).count(), session_->remote(),
                 notes_.empty() ? "" : " ", notes_);
  }

  std::shared_ptr<Session> session_;
  const std::uint64_t id_;
  const std::string request_id_, method_, path_;
  const Clock::time_point start_ = Clock::now();
  int status_ = 0;
  bool streaming_ = false, chunked_ = true, done_ = false, gone_ = false;
  std::function<void()> on_gone_;
  std::string notes_;
};

void Session::dispatch_request() {
  auto& message = parser_->get();
  HttpRequest request;
  request.id = server_.next_request_id_++;
  request.method = std::string(message.method_string());
  const std::string_view target(message.target().data(), message.target().size());
  request.path = std::string(target.substr(0, target.find('?')));
  request.body = std::move(message.body());
  for (const auto& field : message) {
    request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  request.request_id = request_id_for(request.header("X-Request-Id"));
  request.remote = remote_;
  request.probe = probe_;
  keep_alive_ = message.keep_alive();
  version_ = message.version();
  parser_.reset();

  stream_.expires_never();
  server_.busy_begin();
  busy_ = true;
  answered_ = false;
  current_request_ = request.id;
  exchange_ = std::make_shared<Exchange>(shared_from_this(), request);
  watch_for_disconnect(request.id);
  try {
    server_.handler_.handle(request, exchange_);
  } catch (const std::exception& e) {
    spdlog::error("http_handler_failed id={} request_id={} path={} error=\"{}\"", request.id,
                  log::quoted(request.request_id), log::clip(request.path),
                  log::clip(e.what()));
    exchange_->respond({500, "application/json", server_.handler_.error_body(500, "Internal server error"), {}});
  }
}

void Session::client_gone() {
  if (exchange_) exchange_->client_gone();
  close();
}

void Session::end_exchange() {
  exchange_.reset();
  current_request_ = 0;
  if (busy_) {
    busy_ = false;
    server_.busy_end();
  }
}

void HttpServer::Impl::add(const std::shared_ptr<Session>& session) {
  const std::lock_guard lock(mutex_);
  sessions_[session.get()] = session;
}

void HttpServer::Impl::open(const std::string& host, std::uint16_t port, std::optional<std::uint16_t> probe_port) {
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) throw Error(fmt::format("cannot listen on '{}': not an IP address", host));
  const auto bind = [&](Listener& listener, std::uint16_t wanted) {
    const tcp::endpoint endpoint(address, wanted);
    listener.acceptor.open(endpoint.protocol(), ec);
    if (!ec) listener.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) listener.acceptor.bind(endpoint, ec);
    if (!ec) listener.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) throw Error(fmt::format("cannot listen on {}:{}: {}", host, wanted, ec.message()));
    listener.port = listener.acceptor.local_endpoint().port();
  };
  bind(main_, port);
  if (probe_port) bind(probe_.emplace(io_, true), *probe_port);
}

void HttpServer::Impl::run(int io_threads) {
  work_.emplace(io_.get_executor());
  accept(main_);
  if (probe_) accept(*probe_);
  for (int i = 0; i < std::max(1, io_threads); ++i) threads_.emplace_back([this] { io_.run(); });
}

void HttpServer::Impl::accept(Listener& listener) {
  listener.acceptor.async_accept(asio::make_strand(io_), [this, &listener](beast::error_code ec, tcp::socket socket) {
    if (!listener.acceptor.is_open()) return;
    if (!ec) {
      const std::size_t limit = listener.probe ? limits_.max_probe_connections : limits_.max_connections;
      bool admitted = false;
      {
        const std::lock_guard lock(mutex_);
        std::size_t& open = open_[listener.probe ? 1 : 0];
        admitted = open < limit;
        if (admitted) ++open;
      }
      if (!admitted) {
        spdlog::warn("http_connection_refused reason=max_connections listener={} limit={}",
                     listener.probe ? "probe" : "main", limit);
        boost::system::error_code ignored;
        socket.close(ignored);
      } else {
        auto session = std::make_shared<Session>(std::move(socket), *this, listener.probe);
        add(session);
        session->start();
      }
    }
    accept(listener);
  });
}

void HttpServer::Impl::stop_accepting() {
  draining_ = true;
  for (Listener* listener : {&main_, probe_ ? &*probe_ : nullptr}) {
    if (listener == nullptr) continue;
    asio::dispatch(listener->acceptor.get_executor(), [listener] {
      boost::system::error_code ignored;
      listener->acceptor.close(ignored);
    });
  }
  std::vector<std::shared_ptr<Session>> open;
  {
    const std::lock_guard lock(mutex_);
    for (const auto& [raw, weak] : sessions_) {
      if (auto session = weak.lock()) open.push_back(std::move(session));
    }
  }
  for (const auto& session : open) session->close_if_idle();
}

bool HttpServer::Impl::wait_until_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return idle_.wait_for(lock, timeout, [&] { return busy_ == 0; });
}

void HttpServer::Impl::stop() {
  if (threads_.empty()) return;
  stop_accepting();
  work_.reset();
  io_.stop();
  for (auto& thread : threads_) thread.join();
  threads_.clear();
  std::vector<std::shared_ptr<Session>> open;
  {
    const std::lock_guard lock(mutex_);
    for (const auto& [raw, weak] : sessions_) {
      if (auto session = weak.lock()) open.push_back(std::move(session));
    }
  }
  for (const auto& session : open) session->drop_exchange_after_stop();
}

HttpServer::HttpServer(const std::string& host, std::uint16_t port, HttpLimits limits, HttpHandler& handler,
                       int io_threads, std::optional<std::uint16_t> probe_port)
    : impl_(std::make_unique<Impl>(limits, handler)) {
  impl_->open(host, port, probe_port);
  impl_->run(io_threads);
}

HttpServer::~HttpServer() { impl_->stop(); }

std::uint16_t HttpServer::port() const { return impl_->main_.port; }
std::optional<std::uint16_t> HttpServer::probe_port() const {
  return impl_->probe_ ? std::optional(impl_->probe_->port) : std::nullopt;
}
std::size_t HttpServer::open_connections() const { return impl_->open_connections(); }
void HttpServer::stop_accepting() { impl_->stop_accepting(); }
bool HttpServer::wait_until_idle(std::chrono::milliseconds timeout) { return impl_->wait_until_idle(timeout); }
void HttpServer::stop() { impl_->stop(); }

}  // namespace nibble::server
