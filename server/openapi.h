#pragma once
// GET /openapi.json: an OpenAPI 3 description of the endpoints nibble serves, so
// clients and gateways can be generated or validated against it. It describes
// this server as configured: the numeric limits come from the table the request
// parser enforces (numeric_fields), and security only where a key is required.
#include <string>

#include <nlohmann/json.hpp>

#include "server/openai_request.h"

namespace nibble::server {

struct DocumentOptions {
  std::string version;
  bool api_key = false;        // a key is set: /v1 routes (and the probes unless public) need it
  bool public_probes = true;   // /health, /metrics, /version, /openapi.json without the key
  RequestLimits limits;        // the loaded model's; defaults while it loads
};

nlohmann::json openapi_document(const DocumentOptions& options);

}  // namespace nibble::server
