#include "hsm/internal/gcm.h"

#include "hsm/hsm.h"

namespace tokenvault::hsm::internal {
namespace {

ck_gcm_params GcmParams(ByteView iv, ByteView aad) {
  ck_gcm_params params{};
  // PKCS#11 takes non-const pointers; neither buffer is written.
  params.iv_ptr = const_cast<uint8_t*>(iv.data());
  params.iv_len = iv.size();
  params.iv_bits = iv.size() * 8;  // required by SoftHSM2 (v2.40 layout of CK_GCM_PARAMS)
  params.aad_ptr = aad.empty() ? nullptr : const_cast<uint8_t*>(aad.data());
  params.aad_len = aad.size();
  params.tag_bits = kGcmTagSize * 8;
  return params;
}

}  // namespace

StatusOr<Bytes> HsmGcmEncrypt(ck_function_list* fn, ck_session_handle_t session,
                              ck_object_handle_t key, ByteView iv, ByteView aad,
                              ByteView plaintext) {
  if (iv.size() != kGcmIvSize) return InvalidArgumentError("bad_nonce", "96-bit IV required");
  ck_gcm_params params = GcmParams(iv, aad);
  ck_mechanism mech{CKM_AES_GCM, &params, sizeof(params)};
  ck_rv_t rv = fn->C_EncryptInit(session, &mech, key);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_EncryptInit(AES-GCM)");
  Bytes out(plaintext.size() + kGcmTagSize);
  unsigned long out_len = out.size();
  uint8_t empty = 0;
  rv = fn->C_Encrypt(session, plaintext.empty() ? &empty : const_cast<uint8_t*>(plaintext.data()),
                     plaintext.size(), out.data(), &out_len);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_Encrypt(AES-GCM)");
  if (out_len != out.size()) {
    return InternalError("hsm_error", "C_Encrypt(AES-GCM) returned an unexpected length");
  }
  return out;
}

StatusOr<SecretBytes> HsmGcmDecrypt(ck_function_list* fn, ck_session_handle_t session,
                                    ck_object_handle_t key, ByteView iv, ByteView aad,
                                    ByteView ciphertext_and_tag) {
  if (iv.size() != kGcmIvSize || ciphertext_and_tag.size() < kGcmTagSize) {
    return DataLossError(kReasonIntegrity, "sealed key has an impossible shape");
  }
  ck_gcm_params params = GcmParams(iv, aad);
  ck_mechanism mech{CKM_AES_GCM, &params, sizeof(params)};
  ck_rv_t rv = fn->C_DecryptInit(session, &mech, key);
  if (rv != CKR_OK) return StatusFromCkr(rv, "C_DecryptInit(AES-GCM)");
  // Some modules want room for the whole input, tag included, before they strip the tag.
  SecretBytes out(ciphertext_and_tag.size());
  unsigned long out_len = out.size();
  rv = fn->C_Decrypt(session, const_cast<uint8_t*>(ciphertext_and_tag.data()),
                     ciphertext_and_tag.size(), out.data(), &out_len);
  if (rv != CKR_OK) {
    out.Wipe();
    if (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED) {
      // SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR. If the same session still
      // answers, the device is fine and the failure was the data's.
      ck_session_info info{};
      if (fn->C_GetSessionInfo(session, &info) == CKR_OK) {
        return DataLossError(kReasonIntegrity, "AES-GCM authentication failed in the HSM");
      }
    }
    return StatusFromCkr(rv, "C_Decrypt(AES-GCM)");
  }
  if (out_len != ciphertext_and_tag.size() - kGcmTagSize) {
    out.Wipe();
    return DataLossError(kReasonIntegrity, "AES-GCM in the HSM returned an unexpected length");
  }
  out.Truncate(out_len);
  return out;
}

}  // namespace tokenvault::hsm::internal
