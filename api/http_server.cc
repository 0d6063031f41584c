#include "api/http_server.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pistache/endpoint.h>
#include <pistache/http.h>
#include <pistache/peer.h>
#include <pistache/router.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "vault/base/in_flight.h"
#include "vault/base/random.h"

namespace tokenvault::api {
namespace {

// Pistache 0.0.5 keeps its SSL_CTX private (Endpoint::listener -> Listener::ssl_ctx_) and sets no
// session-id context, so with client verification on every TLS session resumption fails with an
// internal-error alert (research/pistache.md). An explicit template instantiation may name
// private members ([temp.spec]/6); this reaches the context once, at start, to set what Pistache
// does not. It stops compiling, rather than misbehaving, if those members are ever renamed.
template <typename Tag, typename Tag::type Member>
struct PrivateAccess {
  friend typename Tag::type Get(Tag) { return Member; }
};
struct EndpointListener {
  using type = Pistache::Tcp::Listener Pistache::Http::Endpoint::*;
  friend type Get(EndpointListener);
};
struct ListenerSslContext {
  using type = Pistache::ssl::SSLCtxPtr Pistache::Tcp::Listener::*;
  friend type Get(ListenerSslContext);
};
template struct PrivateAccess<EndpointListener, &Pistache::Http::Endpoint::listener>;
template struct PrivateAccess<ListenerSslContext, &Pistache::Tcp::Listener::ssl_ctx_>;

SSL_CTX* SslContextOf(Pistache::Http::Endpoint& endpoint) {
  Pistache::Tcp::Listener& listener = endpoint.*Get(EndpointListener());
  return static_cast<SSL_CTX*>((listener.*Get(ListenerSslContext())).get());
}

constexpr char kProxySecretHeader[] = "X-Tokenvault-Proxy-Secret";
constexpr char kClientCertHeader[] = "X-Client-Cert";
constexpr char kRealIpHeader[] = "X-Real-IP";

}  // namespace


using namespace Pistache;

namespace {

std::string NewRequestId() {
  // 12 random bytes used once: exactly what the nonce generator hands out, from per-thread
  // blocks: one RAND call per 64 ids rather than one per request (~1% of the server's CPU).
  StatusOr<GcmNonce> raw = RandomNonce();
  if (!raw.ok()) return "req_unavailable";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "req_";
  for (uint8_t b : *raw) {
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 15]);
  }
  return id;
}

// Pistache 0.0.5 does not write raw headers on responses: each header we send is a class, and
// its NAME() must be a literal, hence a macro rather than a template.
#define TV_RESPONSE_HEADER(Class, header_name)                                 \
  class Class : public Http::Header::Header {                                  \
   public:                                                                     \
    NAME(header_name)                                                          \
    explicit Class(std::string value) : value_(std::move(value)) {}            \
    void parse(const std::string& data) override { value_ = data; }            \
    void write(std::ostream& os) const override { os << value_; }              \
                                                                               \
   private:                                                                    \
    std::string value_;                                                        \
  };
TV_RESPONSE_HEADER(RequestIdHeader, "Request-Id")
TV_RESPONSE_HEADER(RetryAfterHeader, "Retry-After")
TV_RESPONSE_HEADER(WwwAuthenticateHeader, "WWW-Authenticate")
#undef TV_RESPONSE_HEADER

void SendJson(Http::ResponseWriter& writer, int status, const std::string& body,
              const std::vector<std::pair<std::string, std::string>>& headers) {
  Http::Mime::MediaType mime = MIME(Application, Json);
  for (const auto& [name, value] : headers) {
    if (name == "Request-Id") {
      writer.headers().add(std::make_shared<RequestIdHeader>(value));
    } else if (name == "Retry-After") {
      writer.headers().add(std::make_shared<RetryAfterHeader>(value));
    } else if (name == "WWW-Authenticate") {
      writer.headers().add(std::make_shared<WwwAuthenticateHeader>(value));
    } else if (name == "Content-Type") {
      mime = Http::Mime::MediaType::fromString(value);
    }
  }
  const auto code = static_cast<Http::Code>(status);
  if (body.empty()) {
    writer.send(code);
  } else {
    writer.send(code, body, mime);
  }
}

// Every method Pistache 0.0.5 parses (HTTP_METHODS): each is registered at start so that the
// router's map is only ever read by the workers (§3.11; TRACE and CONNECT included).
constexpr Http::Method kAllMethods[] = {Http::Method::Options, Http::Method::Get,
                                        Http::Method::Post,    Http::Method::Head,
                                        Http::Method::Put,     Http::Method::Patch,
                                        Http::Method::Delete,  Http::Method::Trace,
                                        Http::Method::Connect};

void KeepAlive(const Http::Request& rq, Http::ResponseWriter& rw) {
  // §3.1: without this, Pistache answers "Connection: Close" and never closes.
  if (rq.version() == Http::Version::Http11 && !rq.headers().has<Http::Header::Connection>()) {
    rw.headers().remove<Http::Header::Connection>();
    rw.headers().add<Http::Header::Connection>(Http::ConnectionControl::KeepAlive);
  }
}

// The few answers the HTTP layer gives itself (the request never reached the service, so they
// are not audited): fixed texts, never input.
std::string ServerError(const char* type, const char* code, const char* message,
                        const std::string& request_id) {
  return std::string(R"({"error":{"type":")") + type + R"(","code":")" + code +
         R"(","message":")" + message + R"(","request_id":")" + request_id + "\"}}";
}

// A fixed pool of threads running vault work off the Pistache workers.
class Executor {
 public:
  Executor(size_t threads, size_t max_queued) : max_queued_(max_queued) {
    for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { Run(); });
  }
  ~Executor() { Stop(); }

  // False when the queue is full or stopping (the caller answers 503 itself).
  bool Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || stopping_ || queue_.size() >= max_queued_) return false;
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return true;
  }

  // From now on Submit refuses; tasks already queued still run.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && workers_.empty()) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), "tv-executor");  // names show in top -H, perf, gdb
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        task();
      } catch (...) {
        // A task must never take a worker down with it.
        spdlog::error("a request task threw; its connection gets no answer");
      }
    }
  }

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool closed_ = false;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(const ServerConfig& config, Service& service)
      : config_(config),
        service_(service),
        executor_(config.worker_threads, config.max_queued),
        endpoint_(Address(config.bind_address, Port(config.port))) {}

  Status Start() {
    auto opts = Http::Endpoint::options()
                    .threads(config_.io_threads)
                    .flags(Tcp::Options::ReuseAddr | Tcp::Options::NoDelay)
                    // The body limit is ours (a JSON 413); Pistache's own limit, a plain-text 413,
                    // only stops requests far beyond it.
                    .maxRequestSize(4 * config_.max_body_bytes + 64 * 1024)
                    .headerTimeout(config_.header_timeout)
                    .bodyTimeout(config_.body_timeout)
                    .keepaliveTimeout(config_.keepalive_timeout);
    endpoint_.init(opts);
    try {
      if (config_.tls) endpoint_.useSSL(config_.cert_file, config_.key_file);  // after init()
    } catch (const std::exception&) {
      return FailedPreconditionError("tls_setup", "cannot load the TLS certificate or key");
    }
    if (!config_.client_ca_file.empty()) TV_RETURN_IF_ERROR(SetUpClientCertificates());
    BuildRoutes();
    endpoint_.setHandler(router_.handler());
    try {
      endpoint_.serveThreaded();
    } catch (const std::exception&) {
      return UnavailableError("bind_failed", "cannot listen on " + config_.bind_address + ":" +
                                                 std::to_string(config_.port));
    }
    return Status::Ok();
  }

  uint16_t port() const { return static_cast<uint16_t>(endpoint_.getPort()); }

  // mTLS: OpenSSL verifies the chain to the client CA, the dates and the client-auth purpose in
  // the handshake; an unknown, expired or self-signed certificate never reaches a handler.
  Status SetUpClientCertificates() {
    if (!config_.tls) return InvalidArgumentError("bad_config", "client certificates need TLS");
    try {
      endpoint_.useSSLAuth(config_.client_ca_file);  // SSL_VERIFY_PEER | FAIL_IF_NO_PEER_CERT | CLIENT_ONCE
    } catch (const std::exception&) {
      return FailedPreconditionError("tls_setup", "cannot load the client CA " + config_.client_ca_file);
    }
    SSL_CTX* ctx = SslContextOf(endpoint_);
    if (ctx == nullptr) return InternalError("tls_setup", "no TLS context");
    static constexpr unsigned char kSessionContext[] = "tokenvault";
    if (SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1) != 1) {
      return InternalError("tls_setup", "cannot set the TLS session id context");
    }
    // Tell clients which CA to pick a certificate for.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config_.client_ca_file.c_str());
    if (names == nullptr) return FailedPreconditionError("tls_setup", "no CA in " + config_.client_ca_file);
    SSL_CTX_set_client_CA_list(ctx, names);
    if (!config_.client_cert_required) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, nullptr);
    }
    return Status::Ok();
  }

  // The verified client certificate of this connection (on the Pistache worker that owns it:
  // its SSL object is not safe to touch from another thread).
  std::optional<ClientCertificate> PeerCertificate(Http::ResponseWriter& writer) {
    if (config_.client_ca_file.empty()) return std::nullopt;
    std::shared_ptr<Tcp::Peer> peer = writer.getPeer();
    SSL* ssl = peer ? static_cast<SSL*>(peer->ssl()) : nullptr;
    if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
    return ClientCertificateOf(SSL_get0_peer_certificate(ssl));
  }

  // True if the request proves it came through the trusted proxy (its shared secret). Identity
  // headers of any other request are ignored: a client cannot forge them.
  bool FromTrustedProxy(const Rest::Request& rq) {
    if (config_.trusted_proxy_secret.empty()) return false;
    auto secret = rq.headers().tryGetRaw(kProxySecretHeader);
    if (!secret) return false;
    const std::string& sent = secret->value();
    return sent.size() == config_.trusted_proxy_secret.size() &&
           CRYPTO_memcmp(sent.data(), config_.trusted_proxy_secret.data(), sent.size()) == 0;
  }

  // The client certificate the trusted proxy verified.
  std::optional<ClientCertificate> ProxiedCertificate(const Rest::Request& rq) {
    auto escaped = rq.headers().tryGetRaw(kClientCertHeader);
    if (!escaped || escaped->value().empty()) return std::nullopt;
    std::optional<std::string> pem = UrlDecode(escaped->value());
    return pem ? ClientCertificateFromPem(*pem) : std::nullopt;
  }

  void Shutdown() {
    if (shut_down_.exchange(true)) return;
    accepting_ = false;  // new requests get 503
    executor_.Close();   // and nothing more can be queued, even by a request already past that
    // Every accepted request answered (including those completing after their commit).
    if (!requests_.WaitIdleFor(std::chrono::seconds(30))) {
      spdlog::error("shutdown: requests still running after 30 s; stopping anyway");
    }
    // The answers are queued to their Pistache workers; give them a moment to be written.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    {
      std::unique_lock<std::shared_mutex> no_more_sends(send_mu_);
      endpoint_closed_ = true;
    }
    endpoint_.shutdown();
    executor_.Stop();
  }

 private:
  void BuildRoutes() {
    // §3.11: register every method once so that the router's map is never written concurrently.
    for (Http::Method m : kAllMethods) {
      router_.addRoute(m, "/__tokenvault_never__", [](const Rest::Request&, Http::ResponseWriter w) {
        w.send(Http::Code::Not_Found);
        return Rest::Route::Result::Ok;
      });
    }
    router_.addMiddleware([](Http::Request& rq, Http::ResponseWriter& rw) {
      KeepAlive(rq, rw);
      return true;
    });
    std::map<std::string, std::set<std::string>> methods_by_path;
    for (const RouteSpec& spec : Routes()) {
      methods_by_path[spec.path].insert(spec.method);
      router_.addRoute(MethodOf(spec.method), spec.path,
                       [this, spec](const Rest::Request& rq, Http::ResponseWriter w) {
                         Accept(spec, rq, std::move(w));
                         return Rest::Route::Result::Ok;
                       });
    }
    // JSON 405s for the methods a path does not take, and JSON 404s: both go through the service
    // like any request, so they are authenticated and audited too.
    for (const auto& [path, methods] : methods_by_path) {
      for (Http::Method method : kAllMethods) {
        const std::string m = Http::methodString(method);
        if (methods.count(m)) continue;
        const RouteSpec spec{m, path, "method_not_allowed"};
        router_.addRoute(method, path, [this, spec](const Rest::Request& rq, Http::ResponseWriter w) {
          Accept(spec, rq, std::move(w));
          return Rest::Route::Result::Ok;
        });
      }
    }
    router_.addNotFoundHandler([this](const Rest::Request& rq, Http::ResponseWriter w) {
      KeepAlive(rq, w);
      const RouteSpec spec{Http::methodString(rq.method()), rq.resource(), "not_found"};
      Accept(spec, rq, std::move(w));
      return Rest::Route::Result::Ok;
    });
  }

  static Http::Method MethodOf(const std::string& m) {
    if (m == "GET") return Http::Method::Get;
    if (m == "POST") return Http::Method::Post;
    if (m == "PUT") return Http::Method::Put;
    if (m == "PATCH") return Http::Method::Patch;
    return Http::Method::Delete;
  }

  // Runs on a Pistache worker: copy what the service needs, hand it to the executor, return.
  void Accept(const RouteSpec& spec, const Rest::Request& rq, Http::ResponseWriter writer) {
    const auto started = std::chrono::steady_clock::now();
    HttpRequest request;
    request.method = spec.method;
    request.route = spec.route;
    request.request_id = NewRequestId();
    try {
      for (const char* name : {"m", "token", "name"}) {
        const std::string key = std::string(":") + name;
        if (rq.hasParam(key)) request.params[name] = rq.param(key).as<std::string>();
      }
      for (auto it = rq.query().parameters_begin(); it != rq.query().parameters_end(); ++it) {
        request.query[it->first] = it->second;
      }
      if (auto auth = rq.headers().tryGet<Http::Header::Authorization>()) {
        request.authorization = auth->value();
      }
      if (auto ct = rq.headers().tryGet<Http::Header::ContentType>()) {
        request.content_type = ct->mime().toString();
      }
      if (auto key = rq.headers().tryGetRaw("Idempotency-Key")) {
        request.idempotency_key = key->value();
      }
      request.source_ip = rq.address().host();
      request.body = rq.body();
      request.client_cert = PeerCertificate(writer);
      if (!config_.trusted_proxy_secret.empty()) {
        if (!FromTrustedProxy(rq)) {
          // Behind the proxy every request comes through it. One that does not is a local
          // process, or a proxy with another secret: refused (by the service, so it is audited),
          // and never taken for the proxy's own address, which the lockout would then block.
          request.proxy_problem = "untrusted";
        } else {
          request.via_proxy = true;
          // The proxy's own address says nothing: the client's is in X-Real-IP (it sets it).
          if (auto real_ip = rq.headers().tryGetRaw(kRealIpHeader);
              real_ip && !real_ip->value().empty() && real_ip->value().size() <= 64) {
            request.source_ip = real_ip->value();
          }
          auto escaped = rq.headers().tryGetRaw(kClientCertHeader);
          if (!request.client_cert && escaped && !escaped->value().empty()) {
            request.client_cert = ProxiedCertificate(rq);
            if (!request.client_cert) request.proxy_problem = "bad_client_cert";
          }
        }
      }
    } catch (...) {
      SendJson(writer, 400, ServerError("invalid_request", "malformed_request", "the request cannot be read", request.request_id),
               {{"Request-Id", request.request_id}});
      return;
    }
    if (request.body.size() > config_.max_body_bytes) {
      // Answered (and audited) by the service like any other error.
      OPENSSL_cleanse(request.body.data(), request.body.size());
      request.body.clear();
      request.body_too_large = true;
    }
    if (!accepting_) {
      SendJson(writer, 503, ServerError("unavailable", "shutting_down", "the server is shutting down", request.request_id),
               {{"Request-Id", request.request_id}, {"Retry-After", "1"}});
      return;
    }
    auto shared_writer = std::make_shared<Http::ResponseWriter>(std::move(writer));
    auto shared_request = std::make_shared<HttpRequest>(std::move(request));
    // Counted from here until the answer is handed to Pistache, wherever that happens.
    InFlight::Ticket ticket = requests_.Enter();
    const bool queued = executor_.Submit([this, shared_writer, shared_request, started, ticket] {
      const std::string request_id = shared_request->request_id;
      const std::string route = shared_request->route;
      // Most requests end with a commit; nothing waits for it: the answer is sent from the
      // completion (the store's completion thread), and this thread takes the next request.
      service_.HandleAsync(std::move(*shared_request), [this, shared_writer, request_id, route,
                                                        started, ticket](HttpResponse response) {
        {
          // Shutdown waits for sends in progress and, past its deadline, stops the endpoint: an
          // answer completing after that has no connection left to go to.
          std::shared_lock<std::shared_mutex> sending(send_mu_);
          if (!endpoint_closed_) {
            SendJson(*shared_writer, response.status, response.body, response.headers);
          }
        }
        // A detokenize answer holds values: wipe our copy once Pistache has its own.
        if (!response.body.empty()) OPENSSL_cleanse(response.body.data(), response.body.size());
        const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::steady_clock::now() - started)
                                .count();
        // One line per request: never a value, key or PIN.
        spdlog::info("request_id={} principal={} route={} status={} latency_us={}", request_id,
                     response.principal.empty() ? "-" : response.principal, route,
                     response.status, micros);
      });
    });
    if (!queued) {
      SendJson(*shared_writer, 503,
               ServerError("unavailable", "overloaded", "too many requests in flight", shared_request->request_id),
               {{"Request-Id", shared_request->request_id}, {"Retry-After", "1"}});
    }
  }

  const ServerConfig config_;
  Service& service_;
  // Declared before the endpoint and the in-flight count, so that a completion arriving while
  // the object is being destroyed (after a shutdown that timed out) still finds them.
  std::shared_mutex send_mu_;
  bool endpoint_closed_ = false;  // GUARDED_BY(send_mu_)
  InFlight requests_;  // accepted and not yet answered; before the executor, destroyed after it
  Executor executor_;
  Http::Endpoint endpoint_;
  Rest::Router router_;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> shut_down_{false};
};

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const ServerConfig& config,
                                                        Service& service) {
  const bool loopback = config.bind_address == "127.0.0.1" || config.bind_address == "::1" ||
                        config.bind_address == "localhost";
  if (!config.tls && !loopback) {
    return InvalidArgumentError("bad_config", "plain HTTP is only allowed on a loopback address");
  }
  if (config.tls && (config.cert_file.empty() || config.key_file.empty())) {
    return InvalidArgumentError("bad_config", "TLS needs a certificate and a key");
  }
  // Pistache's TLS path writes through OpenSSL's socket BIO, i.e. write() without MSG_NOSIGNAL:
  // a client that resets its connection while an answer is being written would raise SIGPIPE,
  // whose default action kills the whole vault. The write fails with EPIPE instead.
  signal(SIGPIPE, SIG_IGN);
  auto impl = std::make_unique<Impl>(config, service);
  TV_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() {
  if (impl_) impl_->Shutdown();
}
uint16_t HttpServer::port() const { return impl_->port(); }
void HttpServer::Shutdown() { impl_->Shutdown(); }

}  // namespace tokenvault::api
