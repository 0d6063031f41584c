// Policy-file parsing on arbitrary bytes: ParsePolicy must refuse or accept, never crash, and an
// accepted policy must hold together (every principal's roles exist, nobody holds both a
// key-management permission and tokens:detokenize:plain).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "policy/policy.h"
#include "policy/policy_file.h"

using namespace tokenvault;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  StatusOr<policy::Policy> parsed = policy::ParsePolicy(text);
  if (!parsed.ok()) {
    if (parsed.status().ok()) std::abort();  // a failure must say why
    return 0;
  }
  const policy::Policy& p = *parsed;
  const policy::PermissionSet key_management = policy::KeyManagementPermissions();
  for (const auto& [name, role] : p.roles()) {
    bool keys = false;
    for (policy::Permission k : policy::AllPermissions()) {
      keys = keys || (key_management.Has(k) && role.permissions.Has(k));
    }
    // Separation of duties (API.md) holds for every role that was accepted.
    if (keys && role.permissions.Has(policy::Permission::kTokensDetokenizePlain)) std::abort();
    if (!policy::IsValidName(name) || name != role.name || role.permissions.empty()) std::abort();
    // A principal holding just this role is valid, and its decisions are pure functions.
    policy::Principal holder{"fuzz", {name}, policy::MerchantScope::Only({"m1"})};
    if (!p.ValidatePrincipal(holder).ok()) std::abort();
    for (policy::Permission perm : policy::AllPermissions()) {
      policy::Decision d = p.Decide(holder, perm, "m1");
      if (d.allowed != role.permissions.Has(perm)) std::abort();
      if (p.Decide(holder, perm, "m2").allowed) std::abort();  // outside its scope
    }
  }
  for (const policy::RevealBudget& b : p.budgets()) {
    if (b.principal.empty() == b.role.empty()) std::abort();
    if (b.max_values == 0 && b.per_second == 0) std::abort();
    if (b.max_values != 0 && (b.window_seconds < 1 || b.window_seconds > 86400)) std::abort();
  }
  return 0;
}
