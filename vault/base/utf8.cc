#include "vault/base/utf8.h"

#include <cstdint>

namespace tokenvault {
namespace {

// The length of the well-formed sequence at s[i], or 0 if there is none.
size_t SequenceAt(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) -> int {
    return k < s.size() ? static_cast<uint8_t>(s[k]) : -1;
  };
  const auto in = [](int b, int lo, int hi) { return b >= lo && b <= hi; };
  const int b0 = byte(i);
  if (b0 < 0x80) return 1;
  if (in(b0, 0xc2, 0xdf)) return in(byte(i + 1), 0x80, 0xbf) ? 2 : 0;
  if (in(b0, 0xe0, 0xef)) {
    const int lo = b0 == 0xe0 ? 0xa0 : 0x80, hi = b0 == 0xed ? 0x9f : 0xbf;
    return in(byte(i + 1), lo, hi) && in(byte(i + 2), 0x80, 0xbf) ? 3 : 0;
  }
  if (in(b0, 0xf0, 0xf4)) {
    const int lo = b0 == 0xf0 ? 0x90 : 0x80, hi = b0 == 0xf4 ? 0x8f : 0xbf;
    return in(byte(i + 1), lo, hi) && in(byte(i + 2), 0x80, 0xbf) && in(byte(i + 3), 0x80, 0xbf)
               ? 4
               : 0;
  }
  return 0;
}

}  // namespace

bool IsValidUtf8(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = SequenceAt(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool MakeValidUtf8(std::string& text) {
  size_t i = 0;
  for (; i < text.size(); ) {  // the common case: nothing to replace, nothing copied
    const size_t n = SequenceAt(text, i);
    if (n == 0) break;
    i += n;
  }
  if (i == text.size()) return false;
  std::string out = text.substr(0, i);
  while (i < text.size()) {
    const size_t n = SequenceAt(text, i);
    if (n == 0) {
      out += "\xef\xbf\xbd";
      ++i;
    } else {
      out.append(text, i, n);
      i += n;
    }
  }
  text = std::move(out);
  return true;
}

}  // namespace tokenvault
