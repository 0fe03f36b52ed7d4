#pragma once
// GET /openapi.json: an OpenAPI 3 description of the endpoints nibble serves, so
// clients and gateways can be generated or validated against it.
#include <string>

#include <nlohmann/json.hpp>

namespace nibble::server {

nlohmann::json openapi_document(const std::string& version);

}  // namespace nibble::server
