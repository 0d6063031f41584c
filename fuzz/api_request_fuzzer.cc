// Every endpoint's request parsing and validation, through the same api::Service::Handle the
// HTTP server calls, on a real vault (FakeHsm for speed, SQLite in a temp dir - on /dev/shm when
// there is one, so that commits cost no real fsync). The fuzzer picks the route, the caller
// (admin, tokenizer, detokenizer, auditor, none, or a made-up Authorization header), the path
// parameters, the query, the content type, an Idempotency-Key and the body.
// Properties, for every request: no crash or sanitizer report; a status of API.md (never a 5xx:
// FakeHsm and SQLite do not fail here); a body that is JSON (empty only for 204), with the
// error object of API.md on every 4xx; a Request-Id header.
// The merchant every caller works on ("m1") and the principals are never shredded or deleted by
// the fuzzer, so that the rest of the run still reaches past authorization.
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/service.h"
#include "policy/policy.h"
#include "storage/sqlite_store.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/api_request.h"
#include "vault/vault.h"

using namespace tokenvault;
using nlohmann::json;

namespace {

struct World {
  std::string dir;
  std::shared_ptr<testing::FakeHsm> hsm;
  std::shared_ptr<storage::SqliteStore> store;
  std::unique_ptr<Vault> vault;
  std::unique_ptr<api::Service> service;
  std::vector<std::string> keys;    // admin, tokenizer, detokenizer, auditor
  std::vector<std::string> tokens;  // tokens of m1 made at start-up
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "api fuzzer set-up: %s\n", what.c_str());
  std::abort();
}

api::HttpResponse Call(World& w, const std::string& method, const std::string& route,
                       const std::string& key, const std::string& body,
                       std::map<std::string, std::string> params = {}) {
  return w.service->Handle(testing::ServiceRequest(method, route, key, body, std::move(params)));
}

std::string CreatePrincipal(World& w, const std::string& name, const std::string& role) {
  api::HttpResponse r = Call(w, "POST", "principals.create", w.keys[0],
                             json{{"name", name}, {"roles", {role}}, {"merchants", {"m1"}}}.dump());
  if (r.status != 201) Die("principal " + name + ": " + r.body);
  return json::parse(r.body).at("api_key").get<std::string>();
}

World* MakeWorld() {
  {
    auto* made = new World;
    char tmpl[] = "/dev/shm/tokenvault-fuzz-XXXXXX";
    char fallback[] = "/tmp/tokenvault-fuzz-XXXXXX";
    const char* dir = mkdtemp(tmpl);
    if (!dir) dir = mkdtemp(fallback);
    if (!dir) Die("mkdtemp");
    made->dir = dir;
    made->hsm = std::make_shared<testing::FakeHsm>();
    storage::SqliteStoreOptions so;
    so.path = made->dir + "/vault.db";
    auto store = storage::SqliteStore::Open(so);
    if (!store.ok()) Die(store.status().ToString());
    made->store = std::move(store).value();
    VaultOptions vo;
    vo.expiry_sweep_interval = std::chrono::milliseconds(0);
    vo.reencrypt_interval = std::chrono::milliseconds(0);
    vo.hsm_probe_interval = std::chrono::milliseconds(0);
    auto vault = Vault::Create(made->hsm, made->store, vo);
    if (!vault.ok()) Die(vault.status().ToString());
    made->vault = std::move(vault).value();
    made->service = std::make_unique<api::Service>(
        *made->vault, std::make_shared<const policy::Policy>(policy::Policy::BuiltIn()));
    std::string admin_key;
    auto created = made->service->EnsureBootstrapAdmin([&](const SecretBytes& key) {
      admin_key.assign(reinterpret_cast<const char*>(key.data()), key.size());
      return Status::Ok();
    });
    if (!created.ok() || !*created) Die("bootstrap admin");
    made->keys.push_back(admin_key);
    if (Call(*made, "POST", "merchants.create", admin_key, R"({"id":"m1"})").status != 201) {
      Die("merchant m1");
    }
    made->keys.push_back(CreatePrincipal(*made, "tok", "tokenizer"));
    made->keys.push_back(CreatePrincipal(*made, "det", "detokenizer"));
    made->keys.push_back(CreatePrincipal(*made, "aud", "auditor"));
    if (!made->service->LoadPrincipals().ok()) Die("load principals");  // as the server does
    for (const char* body : {R"({"type":"card","value":"4111111111111111"})",
                             R"({"type":"card","value":"4111111111111111","format":"preserving"})",
                             R"({"type":"ssn","value":"123-45-6789","format":"preserving"})",
                             R"({"type":"generic","value":"hello"})"}) {
      api::HttpResponse r = Call(*made, "POST", "tokens.create", made->keys[1], body, {{"m", "m1"}});
      if (r.status != 201) Die(std::string("token: ") + r.body);
      made->tokens.push_back(json::parse(r.body).at("token").get<std::string>());
    }
    return made;
  }
}

// The world starts afresh every 1000 inputs: audit verification and export read the whole trail,
// so a world that only grew would slow every run down to those two routes.
World& TheWorld() {
  static World* w = nullptr;
  static int uses = 0;
  if (w && ++uses % 1000 == 0) {
    w->service.reset();
    w->vault.reset();
    w->store.reset();
    std::filesystem::remove_all(w->dir);
    delete w;
    w = nullptr;
  }
  if (!w) {
    w = MakeWorld();
    // libFuzzer ends with exit(): the last world's directory goes with it.
    static const bool registered = [] {
      std::atexit([] {
        if (w) std::filesystem::remove_all(w->dir);
      });
      return true;
    }();
    (void)registered;
  }
  return *w;
}

const char* const kQueryKeys[] = {"limit", "cursor", "since", "until", "principal",
                                  "merchant", "action", "outcome", "after", "x"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  FuzzedDataProvider in(data, size);
  const std::vector<api::RouteSpec>& routes = api::Routes();
  const api::RouteSpec& route = routes[in.ConsumeIntegralInRange<size_t>(0, routes.size() - 1)];
  api::HttpRequest rq;
  rq.method = route.method;
  rq.route = route.route;
  rq.source_ip = "127.0.0.1";
  rq.request_id = "fuzz";
  const int caller = in.ConsumeIntegralInRange<int>(0, 5);
  if (caller < 4) {
    rq.authorization = "Bearer " + w.keys[static_cast<size_t>(caller)];
  } else if (caller == 5) {
    rq.authorization = in.ConsumeRandomLengthString(128);
  }
  if (route.path.find(":m") != std::string::npos) {
    std::string m = in.ConsumeBool() ? "m1" : in.ConsumeRandomLengthString(80);
    if (route.route == "merchants.shred" && m == "m1") m = "m2";
    // Each rotation of m1 makes the next KEK rotation rewrap one more key: bounded, so that a
    // long run does not slow down to rotations.
    static int rotations = 0;
    if ((route.route == "keys.rotate" || route.route == "kek.rotate") && m == "m1" && ++rotations > 64) {
      m = "m1-rotated-enough";
    }
    rq.params["m"] = m;
  }
  if (route.path.find(":token") != std::string::npos) {
    rq.params["token"] = in.ConsumeBool()
        ? w.tokens[in.ConsumeIntegralInRange<size_t>(0, w.tokens.size() - 1)]
        : in.ConsumeRandomLengthString(80);
  }
  if (route.path.find(":name") != std::string::npos) {
    std::string name = in.ConsumeRandomLengthString(80);
    if (name == "admin" || name == "tok" || name == "det" || name == "aud") name = "someone";
    rq.params["name"] = name;
  }
  const int queries = in.ConsumeIntegralInRange<int>(0, 3);
  for (int i = 0; i < queries; ++i) {
    const char* key = kQueryKeys[in.ConsumeIntegralInRange<size_t>(0, std::size(kQueryKeys) - 1)];
    rq.query[key] = in.ConsumeRandomLengthString(40);
  }
  rq.content_type = in.ConsumeBool() ? "application/json" : in.ConsumeRandomLengthString(40);
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) rq.idempotency_key = in.ConsumeRandomLengthString(80);
  rq.body_too_large = in.ConsumeIntegralInRange<int>(0, 31) == 0;
  rq.body = in.ConsumeRemainingBytesAsString();

  const api::HttpResponse r = w.service->Handle(rq);
  static const bool verbose = std::getenv("TOKENVAULT_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s %s -> %d %s\n", rq.route.c_str(), rq.body.c_str(), r.status, r.body.c_str());
  bool has_request_id = false;
  for (const auto& [name, value] : r.headers) has_request_id = has_request_id || name == "Request-Id";
  if (r.status < 200 || r.status >= 500 || !has_request_id) {
    std::fprintf(stderr, "route %s answered %d: %s\n", rq.route.c_str(), r.status, r.body.c_str());
    std::abort();
  }
  if (r.status == 204) {
    if (!r.body.empty()) std::abort();
    return 0;
  }
  for (const auto& [name, value] : r.headers) {
    if (name == "Content-Type") return 0;  // metrics and exports: text, not one JSON document
  }
  const json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    std::fprintf(stderr, "route %s answered %d with a body that is not JSON\n", rq.route.c_str(), r.status);
    std::abort();
  }
  if (r.status >= 400 && !(body.is_object() && body.contains("error") && body["error"].is_object() &&
                           body["error"].contains("code"))) {
    std::fprintf(stderr, "route %s answered %d without an error object: %s\n", rq.route.c_str(),
                 r.status, r.body.c_str());
    std::abort();
  }
  return 0;
}
