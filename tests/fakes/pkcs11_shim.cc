// A PKCS#11 module for tests only: it forwards every call to a real module (SoftHSM2 by
// default, TOKENVAULT_SHIM_TARGET to choose) and, while the file named by
// TOKENVAULT_SHIM_FAULT_FILE holds a CK_RV in hex (e.g. "30" for CKR_DEVICE_ERROR, "32"
// CKR_DEVICE_REMOVED, "e0" CKR_TOKEN_NOT_PRESENT, "b3" CKR_SESSION_HANDLE_INVALID), answers that
// instead of calling through - for every function a tokenvault operation uses; "gone" makes the
// module itself unusable (C_Initialize fails too). C_Finalize, C_GetInfo, C_GetFunctionList and
// C_CloseSession always pass, as a real HSM client library's own housekeeping would. Never
// linked into the product.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#define CRYPTOKI_GNU 1
#include <p11-kit/pkcs11.h>

namespace {

ck_function_list* g_real = nullptr;
ck_function_list g_shim;

// What the fault file says: nothing (CKR_OK), a CK_RV in hex, or "gone": the module itself is
// gone (every call answers CKR_DEVICE_REMOVED and C_Initialize fails, so that reconnecting fails
// too until the file is removed). Read on every call: tests switch faults on and off by writing
// the file while the server runs.
struct FaultState {
  ck_rv_t rv = CKR_OK;
  bool gone = false;
};
FaultState ReadFault() {
  FaultState state;
  const char* path = std::getenv("TOKENVAULT_SHIM_FAULT_FILE");
  if (path == nullptr) return state;
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return state;
  char text[32] = {};
  const size_t n = std::fread(text, 1, sizeof(text) - 1, f);
  std::fclose(f);
  text[n] = '\0';
  if (std::strncmp(text, "gone", 4) == 0) {
    state.gone = true;
    state.rv = CKR_DEVICE_REMOVED;
  } else {
    state.rv = std::strtoul(text, nullptr, 16);
  }
  return state;
}
ck_rv_t Fault() { return ReadFault().rv; }

ck_rv_t ShimInitialize(void* args) {
  if (ReadFault().gone) return CKR_GENERAL_ERROR;
  return g_real->C_Initialize(args);
}

// A forwarding function for one member of the function list: the fault, else the real call.
template <typename T, T ck_function_list::*Member>
struct Forward;
template <typename... Args, ck_rv_t (*ck_function_list::*Member)(Args...)>
struct Forward<ck_rv_t (*)(Args...), Member> {
  static ck_rv_t Call(Args... args) {
    if (const ck_rv_t rv = Fault(); rv != CKR_OK) return rv;
    return (g_real->*Member)(args...);
  }
};

#define TV_SHIM_FORWARD(name) \
  g_shim.name = &Forward<decltype(g_shim.name), &ck_function_list::name>::Call

bool Load() {
  const char* target = std::getenv("TOKENVAULT_SHIM_TARGET");
  void* handle = dlopen(target != nullptr ? target : "/usr/lib/softhsm/libsofthsm2.so",
                        RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return false;
  auto get = reinterpret_cast<ck_rv_t (*)(ck_function_list**)>(dlsym(handle, "C_GetFunctionList"));
  if (get == nullptr || get(&g_real) != CKR_OK) return false;
  g_shim = *g_real;  // everything passes through unless overridden below
  g_shim.C_Initialize = &ShimInitialize;
  TV_SHIM_FORWARD(C_GetSlotList);
  TV_SHIM_FORWARD(C_GetSlotInfo);
  TV_SHIM_FORWARD(C_GetTokenInfo);
  TV_SHIM_FORWARD(C_OpenSession);
  TV_SHIM_FORWARD(C_GetSessionInfo);
  TV_SHIM_FORWARD(C_Login);
  TV_SHIM_FORWARD(C_FindObjectsInit);
  TV_SHIM_FORWARD(C_FindObjects);
  TV_SHIM_FORWARD(C_FindObjectsFinal);
  TV_SHIM_FORWARD(C_GetAttributeValue);
  TV_SHIM_FORWARD(C_EncryptInit);
  TV_SHIM_FORWARD(C_Encrypt);
  TV_SHIM_FORWARD(C_DecryptInit);
  TV_SHIM_FORWARD(C_Decrypt);
  TV_SHIM_FORWARD(C_GenerateKey);
  TV_SHIM_FORWARD(C_DestroyObject);
  TV_SHIM_FORWARD(C_GenerateRandom);
  TV_SHIM_FORWARD(C_GenerateKeyPair);
  TV_SHIM_FORWARD(C_SignInit);
  TV_SHIM_FORWARD(C_Sign);
  return true;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) ck_rv_t C_GetFunctionList(ck_function_list** list) {
  static std::once_flag once;
  static bool loaded = false;
  std::call_once(once, [] { loaded = Load(); });
  if (!loaded) return CKR_GENERAL_ERROR;
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  *list = &g_shim;
  return CKR_OK;
}
