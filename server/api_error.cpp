#include "server/api_error.h"

#include <utility>

namespace nibble::server {

ApiError::ApiError(int status, std::string type, std::string message, std::optional<std::string> param,
                   std::optional<std::string> code)
    : std::runtime_error(std::move(message)),
      status_(status),
      type_(std::move(type)),
      param_(std::move(param)),
      code_(std::move(code)) {}

nlohmann::json ApiError::body() const {
  const auto or_null = [](const std::optional<std::string>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
  return {{"error", {{"message", what()}, {"type", type_}, {"param", or_null(param_)}, {"code", or_null(code_)}}}};
}

ApiError ApiError::invalid(const std::string& param, const std::string& message, std::optional<std::string> code) {
  return ApiError(400, "invalid_request_error", message, param, std::move(code));
}

}  // namespace nibble::server
