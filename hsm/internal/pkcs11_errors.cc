#include <cstring>

#include "hsm/hsm.h"
#include "hsm/internal/pkcs11.h"

namespace tokenvault::hsm::internal {

std::string_view CkrName(ck_rv_t rv) {
  switch (rv) {
#define TV_CKR(name) \
  case name:         \
    return #name;
    TV_CKR(CKR_OK)
    TV_CKR(CKR_HOST_MEMORY)
    TV_CKR(CKR_SLOT_ID_INVALID)
    TV_CKR(CKR_GENERAL_ERROR)
    TV_CKR(CKR_FUNCTION_FAILED)
    TV_CKR(CKR_ARGUMENTS_BAD)
    TV_CKR(CKR_ATTRIBUTE_SENSITIVE)
    TV_CKR(CKR_ATTRIBUTE_TYPE_INVALID)
    TV_CKR(CKR_ATTRIBUTE_VALUE_INVALID)
    TV_CKR(CKR_DATA_INVALID)
    TV_CKR(CKR_DATA_LEN_RANGE)
    TV_CKR(CKR_DEVICE_ERROR)
    TV_CKR(CKR_DEVICE_MEMORY)
    TV_CKR(CKR_DEVICE_REMOVED)
    TV_CKR(CKR_ENCRYPTED_DATA_INVALID)
    TV_CKR(CKR_ENCRYPTED_DATA_LEN_RANGE)
    TV_CKR(CKR_KEY_HANDLE_INVALID)
    TV_CKR(CKR_KEY_FUNCTION_NOT_PERMITTED)
    TV_CKR(CKR_MECHANISM_INVALID)
    TV_CKR(CKR_MECHANISM_PARAM_INVALID)
    TV_CKR(CKR_OBJECT_HANDLE_INVALID)
    TV_CKR(CKR_OPERATION_ACTIVE)
    TV_CKR(CKR_OPERATION_NOT_INITIALIZED)
    TV_CKR(CKR_PIN_INCORRECT)
    TV_CKR(CKR_PIN_INVALID)
    TV_CKR(CKR_PIN_LEN_RANGE)
    TV_CKR(CKR_PIN_EXPIRED)
    TV_CKR(CKR_PIN_LOCKED)
    TV_CKR(CKR_SESSION_CLOSED)
    TV_CKR(CKR_SESSION_COUNT)
    TV_CKR(CKR_SESSION_HANDLE_INVALID)
    TV_CKR(CKR_SESSION_READ_ONLY)
    TV_CKR(CKR_TEMPLATE_INCOMPLETE)
    TV_CKR(CKR_TEMPLATE_INCONSISTENT)
    TV_CKR(CKR_TOKEN_NOT_PRESENT)
    TV_CKR(CKR_TOKEN_NOT_RECOGNIZED)
    TV_CKR(CKR_TOKEN_WRITE_PROTECTED)
    TV_CKR(CKR_USER_ALREADY_LOGGED_IN)
    TV_CKR(CKR_USER_NOT_LOGGED_IN)
    TV_CKR(CKR_USER_PIN_NOT_INITIALIZED)
    TV_CKR(CKR_USER_TYPE_INVALID)
    TV_CKR(CKR_BUFFER_TOO_SMALL)
    TV_CKR(CKR_CRYPTOKI_NOT_INITIALIZED)
    TV_CKR(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef TV_CKR
    default:
      return "CKR_(other)";
  }
}

bool IsDeviceFailure(ck_rv_t rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_COUNT:
    case CKR_SLOT_ID_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_USER_NOT_LOGGED_IN:  // the token lost our login (e.g. it was reset)
      return true;
    default:
      return false;
  }
}

Status StatusFromCkr(ck_rv_t rv, std::string_view what) {
  std::string message = std::string(what) + " failed: " + std::string(CkrName(rv)) + " (0x";
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%lx", static_cast<unsigned long>(rv));
  message += std::string(hex) + ")";
  if (IsDeviceFailure(rv)) return UnavailableError(kReasonDeviceError, std::move(message));
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_USER_PIN_NOT_INITIALIZED:
      return UnauthenticatedError(kReasonLoginRefused, std::move(message));
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
      return NotFoundError(kReasonKeyNotFound, std::move(message));
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
      return DataLossError(kReasonIntegrity, std::move(message));
    case CKR_HOST_MEMORY:
      return ResourceExhaustedError("hsm_host_memory", std::move(message));
    default:
      return InternalError("hsm_error", std::move(message));
  }
}

std::string TrimLabel(const unsigned char (&label)[32]) {
  std::string out(reinterpret_cast<const char*>(label), sizeof(label));
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

void PadLabel(std::string_view label, unsigned char (&out)[32]) {
  std::memset(out, ' ', sizeof(out));
  std::memcpy(out, label.data(), std::min(label.size(), sizeof(out)));
}

}  // namespace tokenvault::hsm::internal
