// Direct PKCS#11 access for tests that must look at the HSM without going through Pkcs11Hsm
// (e.g. to prove a KEK cannot be read). Header-only; include in test .cc files only.
#ifndef TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_
#define TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_

#include <dlfcn.h>

#include <string>
#include <vector>

#define CRYPTOKI_GNU 1
#include <p11-kit/pkcs11.h>

namespace tokenvault::testing {

// Loads the module, logs in to the token with 'label' as the user, finalises on destruction.
class RawPkcs11 {
 public:
  RawPkcs11(const std::string& module, const std::string& label, const std::string& pin) {
    handle_ = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle_) return;
    auto get = reinterpret_cast<ck_rv_t (*)(ck_function_list**)>(dlsym(handle_, "C_GetFunctionList"));
    if (!get || get(&fn_) != CKR_OK) return;
    ck_c_initialize_args args{};
    args.flags = CKF_OS_LOCKING_OK;
    if (fn_->C_Initialize(&args) != CKR_OK) return;
    initialized_ = true;
    unsigned long n = 0;
    fn_->C_GetSlotList(1, nullptr, &n);
    std::vector<ck_slot_id_t> slots(n);
    fn_->C_GetSlotList(1, slots.data(), &n);
    for (unsigned long i = 0; i < n; ++i) {
      ck_token_info info{};
      fn_->C_GetTokenInfo(slots[i], &info);
      std::string l(reinterpret_cast<char*>(info.label), 32);
      while (!l.empty() && l.back() == ' ') l.pop_back();
      if (l == label) {
        if (fn_->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                               &session_) != CKR_OK) {
          return;
        }
        login_rv_ = fn_->C_Login(session_, CKU_USER,
                                 reinterpret_cast<unsigned char*>(const_cast<char*>(pin.data())),
                                 pin.size());
        return;
      }
    }
  }
  ~RawPkcs11() {
    if (session_) fn_->C_CloseSession(session_);
    if (initialized_) fn_->C_Finalize(nullptr);
    if (handle_) dlclose(handle_);
  }
  bool ready() const { return session_ != 0 && login_rv_ == CKR_OK; }
  ck_function_list* fn() const { return fn_; }
  ck_session_handle_t session() const { return session_; }

  std::vector<ck_object_handle_t> FindByLabel(const std::string& label) {
    ck_attribute templ[] = {{CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    std::vector<ck_object_handle_t> out(16);
    unsigned long n = 0;
    fn_->C_FindObjectsInit(session_, templ, 1);
    fn_->C_FindObjects(session_, out.data(), out.size(), &n);
    fn_->C_FindObjectsFinal(session_);
    out.resize(n);
    return out;
  }

  // CKR_OK and the value, or the error.
  ck_rv_t GetAttribute(ck_object_handle_t obj, unsigned long type, std::vector<unsigned char>* v) {
    ck_attribute a{type, nullptr, 0};
    ck_rv_t rv = fn_->C_GetAttributeValue(session_, obj, &a, 1);
    if (rv != CKR_OK) return rv;
    v->resize(a.value_len);
    a.value = v->data();
    return fn_->C_GetAttributeValue(session_, obj, &a, 1);
  }

 private:
  void* handle_ = nullptr;
  ck_function_list* fn_ = nullptr;
  bool initialized_ = false;
  ck_session_handle_t session_ = 0;
  ck_rv_t login_rv_ = CKR_GENERAL_ERROR;
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_
