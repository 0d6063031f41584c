// Direct PKCS#11 access for tests that must act on the HSM without going through Pkcs11Hsm: to
// prove a KEK cannot be read, to plant hostile objects and tokens. Header-only; tests only.
#ifndef TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_
#define TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_

#include <dlfcn.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#define CRYPTOKI_GNU 1
#include <p11-kit/pkcs11.h>

namespace tokenvault::testing {

// The module loaded and initialised; finalised and unloaded on destruction.
class RawModule {
 public:
  explicit RawModule(const std::string& path) {
    handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle_) return;
    auto get = reinterpret_cast<ck_rv_t (*)(ck_function_list**)>(dlsym(handle_, "C_GetFunctionList"));
    if (!get || get(&fn_) != CKR_OK) return;
    ck_c_initialize_args args{};
    args.flags = CKF_OS_LOCKING_OK;
    initialized_ = fn_->C_Initialize(&args) == CKR_OK;
  }
  ~RawModule() {
    if (initialized_) fn_->C_Finalize(nullptr);
    if (handle_) dlclose(handle_);
  }
  RawModule(const RawModule&) = delete;
  RawModule& operator=(const RawModule&) = delete;

  bool ready() const { return initialized_; }
  ck_function_list* fn() const { return fn_; }

  std::vector<ck_slot_id_t> Slots() const {
    unsigned long n = 0;
    fn_->C_GetSlotList(1, nullptr, &n);
    std::vector<ck_slot_id_t> slots(n);
    fn_->C_GetSlotList(1, slots.data(), &n);
    slots.resize(n);
    return slots;
  }

  static std::string LabelOf(const ck_token_info& info) {
    std::string l(reinterpret_cast<const char*>(info.label), 32);
    while (!l.empty() && l.back() == ' ') l.pop_back();
    return l;
  }

  // C_InitToken on the first slot whose token is not initialised; false if there is none.
  bool InitFreeToken(const std::string& label, std::string so_pin) {
    for (ck_slot_id_t slot : Slots()) {
      ck_token_info info{};
      fn_->C_GetTokenInfo(slot, &info);
      if (info.flags & CKF_TOKEN_INITIALIZED) continue;
      unsigned char padded[32];
      std::memset(padded, ' ', sizeof(padded));
      std::memcpy(padded, label.data(), std::min(label.size(), sizeof(padded)));
      return fn_->C_InitToken(slot, reinterpret_cast<unsigned char*>(so_pin.data()), so_pin.size(),
                              padded) == CKR_OK;
    }
    return false;
  }

 private:
  void* handle_ = nullptr;
  ck_function_list* fn_ = nullptr;
  bool initialized_ = false;
};

// A user session on the token labelled 'label'.
class RawPkcs11 {
 public:
  RawPkcs11(const std::string& module, const std::string& label, const std::string& pin)
      : module_(module) {
    if (!module_.ready()) return;
    for (ck_slot_id_t slot : module_.Slots()) {
      ck_token_info info{};
      fn()->C_GetTokenInfo(slot, &info);
      if (RawModule::LabelOf(info) != label) continue;
      if (fn()->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                              &session_) != CKR_OK) {
        return;
      }
      login_rv_ = fn()->C_Login(session_, CKU_USER,
                                reinterpret_cast<unsigned char*>(const_cast<char*>(pin.data())),
                                pin.size());
      return;
    }
  }
  ~RawPkcs11() {
    if (session_) fn()->C_CloseSession(session_);
  }
  bool ready() const { return session_ != 0 && login_rv_ == CKR_OK; }
  ck_function_list* fn() const { return module_.fn(); }
  ck_session_handle_t session() const { return session_; }

  std::vector<ck_object_handle_t> FindByLabel(const std::string& label) {
    ck_attribute templ[] = {{CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    std::vector<ck_object_handle_t> out(16);
    unsigned long n = 0;
    fn()->C_FindObjectsInit(session_, templ, 1);
    fn()->C_FindObjects(session_, out.data(), out.size(), &n);
    fn()->C_FindObjectsFinal(session_);
    out.resize(n);
    return out;
  }

  // CKR_OK and the value, or the error.
  ck_rv_t GetAttribute(ck_object_handle_t obj, unsigned long type, std::vector<unsigned char>* v) {
    ck_attribute a{type, nullptr, 0};
    ck_rv_t rv = fn()->C_GetAttributeValue(session_, obj, &a, 1);
    if (rv != CKR_OK) return rv;
    v->resize(a.value_len);
    a.value = v->data();
    return fn()->C_GetAttributeValue(session_, obj, &a, 1);
  }

  // Generates an AES-256 token key labelled 'label' with the attributes of a proper KEK, except
  // those in 'overrides' (attribute -> value). Returns the C_GenerateKey result.
  ck_rv_t PlantAesKey(const std::string& label, const std::map<unsigned long, bool>& overrides) {
    std::map<unsigned long, bool> flags = {
        {CKA_TOKEN, true},      {CKA_PRIVATE, true}, {CKA_SENSITIVE, true}, {CKA_EXTRACTABLE, false},
        {CKA_ENCRYPT, true},    {CKA_DECRYPT, true}, {CKA_WRAP, false},     {CKA_UNWRAP, false},
        {CKA_SIGN, false},      {CKA_VERIFY, false}, {CKA_DERIVE, false},   {CKA_MODIFIABLE, false}};
    for (const auto& [attr, value] : overrides) flags[attr] = value;
    ck_object_class_t cls = CKO_SECRET_KEY;
    ck_key_type_t type = CKK_AES;
    unsigned long len = 32;
    static unsigned char kYes = 1, kNo = 0;
    std::vector<ck_attribute> templ = {{CKA_CLASS, &cls, sizeof(cls)},
                                       {CKA_KEY_TYPE, &type, sizeof(type)},
                                       {CKA_VALUE_LEN, &len, sizeof(len)},
                                       {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    for (const auto& [attr, value] : flags) templ.push_back({attr, value ? &kYes : &kNo, 1});
    ck_mechanism mech{CKM_AES_KEY_GEN, nullptr, 0};
    ck_object_handle_t h = 0;
    return fn()->C_GenerateKey(session_, &mech, templ.data(), templ.size(), &h);
  }

 private:
  RawModule module_;
  ck_session_handle_t session_ = 0;
  ck_rv_t login_rv_ = CKR_GENERAL_ERROR;
};

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_RAW_PKCS11_H_
