#include "tests/support/softhsm_fixture.h"

#include <gtest/gtest.h>

namespace tokenvault::testing {

SoftHsmToken::SoftHsmToken() {
  StatusOr<hsm::DevToken> token = hsm::EnsureDevToken(hsm_dir());
  if (!token.ok()) {
    ADD_FAILURE() << "SoftHSM2 dev token: " << token.status().ToString();
    return;
  }
  token_ = *token;
}

SecretBytes SoftHsmToken::Pin() const {
  StatusOr<SecretBytes> pin = hsm::LoadPin(token_.pin);
  if (!pin.ok()) {
    ADD_FAILURE() << pin.status().ToString();
    return SecretBytes();
  }
  return std::move(pin).value();
}

StatusOr<std::unique_ptr<hsm::Pkcs11Hsm>> SoftHsmToken::Open() const {
  return hsm::Pkcs11Hsm::Open(token_.config, Pin());
}

}  // namespace tokenvault::testing
