// X.509 certificates made on the fly for mTLS tests: a CA, client certificates it issues (valid,
// expired, with SANs), and self-signed ones. ECDSA P-256, OpenSSL.
#ifndef TOKENVAULT_TESTS_SUPPORT_TEST_CERTS_H_
#define TOKENVAULT_TESTS_SUPPORT_TEST_CERTS_H_

#include <string>
#include <vector>

struct evp_pkey_st;
struct x509_st;

namespace tokenvault::testing {

struct TestCert {
  std::string cert_pem;
  std::string key_pem;
  std::string sha256;  // of the DER certificate, lower-case hex
  // Writes <prefix>.crt and <prefix>.key; returns the two paths through the arguments.
  void Write(const std::string& prefix, std::string* cert_file, std::string* key_file) const;
};

class TestCa {
 public:
  explicit TestCa(const std::string& common_name);
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  const std::string& cert_pem() const { return cert_pem_; }
  // A client certificate (extendedKeyUsage clientAuth) valid from now + not_before_s to
  // now + not_after_s seconds, with these SANs ("DNS:x", "URI:y", "email:z").
  TestCert Issue(const std::string& common_name, const std::vector<std::string>& sans = {},
                 long not_before_s = -60, long not_after_s = 3600) const;
  // A server certificate (serverAuth) for these SANs ("IP:127.0.0.1"), valid for an hour.
  TestCert IssueServer(const std::string& common_name, const std::vector<std::string>& sans) const;

 private:
  evp_pkey_st* key_;
  x509_st* cert_;
  std::string cert_pem_;
};

// A self-signed client certificate (its own issuer).
TestCert SelfSignedCert(const std::string& common_name);

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_TEST_CERTS_H_
