#include "policy/policy_file.h"

#include <gtest/gtest.h>

#include "tests/support/matchers.h"

namespace tokenvault::policy {
namespace {

TEST(PolicyFileTest, LoadsCustomRoles) {
  StatusOr<Policy> p = ParsePolicy(
      R"({"roles": [{"name": "reconciler", "permissions": ["tokens:read", "tokens:detokenize:masked"]}]})");
  TV_ASSERT_OK(p);
  ASSERT_NE(p->FindRole("reconciler"), nullptr);
  EXPECT_TRUE(p->FindRole("reconciler")->permissions.Has(Permission::kTokensDetokenizeMasked));
  EXPECT_NE(p->FindRole("admin"), nullptr);  // built-ins stay
}

TEST(PolicyFileTest, RefusesBadFilesWhole) {
  struct Case {
    const char* json;
    const char* reason;
  };
  for (const Case& c : {
           Case{"{", "invalid_policy"},
           Case{"[]", "invalid_policy"},
           Case{R"({"roles": {}})", "invalid_policy"},
           Case{R"({"rolez": []})", "invalid_policy"},
           Case{R"({"roles": [{"name": "x", "permissions": ["tokens:everything"]}]})", "invalid_policy"},
           Case{R"({"roles": [{"name": "x", "permissions": ["tokens:read"], "deny": []}]})", "invalid_policy"},
           Case{R"({"roles": [{"name": 5, "permissions": []}]})", "invalid_policy"},
           Case{R"({"roles": [{"name": "ok", "permissions": ["tokens:read"]},
                              {"name": "bad", "permissions": ["keys:rotate", "tokens:detokenize:plain"]}]})",
                "separation_of_duties"},
       }) {
    TV_EXPECT_ERROR(ParsePolicy(c.json), StatusCode::kInvalidArgument, c.reason);
  }
}

}  // namespace
}  // namespace tokenvault::policy

namespace tokenvault::policy {
namespace {

TEST(PolicyFileTest, PurposeBoundRolesNeedAPurposeTheyAllow) {
  StatusOr<Policy> p = ParsePolicy(R"({"roles":[
      {"name":"chargebacks","permissions":["tokens:detokenize:plain"],"purposes":["chargeback","refund"]},
      {"name":"reader","permissions":["tokens:read"]}]})");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const Principal bound{"agent", {"chargebacks"}, MerchantScope::All()};
  TV_EXPECT_ERROR(p->CheckPurpose(bound, Permission::kTokensDetokenizePlain, ""),
                  StatusCode::kPermissionDenied, "purpose_required");
  TV_EXPECT_ERROR(p->CheckPurpose(bound, Permission::kTokensDetokenizePlain, "marketing"),
                  StatusCode::kPermissionDenied, "purpose_not_allowed");
  TV_EXPECT_OK(p->CheckPurpose(bound, Permission::kTokensDetokenizePlain, "refund"));
  // A role that grants the reveal without a purpose makes the purpose optional.
  const Principal free{"settle", {"chargebacks", "detokenizer"}, MerchantScope::All()};
  TV_EXPECT_OK(p->CheckPurpose(free, Permission::kTokensDetokenizePlain, ""));
  // Purposes must be well-formed, non-empty, and on a role that can reveal.
  for (const char* bad : {
           R"({"roles":[{"name":"r","permissions":["tokens:detokenize:plain"],"purposes":[]}]})",
           R"({"roles":[{"name":"r","permissions":["tokens:detokenize:plain"],"purposes":["Bad Purpose"]}]})",
           R"({"roles":[{"name":"r","permissions":["tokens:detokenize:plain"],"purposes":"refund"}]})",
           R"({"roles":[{"name":"r","permissions":["tokens:read"],"purposes":["refund"]}]})"}) {
    EXPECT_FALSE(ParsePolicy(bad).ok()) << bad;
  }
}

TEST(PolicyFileTest, BudgetsApplyByPrincipalOrRoleToTheirRevealMode) {
  StatusOr<Policy> p = ParsePolicy(R"({"budgets":[
      {"principal":"bulk","reveal":"plain","max_values":100,"window_seconds":60},
      {"role":"support","reveal":"masked","per_second":5,"burst":20,"max_values":1000,"window_seconds":86400}]})");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const Principal bulk{"bulk", {"detokenizer"}, MerchantScope::All()};
  ASSERT_EQ(p->BudgetsFor(bulk, true).size(), 1u);
  EXPECT_EQ(p->BudgetsFor(bulk, true)[0].max_values, 100);
  EXPECT_TRUE(p->BudgetsFor(bulk, false).empty());
  const Principal helpdesk{"helpdesk", {"support"}, MerchantScope::All()};
  ASSERT_EQ(p->BudgetsFor(helpdesk, false).size(), 1u);
  EXPECT_EQ(p->BudgetsFor(helpdesk, false)[0].burst, 20);
  EXPECT_TRUE(p->BudgetsFor(helpdesk, true).empty());
  for (const char* bad : {
           R"({"budgets":{}})",
           R"({"budgets":[{"reveal":"plain","max_values":1,"window_seconds":1}]})",                    // whom?
           R"({"budgets":[{"principal":"a","role":"support","reveal":"plain","max_values":1,"window_seconds":1}]})",
           R"({"budgets":[{"role":"nobody","reveal":"plain","max_values":1,"window_seconds":1}]})",    // unknown role
           R"({"budgets":[{"principal":"a","reveal":"both","max_values":1,"window_seconds":1}]})",
           R"({"budgets":[{"principal":"a","max_values":1,"window_seconds":1}]})",                     // no reveal
           R"({"budgets":[{"principal":"a","reveal":"plain"}]})",                                      // no limit
           R"({"budgets":[{"principal":"a","reveal":"plain","max_values":1}]})",                       // no window
           R"({"budgets":[{"principal":"a","reveal":"plain","max_values":1,"window_seconds":86401}]})",
           R"({"budgets":[{"principal":"a","reveal":"plain","per_second":0,"burst":1}]})",
           R"({"budgets":[{"principal":"a","reveal":"plain","per_second":1}]})",
           R"({"budgets":[{"principal":"a","reveal":"plain","max_values":"1","window_seconds":1}]})",
           R"({"budgets":[{"principal":"a","reveal":"plain","max_values":1,"window_seconds":1,"x":1}]})"}) {
    EXPECT_FALSE(ParsePolicy(bad).ok()) << bad;
  }
}

TEST(PolicyFileTest, ClientCertificatesMapToPrincipalsByFingerprintOrSan) {
  const std::string fp(64, 'a');
  StatusOr<Policy> p = ParsePolicy(R"({"client_certificates":[
      {"principal":"payments","sha256":")" + std::string("AA:") + std::string(62, 'A') + R"("},
      {"principal":"reader","san":"URI:spiffe://prod/reader"}]})");
  // "AA:" + 62 x "A" is 64 hex digits once the colon is dropped and the case folded.
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->PrincipalForCertificate(fp, {}), "payments");
  EXPECT_EQ(p->PrincipalForCertificate(std::string(64, 'b'), {"DNS:x", "URI:spiffe://prod/reader"}), "reader");
  EXPECT_EQ(p->PrincipalForCertificate(std::string(64, 'b'), {"URI:spiffe://prod/other"}), std::nullopt);
  for (const char* bad : {
           R"({"client_certificates":{}})",
           R"({"client_certificates":[{"principal":"p"}]})",
           R"({"client_certificates":[{"principal":"p","sha256":"abc"}]})",
           R"({"client_certificates":[{"principal":"p","san":"spiffe://x"}]})",
           R"({"client_certificates":[{"principal":"p","san":"DNS:"}]})",
           R"({"client_certificates":[{"principal":"Bad Name","san":"DNS:x"}]})",
           R"({"client_certificates":[{"principal":"p","san":"DNS:x","sha256":"aa"}]})",
           R"({"client_certificates":[{"principal":"p","san":"DNS:x"},{"principal":"q","san":"DNS:x"}]})",
           R"({"client_certificates":[{"principal":"p","san":"DNS:x","extra":"y"}]})"}) {
    EXPECT_FALSE(ParsePolicy(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace tokenvault::policy
