// The HTTP API of API.md as plain request -> response logic, with no HTTP library in sight:
// authentication, authorisation, input validation, the vault call, the audit record and the
// JSON answer. http_server.cc feeds it from Pistache; tests can call it directly.
#ifndef TOKENVAULT_API_SERVICE_H_
#define TOKENVAULT_API_SERVICE_H_

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "api/auth_lockout.h"
#include "api/client_cert.h"
#include "api/reveal_budget.h"
#include "policy/policy.h"
#include "vault/vault.h"

namespace tokenvault::api {

struct HttpRequest {
  std::string method;  // "GET", "POST", "DELETE"
  std::string route;   // a route name of Routes(), e.g. "tokens.create"
  std::map<std::string, std::string> params;  // path parameters ("m", "token", "name")
  std::map<std::string, std::string> query;
  std::string authorization;  // the Authorization header
  std::string content_type;
  std::string body;
  bool body_too_large = false;  // the body exceeded the limit and was dropped
  std::optional<std::string> idempotency_key;  // the Idempotency-Key header, if sent
  std::string source_ip;
  std::string request_id;
  // The client certificate the TLS layer (or a trusted proxy) verified against the client CA.
  std::optional<ClientCertificate> client_cert;
  // Behind a trusted proxy: "" (the request came through it, intact), "untrusted" (it did not
  // carry the proxy's secret), or "bad_client_cert" (the proxy's X-Client-Cert cannot be read).
  std::string proxy_problem;
  bool via_proxy = false;  // it came through the trusted proxy (with its secret)
};

struct HttpResponse {
  int status = 500;
  std::string principal;  // who asked, for the request log ("" if not authenticated)
  std::string body;  // JSON, or empty for 204
  std::vector<std::pair<std::string, std::string>> headers;
};

struct RouteSpec {
  std::string method;
  std::string path;  // Pistache syntax: /v1/merchants/:m/tokens
  std::string route;
};

// Every route the service answers.
const std::vector<RouteSpec>& Routes();

struct ServiceOptions {
  size_t max_detokenize_tokens = 1000;
  size_t max_batch_items = 1000;
  LockoutOptions lockout;
};

// Thread-safe.
class Service {
 public:
  Service(Vault& vault, std::shared_ptr<const policy::Policy> policy, ServiceOptions options = {});

  // Reads back the persisted detokenize budget counters of the last day (the longest window), so
  // that a restart does not refill a budget. Call once before serving; a server that cannot
  // must not serve, or every budget would be lifted.
  Status LoadBudgetCounters();

  // Reads every live principal into memory: from then on an API key's id is looked up there only,
  // found or not, so that the answer takes as long for a key id that exists as for one that does
  // not (a store lookup for unknown ids only would tell them apart; TimingTest). The service keeps
  // the map current as it creates and deletes principals - it is the only writer of its database.
  // Call once before serving; without it, key ids are looked up in the store and cached.
  Status LoadPrincipals();

  // Detokenize requests refused by a budget since start (metrics).
  uint64_t budget_denials() const { return budget_denials_.load(); }

  // Never throws; every answer carries Request-Id; every request but /healthz and /readyz leaves
  // exactly one audit record, and if that record cannot be written the answer is 503 with no
  // value in it.
  HttpResponse Handle(HttpRequest request);

  using Responder = std::function<void(HttpResponse)>;
  // Handle without waiting for the commit that ends most requests: 'respond' is called exactly
  // once, on this thread or on the store's completion thread. Handle() waits for it, so it must
  // not be called from such a completion.
  void HandleAsync(HttpRequest request, Responder respond);

  // Creates the principal "admin" (role admin, every merchant) if no principal of that name
  // exists. 'persist_key' is called with the new API key BEFORE the principal is stored, so that
  // a crash can never leave an administrator whose key nobody has; if it fails, nothing is
  // stored. Returns true if the admin was created now.
  StatusOr<bool> EnsureBootstrapAdmin(const std::function<Status(const SecretBytes&)>& persist_key);

  // Swaps in a new policy (SIGHUP re-read the policy file): requests that started keep the one
  // they began with. The change is audited first ('source': the file); if the record cannot be
  // written, the old policy stays.
  Status ReplacePolicy(std::shared_ptr<const policy::Policy> policy, const std::string& source);

  // Records an event of the service itself (PCI DSS 10.2.1: start and stop of the service and of
  // its audit logging) as principal "system". Returns once it is durable.
  Status AuditServiceEvent(const std::string& action, const std::string& reason,
                           const std::string& resource = "");

 private:
  struct Context;
  struct BatchState;
  // An Idempotency-Key, hashed (storage::IdempotencyRecord), and while the request runs, the
  // hold that keeps a second request with the same key out.
  struct Idempotency {
    Bytes key_hash;
    Bytes request_hash;
    std::shared_ptr<void> hold;
    bool malformed = false;  // refused with 400 once the caller is authorised
  };
  HttpResponse Dispatch(Context& ctx);
  // Appends the request's audit record unless the handler committed it already, then answers.
  void Complete(const std::shared_ptr<Context>& ctx, HttpResponse response);
  // The answer once the audit record is written (or not: 'written' failed -> 503, no value).
  HttpResponse Finish(const Context& ctx, HttpResponse response, const Status& written);
  static HttpResponse AuditUnavailable();
  static void StampRequestId(const Context& ctx, HttpResponse& response);
  static void Respond(Context& ctx, HttpResponse response);
  void TokenCreated(const std::shared_ptr<Context>& ctx, StatusOr<TokenizeOutcome> t);
  static void LogIfServerError(const Context& ctx, const Status& s);
  Status PrepareIdempotency(Context& ctx);
  std::optional<HttpResponse> ReplayOrHold(Context& ctx);
  static void RecordAnswer(const Context& ctx, std::optional<storage::IdempotencyRecord>* out);
  static storage::AuditRecord AuditOf(const Context& ctx, int status);

  HttpResponse CreatePrincipal(Context& ctx);
  HttpResponse DeletePrincipal(Context& ctx);
  HttpResponse CreateMerchant(Context& ctx);
  HttpResponse ShredMerchant(Context& ctx);
  HttpResponse RotateKeys(Context& ctx);
  HttpResponse RotateKek(Context& ctx);
  HttpResponse ReadKeys(Context& ctx);
  HttpResponse CreateToken(Context& ctx);
  HttpResponse CreateTokenBatch(Context& ctx);
  HttpResponse GetToken(Context& ctx);
  HttpResponse DeleteToken(Context& ctx);
  HttpResponse Detokenize(Context& ctx);
  HttpResponse ReadAudit(Context& ctx);
  HttpResponse VerifyAudit(Context& ctx);
  HttpResponse ExportAudit(Context& ctx);
  // Counts an answered request into the metrics registry (GET /metrics).
  static void CountRequest(const Context& ctx, int status);
  // Charges 'values' reveals to the caller's detokenize budgets: nullopt if they allow it (the
  // charge then commits with the audit record), else the 429 to answer.
  std::optional<HttpResponse> ChargeBudgets(Context& ctx, bool plain, int64_t values);
  HttpResponse AuditCheckpointKey(Context& ctx);
  // The filter of GET /v1/audit and /v1/audit/export from the query, for the caller's scope.
  Status ParseAuditQuery(Context& ctx, size_t max_limit, size_t default_limit,
                         storage::AuditQuery& q);
  HttpResponse Ready();

  // The live principal holding 'key_id': from the map of every live principal once
  // LoadPrincipals ran (found or not, one map lookup), else from the store through a small cache.
  // Deleting a principal takes its key out at once: this process is the only writer of its
  // database. Null (and OK) when no live principal holds it; an error only from the store.
  StatusOr<std::shared_ptr<const storage::PrincipalRecord>> PrincipalByKeyId(const std::string& key_id);

  Vault& vault_;
  std::shared_ptr<const policy::Policy> CurrentPolicy() const;
  mutable std::mutex policy_mu_;
  std::shared_ptr<const policy::Policy> policy_;  // GUARDED_BY(policy_mu_)
  const ServiceOptions options_;
  // Held across a principal's store change and the map update that follows it (create, delete,
  // LoadPrincipals), so that the map never misses or revives a change: lookups take only
  // principals_mu_. Taken before principals_mu_, never after.
  std::mutex principal_writes_mu_;
  std::mutex principals_mu_;
  // By key id.
  std::unordered_map<std::string, std::shared_ptr<const storage::PrincipalRecord>> principals_;  // GUARDED_BY(principals_mu_)
  // Bumped by every deletion: a lookup that started before it must not refill the cache.
  uint64_t principals_generation_ = 0;  // GUARDED_BY(principals_mu_)
  // principals_ holds every live principal (LoadPrincipals), not a cache of those seen.
  bool principals_complete_ = false;  // GUARDED_BY(principals_mu_)
  // Adds a principal just stored to a complete map. REQUIRES: principal_writes_mu_ held.
  void RememberPrincipal(const storage::PrincipalRecord& record);
  // LoadPrincipals with principal_writes_mu_ held.
  Status LoadPrincipalsLocked();
  AuthLockout lockout_;
  RevealBudgets budgets_;  // detokenize budgets' counters (their limits are in the policy)
  std::atomic<uint64_t> budget_denials_{0};
  std::atomic<int64_t> budgets_pruned_at_ms_{0};
  std::mutex idempotency_mu_;
  std::set<Bytes> idempotency_in_flight_;  // key hashes of requests being answered. GUARDED_BY(idempotency_mu_)
};

// The one Status -> HTTP mapping: status code and error type of API.md.
std::pair<int, std::string> HttpStatusOf(const Status& status);

// RFC 3339 UTC with milliseconds, e.g. 2026-11-28T21:40:00.123Z.
std::optional<int64_t> ParseRfc3339(const std::string& text);

}  // namespace tokenvault::api

#endif  // TOKENVAULT_API_SERVICE_H_
