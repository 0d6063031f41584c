// Byte containers for non-secret data (ciphertexts, nonces, wrapped keys, AAD).
// Secrets never go in these: they live in SecretBytes.
#ifndef TOKENVAULT_VAULT_BASE_BYTES_H_
#define TOKENVAULT_VAULT_BASE_BYTES_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace tokenvault {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

inline ByteView AsBytes(std::string_view s) {
  return ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
inline std::string_view AsChars(ByteView b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// Big-endian, fixed-width: the only integer encoding used in our formats.
inline void AppendU8(Bytes& out, uint8_t v) { out.push_back(v); }
inline void AppendU16BE(Bytes& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}
inline void AppendU32BE(Bytes& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}
inline void AppendBytes(Bytes& out, ByteView b) { out.insert(out.end(), b.begin(), b.end()); }

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_BYTES_H_
