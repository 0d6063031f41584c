#include "api/service.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <future>
#include <nlohmann/json.hpp>

#include "policy/api_key.h"
#include "vault/base/metrics.h"
#include "vault/token_format.h"
#include "vault/token_id.h"

namespace tokenvault::api {
namespace {

using json = nlohmann::json;
using policy::Permission;

constexpr char kRetryAfterSeconds[] = "1";

// Wipes a string's bytes (values and API keys pass through std::string in the HTTP layer).
void Cleanse(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// Wipes every string inside 'j' (revealed values pass through nlohmann's strings).
void WipeStrings(json& j) {
  if (j.is_string()) {
    Cleanse(j.get_ref<std::string&>());
  } else if (j.is_structured()) {
    for (auto& child : j) WipeStrings(child);
  }
}

HttpResponse Json(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  // Replace invalid UTF-8 rather than throw: messages never hold input, but be safe.
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

HttpResponse NoContent() {
  HttpResponse r;
  r.status = 204;
  return r;
}

json ErrorJson(const std::string& type, const std::string& code, const std::string& message) {
  return json{{"error", {{"type", type}, {"code", code}, {"message", message}}}};
}

Status BadRequest(const std::string& code, const std::string& message) {
  return InvalidArgumentError(code, message);
}

bool IsJsonContentType(const std::string& ct) {
  // "application/json", optionally with parameters ("; charset=utf-8").
  const std::string base = ct.substr(0, ct.find(';'));
  std::string trimmed;
  for (char c : base) {
    if (c != ' ' && c != '\t') trimmed.push_back(static_cast<char>(std::tolower(c)));
  }
  return trimmed == "application/json";
}

// Only these fields may appear in a body; anything else is refused (a typo such as "reveaI"
// must not silently fall back to a default).
Status CheckFields(const json& body, std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : body.items()) {
    bool known = false;
    for (std::string_view a : allowed) known |= key == a;
    // The field name is not repeated: it is client input and could be anything.
    if (!known) return BadRequest("unknown_field", "the body has a field this endpoint does not take");
  }
  return Status::Ok();
}

// The stored metadata (written by CheckMetadata-validated JSON), or {} if none or unreadable.
json MetadataObject(const TokenInfo& t) {
  if (!t.metadata_json) return json::object();
  json m = json::parse(*t.metadata_json, nullptr, false);
  return m.is_object() ? m : json::object();
}

json TokenObject(const TokenInfo& t) {
  json o = {{"token", t.token},
            {"merchant", t.merchant},
            {"type", std::string(ValueTypeName(t.type))},
            {"format", t.format},
            {"fingerprint", t.fingerprint ? json(*t.fingerprint) : json(nullptr)},
            {"created_at", Rfc3339(t.created_at_ms)},
            {"expires_at", t.expires_at_ms ? json(Rfc3339(*t.expires_at_ms)) : json(nullptr)},
            {"metadata", MetadataObject(t)}};
  if (t.last4) o["last4"] = *t.last4;
  return o;
}

json AuditJson(const storage::AuditRecord& r) {
  json o = AuditRecordJson(r);  // the same rendering the export's lines use
  if (!r.resources.empty()) o["resources"] = r.resources;
  return o;
}

std::string OutcomeOf(int status) {
  if (status >= 200 && status < 300) return "allowed";
  if (status == 401 || status == 403 || status == 429) return "denied";
  return "error";
}

}  // namespace

std::pair<int, std::string> HttpStatusOf(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk: return {200, ""};
    case StatusCode::kInvalidArgument:
      if (s.reason() == "unsupported_media_type") return {415, "invalid_request"};
      return {400, "invalid_request"};
    case StatusCode::kUnauthenticated: return {401, "authentication"};
    case StatusCode::kPermissionDenied: return {403, "permission_denied"};
    case StatusCode::kNotFound:
      return s.reason() == kReasonTokenGone || s.reason() == "merchant_gone"
                 ? std::pair<int, std::string>{410, "gone"}
                 : std::pair<int, std::string>{404, "not_found"};
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition: return {409, "conflict"};
    case StatusCode::kResourceExhausted:
      // Memory ran out (ours or the HSM host's): a server problem to retry, not the caller's rate.
      if (s.reason() == "out_of_memory" || s.reason() == "hsm_host_memory") return {503, "unavailable"};
      return {429, "rate_limited"};
    case StatusCode::kUnavailable: return {503, "unavailable"};
    case StatusCode::kDataLoss:
    case StatusCode::kInternal: return {500, "internal"};
  }
  return {500, "internal"};
}

std::optional<int64_t> ParseRfc3339(const std::string& text) {
  // YYYY-MM-DDTHH:MM:SS[.fff...](Z|+hh:mm|-hh:mm).
  auto digits = [&](size_t at, size_t n) -> std::optional<int> {
    if (at + n > text.size()) return std::nullopt;
    int v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't') ||
      text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  auto y = digits(0, 4), mo = digits(5, 2), d = digits(8, 2), h = digits(11, 2), mi = digits(14, 2),
       sec = digits(17, 2);
  if (!y || !mo || !d || !h || !mi || !sec || *mo < 1 || *mo > 12 || *d < 1 || *d > 31 || *h > 23 ||
      *mi > 59 || *sec > 60) {
    return std::nullopt;
  }
  size_t at = 19;
  int ms = 0;
  if (at < text.size() && text[at] == '.') {
    size_t n = 0;
    ++at;
    while (at < text.size() && text[at] >= '0' && text[at] <= '9') {
      if (n < 3) ms = ms * 10 + (text[at] - '0');
      ++n;
      ++at;
    }
    if (n == 0) return std::nullopt;
    for (; n < 3; ++n) ms *= 10;
  }
  // Z, or a numeric offset +hh:mm / -hh:mm (RFC 3339 §5.6): local time = UTC + offset.
  const std::string zone = text.substr(at);
  int64_t offset_ms = 0;
  if (zone != "Z" && zone != "z") {
    if (zone.size() != 6 || (zone[0] != '+' && zone[0] != '-') || zone[3] != ':') return std::nullopt;
    auto oh = digits(at + 1, 2), om = digits(at + 4, 2);
    if (!oh || !om || *oh > 23 || *om > 59) return std::nullopt;
    offset_ms = (int64_t{*oh} * 60 + *om) * 60 * 1000 * (zone[0] == '-' ? -1 : 1);
  }
  std::tm tm{};
  tm.tm_year = *y - 1900;
  tm.tm_mon = *mo - 1;
  tm.tm_mday = *d;
  tm.tm_hour = *h;
  tm.tm_min = *mi;
  tm.tm_sec = *sec;
  const time_t secs = timegm(&tm);
  return static_cast<int64_t>(secs) * 1000 + ms - offset_ms;
}

const std::vector<RouteSpec>& Routes() {
  static const auto* routes = new std::vector<RouteSpec>{
      {"GET", "/healthz", "healthz"},
      {"GET", "/metrics", "metrics"},
      {"GET", "/readyz", "readyz"},
      {"POST", "/v1/principals", "principals.create"},
      {"DELETE", "/v1/principals/:name", "principals.delete"},
      {"POST", "/v1/merchants", "merchants.create"},
      {"DELETE", "/v1/merchants/:m", "merchants.shred"},
      {"POST", "/v1/merchants/:m/keys/rotate", "keys.rotate"},
      {"GET", "/v1/merchants/:m/keys", "keys.read"},
      {"POST", "/v1/merchants/:m/kek/rotate", "kek.rotate"},
      {"POST", "/v1/merchants/:m/tokens", "tokens.create"},
      {"POST", "/v1/merchants/:m/tokens/batch", "tokens.batch"},
      {"GET", "/v1/merchants/:m/tokens/:token", "tokens.read"},
      {"DELETE", "/v1/merchants/:m/tokens/:token", "tokens.delete"},
      {"POST", "/v1/merchants/:m/detokenize", "tokens.detokenize"},
      {"GET", "/v1/audit", "audit.read"},
      {"GET", "/v1/audit/verify", "audit.verify"},
      {"GET", "/v1/audit/export", "audit.export"},
      {"GET", "/v1/audit/checkpoint-key", "audit.checkpoint_key"},
  };
  return *routes;
}

// Everything one request accumulates for its answer and its audit record.
struct Service::Context : std::enable_shared_from_this<Service::Context> {
  HttpRequest request;
  Responder respond;      // called exactly once, through Service::Respond
  std::atomic<bool> responded{false};  // a late completion and an error path may both try
  bool pending = false;   // the handler completes the request itself, asynchronously
  std::optional<policy::Principal> principal;
  std::string auth = "none";
  std::string merchant;
  std::string resource;
  std::vector<std::string> resources;
  std::string reason;
  json body;          // parsed request body
  bool audited = false;  // the handler already wrote the audit record with its data
  std::optional<Idempotency> idempotency;  // the request carried an Idempotency-Key
  std::vector<storage::RevealCharge> charges;  // budget counters, committed with a 2xx's record
  std::string reveal;  // a detokenize's "plain" or "masked" (metrics)
  int64_t tokenized_values = 0;  // a batch's items that got a token (metrics)
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  HttpResponse answer;  // a tokenize's answer, when rendered inside its commit

  // Whatever way the request ended (refused, replayed, answered), the values in its parsed
  // body are wiped before the memory is freed.
  ~Context() { WipeStrings(body); }
};

std::shared_ptr<const policy::Policy> Service::CurrentPolicy() const {
  std::lock_guard<std::mutex> lock(policy_mu_);
  return policy_;
}

Status Service::AuditServiceEvent(const std::string& action, const std::string& reason,
                                  const std::string& resource) {
  storage::AuditRecord record = SystemAuditRecord(action, "", reason);
  record.resource = resource;
  return vault_.audit().Append(std::move(record)).status();
}

Status Service::ReplacePolicy(std::shared_ptr<const policy::Policy> policy,
                              const std::string& source) {
  if (!policy) return InvalidArgumentError("bad_policy", "no policy");
  // The change is an administrative action: recorded before it takes effect (no record, no
  // change).
  TV_RETURN_IF_ERROR(AuditServiceEvent(
      "policy.reload", "policy file re-read: " + std::to_string(policy->roles().size()) + " roles, " +
                           std::to_string(policy->budgets().size()) + " budgets, " +
                           std::to_string(policy->client_certificate_count()) +
                           " client certificate mappings; sha256 " +
                           (policy->source_sha256().empty() ? "unknown" : policy->source_sha256()),
      "policy:" + source));
  std::lock_guard<std::mutex> lock(policy_mu_);
  policy_ = std::move(policy);
  return Status::Ok();
}

Service::Service(Vault& vault, std::shared_ptr<const policy::Policy> policy,
                 ServiceOptions options)
    : vault_(vault), policy_(std::move(policy)), options_(options), lockout_(options.lockout) {}

Status Service::LoadBudgetCounters() {
  const int64_t since = Clock::Real().NowUnixMillis() - 86400 * 1000LL - storage::kRevealBucketMs;
  TV_ASSIGN_OR_RETURN(std::vector<storage::RevealCharge> usage, vault_.store().LoadRevealUsage(since));
  budgets_.Load(usage);
  return Status::Ok();
}

HttpResponse Service::Handle(HttpRequest request) {
  // Shared: the answer may come from another thread after this frame has given up on it.
  auto answer = std::make_shared<std::promise<HttpResponse>>();
  std::future<HttpResponse> result = answer->get_future();
  HandleAsync(std::move(request), [answer](HttpResponse r) { answer->set_value(std::move(r)); });
  return result.get();
}

void Service::HandleAsync(HttpRequest request, Responder respond) {
  auto ctx = std::make_shared<Context>();
  ctx->request = std::move(request);
  ctx->respond = std::move(respond);
  HttpResponse response;
  try {
    if (ctx->request.route == "metrics" && ctx->request.via_proxy) {
      // Metrics name merchants and volumes: for the monitoring system on the loopback port, never
      // for whoever reaches the front (whatever spelling of the path got past nginx).
      Respond(*ctx, Json(404, ErrorJson("not_found", "no_route", "no such endpoint")));
      return;
    }
    if (ctx->request.route == "metrics") {
      // Unauthenticated and unaudited like the health checks (API.md: bind to a private port in
      // production; behind deploy/nginx it is not exposed). Never a value or a secret in it.
      response.status = 200;
      response.body = metrics::Registry::Global().Render();
      response.headers.emplace_back("Content-Type", "text/plain; version=0.0.4");
      Respond(*ctx, std::move(response));
      return;
    }
    if (ctx->request.route == "healthz" || ctx->request.route == "readyz") {
      response = ctx->request.route == "healthz" ? Json(200, {{"status", "ok"}}) : Ready();
      Respond(*ctx, std::move(response));
      return;
    }
    response = Dispatch(*ctx);
  } catch (...) {
    // Never e.what(): it can carry library text or input.
    spdlog::error("request_id={} route={} unexpected exception", ctx->request.request_id,
                  ctx->request.route);
    if (ctx->pending) return;  // the asynchronous completion answers
    ctx->reason = "unexpected exception";
    response = Json(500, ErrorJson("internal", "internal", "internal error"));
  }
  if (ctx->pending) return;
  Complete(ctx, std::move(response));
}

void Service::Complete(const std::shared_ptr<Context>& ctx, HttpResponse response) {
  Cleanse(ctx->request.body);
  Cleanse(ctx->request.authorization);
  if (ctx->audited) {
    try {
      Respond(*ctx, Finish(*ctx, std::move(response), Status::Ok()));
    } catch (...) {
      // The change and its record are committed; only building the answer failed.
      Cleanse(response.body);
      Respond(*ctx, Json(500, ErrorJson("internal", "internal", "internal error")));
    }
    return;
  }
  try {
    const storage::AuditRecord record = AuditOf(*ctx, response.status);
    // The answer (a detokenize's values, say) waits for its audit record to be durable.
    auto held = std::make_shared<HttpResponse>(std::move(response));
    // A reveal is counted against its budgets in the transaction of its record, so that it is
    // counted if and only if it happened. A refused or failed request charges nothing durable.
    std::vector<storage::RevealCharge> charges;
    if (held->status >= 200 && held->status < 300) {
      charges = ctx->charges;
    } else {
      for (const storage::RevealCharge& c : ctx->charges) budgets_.Refund(c);  // nothing revealed
    }
    vault_.audit().AppendAsync(
        record,
        [this, ctx, held, charged = !charges.empty()](const StatusOr<storage::AuditRecord>& written) {
          // Not audited, so not revealed: the budget gets its values back.
          if (!written.ok() && charged) {
            for (const storage::RevealCharge& c : ctx->charges) budgets_.Refund(c);
          }
          try {
            Respond(*ctx, Finish(*ctx, std::move(*held), written.status()));
          } catch (...) {
            Cleanse(held->body);
            Respond(*ctx, AuditUnavailable());
          }
        },
        std::move(charges));
  } catch (...) {
    Cleanse(response.body);
    Respond(*ctx, AuditUnavailable());
  }
}

void Service::Respond(Context& ctx, HttpResponse response) {
  if (ctx.responded.exchange(true)) {
    Cleanse(response.body);
    return;
  }
  // The Idempotency-Key is free again: its record (if any) is committed by now.
  if (ctx.idempotency) ctx.idempotency->hold.reset();
  StampRequestId(ctx, response);
  CountRequest(ctx, response.status);
  ctx.respond(std::move(response));
}

void Service::CountRequest(const Context& ctx, int status) {
  metrics::Registry& r = metrics::Registry::Global();
  static metrics::Family& requests = r.Counter("tokenvault_http_requests_total", "Requests answered, by route and status.");
  static metrics::Family& latency = r.Histogram("tokenvault_http_request_duration_seconds",
                                                "Time from a request's arrival at the service to its answer, by route.",
                                                metrics::LatencyBuckets());
  static metrics::Family& tokenized = r.Counter("tokenvault_tokenize_values_total",
                                                "Values tokenized (tokens created or found), by merchant.")
                                           .BoundLabel("merchant");
  static metrics::Family& revealed = r.Counter("tokenvault_detokenize_values_total",
                                               "Tokens asked for in answered detokenize requests, by merchant and reveal.")
                                          .BoundLabel("merchant");
  const std::string& route = ctx.request.route;  // one of Routes(), not_found or method_not_allowed
  requests.Add({{"route", route}, {"status", std::to_string(status)}});
  latency.Observe({{"route", route}},
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.started).count());
  if (status < 200 || status >= 300 || ctx.merchant.empty()) return;
  // Merchant ids are bounded per family (metrics::kMaxLabelSets; beyond, "_other").
  if (route == "tokens.create") {
    tokenized.Add({{"merchant", ctx.merchant}});
  } else if (route == "tokens.batch") {
    tokenized.Add({{"merchant", ctx.merchant}}, static_cast<double>(ctx.tokenized_values));
  } else if (route == "tokens.detokenize") {
    revealed.Add({{"merchant", ctx.merchant}, {"reveal", ctx.reveal}}, static_cast<double>(ctx.resources.size()));
  }
}

// Every answer carries Request-Id, and every error body its request_id (API.md), whichever path
// built it.
void Service::StampRequestId(const Context& ctx, HttpResponse& response) {
  bool has_header = false;
  for (const auto& [name, value] : response.headers) has_header |= name == "Request-Id";
  if (!has_header) response.headers.emplace_back("Request-Id", ctx.request.request_id);
  if (response.status < 400 || response.body.empty()) return;
  json body = json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_object() &&
      !body["error"].contains("request_id")) {
    body["error"]["request_id"] = ctx.request.request_id;
    response.body = body.dump();
  }
}

HttpResponse Service::AuditUnavailable() {
  // Whatever the handler produced, without its audit record it is not sent.
  HttpResponse failed = Json(503, ErrorJson("unavailable", "audit_unavailable",
                                            "the audit trail cannot be written; nothing was revealed"));
  failed.headers.emplace_back("Retry-After", kRetryAfterSeconds);
  return failed;  // Respond adds the request id
}

storage::AuditRecord Service::AuditOf(const Context& ctx, int status) {
  storage::AuditRecord record;
  record.time_ms = Clock::Real().NowUnixMillis();
  record.request_id = ctx.request.request_id;
  record.principal = ctx.principal ? ctx.principal->name : "";
  record.auth = ctx.auth;
  record.source_ip = ctx.request.source_ip;
  record.action = ctx.request.route;
  record.merchant = ctx.merchant;
  record.resource = ctx.resource;
  record.resources = ctx.resources;
  record.status = status;
  record.outcome = OutcomeOf(status);
  record.reason = ctx.reason;
  return record;
}

HttpResponse Service::Finish(const Context& ctx, HttpResponse response, const Status& written) {
  if (!written.ok()) {
    // Fail closed: no audit record, no answer - and above all no value.
    spdlog::error("request_id={} audit append failed: {}", ctx.request.request_id,
                  written.ToString());
    Cleanse(response.body);
    response = Json(503, ErrorJson("unavailable", "audit_unavailable",
                                   "the audit trail cannot be written; nothing was revealed"));
    response.headers.emplace_back("Retry-After", kRetryAfterSeconds);
  }
  response.principal = ctx.principal ? ctx.principal->name : "";
  return response;
}

HttpResponse Service::Ready() {
  Status hsm = vault_.CheckHsm();
  if (!hsm.ok()) {
    HttpResponse r = Json(503, ErrorJson("unavailable", hsm.reason(), "the HSM does not answer"));
    r.headers.emplace_back("Retry-After", kRetryAfterSeconds);
    return r;
  }
  // Storage answers if a read goes through (the merchant does not exist; NotFound is an answer).
  Status store = vault_.store().GetMerchant("-readyz").status();
  if (!store.ok() && store.code() != StatusCode::kNotFound) {
    HttpResponse r = Json(503, ErrorJson("unavailable", store.reason(), "the database does not answer"));
    r.headers.emplace_back("Retry-After", kRetryAfterSeconds);
    return r;
  }
  return Json(200, {{"status", "ready"}});
}

namespace {

HttpResponse ErrorResponse(const Status& s, std::string* reason_out) {
  auto [code, type] = HttpStatusOf(s);
  *reason_out = s.reason();
  std::string message = s.message();
  if (code >= 500) message = code == 503 ? "a dependency is unavailable; retry later" : "internal error";
  // A uniqueness conflict found by the database itself carries SQLite's text: not for clients.
  if (s.reason() == "constraint") message = "the request conflicts with a concurrent one; retry";
  HttpResponse r = Json(code, ErrorJson(type, s.reason().empty() ? type : s.reason(), message));
  if (code == 503) r.headers.emplace_back("Retry-After", kRetryAfterSeconds);
  if (code == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

}  // namespace

HttpResponse Service::Dispatch(Context& ctx) {
  HttpRequest& rq = ctx.request;
  auto fail = [&](const Status& s) {
    if (s.code() == StatusCode::kInternal || s.code() == StatusCode::kDataLoss ||
        s.code() == StatusCode::kUnavailable) {
      spdlog::error("request_id={} route={} {}", rq.request_id, rq.route, s.ToString());
    }
    return ErrorResponse(s, &ctx.reason);
  };
  // URL text reaches the audit record only once it has the shape of what it claims to be.
  const std::string url_merchant = rq.params.count("m") ? rq.params.at("m") : "";
  if (IsValidMerchantId(url_merchant)) ctx.merchant = url_merchant;

  // 0. Behind the nginx front, only what came through it (docs/deployment.md).
  if (rq.proxy_problem == "untrusted") {
    spdlog::warn("request_id={} did not come through the trusted proxy (no or wrong proxy secret)",
                 rq.request_id);
    return fail(PermissionDeniedError("untrusted_proxy",
                                      "requests must come through the configured proxy"));
  }
  if (rq.proxy_problem == "bad_client_cert") {
    spdlog::error("request_id={} the proxy forwarded a client certificate that cannot be read",
                  rq.request_id);
    return fail(BadRequest("malformed_client_certificate", "the forwarded client certificate cannot be read"));
  }

  // 0. A source locked out after repeated bad keys is refused whatever it sends (PCI DSS 8.3.4).
  if (const int64_t wait_ms = lockout_.LockedFor(rq.source_ip); wait_ms > 0) {
    ctx.reason = "source locked out after repeated authentication failures";
    HttpResponse r = Json(429, ErrorJson("rate_limited", "locked_out",
                                         "too many failed authentications from this address"));
    r.headers.emplace_back("Retry-After", std::to_string((wait_ms + 999) / 1000));
    return r;
  }

  // 1. Authentication: a client certificate (mTLS), an API key, or both - then naming the same
  // principal. The scheme is case-insensitive (RFC 9110 §11.1).
  constexpr size_t kBearer = 7;  // "Bearer "
  std::string scheme = rq.authorization.substr(0, kBearer);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const bool has_key = rq.authorization.size() > kBearer && scheme == "bearer ";
  std::optional<storage::PrincipalRecord> by_cert;
  if (rq.client_cert) {
    // The certificate chains to the client CA (the TLS layer or the trusted proxy checked that);
    // the policy says whom it stands for.
    std::optional<std::string> name =
        CurrentPolicy()->PrincipalForCertificate(rq.client_cert->sha256, rq.client_cert->sans);
    if (name) {
      StatusOr<storage::PrincipalRecord> p = vault_.store().FindPrincipal(*name);
      if (!p.ok() && p.status().code() != StatusCode::kNotFound) return fail(p.status());
      if (p.ok() && !p->deleted_at_ms) by_cert = *std::move(p);
    }
    if (!by_cert && !has_key) {
      return fail(UnauthenticatedError("unknown_client_certificate",
                                       "the client certificate does not name a principal"));
    }
  }
  if (!has_key && by_cert) {
    ctx.principal = policy::Principal{
        by_cert->name, by_cert->roles,
        by_cert->all_merchants
            ? policy::MerchantScope::All()
            : policy::MerchantScope::Only({by_cert->merchants.begin(), by_cert->merchants.end()})};
    ctx.auth = "mtls";
  }
  if (!has_key && !by_cert) {
    return fail(UnauthenticatedError("missing_api_key", "an API key is required (Authorization: Bearer)"));
  }
  // A key was presented: a malformed or wrong one counts towards the source's lockout.
  auto bad_key = [&](const Status& status) {
    if (lockout_.Failed(rq.source_ip)) {
      spdlog::warn("source {} locked out after repeated authentication failures", rq.source_ip);
      HttpResponse r = fail(status);
      ctx.reason += "; this source is now locked out";
      return r;
    }
    return fail(status);
  };
  if (has_key) {
    StatusOr<policy::ApiKey> key = policy::ParseApiKey(std::string_view(rq.authorization).substr(kBearer));
    if (!key.ok()) return bad_key(key.status());
    StatusOr<std::shared_ptr<const storage::PrincipalRecord>> found = PrincipalByKeyId(key->key_id);
    if (!found.ok()) return fail(found.status());
    const storage::PrincipalRecord* stored = found->get();  // null: no such key id
    // Compare even when the key id is unknown, so both failures take the same time.
    static const Bytes kNoHash(32, 0);
    const bool matches =
        policy::ApiKeySecretMatches(key->secret, stored ? ByteView(stored->key_hash) : kNoHash);
    if (stored == nullptr || !matches) {
      return bad_key(UnauthenticatedError("bad_api_key", "the API key is not valid"));
    }
    // Both presented: they must be the same principal, or neither counts.
    if (by_cert && by_cert->name != stored->name) {
      return bad_key(UnauthenticatedError("identity_mismatch",
                                          "the API key and the client certificate name different principals"));
    }
    ctx.principal = policy::Principal{
        stored->name, stored->roles,
        stored->all_merchants
            ? policy::MerchantScope::All()
            : policy::MerchantScope::Only({stored->merchants.begin(), stored->merchants.end()})};
    ctx.auth = by_cert ? "mtls" : "api_key";
  }

  if (rq.route == "not_found") return fail(NotFoundError("no_route", "no such endpoint"));
  if (rq.route == "method_not_allowed") {
    ctx.reason = "method not allowed";
    return Json(405, ErrorJson("invalid_request", "method_not_allowed", "method not allowed"));
  }

  // 2. Content type and body.
  if (rq.body_too_large) {
    auto r = Json(413, ErrorJson("invalid_request", "payload_too_large",
                                 "the request body exceeds the limit"));
    ctx.reason = "body too large";
    return r;
  }
  // POSTs that take no body (API.md: "endpoints that take no body accept an empty one with or
  // without" a Content-Type).
  const bool takes_no_body = rq.route == "keys.rotate" || rq.route == "kek.rotate";
  if (rq.method == "POST" && takes_no_body && rq.body.empty()) {
    ctx.body = json::object();
  } else if (rq.method == "POST") {
    if (!IsJsonContentType(rq.content_type)) {
      return fail(InvalidArgumentError("unsupported_media_type", "Content-Type must be application/json"));
    }
    ctx.body = json::parse(rq.body, nullptr, /*allow_exceptions=*/false);
    if (ctx.body.is_discarded()) return fail(BadRequest("malformed_json", "the body is not valid JSON"));
    if (!ctx.body.is_object()) return fail(BadRequest("malformed_json", "the body must be a JSON object"));
  } else if (!rq.body.empty() && !IsJsonContentType(rq.content_type)) {
    return fail(InvalidArgumentError("unsupported_media_type", "Content-Type must be application/json"));
  }
  if (!url_merchant.empty() && !IsValidMerchantId(url_merchant)) {
    return fail(BadRequest("invalid_merchant", "merchant ids match ^[a-z0-9][a-z0-9_-]{0,63}$"));
  }

  if (rq.route == "tokens.create" || rq.route == "tokens.batch") {
    if (Status prepared = PrepareIdempotency(ctx); !prepared.ok()) return fail(prepared);
  }

  // Both are consumed (ctx.body holds what the handler needs): wipe them before any handler runs,
  // since an asynchronous one completes after this frame is gone.
  Cleanse(rq.body);
  Cleanse(rq.authorization);

  if (rq.route == "principals.create") return CreatePrincipal(ctx);
  if (rq.route == "principals.delete") return DeletePrincipal(ctx);
  if (rq.route == "merchants.create") return CreateMerchant(ctx);
  if (rq.route == "merchants.shred") return ShredMerchant(ctx);
  if (rq.route == "keys.rotate") return RotateKeys(ctx);
  if (rq.route == "keys.read") return ReadKeys(ctx);
  if (rq.route == "kek.rotate") return RotateKek(ctx);
  if (rq.route == "tokens.create") return CreateToken(ctx);
  if (rq.route == "tokens.batch") return CreateTokenBatch(ctx);
  if (rq.route == "tokens.read") return GetToken(ctx);
  if (rq.route == "tokens.delete") return DeleteToken(ctx);
  if (rq.route == "tokens.detokenize") return Detokenize(ctx);
  if (rq.route == "audit.read") return ReadAudit(ctx);
  if (rq.route == "audit.verify") return VerifyAudit(ctx);
  if (rq.route == "audit.export") return ExportAudit(ctx);
  if (rq.route == "audit.checkpoint_key") return AuditCheckpointKey(ctx);
  return fail(NotFoundError("no_route", "no such endpoint"));
}

namespace {

// Checks the permission; on denial returns the 403 (and records the rule).
std::optional<HttpResponse> Authorize(const policy::Policy& policy, const policy::Principal& who,
                                      Permission permission, const std::string& merchant,
                                      std::string* reason) {
  policy::Decision d = policy.Decide(who, permission, merchant);
  *reason = d.reason;
  if (d.allowed) return std::nullopt;
  return Json(403, ErrorJson("permission_denied", "permission_denied",
                             "the API key may not do this"));
}

}  // namespace

#define TV_AUTHORIZE(perm, merchant)                                                         \
  if (auto denied = Authorize(*CurrentPolicy(), *ctx.principal, perm, merchant, &ctx.reason)) { \
    return *denied;                                                                          \
  }

#define TV_OR_FAIL(expr)                            \
  do {                                              \
    const Status tv_s_ = (expr);                    \
    if (!tv_s_.ok()) return ErrorResponse(tv_s_, &ctx.reason); \
  } while (false)

HttpResponse Service::CreatePrincipal(Context& ctx) {
  TV_AUTHORIZE(Permission::kPrincipalsManage, "");
  const json& b = ctx.body;
  TV_OR_FAIL(CheckFields(b, {"name", "roles", "merchants"}));
  if (!b.contains("name") || !b["name"].is_string()) TV_OR_FAIL(BadRequest("invalid_principal", "'name' must be a string"));
  if (!b.contains("roles") || !b["roles"].is_array()) TV_OR_FAIL(BadRequest("invalid_principal", "'roles' must be an array"));
  if (!b.contains("merchants")) TV_OR_FAIL(BadRequest("invalid_principal", "'merchants' is required"));
  policy::Principal p;
  p.name = b["name"].get<std::string>();
  if (!policy::IsValidName(p.name)) {
    TV_OR_FAIL(BadRequest("invalid_principal", "principal names match ^[a-z0-9][a-z0-9_.-]{0,63}$"));
  }
  ctx.resource = "principal:" + p.name;
  for (const json& r : b["roles"]) {
    if (!r.is_string()) TV_OR_FAIL(BadRequest("invalid_principal", "roles are strings"));
    p.roles.push_back(r.get<std::string>());
  }
  const json& m = b["merchants"];
  if (m.is_string() && m.get<std::string>() == "*") {
    p.scope = policy::MerchantScope::All();
  } else if (m.is_array()) {
    std::set<std::string> ids;
    for (const json& id : m) {
      if (!id.is_string() || !IsValidMerchantId(id.get<std::string>())) {
        TV_OR_FAIL(BadRequest("invalid_merchant", "merchants are valid merchant ids"));
      }
      ids.insert(id.get<std::string>());
    }
    p.scope = policy::MerchantScope::Only(std::move(ids));
  } else {
    TV_OR_FAIL(BadRequest("invalid_principal", "'merchants' is a list of ids or \"*\""));
  }
  TV_OR_FAIL(CurrentPolicy()->ValidatePrincipal(p));
  // Nobody hands out more than they hold: the new principal's merchants must lie inside the
  // creator's scope.
  if (!ctx.principal->scope.all()) {
    bool inside = !p.scope.all();
    for (const std::string& id : p.scope.merchants()) inside &= ctx.principal->scope.Contains(id);
    if (!inside) {
      ctx.reason = "the new principal's merchants are outside the creator's scope";
      return Json(403, ErrorJson("permission_denied", "permission_denied", "the API key may not do this"));
    }
  }
  StatusOr<policy::NewApiKey> key = policy::GenerateApiKey();
  TV_OR_FAIL(key.status());
  storage::PrincipalRecord record;
  record.name = p.name;
  record.roles = p.roles;
  record.all_merchants = p.scope.all();
  record.merchants.assign(p.scope.merchants().begin(), p.scope.merchants().end());
  record.key_id = key->key_id;
  record.key_hash = key->secret_hash;
  record.created_at_ms = Clock::Real().NowUnixMillis();
  // The principal exists if and only if its audit record does (one transaction).
  ctx.resource = "principal:" + p.name + " key:" + key->key_id;
  storage::AuditAttachment audit{AuditOf(ctx, 201), &vault_.audit()};
  std::unique_lock<std::mutex> writes(principal_writes_mu_);
  Status inserted = vault_.store().InsertPrincipal(record, &audit);
  if (inserted.code() == StatusCode::kAlreadyExists) {
    ctx.resource = "principal:" + p.name;
    TV_OR_FAIL(AlreadyExistsError("principal_exists", "a principal with that name exists"));
  }
  TV_OR_FAIL(inserted);
  RememberPrincipal(record);
  writes.unlock();
  ctx.audited = true;
  json out = {{"name", p.name},
              {"roles", p.roles},
              {"merchants", p.scope.all() ? json("*") : json(record.merchants)},
              {"api_key", std::string(AsChars(key->full_key.view()))}};
  return Json(201, out);
}

HttpResponse Service::DeletePrincipal(Context& ctx) {
  TV_AUTHORIZE(Permission::kPrincipalsManage, "");
  const std::string name = ctx.request.params["name"];
  if (!policy::IsValidName(name)) TV_OR_FAIL(BadRequest("invalid_principal", "malformed principal name"));
  ctx.resource = "principal:" + name;
  // A principal may only be deleted by one whose scope covers it.
  StatusOr<storage::PrincipalRecord> target = vault_.store().FindPrincipal(name);
  if (!target.ok() || target->deleted_at_ms) {
    TV_OR_FAIL(target.ok() ? NotFoundError("principal_not_found", "no such principal") : target.status());
  }
  bool covered = ctx.principal->scope.all();
  if (!covered && !target->all_merchants) {
    covered = true;
    for (const std::string& m : target->merchants) covered &= ctx.principal->scope.Contains(m);
  }
  if (!covered) {
    ctx.reason = "the principal's merchants are outside the deleter's scope";
    return Json(403, ErrorJson("permission_denied", "permission_denied", "the API key may not do this"));
  }
  storage::AuditAttachment audit{AuditOf(ctx, 204), &vault_.audit()};
  std::unique_lock<std::mutex> writes(principal_writes_mu_);
  Status deleted = vault_.store().DeletePrincipal(name, Clock::Real().NowUnixMillis(), &audit);
  bool reload = false;
  {
    // The deleted one's key stops working now. A complete map loses just that key (and, if the
    // deletion failed, is read again: the store says whether it happened); a cache is emptied.
    std::lock_guard<std::mutex> lock(principals_mu_);
    if (principals_complete_) {
      principals_.erase(target->key_id);
      reload = !deleted.ok();
    } else {
      principals_.clear();
    }
    ++principals_generation_;
  }
  if (reload && !LoadPrincipalsLocked().ok()) {
    // Cannot tell: forget everything and fall back to the store for every key.
    std::lock_guard<std::mutex> lock(principals_mu_);
    principals_.clear();
    principals_complete_ = false;
    ++principals_generation_;
  }
  writes.unlock();
  TV_OR_FAIL(deleted);
  ctx.audited = true;
  return NoContent();
}

HttpResponse Service::CreateMerchant(Context& ctx) {
  const json& b = ctx.body;
  TV_OR_FAIL(CheckFields(b, {"id"}));
  if (!b.contains("id") || !b["id"].is_string()) TV_OR_FAIL(BadRequest("invalid_merchant", "'id' must be a string"));
  const std::string id = b["id"].get<std::string>();
  if (!IsValidMerchantId(id)) TV_OR_FAIL(BadRequest("invalid_merchant", "merchant ids match ^[a-z0-9][a-z0-9_-]{0,63}$"));
  ctx.merchant = id;
  TV_AUTHORIZE(Permission::kMerchantsCreate, id);
  ctx.resource = "kek:" + hsm::KekRef{id, 1}.Label();
  const storage::AuditRecord audit = AuditOf(ctx, 201);
  StatusOr<MerchantInfo> m = vault_.CreateMerchant(id, &audit);
  TV_OR_FAIL(m.status());
  ctx.audited = true;
  return Json(201, {{"id", m->id},
                    {"created_at", Rfc3339(m->created_at_ms)},
                    {"kek_version", m->kek_version},
                    {"dek_version", m->dek_version}});
}

HttpResponse Service::ShredMerchant(Context& ctx) {
  TV_AUTHORIZE(Permission::kMerchantsShred, ctx.merchant);
  // The receipt is the audit record: the same names, time, principal and sequence number.
  StatusOr<ShredReceipt> receipt = vault_.ShredMerchant(ctx.merchant, AuditOf(ctx, 200));
  TV_OR_FAIL(receipt.status());
  ctx.audited = true;
  return Json(200, {{"merchant", receipt->merchant},
                    {"destroyed", receipt->destroyed},
                    {"time", Rfc3339(receipt->time_ms)},
                    {"principal", receipt->principal},
                    {"audit_seq", receipt->audit_seq}});
}

HttpResponse Service::RotateKeys(Context& ctx) {
  TV_AUTHORIZE(Permission::kKeysRotate, ctx.merchant);
  TV_OR_FAIL(CheckFields(ctx.body, {}));
  // The new version and this record commit together; the keyring names the keys in it.
  const storage::AuditRecord audit = AuditOf(ctx, 200);
  StatusOr<uint32_t> version = vault_.RotateDataKey(ctx.merchant, &audit);
  TV_OR_FAIL(version.status());
  ctx.audited = true;
  return Json(200, {{"dek_version", *version}});
}

HttpResponse Service::RotateKek(Context& ctx) {
  TV_AUTHORIZE(Permission::kKeysRotate, ctx.merchant);
  TV_OR_FAIL(CheckFields(ctx.body, {}));
  const storage::AuditRecord audit = AuditOf(ctx, 200);
  StatusOr<Keyring::KekRotated> rotated = vault_.RotateKek(ctx.merchant, &audit);
  TV_OR_FAIL(rotated.status());
  ctx.audited = true;
  return Json(200, {{"kek_version", rotated->kek_version}, {"rewrapped", rotated->rewrapped}});
}

HttpResponse Service::ReadKeys(Context& ctx) {
  TV_AUTHORIZE(Permission::kKeysRotate, ctx.merchant);
  StatusOr<std::vector<storage::DataKeyUsage>> keys = vault_.DataKeys(ctx.merchant);
  TV_OR_FAIL(keys.status());
  json versions = json::array();
  for (const storage::DataKeyUsage& k : *keys) {
    versions.push_back({{"version", k.version},
                        {"state", k.state == storage::DataKeyState::kActive    ? "active"
                                  : k.state == storage::DataKeyState::kRetired ? "retired"
                                                                               : "destroyed"},
                        {"kek_version", k.kek_version},
                        {"created_at", Rfc3339(k.created_at_ms)},
                        {"encryptions_reserved", k.encryptions_reserved},
                        {"tokens", k.live_tokens}});
  }
  return Json(200, {{"merchant", ctx.merchant}, {"dek_versions", versions}});
}

// API.md: at most 16 string pairs, keys of 1-64 bytes, values of at most 256 bytes. Metadata is
// for references (order ids, customer ids), never for values: anything that looks like a card
// number (a Luhn-valid run of 13-19 digits, spaces and dashes allowed between them) or an SSN
// (ddd-dd-dddd) is refused, so that a careless caller cannot put a value where no encryption
// protects it.
static Status CheckMetadata(const json& m) {
  if (!m.is_object()) return BadRequest("invalid_metadata", "'metadata' is an object of strings");
  if (m.size() > 16) return BadRequest("invalid_metadata", "at most 16 metadata pairs");
  auto looks_like_a_value = [](const std::string& s) {
    // Digits, with fullwidth ones (U+FF10-FF19, 3 bytes in UTF-8) read as ASCII. A run of
    // digits continues across anything that is not a letter or a digit (spaces, dashes, dots,
    // slashes, tabs, other punctuation, non-ASCII symbols), since people write card numbers with
    // all of those. 13 or more digits in a run is what a card number looks like: refused, Luhn
    // or not (a long numeric reference has to carry a letter).
    size_t run = 0;
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      size_t width = 1;
      bool digit = c >= '0' && c <= '9';
      if (c == 0xEF && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0xBC &&
          static_cast<unsigned char>(s[i + 2]) >= 0x90 && static_cast<unsigned char>(s[i + 2]) <= 0x99) {
        digit = true;
        width = 3;
      }
      const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (digit) {
        if (++run >= 13) return true;
      } else if (letter) {
        run = 0;
      }
      i += width;
    }
    // SSN shapes: ddd-dd-dddd with any one separator, or ddd dd dddd.
    for (size_t i = 0; i + 11 <= s.size(); ++i) {
      const std::string_view w(s.data() + i, 11);
      const char sep = w[3];
      bool ssn = (sep == '-' || sep == ' ' || sep == '.' || sep == '/') && w[6] == sep;
      for (size_t k : {0, 1, 2, 4, 5, 7, 8, 9, 10}) ssn = ssn && w[k] >= '0' && w[k] <= '9';
      if (ssn) return true;
    }
    return false;
  };
  for (const auto& [key, value] : m.items()) {
    if (key.empty() || key.size() > 64) return BadRequest("invalid_metadata", "metadata keys are 1 to 64 bytes");
    if (!value.is_string()) return BadRequest("invalid_metadata", "metadata values are strings");
    const std::string& v = value.get_ref<const std::string&>();
    if (v.size() > 256) return BadRequest("invalid_metadata", "metadata values are at most 256 bytes");
    if (looks_like_a_value(key) || looks_like_a_value(v)) {
      return BadRequest("metadata_holds_a_value",
                        "metadata must not hold card numbers or SSNs: tokenize them instead");
    }
  }
  // Escaping can make the stored JSON longer than its strings (the column holds 8192 bytes).
  if (m.dump().size() > 8192) return BadRequest("invalid_metadata", "metadata is too large");
  return Status::Ok();
}

// One tokenize body (a request, or an item of a batch), checked. The item's value points into
// 'body', which must outlive it.
static StatusOr<TokenizeItem> ParseTokenizeBody(json& b) {
  if (!b.is_object()) return BadRequest("invalid_item", "each item is a JSON object");
  TV_RETURN_IF_ERROR(CheckFields(b, {"value", "type", "format", "keep_bin", "deterministic", "ttl_seconds", "metadata"}));
  if (!b.contains("value") || !b["value"].is_string()) {
    return BadRequest("invalid_value", "'value' must be a string");
  }
  TokenizeItem item;
  if (b.contains("type")) {
    std::optional<ValueType> t = b["type"].is_string() ? ParseValueType(b["type"].get<std::string>()) : std::nullopt;
    if (!t) return BadRequest("invalid_type", "'type' is card, ssn or generic");
    item.type = *t;
  }
  if (b.contains("format")) {
    std::optional<TokenFormat> f = b["format"].is_string() ? ParseTokenFormat(b["format"].get<std::string>()) : std::nullopt;
    if (!f) return BadRequest("invalid_format", "'format' is random or preserving");
    item.format.format = *f;
  }
  if (b.contains("keep_bin")) {
    if (!b["keep_bin"].is_boolean()) return BadRequest("invalid_format", "'keep_bin' is a boolean");
    item.format.keep_bin = b["keep_bin"].get<bool>();
  }
  TV_RETURN_IF_ERROR(CheckTokenFormat(item.type, item.format));
  if (b.contains("deterministic")) {
    if (!b["deterministic"].is_boolean()) return BadRequest("invalid_deterministic", "'deterministic' is a boolean");
    item.deterministic = b["deterministic"].get<bool>();
  }
  if (b.contains("ttl_seconds") && !b["ttl_seconds"].is_null()) {
    // 1 second to 10 years; a whole number (JSON 5.0 is refused rather than rounded).
    constexpr int64_t kMaxTtlSeconds = int64_t{10} * 366 * 24 * 3600;
    const json& ttl = b["ttl_seconds"];
    if (!ttl.is_number_integer() || ttl.get<int64_t>() < 1 || ttl.get<int64_t>() > kMaxTtlSeconds) {
      return BadRequest("invalid_ttl", "'ttl_seconds' is a whole number from 1 to 316224000");
    }
    item.attributes.ttl_seconds = ttl.get<int64_t>();
  }
  if (b.contains("metadata") && !b["metadata"].is_null()) {
    TV_RETURN_IF_ERROR(CheckMetadata(b["metadata"]));
    if (!b["metadata"].empty()) item.attributes.metadata_json = b["metadata"].dump();
  }
  const std::string& value = b["value"].get_ref<const std::string&>();
  item.value = AsBytes(value);
  return item;
}

namespace {

json ItemError(const Status& s) {
  auto [code, type] = HttpStatusOf(s);
  std::string message = code >= 500 ? "the item could not be tokenized" : s.message();
  return {{"error", {{"type", type}, {"code", s.reason()}, {"message", message}}}};
}

// How long an idempotent answer is replayed (API.md: 24 hours).
constexpr int64_t kIdempotencyWindowMs = int64_t{24} * 3600 * 1000;

Bytes LengthPrefixed(std::initializer_list<std::string_view> parts) {
  Bytes out;
  for (std::string_view p : parts) {
    AppendU32BE(out, static_cast<uint32_t>(p.size()));
    AppendBytes(out, AsBytes(p));
  }
  return out;
}

}  // namespace

// Where each item of a batch went: to the vault (its index among the vault's items) or nowhere
// (-1: refused by the service's checks, with the error in parse_errors, in order).
struct Service::BatchState {
  std::vector<int> vault_index;
  std::vector<Status> parse_errors;

  // The answer: every item in request order, a token object or an error.
  HttpResponse Render(const std::vector<TokenizeOutcome>& outcomes) const {
    json list = json::array();
    size_t parse_error = 0;
    for (int index : vault_index) {
      if (index < 0) {
        list.push_back(ItemError(parse_errors[parse_error++]));
        continue;
      }
      const TokenizeOutcome& o = outcomes[static_cast<size_t>(index)];
      list.push_back(o.token.ok() ? TokenObject(*o.token) : ItemError(o.token.status()));
    }
    return Json(200, {{"items", std::move(list)}});
  }
};

// The Idempotency-Key of a tokenize or batch, checked and hashed (API.md: 1-255 printable
// ASCII). Runs before the body is wiped: the request hash covers the body's exact bytes.
Status Service::PrepareIdempotency(Context& ctx) {
  const HttpRequest& rq = ctx.request;
  if (!rq.idempotency_key) return Status::Ok();
  const std::string& key = *rq.idempotency_key;
  bool printable = !key.empty() && key.size() <= 255;
  for (char c : key) printable &= c >= 0x20 && c <= 0x7e;
  if (!printable) {
    // Refused by ReplayOrHold, after authorisation: a caller without the permission learns 403.
    ctx.idempotency = Idempotency{};
    ctx.idempotency->malformed = true;
    return Status::Ok();
  }
  const HmacSha256& mac = vault_.idempotency_mac();
  // Scoped to the principal: the same key from another principal is another record.
  TV_ASSIGN_OR_RETURN(HmacSha256Tag key_hash,
                      mac.Compute(LengthPrefixed({"key", ctx.principal->name}), AsBytes(key)));
  // The route and merchant are part of the request: the same body sent elsewhere is another one.
  TV_ASSIGN_OR_RETURN(HmacSha256Tag request_hash,
                      mac.Compute(LengthPrefixed({"request", rq.route, ctx.merchant}), AsBytes(rq.body)));
  ctx.idempotency = Idempotency{Bytes(key_hash.begin(), key_hash.end()),
                                Bytes(request_hash.begin(), request_hash.end()), nullptr, false};
  return Status::Ok();
}

// With an Idempotency-Key: holds the key until this request is answered (a second request with
// the same key meanwhile gets 409 idempotency_key_in_use), then answers with the stored answer
// when the key was used for this very request, or 409 when it was used for another.
// nullopt: go on and tokenize, holding the key. The hold comes first, so that a request that
// found nothing cannot race one that is committing the record under the same key.
std::optional<HttpResponse> Service::ReplayOrHold(Context& ctx) {
  if (!ctx.idempotency) return std::nullopt;
  Idempotency& idem = *ctx.idempotency;
  if (idem.malformed) {
    return ErrorResponse(BadRequest("invalid_idempotency_key",
                                    "Idempotency-Key is 1 to 255 printable ASCII characters"),
                         &ctx.reason);
  }
  {
    std::lock_guard<std::mutex> lock(idempotency_mu_);
    if (!idempotency_in_flight_.insert(idem.key_hash).second) {
      return ErrorResponse(AlreadyExistsError("idempotency_key_in_use",
                                              "a request with this Idempotency-Key is still being answered"),
                           &ctx.reason);
    }
  }
  // Released when the request is answered (Respond), whatever the answer.
  Bytes held = idem.key_hash;
  idem.hold = std::shared_ptr<void>(nullptr, [this, held](void*) {
    std::lock_guard<std::mutex> unlock(idempotency_mu_);
    idempotency_in_flight_.erase(held);
  });
  StatusOr<storage::IdempotencyRecord> stored =
      vault_.store().FindIdempotency(idem.key_hash, Clock::Real().NowUnixMillis());
  if (stored.status().code() == StatusCode::kNotFound) return std::nullopt;
  if (!stored.ok()) return ErrorResponse(stored.status(), &ctx.reason);
  if (stored->request_hash.size() != idem.request_hash.size() ||
      CRYPTO_memcmp(stored->request_hash.data(), idem.request_hash.data(), idem.request_hash.size()) != 0) {
    ctx.reason = "idempotency key reused with another request";
    return ErrorResponse(AlreadyExistsError("idempotency_key_reused",
                                            "this Idempotency-Key was used for another request"),
                         &ctx.reason);
  }
  // The first answer, byte for byte. The audit record names the tokens it holds again.
  ctx.reason = "idempotent replay";
  json replayed = json::parse(stored->body, nullptr, false);
  if (replayed.is_object() && replayed.contains("token") && replayed["token"].is_string()) {
    ctx.resource = replayed["token"].get<std::string>();
  } else if (replayed.is_object() && replayed.contains("items") && replayed["items"].is_array()) {
    for (const json& item : replayed["items"]) {
      ctx.resources.push_back(item.contains("token") && item["token"].is_string()
                                  ? item["token"].get<std::string>()
                                  : "error");
    }
  }
  HttpResponse r;
  r.status = stored->status;
  r.body = std::move(stored->body);
  return r;
}

// Inside the commit: the answer about to be sent (ctx.answer) becomes the idempotency record.
void Service::RecordAnswer(const Context& ctx, std::optional<storage::IdempotencyRecord>* out) {
  if (!ctx.idempotency || out == nullptr) return;
  storage::IdempotencyRecord r;
  r.key_hash = ctx.idempotency->key_hash;
  r.request_hash = ctx.idempotency->request_hash;
  r.status = ctx.answer.status;
  r.body = ctx.answer.body;
  r.created_at_ms = Clock::Real().NowUnixMillis();
  r.expires_at_ms = r.created_at_ms + kIdempotencyWindowMs;
  *out = std::move(r);
}

HttpResponse Service::CreateToken(Context& ctx) {
  TV_AUTHORIZE(Permission::kTokensCreate, ctx.merchant);
  if (auto replay = ReplayOrHold(ctx)) return std::move(*replay);
  json& b = ctx.body;
  StatusOr<TokenizeItem> item = ParseTokenizeBody(b);
  TV_OR_FAIL(item.status());
  // The token and its audit record (and idempotency record) commit together, in a transaction
  // shared with concurrent requests by group commit. No thread waits for that commit: the
  // completion answers. The answer is rendered inside the commit, once it is known whether a
  // deterministic token existed, so that a replay sends exactly these bytes.
  storage::AuditRecord audit = AuditOf(ctx, 201);
  std::shared_ptr<Context> self = ctx.shared_from_this();
  TokenizeCommitHook hook = [self](const std::vector<TokenizeOutcome>& outcomes,
                                   storage::AuditRecord* record,
                                   std::optional<storage::IdempotencyRecord>* idempotency) -> Status {
    const TokenizeOutcome& o = outcomes.front();
    if (!o.token.ok()) return o.token.status();  // (a single tokenize is only committed when placed)
    const int status = o.existing ? 200 : 201;
    if (record != nullptr) {
      record->status = status;
      record->outcome = OutcomeOf(status);
      if (o.existing) record->reason = "deterministic: the existing token answered";
    }
    if (self->idempotency) {
      self->answer = Json(status, TokenObject(*o.token));
      RecordAnswer(*self, idempotency);
    }
    return Status::Ok();
  };
  ctx.pending = true;  // from here on, only the completion below answers
  std::string& value = b["value"].get_ref<std::string&>();
  try {
    vault_.TokenizeOneAsync(ctx.merchant, *item, std::move(audit), std::move(hook),
                            [this, self](StatusOr<TokenizeOutcome> t) { TokenCreated(self, std::move(t)); });
  } catch (...) {
    // Out of memory before or while queuing: the completion may never run, so answer here (and
    // audit the failure). Should it run after all, Respond sends only the first answer.
    Cleanse(value);
    spdlog::error("request_id={} tokenize could not be queued", ctx.request.request_id);
    ctx.reason = "unexpected exception";
    Complete(self, Json(500, ErrorJson("internal", "internal", "internal error")));
    return HttpResponse{};
  }
  Cleanse(value);  // the vault took its own (wiped) copy before returning
  return HttpResponse{};  // not sent: the request is pending
}

void Service::TokenCreated(const std::shared_ptr<Context>& ctx, StatusOr<TokenizeOutcome> t) {
  HttpResponse response;
  try {
    if (t.ok()) {
      ctx->audited = true;  // committed with the token
      ctx->resource = t->token->token;
      // Rendered inside the commit when it is also the idempotency record: the same bytes.
      response = ctx->idempotency ? std::move(ctx->answer)
                                  : Json(t->existing ? 200 : 201, TokenObject(*t->token));
    } else {
      LogIfServerError(*ctx, t.status());
      response = ErrorResponse(t.status(), &ctx->reason);
    }
  } catch (...) {
    ctx->reason = "unexpected exception";
    response = Json(500, ErrorJson("internal", "internal", "internal error"));
  }
  Complete(ctx, std::move(response));
}

void Service::LogIfServerError(const Context& ctx, const Status& s) {
  if (s.code() == StatusCode::kInternal || s.code() == StatusCode::kDataLoss ||
      s.code() == StatusCode::kUnavailable) {
    spdlog::error("request_id={} route={} {}", ctx.request.request_id, ctx.request.route, s.ToString());
  }
}

HttpResponse Service::CreateTokenBatch(Context& ctx) {
  TV_AUTHORIZE(Permission::kTokensCreate, ctx.merchant);
  if (auto replay = ReplayOrHold(ctx)) return std::move(*replay);
  json& b = ctx.body;
  TV_OR_FAIL(CheckFields(b, {"items"}));
  if (!b.contains("items") || !b["items"].is_array() || b["items"].empty()) {
    TV_OR_FAIL(BadRequest("invalid_items", "'items' must be a non-empty array"));
  }
  if (b["items"].size() > options_.max_batch_items) {
    TV_OR_FAIL(BadRequest("too_many_items", "at most 1000 items per batch"));
  }
  // Items that fail the service's checks are answered here; the others go to the vault, whose
  // outcomes are put back in their places inside the commit.
  auto batch = std::make_shared<BatchState>();
  std::vector<TokenizeItem> items;
  for (json& entry : b["items"]) {
    StatusOr<TokenizeItem> item = ParseTokenizeBody(entry);
    if (item.ok()) {
      batch->vault_index.push_back(static_cast<int>(items.size()));
      items.push_back(*item);
    } else {
      batch->vault_index.push_back(-1);
      batch->parse_errors.push_back(item.status());
    }
  }
  storage::AuditRecord audit = AuditOf(ctx, 200);
  std::shared_ptr<Context> self = ctx.shared_from_this();
  TokenizeCommitHook hook = [self, batch](const std::vector<TokenizeOutcome>& outcomes,
                                          storage::AuditRecord* record,
                                          std::optional<storage::IdempotencyRecord>* idempotency) -> Status {
    if (record != nullptr) {
      size_t created = 0, existing = 0, failed = 0, parse_error = 0;
      record->resources.clear();
      for (int index : batch->vault_index) {
        if (index < 0) {
          ++failed;
          record->resources.push_back("error:" + batch->parse_errors[parse_error++].reason());
          continue;
        }
        const TokenizeOutcome& o = outcomes[static_cast<size_t>(index)];
        if (!o.token.ok()) {
          ++failed;
          record->resources.push_back("error:" + o.token.status().reason());
          continue;
        }
        ++(o.existing ? existing : created);
        record->resources.push_back(o.token->token);
      }
      record->reason = std::to_string(batch->vault_index.size()) + " items: " +
                       std::to_string(created) + " created, " + std::to_string(existing) +
                       " existing, " + std::to_string(failed) + " failed";
    }
    if (self->idempotency) {
      self->answer = batch->Render(outcomes);
      RecordAnswer(*self, idempotency);
    }
    return Status::Ok();
  };
  ctx.pending = true;
  try {
    vault_.TokenizeBatchAsync(
        ctx.merchant, items, std::move(audit), std::move(hook),
        [this, self, batch](StatusOr<std::vector<TokenizeOutcome>> outcomes) {
          HttpResponse response;
          try {
            if (outcomes.ok()) {
              self->audited = true;  // committed with the tokens
              for (const TokenizeOutcome& o : *outcomes) self->tokenized_values += o.token.ok() ? 1 : 0;
              response = self->idempotency ? std::move(self->answer) : batch->Render(*outcomes);
            } else {
              LogIfServerError(*self, outcomes.status());
              response = ErrorResponse(outcomes.status(), &self->reason);
            }
          } catch (...) {
            self->reason = "unexpected exception";
            response = Json(500, ErrorJson("internal", "internal", "internal error"));
          }
          Complete(self, std::move(response));
        });
  } catch (...) {
    spdlog::error("request_id={} batch could not be queued", ctx.request.request_id);
    ctx.reason = "unexpected exception";
    WipeStrings(b);
    Complete(self, Json(500, ErrorJson("internal", "internal", "internal error")));
    return HttpResponse{};
  }
  WipeStrings(b);  // the vault took its own (wiped) copies of the values before returning
  return HttpResponse{};
}

HttpResponse Service::GetToken(Context& ctx) {
  TV_AUTHORIZE(Permission::kTokensRead, ctx.merchant);
  const std::string token = ctx.request.params["token"];
  ctx.resource = IsWellFormedToken(token) ? token : "(malformed)";
  StatusOr<TokenInfo> t = vault_.GetToken(ctx.merchant, token);
  TV_OR_FAIL(t.status());
  return Json(200, TokenObject(*t));
}

HttpResponse Service::DeleteToken(Context& ctx) {
  TV_AUTHORIZE(Permission::kTokensDelete, ctx.merchant);
  const std::string token = ctx.request.params["token"];
  ctx.resource = IsWellFormedToken(token) ? token : "(malformed)";
  const storage::AuditRecord audit = AuditOf(ctx, 204);
  TV_OR_FAIL(vault_.DeleteToken(ctx.merchant, token, &audit));
  ctx.audited = true;
  return NoContent();
}

HttpResponse Service::Detokenize(Context& ctx) {
  const json& b = ctx.body;
  TV_OR_FAIL(CheckFields(b, {"tokens", "reveal", "purpose"}));
  std::string purpose;
  if (b.contains("purpose")) {
    if (!b["purpose"].is_string() || !policy::IsValidPurpose(b["purpose"].get<std::string>())) {
      TV_OR_FAIL(BadRequest("invalid_purpose", "'purpose' matches ^[a-z0-9][a-z0-9_-]{0,63}$"));
    }
    purpose = b["purpose"].get<std::string>();
  }
  if (!b.contains("reveal") || !b["reveal"].is_string() ||
      (b["reveal"] != "plain" && b["reveal"] != "masked")) {
    TV_OR_FAIL(BadRequest("invalid_reveal", "'reveal' is \"plain\" or \"masked\""));
  }
  const bool plain = b["reveal"] == "plain";
  ctx.reveal = plain ? "plain" : "masked";
  if (!b.contains("tokens") || !b["tokens"].is_array() || b["tokens"].empty()) {
    TV_OR_FAIL(BadRequest("invalid_tokens", "'tokens' must be a non-empty array"));
  }
  if (b["tokens"].size() > options_.max_detokenize_tokens) {
    TV_OR_FAIL(BadRequest("too_many_tokens", "at most 1000 tokens per request"));
  }
  for (const json& t : b["tokens"]) {
    if (!t.is_string()) TV_OR_FAIL(BadRequest("invalid_tokens", "tokens are strings"));
    // Named in the audit record only if well-formed: a malformed "token" may be anything.
    ctx.resources.push_back(IsWellFormedToken(t.get<std::string>()) ? t.get<std::string>()
                                                                          : "(malformed)");
  }
  const Permission reveal_permission =
      plain ? Permission::kTokensDetokenizePlain : Permission::kTokensDetokenizeMasked;
  TV_AUTHORIZE(reveal_permission, ctx.merchant);
  // Purpose-bound reveals: the purpose is checked against the policy and recorded either way.
  if (!purpose.empty()) ctx.reason += "; purpose: " + purpose;
  if (Status bound = CurrentPolicy()->CheckPurpose(*ctx.principal, reveal_permission, purpose);
      !bound.ok()) {
    const std::string why = ctx.reason;
    HttpResponse denied = ErrorResponse(bound, &ctx.reason);
    ctx.reason = bound.reason() + " (" + why + ")";
    return denied;
  }
  if (std::optional<HttpResponse> refused = ChargeBudgets(ctx, plain, static_cast<int64_t>(b["tokens"].size()))) {
    return *refused;
  }
  json out = {{"items", json::array()}};
  json& items = out["items"];
  for (const json& t : b["tokens"]) {
    const std::string token = t.get<std::string>();
    StatusOr<RevealedValue> v = vault_.Detokenize(ctx.merchant, token);
    const std::string shown_token = IsWellFormedToken(token) ? token : "";
    if (!v.ok()) {
      if (v.status().code() == StatusCode::kUnavailable) {
        WipeStrings(out);  // values revealed so far never leave
        return ErrorResponse(v.status(), &ctx.reason);
      }
      auto [code, type] = HttpStatusOf(v.status());
      std::string message = code >= 500 ? "the token cannot be read" : v.status().message();
      items.push_back({{"token", shown_token},
                       {"error", {{"type", type}, {"code", v.status().reason()}, {"message", message}}}});
      continue;
    }
    json item = json::object();
    item["token"] = token;
    item["type"] = std::string(ValueTypeName(v->type));
    item["value"] = plain ? std::string(AsChars(v->value.view())) : MaskValue(v->type, v->value);
    items.push_back(std::move(item));
  }
  HttpResponse response = Json(200, out);
  WipeStrings(out);  // the answer's bytes are now only in response.body, wiped after sending
  return response;
}

std::optional<HttpResponse> Service::ChargeBudgets(Context& ctx, bool plain, int64_t values) {
  const std::vector<policy::RevealBudget> budgets = CurrentPolicy()->BudgetsFor(*ctx.principal, plain);
  if (budgets.empty()) return std::nullopt;
  // Counters older than the longest window are dropped now and then (both copies).
  const int64_t now = Clock::Real().NowUnixMillis();
  int64_t pruned_at = budgets_pruned_at_ms_.load();
  if (now - pruned_at > 600'000 && budgets_pruned_at_ms_.compare_exchange_strong(pruned_at, now)) {
    const int64_t cutoff = budgets_.ForgetOld();
    StatusOr<size_t> pruned = vault_.store().PruneRevealUsage(cutoff);
    if (!pruned.ok()) spdlog::warn("pruning budget counters failed: {}", pruned.status().ToString());
  }
  // Every token asked for counts, found or not: the budget bounds what a caller may try.
  auto charged = budgets_.Charge(ctx.principal->name, ctx.merchant, plain, values, budgets);
  if (const auto* refusal = std::get_if<RevealBudgets::Refusal>(&charged)) {
    ++budget_denials_;
    static metrics::Family& denials = metrics::Registry::Global().Counter(
        "tokenvault_budget_denials_total", "Detokenize requests refused by a budget, by reveal.");
    denials.Add({{"reveal", plain ? "plain" : "masked"}});
    ctx.reason = refusal->reason + " (" + ctx.reason + ")";
    HttpResponse r = Json(429, ErrorJson("rate_limited", "budget_exceeded", refusal->reason));
    r.headers.emplace_back("Retry-After", std::to_string(refusal->retry_after_seconds));
    return r;
  }
  ctx.charges.push_back(std::get<storage::RevealCharge>(std::move(charged)));
  return std::nullopt;
}

Status Service::ParseAuditQuery(Context& ctx, size_t max_limit, size_t default_limit,
                                storage::AuditQuery& q) {
  auto& query = ctx.request.query;
  for (const auto& [k, v] : query) {
    static const std::set<std::string> kKnown = {"since", "until", "principal", "merchant",
                                                 "action", "outcome", "limit", "cursor"};
    if (!kKnown.count(k)) return BadRequest("unknown_parameter", "unknown query parameter");
  }
  if (query.count("since")) {
    q.since_ms = ParseRfc3339(query["since"]);
    if (!q.since_ms) return BadRequest("invalid_time", "'since' is an RFC 3339 time");
  }
  if (query.count("until")) {
    q.until_ms = ParseRfc3339(query["until"]);
    if (!q.until_ms) return BadRequest("invalid_time", "'until' is an RFC 3339 time");
  }
  q.principal = query.count("principal") ? query["principal"] : "";
  q.merchant = query.count("merchant") ? query["merchant"] : "";
  q.action = query.count("action") ? query["action"] : "";
  q.outcome = query.count("outcome") ? query["outcome"] : "";
  q.limit = default_limit;
  if (query.count("limit")) {
    const std::string& l = query["limit"];
    if (l.empty() || l.size() > 7 || l.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(l) < 1 || std::stoul(l) > max_limit) {
      return BadRequest("invalid_limit", "'limit' is 1 to " + std::to_string(max_limit));
    }
    q.limit = static_cast<size_t>(std::stoul(l));
  }
  if (query.count("cursor")) {
    const std::string& c = query["cursor"];
    if (c.empty() || c.size() > 18 || c.find_first_not_of("0123456789") != std::string::npos) {
      return BadRequest("invalid_cursor", "malformed cursor");
    }
    q.after_seq = std::stoll(c);
  }
  q.all_merchants = ctx.principal->scope.all();
  q.merchants.assign(ctx.principal->scope.merchants().begin(), ctx.principal->scope.merchants().end());
  return Status::Ok();
}

HttpResponse Service::ReadAudit(Context& ctx) {
  TV_AUTHORIZE(Permission::kAuditRead, "");
  storage::AuditQuery q;
  TV_OR_FAIL(ParseAuditQuery(ctx, 1000, 100, q));
  StatusOr<std::vector<storage::AuditRecord>> records = vault_.audit().Query(q);
  TV_OR_FAIL(records.status());
  json list = json::array();
  for (const auto& r : *records) list.push_back(AuditJson(r));
  json out = {{"records", list},
              {"next_cursor", records->size() == q.limit ? json(std::to_string(records->back().seq))
                                                          : json(nullptr)}};
  return Json(200, out);
}

HttpResponse Service::ExportAudit(Context& ctx) {
  TV_AUTHORIZE(Permission::kAuditRead, "");
  // Pages of at most 'limit' records (default 10,000; up to 100,000), each ending where a
  // checkpoint does; the end line's next_cursor continues. Pistache 0.0.5's response streams are
  // unsafe off its own threads (research/pistache.md), so each page is built whole.
  storage::AuditQuery q;
  TV_OR_FAIL(ParseAuditQuery(ctx, 100000, 10000, q));
  const size_t max_records = q.limit;
  HttpResponse response;
  response.status = 200;
  Status exported = vault_.audit_checkpoints().Export(q, max_records, [&](std::string_view line) {
    response.body.append(line);
    response.body.push_back('\n');
    return Status::Ok();
  });
  TV_OR_FAIL(exported);
  response.headers.emplace_back("Content-Type", "application/x-ndjson");
  return response;
}

HttpResponse Service::AuditCheckpointKey(Context& ctx) {
  TV_AUTHORIZE(Permission::kAuditRead, "");
  const EcdsaP256PublicKey& key = vault_.audit_checkpoints().public_key();
  return Json(200, json{{"algorithm", "ECDSA-P256-SHA256"},
                        {"key_id", key.KeyId()},
                        {"public_key_pem", key.Pem()}});
}

HttpResponse Service::VerifyAudit(Context& ctx) {
  TV_AUTHORIZE(Permission::kAuditRead, "");
  StatusOr<AuditVerification> v = vault_.audit().Verify();
  TV_OR_FAIL(v.status());
  TV_OR_FAIL(vault_.audit_checkpoints().Verify(*v));
  json out = {{"ok", v->ok}, {"records_checked", v->records_checked}};
  if (v->first_bad_seq) out["first_bad_seq"] = *v->first_bad_seq;
  if (!v->ok) out["reason"] = v->reason;
  return Json(200, out);
}

Status Service::LoadPrincipals() {
  std::lock_guard<std::mutex> writes(principal_writes_mu_);
  return LoadPrincipalsLocked();
}

Status Service::LoadPrincipalsLocked() {
  TV_ASSIGN_OR_RETURN(std::vector<storage::PrincipalRecord> live, vault_.store().LivePrincipals());
  std::lock_guard<std::mutex> lock(principals_mu_);
  principals_.clear();
  for (storage::PrincipalRecord& p : live) {
    std::string key_id = p.key_id;
    principals_.emplace(std::move(key_id), std::make_shared<const storage::PrincipalRecord>(std::move(p)));
  }
  principals_complete_ = true;
  ++principals_generation_;
  return Status::Ok();
}

void Service::RememberPrincipal(const storage::PrincipalRecord& record) {
  std::lock_guard<std::mutex> lock(principals_mu_);
  if (principals_complete_) principals_[record.key_id] = std::make_shared<const storage::PrincipalRecord>(record);
}

StatusOr<std::shared_ptr<const storage::PrincipalRecord>> Service::PrincipalByKeyId(const std::string& key_id) {
  uint64_t generation;
  {
    // Found or not, the same work: one map lookup and a shared pointer copied (no allocation),
    // so that a wrong secret takes as long for a key id that exists as for one that does not.
    std::lock_guard<std::mutex> lock(principals_mu_);
    auto it = principals_.find(key_id);
    std::shared_ptr<const storage::PrincipalRecord> found = it != principals_.end() ? it->second : nullptr;
    if (found || principals_complete_) return found;
    generation = principals_generation_;
  }
  StatusOr<storage::PrincipalRecord> stored = vault_.store().FindPrincipalByKeyId(key_id);
  if (!stored.ok()) {
    if (stored.status().code() == StatusCode::kNotFound) return std::shared_ptr<const storage::PrincipalRecord>();
    return stored.status();
  }
  auto record = std::make_shared<const storage::PrincipalRecord>(*std::move(stored));
  std::lock_guard<std::mutex> lock(principals_mu_);
  // A deletion since our read may concern this very principal: then do not cache it.
  if (generation == principals_generation_ && !principals_complete_) {
    if (principals_.size() >= 10000) principals_.clear();  // bounded: unknown ids never enter
    principals_[key_id] = record;
  }
  return record;
}

StatusOr<bool> Service::EnsureBootstrapAdmin(
    const std::function<Status(const SecretBytes&)>& persist_key) {
  StatusOr<storage::PrincipalRecord> existing = vault_.store().FindPrincipal("admin");
  if (existing.ok()) return false;
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();
  TV_ASSIGN_OR_RETURN(policy::NewApiKey key, policy::GenerateApiKey());
  TV_RETURN_IF_ERROR(persist_key(key.full_key));
  storage::PrincipalRecord record;
  record.name = "admin";
  record.roles = {"admin"};
  record.all_merchants = true;
  record.key_id = key.key_id;
  record.key_hash = key.secret_hash;
  record.created_at_ms = Clock::Real().NowUnixMillis();
  storage::AuditRecord audit;
  audit.request_id = "bootstrap";
  audit.principal = "admin";
  audit.auth = "none";
  audit.source_ip = "local";
  audit.action = "principals.bootstrap";
  audit.resource = "principal:admin key:" + key.key_id;
  audit.outcome = "allowed";
  audit.status = 201;
  audit.reason = "first start: bootstrap administrator";
  audit.time_ms = record.created_at_ms;
  storage::AuditAttachment attached{std::move(audit), &vault_.audit()};
  std::lock_guard<std::mutex> writes(principal_writes_mu_);
  TV_RETURN_IF_ERROR(vault_.store().InsertPrincipal(record, &attached));
  RememberPrincipal(record);
  return true;
}

}  // namespace tokenvault::api
