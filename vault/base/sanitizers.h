// Whether this build runs under AddressSanitizer: GCC defines __SANITIZE_ADDRESS__, clang answers
// __has_feature(address_sanitizer). One macro, so that the two compilers of ./scripts/test.sh
// behave alike (memory locking is off under ASan, whose shadow memory is not meant to be locked).
#ifndef TOKENVAULT_VAULT_BASE_SANITIZERS_H_
#define TOKENVAULT_VAULT_BASE_SANITIZERS_H_

#if defined(__SANITIZE_ADDRESS__)
#define TOKENVAULT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TOKENVAULT_ASAN 1
#endif
#endif
#ifndef TOKENVAULT_ASAN
#define TOKENVAULT_ASAN 0
#endif

#endif  // TOKENVAULT_VAULT_BASE_SANITIZERS_H_
