// A request as the HTTP server would hand it to api::Service::Handle, for tests and fuzz targets
// that call the service directly: authorised by 'api_key', a JSON body, from 127.0.0.1.
#ifndef TOKENVAULT_TESTS_SUPPORT_API_REQUEST_H_
#define TOKENVAULT_TESTS_SUPPORT_API_REQUEST_H_

#include <map>
#include <string>
#include <utility>

#include "api/service.h"

namespace tokenvault::testing {

inline api::HttpRequest ServiceRequest(std::string method, std::string route, const std::string& api_key,
                                       std::string body = "",
                                       std::map<std::string, std::string> params = {}) {
  api::HttpRequest rq;
  rq.method = std::move(method);
  rq.route = std::move(route);
  rq.params = std::move(params);
  rq.authorization = "Bearer " + api_key;
  rq.content_type = "application/json";
  rq.body = std::move(body);
  rq.source_ip = "127.0.0.1";
  rq.request_id = "test";
  return rq;
}

}  // namespace tokenvault::testing

#endif  // TOKENVAULT_TESTS_SUPPORT_API_REQUEST_H_
