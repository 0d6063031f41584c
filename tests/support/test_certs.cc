#include "tests/support/test_certs.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <fstream>
#include <stdexcept>

namespace tokenvault::testing {
namespace {

std::atomic<long> g_serial{1000};

void Check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test certificate: ") + what);
}

void AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  Check(ext != nullptr && X509_add_ext(cert, ext, -1) == 1, "extension");
  X509_EXTENSION_free(ext);
}

std::string PemOf(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  Check(PEM_write_bio_X509(bio, cert) == 1, "PEM");
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

std::string PemOf(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  Check(PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "key PEM");
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

std::string Sha256Of(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  Check(X509_digest(cert, EVP_sha256(), md, &len) == 1, "digest");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

// A certificate for 'key' named 'cn', signed by 'issuer_key' (issuer_cert null: self-signed).
enum class Kind { kCa, kClient, kServer };

X509* NewCert(EVP_PKEY* key, const std::string& cn, X509* issuer_cert, EVP_PKEY* issuer_key,
              long not_before_s, long not_after_s, Kind kind, const std::vector<std::string>& sans) {
  X509* cert = X509_new();
  Check(cert != nullptr, "X509_new");
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), g_serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert), not_after_s);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, issuer_cert != nullptr ? X509_get_subject_name(issuer_cert) : name);
  X509* issuer = issuer_cert != nullptr ? issuer_cert : cert;
  if (kind == Kind::kCa) {
    AddExt(cert, issuer, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(cert, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExt(cert, issuer, NID_basic_constraints, "critical,CA:FALSE");
    AddExt(cert, issuer, NID_key_usage, "critical,digitalSignature");
    AddExt(cert, issuer, NID_ext_key_usage, kind == Kind::kServer ? "serverAuth" : "clientAuth");
  }
  if (!sans.empty()) {
    std::string list;
    for (const std::string& s : sans) list += (list.empty() ? "" : ",") + s;
    AddExt(cert, issuer, NID_subject_alt_name, list);
  }
  Check(X509_sign(cert, issuer_key, EVP_sha256()) > 0, "sign");
  return cert;
}

}  // namespace

void TestCert::Write(const std::string& prefix, std::string* cert_file, std::string* key_file) const {
  *cert_file = prefix + ".crt";
  *key_file = prefix + ".key";
  std::ofstream(*cert_file) << cert_pem;
  std::ofstream(*key_file) << key_pem;
}

TestCa::TestCa(const std::string& common_name) : key_(EVP_EC_gen("P-256")) {
  Check(key_ != nullptr, "CA key");
  cert_ = NewCert(key_, common_name, nullptr, key_, -3600, 86400, Kind::kCa, {});
  cert_pem_ = PemOf(cert_);
}

TestCa::~TestCa() {
  X509_free(cert_);
  EVP_PKEY_free(key_);
}

TestCert TestCa::Issue(const std::string& common_name, const std::vector<std::string>& sans,
                       long not_before_s, long not_after_s) const {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  Check(key != nullptr, "key");
  X509* cert = NewCert(key, common_name, cert_, key_, not_before_s, not_after_s, Kind::kClient, sans);
  TestCert out{PemOf(cert), PemOf(key), Sha256Of(cert)};
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

TestCert TestCa::IssueServer(const std::string& common_name, const std::vector<std::string>& sans) const {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  Check(key != nullptr, "key");
  X509* cert = NewCert(key, common_name, cert_, key_, -60, 3600, Kind::kServer, sans);
  TestCert out{PemOf(cert), PemOf(key), Sha256Of(cert)};
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

TestCert SelfSignedCert(const std::string& common_name) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  Check(key != nullptr, "key");
  X509* cert = NewCert(key, common_name, nullptr, key, -60, 3600, Kind::kClient, {});
  TestCert out{PemOf(cert), PemOf(key), Sha256Of(cert)};
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

}  // namespace tokenvault::testing
