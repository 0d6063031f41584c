#include "policy/policy_file.h"

#include <openssl/evp.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "vault/base/bytes.h"

namespace tokenvault::policy {
namespace {

Status Invalid(const std::string& why) { return InvalidArgumentError("invalid_policy", why); }

}  // namespace

StatusOr<Policy> ParsePolicy(std::string_view json_text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception&) {
    return Invalid("the policy file is not valid JSON");
  }
  if (!doc.is_object()) return Invalid("the policy file must be a JSON object");
  for (const auto& [key, value] : doc.items()) {
    if (key != "roles" && key != "budgets" && key != "client_certificates") {
      return Invalid("unknown field '" + key + "'");
    }
  }
  std::vector<Role> roles;
  if (doc.contains("roles")) {
    const nlohmann::json& list = doc.at("roles");
    if (!list.is_array()) return Invalid("'roles' must be an array");
    for (const nlohmann::json& entry : list) {
      if (!entry.is_object()) return Invalid("each role must be an object");
      for (const auto& [key, value] : entry.items()) {
        if (key != "name" && key != "permissions" && key != "purposes") {
          return Invalid("unknown role field '" + key + "'");
        }
      }
      if (!entry.contains("name") || !entry.at("name").is_string()) {
        return Invalid("each role needs a string 'name'");
      }
      if (!entry.contains("permissions") || !entry.at("permissions").is_array()) {
        return Invalid("each role needs a 'permissions' array");
      }
      Role role;
      role.name = entry.at("name").get<std::string>();
      for (const nlohmann::json& p : entry.at("permissions")) {
        if (!p.is_string()) return Invalid("permissions are strings");
        std::optional<Permission> perm = ParsePermission(p.get<std::string>());
        if (!perm) return Invalid("unknown permission in role '" + role.name + "'");
        role.permissions.Add(*perm);
      }
      if (entry.contains("purposes")) {
        const nlohmann::json& purposes = entry.at("purposes");
        if (!purposes.is_array() || purposes.empty()) {
          return Invalid("'purposes' of role '" + role.name + "' must be a non-empty array");
        }
        for (const nlohmann::json& p : purposes) {
          if (!p.is_string() || !IsValidPurpose(p.get<std::string>())) {
            return Invalid("purposes match ^[a-z0-9][a-z0-9_-]{0,63}$");
          }
          role.purposes.push_back(p.get<std::string>());
        }
        // A purpose binds reveals; on a role that cannot reveal it would be a silent no-op.
        if (!role.permissions.Has(Permission::kTokensDetokenizePlain) &&
            !role.permissions.Has(Permission::kTokensDetokenizeMasked)) {
          return Invalid("role '" + role.name + "' has purposes but no detokenize permission");
        }
      }
      roles.push_back(std::move(role));
    }
  }
  std::vector<RevealBudget> budgets;
  if (doc.contains("budgets")) {
    const nlohmann::json& list = doc.at("budgets");
    if (!list.is_array()) return Invalid("'budgets' must be an array");
    for (const nlohmann::json& entry : list) {
      if (!entry.is_object()) return Invalid("each budget must be an object");
      RevealBudget budget;
      for (const auto& [key, value] : entry.items()) {
        if (key == "principal" || key == "role") {
          if (!value.is_string()) return Invalid("a budget's '" + key + "' is a string");
          (key == "principal" ? budget.principal : budget.role) = value.get<std::string>();
        } else if (key == "reveal") {
          if (value != "plain" && value != "masked") return Invalid("a budget's 'reveal' is \"plain\" or \"masked\"");
          budget.plain = value == "plain";
        } else if (key == "max_values" || key == "window_seconds" || key == "burst") {
          if (!value.is_number_integer()) return Invalid("a budget's '" + key + "' is an integer");
          const int64_t v = value.get<int64_t>();
          (key == "max_values" ? budget.max_values : key == "window_seconds" ? budget.window_seconds : budget.burst) = v;
        } else if (key == "per_second") {
          if (!value.is_number()) return Invalid("a budget's 'per_second' is a number");
          budget.per_second = value.get<double>();
        } else {
          return Invalid("unknown budget field '" + key + "'");
        }
      }
      if (!entry.contains("reveal")) return Invalid("each budget needs 'reveal'");
      budgets.push_back(std::move(budget));
    }
  }
  std::vector<ClientCertificateIdentity> certificates;
  if (doc.contains("client_certificates")) {
    const nlohmann::json& list = doc.at("client_certificates");
    if (!list.is_array()) return Invalid("'client_certificates' must be an array");
    for (const nlohmann::json& entry : list) {
      if (!entry.is_object()) return Invalid("each client certificate must be an object");
      ClientCertificateIdentity c;
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) return Invalid("a client certificate's '" + key + "' is a string");
        std::string text = value.get<std::string>();
        if (key == "principal") {
          c.principal = text;
        } else if (key == "sha256") {
          // As openssl prints it (AB:CD:...) or plain hex, either case.
          std::string hex;
          for (char ch : text) {
            if (ch != ':') hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
          }
          c.sha256 = hex;
        } else if (key == "san") {
          c.san = text;
        } else {
          return Invalid("unknown client certificate field '" + key + "'");
        }
      }
      certificates.push_back(std::move(c));
    }
  }
  return Policy::WithCustomRolesAndBudgets(roles, std::move(budgets), std::move(certificates));
}

StatusOr<Policy> LoadPolicyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return FailedPreconditionError("policy_unreadable", "cannot read policy file " + path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string contents = text.str();
  TV_ASSIGN_OR_RETURN(Policy policy, ParsePolicy(contents));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(contents.data(), contents.size(), md, &len, EVP_sha256(), nullptr) == 1) {
    policy.set_source_sha256(HexEncode(ByteView(md, len)));
  }
  return policy;
}

}  // namespace tokenvault::policy
