// Test data that looks like the values tokenvault protects: Luhn-valid card numbers and SSNs
// from a seeded PRNG, so that failures reproduce.
#ifndef TOKENVAULT_TESTS_SUPPORT_TEST_VALUES_H_
#define TOKENVAULT_TESTS_SUPPORT_TEST_VALUES_H_

#include <cstdio>
#include <random>
#include <string>

#include "vault/value_type.h"

namespace tokenvault::testing {

// A Luhn-valid card number of 'length' digits.
inline std::string RandomCard(std::mt19937_64& rng, size_t length) {
  std::string card(length, '0');
  for (size_t i = 0; i + 1 < length; ++i) card[i] = static_cast<char>('0' + rng() % 10);
  for (char check = '0'; check <= '9'; ++check) {
    card.back() = check;
    if (LuhnValid(AsBytes(card))) break;
  }
  return card;
}

// An SSN in AAA-GG-SSSS form with an issuable area (001-665).
inline std::string RandomSsn(std::mt19937_64& rng) {
  char buf[12];
  std::snprintf(buf, sizeof(buf), "%03d-%02d-%04d", static_cast<int>(1 + rng() % 665),
                static_cast<int>(1 + rng() % 99), static_cast<int>(1 + rng() % 9999));
  return buf;
}

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_TEST_VALUES_H_
