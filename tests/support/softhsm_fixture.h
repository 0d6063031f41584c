// A real SoftHSM2 token in a temporary directory, with its own softhsm2.conf (exported as
// SOFTHSM2_CONF for this process), made by the product's dev bootstrap through PKCS#11.
#ifndef TOKENVAULT_TESTS_SUPPORT_SOFTHSM_FIXTURE_H_
#define TOKENVAULT_TESTS_SUPPORT_SOFTHSM_FIXTURE_H_

#include <memory>
#include <string>

#include "hsm/dev_token.h"
#include "hsm/pkcs11_hsm.h"
#include "tests/support/temp_dir.h"

namespace tokenvault::testing {

class SoftHsmToken {
 public:
  // Aborts the test (ADD_FAILURE + empty config) if SoftHSM2 cannot be set up.
  SoftHsmToken();
  const TempDir& dir() const { return dir_; }
  std::string hsm_dir() const { return dir_.Sub("hsm"); }
  std::string token_dir() const { return dir_.Sub("hsm/tokens"); }
  const hsm::DevToken& token() const { return token_; }
  SecretBytes Pin() const;
  // Opens the product HSM client on this token.
  StatusOr<std::unique_ptr<hsm::Pkcs11Hsm>> Open() const;

 private:
  TempDir dir_;
  hsm::DevToken token_;
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_SOFTHSM_FIXTURE_H_
