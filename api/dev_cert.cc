// The development TLS certificate: self-signed ECDSA P-256, valid for 127.0.0.1, ::1 and
// localhost, written once into the data dir.
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "api/http_server.h"

namespace tokenvault::api {
namespace {

struct Freer {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(FILE* f) const { std::fclose(f); }
};

bool Exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

Status Fail(const std::string& what) { return InternalError("tls_setup", "dev certificate: " + what); }

// Writes a PEM through 'write' into a new temporary file with 'mode', fsyncs it and renames it
// to 'path': the file is either complete or absent, and never wider than 'mode'.
template <typename WriteFn>
bool WriteAtomically(const std::string& path, mode_t mode, WriteFn write_pem) {
  const std::string tmp = path + ".tmp";
  unlink(tmp.c_str());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return false;
  FILE* f = fdopen(fd, "w");
  if (f == nullptr) {
    close(fd);
    return false;
  }
  bool ok = write_pem(f) && std::fflush(f) == 0 && fsync(fd) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return false;
  }
  return true;
}

bool AddExtension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Freer> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

}  // namespace

Status EnsureDevCertificate(const std::string& dir, std::string* cert_file, std::string* key_file) {
  *cert_file = dir + "/cert.pem";
  *key_file = dir + "/key.pem";
  if (Exists(*cert_file) && Exists(*key_file)) return Status::Ok();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Fail("cannot create " + dir);

  std::unique_ptr<EVP_PKEY, Freer> key(EVP_EC_gen("P-256"));
  if (!key) return Fail("key generation failed");
  std::unique_ptr<X509, Freer> cert(X509_new());
  if (!cert) return Fail("X509_new failed");
  X509_set_version(cert.get(), 2);
  uint8_t serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return Fail("RAND_bytes failed");
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 365L * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("tokenvault (development)"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key.get());
  if (!AddExtension(cert.get(), NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1") ||
      !AddExtension(cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
      !AddExtension(cert.get(), NID_key_usage, "critical,digitalSignature,keyCertSign") ||
      !AddExtension(cert.get(), NID_ext_key_usage, "serverAuth")) {
    return Fail("cannot add extensions");
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return Fail("signing failed");

  // The key first, the certificate last: "both files exist" then means both are complete.
  if (!WriteAtomically(*key_file, 0600, [&](FILE* f) {
        return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
      })) {
    return Fail("cannot write " + *key_file);
  }
  if (!WriteAtomically(*cert_file, 0644, [&](FILE* f) { return PEM_write_X509(f, cert.get()) == 1; })) {
    return Fail("cannot write " + *cert_file);
  }
  return Status::Ok();
}

}  // namespace tokenvault::api
