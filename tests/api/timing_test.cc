// Timing (reliability.md T7): does the response time tell whether an API key id or a token exists?
// A dudect-style test (Reparaz, Balasch, Verbauwhede, "Dude, is my code constant time?", 2017):
// two classes of requests that must look alike - a wrong secret for a key id that exists against
// one for a key id that does not; a token of another merchant against a token nobody has - are
// interleaved in random order through Service::Handle, the path the HTTP server calls, on a real
// vault (SQLite on /dev/shm when there is one, so that fsync noise does not drown the signal;
// FakeHsm, which neither path touches). Welch's t-test over the timings, also on the fastest
// 50/75/90 % (dudect's crops): |t| < 5 passes.
//
// Timing is measurement, not a unit test: only the long mode runs it, with
// TOKENVAULT_TIMING_SAMPLES=1000000 (results in docs/reliability.md). Without that variable the
// test checks its own machinery on a few samples and asserts nothing about time.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/service.h"
#include "storage/sqlite_store.h"
#include "tests/fakes/fake_hsm.h"
#include "tests/support/api_request.h"
#include "vault/vault.h"

namespace tokenvault::api {
namespace {

using json = nlohmann::json;

// Welch's t statistic of two samples.
double WelchT(const std::vector<double>& a, const std::vector<double>& b) {
  auto moments = [](const std::vector<double>& v, double* mean, double* var) {
    double m = 0;
    for (double x : v) m += x;
    m /= static_cast<double>(v.size());
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    *mean = m;
    *var = s / static_cast<double>(v.size() - 1);
  };
  double ma, va, mb, vb;
  moments(a, &ma, &va);
  moments(b, &mb, &vb);
  const double se = std::sqrt(va / static_cast<double>(a.size()) + vb / static_cast<double>(b.size()));
  return se == 0 ? 0 : (ma - mb) / se;
}

// The largest |t| over the whole samples and dudect's crops (values below a percentile of both
// classes pooled), with the means, for the report.
struct TimingResult {
  double max_abs_t = 0;
  double mean_a_us = 0, mean_b_us = 0;
  size_t samples = 0;
};

TimingResult Compare(const std::vector<double>& a, const std::vector<double>& b) {
  TimingResult r;
  r.samples = a.size() + b.size();
  std::vector<double> pooled = a;
  pooled.insert(pooled.end(), b.begin(), b.end());
  std::sort(pooled.begin(), pooled.end());
  for (double keep : {1.0, 0.9, 0.75, 0.5}) {
    const double limit = pooled[std::min(pooled.size() - 1, static_cast<size_t>(keep * static_cast<double>(pooled.size())))];
    std::vector<double> ca, cb;
    for (double x : a) if (x <= limit) ca.push_back(x);
    for (double x : b) if (x <= limit) cb.push_back(x);
    if (ca.size() < 2 || cb.size() < 2) continue;
    r.max_abs_t = std::max(r.max_abs_t, std::abs(WelchT(ca, cb)));
  }
  double sa = 0, sb = 0;
  for (double x : a) sa += x;
  for (double x : b) sb += x;
  r.mean_a_us = sa / static_cast<double>(a.size());
  r.mean_b_us = sb / static_cast<double>(b.size());
  return r;
}

// The statistics themselves: a shift of a tenth of the spread is found in 20,000 samples, and
// two samples of one distribution are not told apart.
TEST(WelchTTest, TellsShiftedSamplesApartAndNotEqualOnes) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> base(100.0, 10.0), shifted(101.0, 10.0);
  std::vector<double> a, b, c;
  for (int i = 0; i < 20000; ++i) {
    a.push_back(base(rng));
    b.push_back(base(rng));
    c.push_back(shifted(rng));
  }
  EXPECT_LT(Compare(a, b).max_abs_t, 5.0);
  EXPECT_GT(Compare(a, c).max_abs_t, 5.0);
}

class TimingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* samples = std::getenv("TOKENVAULT_TIMING_SAMPLES");
    samples_ = samples ? std::strtoul(samples, nullptr, 10) : 0;
    long_mode_ = samples_ > 0;
    if (!long_mode_) samples_ = 200;
    const std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    dir_ = base + "/tokenvault-timing-" + std::to_string(getpid());
    std::filesystem::create_directories(dir_);
    storage::SqliteStoreOptions so;
    so.path = dir_ + "/vault.db";
    auto store = storage::SqliteStore::Open(so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    VaultOptions vo;
    vo.expiry_sweep_interval = std::chrono::milliseconds(0);
    vo.reencrypt_interval = std::chrono::milliseconds(0);
    vo.hsm_probe_interval = std::chrono::milliseconds(0);
    auto vault = Vault::Create(hsm_, store_, vo);
    ASSERT_TRUE(vault.ok()) << vault.status().ToString();
    vault_ = std::move(vault).value();
    ServiceOptions options;
    options.lockout.max_failures = 0;  // the wrong keys are the experiment, not an attack
    service_ = std::make_unique<Service>(
        *vault_, std::make_shared<const policy::Policy>(policy::Policy::BuiltIn()), options);
    std::string admin;
    auto created = service_->EnsureBootstrapAdmin([&](const SecretBytes& key) {
      admin.assign(reinterpret_cast<const char*>(key.data()), key.size());
      return Status::Ok();
    });
    ASSERT_TRUE(created.ok() && *created);
    for (const char* m : {"m1", "m2"}) ASSERT_EQ(Call("POST", "merchants.create", admin, json{{"id", m}}.dump()).status, 201);
    HttpResponse p = Call("POST", "principals.create", admin,
                          json{{"name", "app"}, {"roles", {"tokenizer"}}, {"merchants", {"m1", "m2"}}}.dump());
    ASSERT_EQ(p.status, 201) << p.body;
    app_key_ = json::parse(p.body)["api_key"].get<std::string>();
    ASSERT_TRUE(service_->LoadPrincipals().ok());  // as the server does before serving
    HttpResponse t = Call("POST", "tokens.create", app_key_, R"({"value":"x"})", {{"m", "m2"}});
    ASSERT_EQ(t.status, 201) << t.body;
    other_merchants_token_ = json::parse(t.body)["token"].get<std::string>();
  }

  void TearDown() override {
    service_.reset();
    vault_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  HttpResponse Call(const std::string& method, const std::string& route, const std::string& key,
                    const std::string& body, std::map<std::string, std::string> params = {}) {
    return service_->Handle(testing::ServiceRequest(method, route, key, body, std::move(params)));
  }

  // Interleaves the two classes in random order ('a'/'b' make a request), timing each; checks
  // every answer is 'status'.
  TimingResult Measure(const std::function<HttpRequest()>& a, const std::function<HttpRequest()>& b, int status) {
    std::mt19937_64 rng(20261129);
    std::vector<double> ta, tb;
    ta.reserve(samples_ / 2 + 1);
    tb.reserve(samples_ / 2 + 1);
    for (size_t i = 0; i < samples_; ++i) {
      const bool first = (rng() & 1) != 0;
      HttpRequest rq = first ? a() : b();
      const auto start = std::chrono::steady_clock::now();
      HttpResponse r = service_->Handle(std::move(rq));
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      EXPECT_EQ(r.status, status) << r.body;
      if (r.status != status) break;
      (first ? ta : tb).push_back(us);
    }
    return Compare(ta, tb);
  }

  HttpRequest Request(const std::string& route, const std::string& key, std::map<std::string, std::string> params) {
    return testing::ServiceRequest("GET", route, key, "", std::move(params));
  }

  void Report(const std::string& what, const TimingResult& r) {
    std::printf("timing %s: %zu samples, mean %.2f us vs %.2f us, max |t| = %.2f\n", what.c_str(),
                r.samples, r.mean_a_us, r.mean_b_us, r.max_abs_t);
    if (long_mode_) {
      EXPECT_LT(r.max_abs_t, 5.0) << what << ": response time tells the two apart";
    }
  }

  size_t samples_ = 0;
  bool long_mode_ = false;
  std::string dir_;
  std::shared_ptr<testing::FakeHsm> hsm_ = std::make_shared<testing::FakeHsm>();
  std::shared_ptr<storage::SqliteStore> store_;
  std::unique_ptr<Vault> vault_;
  std::unique_ptr<Service> service_;
  std::string app_key_, other_merchants_token_;
};

TEST_F(TimingTest, AWrongSecretTakesAsLongForAKeyIdThatExistsAsForOneThatDoesNot) {
  // tvk_<20 hex id>_<64 hex secret>: the same id with a wrong secret, and an id nobody has.
  const std::string id = app_key_.substr(4, 20);
  const std::string wrong_secret(64, 'a');
  const std::string known = "tvk_" + id + "_" + wrong_secret;
  std::string unknown_id = id;
  unknown_id[0] = unknown_id[0] == '0' ? '1' : '0';
  const std::string unknown = "tvk_" + unknown_id + "_" + wrong_secret;
  const std::map<std::string, std::string> params = {{"m", "m1"}, {"token", other_merchants_token_}};
  Report("API key id", Measure([&] { return Request("tokens.read", known, params); },
                               [&] { return Request("tokens.read", unknown, params); }, 401));
}

TEST_F(TimingTest, AnotherMerchantsTokenTakesAsLongAsATokenNobodyHas) {
  std::string nobodys = other_merchants_token_;
  nobodys[10] = nobodys[10] == 'A' ? 'B' : 'A';
  Report("token", Measure([&] { return Request("tokens.read", app_key_, {{"m", "m1"}, {"token", other_merchants_token_}}); },
                          [&] { return Request("tokens.read", app_key_, {{"m", "m1"}, {"token", nobodys}}); }, 404));
}

}  // namespace
}  // namespace tokenvault::api
