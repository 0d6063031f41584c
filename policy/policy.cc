#include "policy/policy.h"

#include <array>

namespace tokenvault::policy {
namespace {

constexpr std::array<std::pair<Permission, std::string_view>, 10> kNames = {{
    {Permission::kTokensCreate, "tokens:create"},
    {Permission::kTokensRead, "tokens:read"},
    {Permission::kTokensDelete, "tokens:delete"},
    {Permission::kTokensDetokenizePlain, "tokens:detokenize:plain"},
    {Permission::kTokensDetokenizeMasked, "tokens:detokenize:masked"},
    {Permission::kMerchantsCreate, "merchants:create"},
    {Permission::kMerchantsShred, "merchants:shred"},
    {Permission::kKeysRotate, "keys:rotate"},
    {Permission::kPrincipalsManage, "principals:manage"},
    {Permission::kAuditRead, "audit:read"},
}};

Status SeparationOfDuties(const std::string& who) {
  return InvalidArgumentError(
      "separation_of_duties",
      who + " would hold a key-management permission (keys:rotate, merchants:shred, "
            "principals:manage) together with tokens:detokenize:plain");
}

bool ViolatesSeparationOfDuties(PermissionSet p) {
  if (!p.Has(Permission::kTokensDetokenizePlain)) return false;
  for (Permission k : {Permission::kKeysRotate, Permission::kMerchantsShred,
                       Permission::kPrincipalsManage}) {
    if (p.Has(k)) return true;
  }
  return false;
}

}  // namespace

std::string_view PermissionName(Permission p) {
  for (const auto& [perm, name] : kNames) {
    if (perm == p) return name;
  }
  return "unknown";
}

std::optional<Permission> ParsePermission(std::string_view name) {
  for (const auto& [perm, n] : kNames) {
    if (n == name) return perm;
  }
  return std::nullopt;
}

const std::vector<Permission>& AllPermissions() {
  static const std::vector<Permission>* all = [] {
    auto* v = new std::vector<Permission>();
    for (const auto& [perm, name] : kNames) v->push_back(perm);
    return v;
  }();
  return *all;
}

std::vector<std::string> PermissionSet::Names() const {
  std::vector<std::string> out;
  for (Permission p : AllPermissions()) {
    if (Has(p)) out.emplace_back(PermissionName(p));
  }
  return out;
}

PermissionSet KeyManagementPermissions() {
  return {Permission::kKeysRotate, Permission::kMerchantsShred, Permission::kPrincipalsManage};
}

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (i == 0 ? !alnum : !(alnum || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

Policy Policy::BuiltIn() {
  using P = Permission;
  Policy policy;
  const Role built_in[] = {
      {"admin", {P::kMerchantsCreate, P::kMerchantsShred, P::kKeysRotate, P::kPrincipalsManage,
                 P::kAuditRead}, {}},
      {"tokenizer", {P::kTokensCreate, P::kTokensRead, P::kTokensDelete}, {}},
      {"detokenizer", {P::kTokensDetokenizePlain, P::kTokensDetokenizeMasked, P::kTokensRead}, {}},
      {"support", {P::kTokensDetokenizeMasked, P::kTokensRead}, {}},
      {"auditor", {P::kAuditRead}, {}},
  };
  for (const Role& r : built_in) policy.roles_.emplace(r.name, r);
  return policy;
}

StatusOr<Policy> Policy::WithCustomRoles(const std::vector<Role>& custom) {
  Policy policy = BuiltIn();
  for (const Role& role : custom) {
    if (!IsValidName(role.name)) {
      return InvalidArgumentError("invalid_role", "role names match ^[a-z0-9][a-z0-9_.-]{0,63}$");
    }
    if (role.permissions.empty()) {
      return InvalidArgumentError("invalid_role", "role '" + role.name + "' grants nothing");
    }
    if (ViolatesSeparationOfDuties(role.permissions)) {
      return SeparationOfDuties("role '" + role.name + "'");
    }
    if (!policy.roles_.emplace(role.name, role).second) {
      return InvalidArgumentError("invalid_role", "role '" + role.name + "' is defined twice");
    }
  }
  return policy;
}

StatusOr<Policy> Policy::WithCustomRolesAndBudgets(
    const std::vector<Role>& custom, std::vector<RevealBudget> budgets,
    std::vector<ClientCertificateIdentity> certificates) {
  TV_ASSIGN_OR_RETURN(Policy policy, WithCustomRoles(custom));
  for (const ClientCertificateIdentity& c : certificates) {
    auto invalid = [](const std::string& why) { return InvalidArgumentError("invalid_client_certificate", why); };
    if (!IsValidName(c.principal)) return invalid("a client certificate maps to a principal name");
    if (c.sha256.empty() == c.san.empty()) return invalid("a client certificate is named by sha256 or by san");
    if (!c.sha256.empty()) {
      if (c.sha256.size() != 64 || c.sha256.find_first_not_of("0123456789abcdef") != std::string::npos) {
        return invalid("sha256 is 64 hex digits");
      }
      if (!policy.principal_by_sha256_.emplace(c.sha256, c.principal).second) {
        return invalid("a certificate fingerprint is mapped twice");
      }
    } else {
      const bool known_kind = c.san.rfind("DNS:", 0) == 0 || c.san.rfind("URI:", 0) == 0 ||
                              c.san.rfind("email:", 0) == 0 || c.san.rfind("IP:", 0) == 0;
      if (!known_kind || c.san.size() > 512 || c.san.find(':') + 1 == c.san.size()) {
        return invalid("san is DNS:, URI:, email: or IP: followed by the name");
      }
      if (!policy.principal_by_san_.emplace(c.san, c.principal).second) {
        return invalid("a subject alternative name is mapped twice");
      }
    }
  }
  auto invalid = [](const std::string& why) { return InvalidArgumentError("invalid_budget", why); };
  for (const RevealBudget& b : budgets) {
    if (b.principal.empty() == b.role.empty()) return invalid("a budget names a principal or a role");
    if (!b.principal.empty() && !IsValidName(b.principal)) return invalid("a budget's principal is not a valid name");
    if (!b.role.empty() && policy.FindRole(b.role) == nullptr) {
      return invalid("a budget names the unknown role '" + b.role + "'");
    }
    const bool volume = b.max_values > 0 || b.window_seconds > 0;
    const bool rate = b.per_second > 0 || b.burst > 0;
    if (!volume && !rate) return invalid("a budget sets max_values and window_seconds, per_second and burst, or both");
    if (volume && (b.max_values < 1 || b.max_values > 100'000'000 || b.window_seconds < 1 ||
                   b.window_seconds > 86400)) {
      return invalid("max_values is 1 to 100000000 and window_seconds 1 to 86400, together");
    }
    if (rate && !(b.per_second >= 0.001 && b.per_second <= 1'000'000 && b.burst >= 1 && b.burst <= 1'000'000)) {
      return invalid("per_second is 0.001 to 1000000 and burst 1 to 1000000, together");
    }
  }
  policy.budgets_ = std::move(budgets);
  return policy;
}

std::optional<std::string> Policy::PrincipalForCertificate(std::string_view sha256_hex,
                                                           const std::vector<std::string>& sans) const {
  if (auto it = principal_by_sha256_.find(sha256_hex); it != principal_by_sha256_.end()) return it->second;
  for (const std::string& san : sans) {
    if (auto it = principal_by_san_.find(san); it != principal_by_san_.end()) return it->second;
  }
  return std::nullopt;
}

std::vector<RevealBudget> Policy::BudgetsFor(const Principal& principal, bool plain) const {
  std::vector<RevealBudget> out;
  for (const RevealBudget& b : budgets_) {
    if (b.plain != plain) continue;
    bool applies = !b.principal.empty() && b.principal == principal.name;
    for (const std::string& role : principal.roles) applies |= !b.role.empty() && b.role == role;
    if (applies) out.push_back(b);
  }
  return out;
}

const Role* Policy::FindRole(std::string_view name) const {
  auto it = roles_.find(name);
  return it == roles_.end() ? nullptr : &it->second;
}

PermissionSet Policy::EffectivePermissions(const Principal& principal) const {
  PermissionSet all;
  for (const std::string& name : principal.roles) {
    if (const Role* role = FindRole(name)) all.AddAll(role->permissions);
  }
  return all;
}

Status Policy::ValidatePrincipal(const Principal& principal) const {
  if (!IsValidName(principal.name)) {
    return InvalidArgumentError("invalid_principal",
                                "principal names match ^[a-z0-9][a-z0-9_.-]{0,63}$");
  }
  if (principal.roles.empty()) {
    return InvalidArgumentError("invalid_principal", "a principal needs at least one role");
  }
  for (const std::string& name : principal.roles) {
    if (FindRole(name) == nullptr) {
      return InvalidArgumentError("unknown_role", "a role of the principal does not exist");
    }
  }
  // Roles that are fine alone may not be combined into a principal that breaks the rule.
  if (ViolatesSeparationOfDuties(EffectivePermissions(principal))) {
    return SeparationOfDuties("principal '" + principal.name + "'");
  }
  return Status::Ok();
}

Decision Policy::Decide(const Principal& principal, Permission permission,
                        std::string_view merchant) const {
  const std::string perm(PermissionName(permission));
  const Role* granting = nullptr;
  for (const std::string& name : principal.roles) {
    const Role* role = FindRole(name);
    if (role != nullptr && role->permissions.Has(permission)) {
      granting = role;
      break;
    }
  }
  if (granting == nullptr) return Decision{false, "no role of the principal grants " + perm};
  // A principal that would break separation of duties gets nothing at all, even if it slipped
  // into storage somehow: fail closed.
  if (ViolatesSeparationOfDuties(EffectivePermissions(principal))) {
    return Decision{false, "principal violates separation of duties"};
  }
  if (!merchant.empty() && !principal.scope.Contains(merchant)) {
    return Decision{false, "merchant '" + std::string(merchant) + "' is outside the principal's scope"};
  }
  return Decision{true, "role '" + granting->name + "' grants " + perm +
                            (merchant.empty() ? "" : " on merchant '" + std::string(merchant) + "'")};
}

Status Policy::CheckPurpose(const Principal& principal, Permission permission,
                            std::string_view purpose) const {
  bool purpose_allowed = false;
  for (const std::string& name : principal.roles) {
    const Role* role = FindRole(name);
    if (role == nullptr || !role->permissions.Has(permission)) continue;
    if (role->purposes.empty()) return Status::Ok();  // this role needs no purpose
    for (const std::string& p : role->purposes) purpose_allowed |= p == purpose;
  }
  if (purpose_allowed) return Status::Ok();
  if (purpose.empty()) {
    return PermissionDeniedError("purpose_required", "this reveal needs a purpose the policy allows");
  }
  return PermissionDeniedError("purpose_not_allowed", "the policy does not allow this purpose");
}

bool IsValidPurpose(std::string_view purpose) {
  if (purpose.empty() || purpose.size() > 64) return false;
  for (size_t i = 0; i < purpose.size(); ++i) {
    const char c = purpose[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '_' || c == '-'));
    if (!ok) return false;
  }
  return true;
}

}  // namespace tokenvault::policy
