// UTF-8 hygiene for text that is stored and later rendered as JSON (audit records): a JSON
// rendering must give back exactly the bytes that were MAC'd and signed.
#ifndef TOKENVAULT_VAULT_BASE_UTF8_H_
#define TOKENVAULT_VAULT_BASE_UTF8_H_

#include <string>

namespace tokenvault {

// Replaces every byte that does not begin a well-formed UTF-8 sequence (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF) with U+FFFD. Returns whether anything changed.
bool MakeValidUtf8(std::string& text);
// Whether MakeValidUtf8 would leave 'text' unchanged.
bool IsValidUtf8(const std::string& text);

}  // namespace tokenvault

#endif  // TOKENVAULT_VAULT_BASE_UTF8_H_
