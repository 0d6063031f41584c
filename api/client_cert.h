// The identity of a TLS client certificate, as the service matches it against the policy's
// client_certificates (mTLS): the SHA-256 of the certificate's DER, and its subject alternative
// names. Read from the TLS session (tokenvault terminates TLS itself) or from the PEM a trusted
// proxy forwards (deploy/nginx, docs/deployment.md).
#ifndef TOKENVAULT_API_CLIENT_CERT_H_
#define TOKENVAULT_API_CLIENT_CERT_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct x509_st;

namespace tokenvault::api {

struct ClientCertificate {
  std::string sha256;              // 64 lower-case hex digits
  std::vector<std::string> sans;   // "DNS:...", "URI:...", "email:...", "IP:..."
};

// From a certificate the TLS layer verified. nullopt if it cannot be read.
std::optional<ClientCertificate> ClientCertificateOf(x509_st* cert);
// From a PEM certificate (a proxy's forwarded header, URL-decoded). nullopt if it is not one.
std::optional<ClientCertificate> ClientCertificateFromPem(std::string_view pem);
// Decodes %XX escapes (nginx's $ssl_client_escaped_cert). nullopt on a malformed escape.
std::optional<std::string> UrlDecode(std::string_view text);

}  // namespace tokenvault::api

#endif  // TOKENVAULT_API_CLIENT_CERT_H_
