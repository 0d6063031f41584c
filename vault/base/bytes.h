// Byte containers for non-secret data (ciphertexts, nonces, wrapped keys, AAD).
// Secrets never go in these: they live in SecretBytes.
#ifndef TOKENVAULT_VAULT_BASE_BYTES_H_
#define TOKENVAULT_VAULT_BASE_BYTES_H_

#include <cstdint>
#include <optional>
#include <string>
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
// u32 big-endian length, then the bytes: the length-prefixed fields of frozen encodings.
inline void AppendLp32(Bytes& out, std::string_view s) {
  AppendU32BE(out, static_cast<uint32_t>(s.size()));
  AppendBytes(out, AsBytes(s));
}
inline void AppendU64BE(Bytes& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

// Lower-case hex.
inline std::string HexEncode(ByteView b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(b.size() * 2);
  for (uint8_t x : b) {
    out.push_back(kDigits[x >> 4]);
    out.push_back(kDigits[x & 15]);
  }
  return out;
}

// Hex of either case; nullopt for an odd length or a non-hex character.
inline std::optional<Bytes> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_BYTES_H_
