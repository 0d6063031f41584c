// The policy engine, table-driven: every built-in role x every permission x own / other / no
// merchant, against the table of API.md.
#include "policy/policy.h"

#include <gtest/gtest.h>

#include "tests/support/matchers.h"

namespace tokenvault::policy {
namespace {

using P = Permission;

// API.md, "Built-in roles".
const std::map<std::string, std::set<P>>& ApiMdRoles() {
  static const auto* roles = new std::map<std::string, std::set<P>>{
      {"admin", {P::kMerchantsCreate, P::kMerchantsShred, P::kKeysRotate, P::kPrincipalsManage,
                 P::kAuditRead}},
      {"tokenizer", {P::kTokensCreate, P::kTokensRead, P::kTokensDelete}},
      {"detokenizer", {P::kTokensDetokenizePlain, P::kTokensDetokenizeMasked, P::kTokensRead}},
      {"support", {P::kTokensDetokenizeMasked, P::kTokensRead}},
      {"auditor", {P::kAuditRead}},
  };
  return *roles;
}

Principal Scoped(const std::string& role, std::set<std::string> merchants) {
  return Principal{"p", {role}, MerchantScope::Only(std::move(merchants))};
}

TEST(PolicyTest, BuiltInRolesMatchApiMdForEveryPermissionAndScope) {
  const Policy policy = Policy::BuiltIn();
  int cells = 0;
  for (const auto& [role, granted] : ApiMdRoles()) {
    for (Permission p : AllPermissions()) {
      const bool in_role = granted.count(p) > 0;
      // In scope.
      Decision own = policy.Decide(Scoped(role, {"acme"}), p, "acme");
      EXPECT_EQ(own.allowed, in_role) << role << " " << PermissionName(p) << ": " << own.reason;
      // Outside the scope: never.
      Decision other = policy.Decide(Scoped(role, {"acme"}), p, "globex");
      EXPECT_FALSE(other.allowed) << role << " " << PermissionName(p);
      // Scope "*": every merchant.
      Decision star = policy.Decide(Principal{"p", {role}, MerchantScope::All()}, p, "globex");
      EXPECT_EQ(star.allowed, in_role) << role << " " << PermissionName(p);
      // No merchant involved (principals:manage, audit:read): the role alone decides.
      Decision none = policy.Decide(Scoped(role, {}), p, "");
      EXPECT_EQ(none.allowed, in_role) << role << " " << PermissionName(p);
      cells += 4;
    }
  }
  EXPECT_EQ(cells, 5 * 10 * 4);
}

TEST(PolicyTest, DecisionsNameTheirRule) {
  const Policy policy = Policy::BuiltIn();
  Decision allowed = policy.Decide(Scoped("tokenizer", {"acme"}), P::kTokensCreate, "acme");
  EXPECT_EQ(allowed.reason, "role 'tokenizer' grants tokens:create on merchant 'acme'");
  Decision no_role = policy.Decide(Scoped("support", {"acme"}), P::kTokensDetokenizePlain, "acme");
  EXPECT_EQ(no_role.reason, "no role of the principal grants tokens:detokenize:plain");
  Decision scope = policy.Decide(Scoped("tokenizer", {"acme"}), P::kTokensCreate, "globex");
  EXPECT_EQ(scope.reason, "merchant 'globex' is outside the principal's scope");
}

TEST(PolicyTest, DenyByDefault) {
  const Policy policy = Policy::BuiltIn();
  // No roles, unknown roles, empty scope.
  EXPECT_FALSE(policy.Decide(Principal{"p", {}, MerchantScope::All()}, P::kTokensRead, "a").allowed);
  EXPECT_FALSE(policy.Decide(Principal{"p", {"root"}, MerchantScope::All()}, P::kTokensRead, "a").allowed);
  EXPECT_FALSE(policy.Decide(Scoped("tokenizer", {}), P::kTokensCreate, "a").allowed);
}

TEST(PolicyTest, SeparationOfDutiesIsRefusedForPrincipals) {
  const Policy policy = Policy::BuiltIn();
  Principal both{"p", {"admin", "detokenizer"}, MerchantScope::All()};
  TV_EXPECT_ERROR(policy.ValidatePrincipal(both), StatusCode::kInvalidArgument,
                  "separation_of_duties");
  // And even if such a principal existed (a tampered store), it gets nothing.
  EXPECT_FALSE(policy.Decide(both, P::kTokensDetokenizePlain, "a").allowed);
  EXPECT_FALSE(policy.Decide(both, P::kKeysRotate, "a").allowed);
  // Masked reveal with key management is allowed: only plain reveal conflicts.
  TV_EXPECT_OK(policy.ValidatePrincipal(Principal{"p", {"admin", "support"}, MerchantScope::All()}));
  TV_EXPECT_OK(policy.ValidatePrincipal(Principal{"p", {"detokenizer"}, MerchantScope::All()}));
}

TEST(PolicyTest, PrincipalValidation) {
  const Policy policy = Policy::BuiltIn();
  TV_EXPECT_ERROR(policy.ValidatePrincipal(Principal{"p", {"nope"}, MerchantScope::All()}),
                  StatusCode::kInvalidArgument, "unknown_role");
  TV_EXPECT_ERROR(policy.ValidatePrincipal(Principal{"p", {}, MerchantScope::All()}),
                  StatusCode::kInvalidArgument, "invalid_principal");
  TV_EXPECT_ERROR(policy.ValidatePrincipal(Principal{"Bad Name", {"auditor"}, MerchantScope::All()}),
                  StatusCode::kInvalidArgument, "invalid_principal");
}

TEST(PolicyTest, CustomRoles) {
  StatusOr<Policy> policy = Policy::WithCustomRoles(
      {Role{"reconciler", {P::kTokensRead, P::kTokensDetokenizeMasked}}});
  TV_ASSERT_OK(policy);
  EXPECT_TRUE(policy->Decide(Scoped("reconciler", {"a"}), P::kTokensDetokenizeMasked, "a").allowed);
  EXPECT_FALSE(policy->Decide(Scoped("reconciler", {"a"}), P::kTokensDetokenizePlain, "a").allowed);
  TV_EXPECT_ERROR(Policy::WithCustomRoles({Role{"keyreader", {P::kKeysRotate, P::kTokensDetokenizePlain}}}),
                  StatusCode::kInvalidArgument, "separation_of_duties");
  TV_EXPECT_ERROR(Policy::WithCustomRoles({Role{"admin", {P::kTokensRead}}}),
                  StatusCode::kInvalidArgument, "invalid_role");
  TV_EXPECT_ERROR(Policy::WithCustomRoles({Role{"empty", {}}}), StatusCode::kInvalidArgument,
                  "invalid_role");
  // A custom role that is harmless alone cannot be combined into a violation either.
  StatusOr<Policy> p2 = Policy::WithCustomRoles({Role{"rotator", {P::kKeysRotate}}});
  TV_ASSERT_OK(p2);
  TV_EXPECT_ERROR(p2->ValidatePrincipal(Principal{"p", {"rotator", "detokenizer"}, MerchantScope::All()}),
                  StatusCode::kInvalidArgument, "separation_of_duties");
}

TEST(PolicyTest, PermissionNamesRoundTrip) {
  EXPECT_EQ(AllPermissions().size(), 10u);
  for (Permission p : AllPermissions()) EXPECT_EQ(ParsePermission(PermissionName(p)), p);
  EXPECT_FALSE(ParsePermission("tokens:*").has_value());
}

}  // namespace
}  // namespace tokenvault::policy
