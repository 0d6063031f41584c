// The OpenAPI file in docs/ and the routes the server registers (api::Routes(), which
// http_server.cc registers one for one) describe the same API: every route is documented, and
// nothing is documented that the server does not answer.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "api/service.h"

namespace tokenvault::api {
namespace {

using json = nlohmann::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// "/v1/merchants/:m/tokens/:token" -> "/v1/merchants/{m}/tokens/{token}"
std::string OpenApiPath(const std::string& pistache_path) {
  std::string out;
  for (size_t i = 0; i < pistache_path.size(); ++i) {
    if (pistache_path[i] != ':') {
      out.push_back(pistache_path[i]);
      continue;
    }
    size_t end = pistache_path.find('/', i);
    if (end == std::string::npos) end = pistache_path.size();
    out += "{" + pistache_path.substr(i + 1, end - i - 1) + "}";
    i = end - 1;
  }
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

json LoadSpec() {
  json spec = json::parse(ReadFile(TOKENVAULT_OPENAPI_FILE), nullptr, false);
  EXPECT_FALSE(spec.is_discarded()) << TOKENVAULT_OPENAPI_FILE << " is not valid JSON";
  return spec;
}

TEST(RoutesTest, PathConversion) {
  EXPECT_EQ(OpenApiPath("/v1/merchants/:m/tokens/:token"), "/v1/merchants/{m}/tokens/{token}");
  EXPECT_EQ(OpenApiPath("/healthz"), "/healthz");
}

TEST(RoutesTest, EveryRegisteredRouteIsInTheOpenApiFileAndViceVersa) {
  const json spec = LoadSpec();
  ASSERT_TRUE(spec.is_object());
  ASSERT_TRUE(spec.contains("openapi"));
  EXPECT_EQ(spec["openapi"].get<std::string>().substr(0, 2), "3.");
  ASSERT_TRUE(spec["paths"].is_object());

  std::set<std::string> registered, documented;
  for (const RouteSpec& r : Routes()) registered.insert(Lower(r.method) + " " + OpenApiPath(r.path));
  static const std::set<std::string> kMethods = {"get", "post", "put", "patch", "delete", "head", "options"};
  for (const auto& [path, item] : spec["paths"].items()) {
    for (const auto& [method, operation] : item.items()) {
      if (kMethods.count(method)) documented.insert(method + " " + path);
    }
  }
  for (const std::string& r : registered) EXPECT_TRUE(documented.count(r)) << r << " is not in the OpenAPI file";
  for (const std::string& d : documented) EXPECT_TRUE(registered.count(d)) << d << " is documented but not registered";
  EXPECT_EQ(registered.size(), Routes().size());  // no route registered twice
}

TEST(RoutesTest, EveryOperationDeclaresItsPathParametersAndAnswers) {
  const json spec = LoadSpec();
  ASSERT_TRUE(spec.is_object() && spec["paths"].is_object());
  for (const auto& [path, item] : spec["paths"].items()) {
    std::set<std::string> in_path;
    for (size_t open = path.find('{'); open != std::string::npos; open = path.find('{', open + 1)) {
      in_path.insert(path.substr(open + 1, path.find('}', open) - open - 1));
    }
    for (const auto& [method, operation] : item.items()) {
      if (!operation.is_object() || !operation.contains("responses")) continue;
      std::set<std::string> declared;
      for (const json* params : {&item, &operation}) {
        if (!params->contains("parameters")) continue;
        for (const json& p : (*params)["parameters"]) {
          // A $ref'd parameter is resolved by name from components.
          json resolved = p;
          if (p.contains("$ref")) {
            const std::string ref = p["$ref"];
            const std::string name = ref.substr(ref.rfind('/') + 1);
            resolved = spec["components"]["parameters"][name];
          }
          if (resolved.value("in", "") == "path") declared.insert(resolved.value("name", ""));
        }
      }
      EXPECT_EQ(declared, in_path) << method << " " << path;
      EXPECT_FALSE(operation["responses"].empty()) << method << " " << path;
    }
  }
}

TEST(RoutesTest, TheApiReferenceNamesEveryRoute) {
  const std::string reference = ReadFile(TOKENVAULT_API_REFERENCE_FILE);
  ASSERT_FALSE(reference.empty());
  for (const RouteSpec& r : Routes()) {
    EXPECT_NE(reference.find(r.method + " " + OpenApiPath(r.path)), std::string::npos)
        << r.method << " " << r.path << " is not in docs/api.md";
  }
}

}  // namespace
}  // namespace tokenvault::api
