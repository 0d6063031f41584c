// Custom roles from a JSON policy file:
//   {"roles": [{"name": "reconciler", "permissions": ["tokens:read", "tokens:detokenize:masked"]}],
//    "budgets": [{"role": "reconciler", "reveal": "masked", "max_values": 10000,
//                 "window_seconds": 86400, "per_second": 20, "burst": 100}]}
// Unknown fields and unknown permissions are errors, and so is a role that breaks separation of
// duties: a policy file is refused whole, never applied in part.
#ifndef TOKENVAULT_POLICY_POLICY_FILE_H_
#define TOKENVAULT_POLICY_POLICY_FILE_H_

#include <string>
#include <string_view>

#include "policy/policy.h"

namespace tokenvault::policy {

// kInvalidArgument (invalid_policy, separation_of_duties, ...) with the reason in the message.
StatusOr<Policy> ParsePolicy(std::string_view json_text);
// kFailedPrecondition (policy_unreadable) if the file cannot be read; else as ParsePolicy.
StatusOr<Policy> LoadPolicyFile(const std::string& path);

}  // namespace tokenvault::policy

#endif  // TOKENVAULT_POLICY_POLICY_FILE_H_
