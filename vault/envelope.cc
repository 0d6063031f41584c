#include "vault/envelope.h"

namespace tokenvault::envelope {
namespace {

void AppendLengthPrefixed(Bytes& out, std::string_view s) {
  // Merchant ids (64), tokens (26) and type names are far below 2^16; anything longer is a bug.
  if (s.size() > 0xFFFF) std::abort();
  AppendU16BE(out, static_cast<uint16_t>(s.size()));
  AppendBytes(out, AsBytes(s));
}

}  // namespace

Bytes ValueAad(uint32_t format, std::string_view merchant, std::string_view token,
               std::string_view type, uint32_t dek_version) {
  Bytes aad;
  aad.reserve(32 + merchant.size() + token.size() + type.size());
  AppendBytes(aad, AsBytes("tokenvault/value"));
  AppendU8(aad, static_cast<uint8_t>(format));
  AppendLengthPrefixed(aad, merchant);
  AppendLengthPrefixed(aad, token);
  AppendLengthPrefixed(aad, type);
  AppendU32BE(aad, dek_version);
  return aad;
}

Bytes DekAad(uint8_t wrap_format, std::string_view merchant, uint32_t dek_version,
             uint32_t kek_version) {
  Bytes aad;
  AppendBytes(aad, AsBytes("tokenvault/dek"));
  AppendU8(aad, wrap_format);
  AppendLengthPrefixed(aad, merchant);
  AppendU32BE(aad, dek_version);
  AppendU32BE(aad, kek_version);
  return aad;
}

Bytes FingerprintKeyAad(uint8_t wrap_format, std::string_view merchant, uint32_t kek_version) {
  Bytes aad;
  AppendBytes(aad, AsBytes("tokenvault/fingerprint-key"));
  AppendU8(aad, wrap_format);
  AppendLengthPrefixed(aad, merchant);
  AppendU32BE(aad, kek_version);
  return aad;
}

Bytes SystemKeyAad(std::string_view name, uint32_t version, uint32_t kek_version) {
  Bytes aad;
  AppendBytes(aad, AsBytes("tokenvault/system-key"));
  AppendU8(aad, kWrappedKeyFormatV1);
  AppendLengthPrefixed(aad, name);
  AppendU32BE(aad, version);
  AppendU32BE(aad, kek_version);
  return aad;
}

Bytes EncodeWrappedDek(ByteView hsm_output) {
  Bytes out;
  out.reserve(1 + hsm_output.size());
  AppendU8(out, kWrappedKeyFormatV1);
  AppendBytes(out, hsm_output);
  return out;
}

StatusOr<ByteView> DecodeWrappedDek(ByteView stored) {
  if (stored.size() != kWrappedDekSizeV1 || stored[0] != kWrappedKeyFormatV1) {
    return DataLossError("integrity_failure", "wrapped data key has an unknown format");
  }
  return stored.subspan(1);
}

}  // namespace tokenvault::envelope
