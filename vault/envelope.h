// Byte layouts that bind ciphertexts and wrapped keys to where they belong (docs/formats.md).
// FROZEN once released: changing a byte here makes every stored value undecryptable. A new
// layout gets a new version number and the old one stays readable.
#ifndef TOKENVAULT_VAULT_ENVELOPE_H_
#define TOKENVAULT_VAULT_ENVELOPE_H_

#include <cstdint>
#include <string_view>

#include "vault/base/bytes.h"
#include "vault/base/status.h"

namespace tokenvault::envelope {

// Version of the sealed-value layout (tokens.record_version).
inline constexpr uint32_t kValueFormatV1 = 1;
// Version byte that starts every wrapped DEK (data_keys.wrapped[0]).
inline constexpr uint8_t kWrappedKeyFormatV1 = 1;
// 1 (format) + 12 (IV) + 32 (DEK) + 16 (tag).
inline constexpr size_t kWrappedDekSizeV1 = 61;

// AAD of a sealed value:
//   "tokenvault/value" | u8 format | lp(merchant) | lp(token) | lp(type) | u32 dek_version
// where lp(x) = u16 big-endian length | bytes. Binding the token means two rows' ciphertexts
// cannot be swapped; binding merchant and DEK version means a row cannot be moved or relabelled.
Bytes ValueAad(uint32_t format, std::string_view merchant, std::string_view token,
               std::string_view type, uint32_t dek_version);

// AAD of a wrapped DEK (authenticated by the HSM's AES-GCM):
//   "tokenvault/dek" | u8 wrap format | lp(merchant) | u32 dek_version | u32 kek_version
// so a wrapped DEK unwraps only as the key it is: that merchant, that version, under that KEK.
Bytes DekAad(uint8_t wrap_format, std::string_view merchant, uint32_t dek_version,
             uint32_t kek_version);

// AAD of a wrapped vault-wide key (the audit key):
//   "tokenvault/system-key" | u8 wrap format | lp(name) | u32 version | u32 kek_version
// AAD of a merchant's wrapped fingerprint key (frozen: "tokenvault/fingerprint-key", format,
// length-prefixed merchant, KEK version).
Bytes FingerprintKeyAad(uint8_t wrap_format, std::string_view merchant, uint32_t kek_version);
Bytes SystemKeyAad(std::string_view name, uint32_t version, uint32_t kek_version);

// Stored form of a wrapped DEK: u8 format | the HSM's iv(12) | ciphertext(32) | tag(16).
Bytes EncodeWrappedDek(ByteView hsm_output);
// The HSM part of a stored wrapped DEK. kDataLoss (integrity_failure) on an unknown format
// byte or a wrong length.
StatusOr<ByteView> DecodeWrappedDek(ByteView stored);

}  // namespace tokenvault::envelope

#endif  // TOKENVAULT_VAULT_ENVELOPE_H_
