// Least-privilege policy: permissions, roles, merchant scopes, principals, and the decision
// function. Everything here is pure (no I/O, no clock, no randomness) so that it is tested
// table-driven; loading a policy file and API-key handling live beside it (policy_file.h,
// api_key.h).
#ifndef TOKENVAULT_POLICY_POLICY_H_
#define TOKENVAULT_POLICY_POLICY_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "vault/base/status.h"

namespace tokenvault::policy {

// The permissions of API.md. Values are bits of a PermissionSet.
enum class Permission : uint32_t {
  kTokensCreate = 1u << 0,
  kTokensRead = 1u << 1,
  kTokensDelete = 1u << 2,
  kTokensDetokenizePlain = 1u << 3,
  kTokensDetokenizeMasked = 1u << 4,
  kMerchantsCreate = 1u << 5,
  kMerchantsShred = 1u << 6,
  kKeysRotate = 1u << 7,
  kPrincipalsManage = 1u << 8,
  kAuditRead = 1u << 9,
};

// "tokens:create" etc., as API.md spells them.
std::string_view PermissionName(Permission p);
std::optional<Permission> ParsePermission(std::string_view name);
const std::vector<Permission>& AllPermissions();

class PermissionSet {
 public:
  PermissionSet() = default;
  PermissionSet(std::initializer_list<Permission> ps) {
    for (Permission p : ps) Add(p);
  }
  void Add(Permission p) { bits_ |= static_cast<uint32_t>(p); }
  void AddAll(PermissionSet other) { bits_ |= other.bits_; }
  bool Has(Permission p) const { return (bits_ & static_cast<uint32_t>(p)) != 0; }
  bool empty() const { return bits_ == 0; }
  bool operator==(const PermissionSet&) const = default;
  std::vector<std::string> Names() const;

 private:
  uint32_t bits_ = 0;
};

// Key-management permissions: nobody may hold one of these and tokens:detokenize:plain.
PermissionSet KeyManagementPermissions();

struct Role {
  std::string name;
  PermissionSet permissions;
  // Purpose-bound reveals: when not empty, detokenizing through this role needs a `purpose`
  // from this list (e.g. "chargeback", "refund"), recorded in the audit trail.
  std::vector<std::string> purposes = {};
};

// ^[a-z0-9][a-z0-9_-]{0,63}$ for purposes.
bool IsValidPurpose(std::string_view purpose);

// A list of merchant ids, or every merchant ("*").
class MerchantScope {
 public:
  static MerchantScope All() { return MerchantScope(true, {}); }
  static MerchantScope Only(std::set<std::string> merchants) {
    return MerchantScope(false, std::move(merchants));
  }
  bool all() const { return all_; }
  const std::set<std::string>& merchants() const { return merchants_; }
  bool Contains(std::string_view merchant) const {
    return all_ || merchants_.count(std::string(merchant)) > 0;
  }
  bool operator==(const MerchantScope&) const = default;

 private:
  MerchantScope(bool all, std::set<std::string> merchants)
      : all_(all), merchants_(std::move(merchants)) {}
  bool all_ = false;
  std::set<std::string> merchants_;
};

struct Principal {
  std::string name;
  std::vector<std::string> roles;
  MerchantScope scope = MerchantScope::Only({});
};

// The outcome of a check, with the rule that decided it (it goes into the audit record).
struct Decision {
  bool allowed = false;
  std::string reason;
};

// A detokenize budget (policy file "budgets"): for each principal it applies to, and for each
// merchant separately, at most 'max_values' values revealed in any rolling 'window_seconds', and
// a rate of 'per_second' values with bursts of 'burst' (a token bucket). Either limit may be
// absent (0), not both. Exceeding one answers 429 with Retry-After (docs/api.md, Budgets).
struct RevealBudget {
  std::string principal;  // exactly one of principal and role names whom it applies to
  std::string role;
  bool plain = true;      // which reveals it counts: plain, or masked
  int64_t max_values = 0;
  int64_t window_seconds = 0;  // 1 to 86400 (a rolling day) when max_values is set
  double per_second = 0;
  int64_t burst = 0;
};

// A client certificate that authenticates as a principal (mTLS; policy file "client_certificates"):
// by the SHA-256 of the certificate (DER), or by one of its subject alternative names, written
// "DNS:name", "URI:spiffe://...", "email:addr" or "IP:addr". The certificate must also chain to
// the configured client CA: a mapping never makes an untrusted certificate acceptable.
struct ClientCertificateIdentity {
  std::string principal;
  std::string sha256;  // 64 lower-case hex digits, or empty
  std::string san;     // or empty; exactly one of the two is set
};

// The roles in force: the built-in ones of API.md plus custom roles from a policy file.
// Immutable once built; share it by const reference or shared_ptr<const Policy>.
class Policy {
 public:
  // The built-in roles only.
  static Policy BuiltIn();
  // Built-in roles plus 'custom'. kInvalidArgument when a custom role redefines a built-in one,
  // has a bad name or no permission, or holds a key-management permission together with
  // tokens:detokenize:plain (reason separation_of_duties).
  static StatusOr<Policy> WithCustomRoles(const std::vector<Role>& custom);
  // The same, with detokenize budgets. kInvalidArgument (invalid_budget) for a budget naming an
  // unknown role, a bad principal name, or limits out of range.
  static StatusOr<Policy> WithCustomRolesAndBudgets(
      const std::vector<Role>& custom, std::vector<RevealBudget> budgets,
      std::vector<ClientCertificateIdentity> certificates = {});

  const Role* FindRole(std::string_view name) const;
  const std::map<std::string, Role, std::less<>>& roles() const { return roles_; }
  const std::vector<RevealBudget>& budgets() const { return budgets_; }
  size_t client_certificate_count() const { return principal_by_sha256_.size() + principal_by_san_.size(); }
  // SHA-256 (hex) of the policy file's text, when it came from one: names exactly what was
  // loaded in the audit record of a reload. Set once, before the policy is shared.
  const std::string& source_sha256() const { return source_sha256_; }
  void set_source_sha256(std::string digest) { source_sha256_ = std::move(digest); }
  // The principal a client certificate authenticates as: by its fingerprint first, then by the
  // first of its SANs that is mapped. nullopt if none is.
  std::optional<std::string> PrincipalForCertificate(std::string_view sha256_hex,
                                                     const std::vector<std::string>& sans) const;
  // The budgets that apply to the principal's plain (or masked) reveals.
  std::vector<RevealBudget> BudgetsFor(const Principal& principal, bool plain) const;

  // Every permission the principal's roles grant (unknown roles grant nothing).
  PermissionSet EffectivePermissions(const Principal& principal) const;

  // OK if the principal may exist under this policy: a non-empty valid name, at least one role,
  // every role known, and separation of duties (reason separation_of_duties). kInvalidArgument.
  Status ValidatePrincipal(const Principal& principal) const;

  // May 'principal' use 'permission' on 'merchant'? Deny by default. 'merchant' is empty for
  // actions that concern no merchant (principals:manage, audit:read); for those the scope does
  // not apply. Pure function.
  Decision Decide(const Principal& principal, Permission permission,
                  std::string_view merchant) const;

  // Purpose-bound reveals, after Decide allowed 'permission': OK when a role of the principal
  // grants it without requiring a purpose, or 'purpose' is one that a granting role allows.
  // kPermissionDenied purpose_required (none given) or purpose_not_allowed.
  Status CheckPurpose(const Principal& principal, Permission permission,
                      std::string_view purpose) const;

 private:
  std::map<std::string, Role, std::less<>> roles_;
  std::vector<RevealBudget> budgets_;
  std::map<std::string, std::string, std::less<>> principal_by_sha256_;
  std::map<std::string, std::string, std::less<>> principal_by_san_;
  std::string source_sha256_;
};

// ^[a-z0-9][a-z0-9_.-]{0,63}$ for principal and role names.
bool IsValidName(std::string_view name);

}  // namespace tokenvault::policy

#endif  // TOKENVAULT_POLICY_POLICY_H_
