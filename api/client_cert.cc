#include "api/client_cert.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

#include "vault/base/bytes.h"

namespace tokenvault::api {
namespace {

std::string Text(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

}  // namespace

std::optional<ClientCertificate> ClientCertificateOf(X509* cert) {
  if (cert == nullptr) return std::nullopt;
  ClientCertificate out;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != 32) return std::nullopt;
  out.sha256 = HexEncode(ByteView(md, len));
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
      switch (n->type) {
        case GEN_DNS: out.sans.push_back("DNS:" + Text(n->d.dNSName)); break;
        case GEN_URI: out.sans.push_back("URI:" + Text(n->d.uniformResourceIdentifier)); break;
        case GEN_EMAIL: out.sans.push_back("email:" + Text(n->d.rfc822Name)); break;
        case GEN_IPADD: {
          const std::string raw = Text(n->d.iPAddress);
          char buf[INET6_ADDRSTRLEN] = {};
          const int family = raw.size() == 4 ? AF_INET : raw.size() == 16 ? AF_INET6 : 0;
          if (family != 0 && inet_ntop(family, raw.data(), buf, sizeof(buf)) != nullptr) {
            out.sans.push_back(std::string("IP:") + buf);
          }
          break;
        }
        default: break;  // other kinds are never matched
      }
    }
    GENERAL_NAMES_free(names);
  }
  return out;
}

std::optional<ClientCertificate> ClientCertificateFromPem(std::string_view pem) {
  if (pem.empty() || pem.size() > 64 * 1024) return std::nullopt;
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())),
                                               &BIO_free);
  if (!bio) return std::nullopt;
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr),
                                                  &X509_free);
  if (!cert) return std::nullopt;
  return ClientCertificateOf(cert.get());
}

std::optional<std::string> UrlDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    std::optional<Bytes> b = HexDecode(text.substr(i + 1, 2));
    if (!b) return std::nullopt;
    out.push_back(static_cast<char>((*b)[0]));
    i += 2;
  }
  return out;
}

}  // namespace tokenvault::api
