#pragma once
// An error as the OpenAI API reports it: an HTTP status plus the body
// {"error": {"message", "type", "param", "code"}} that the official clients parse.
// Everything that rejects a request throws one; the HTTP layer only serializes it.
#include <nlohmann/json.hpp>

#include <optional>
#include <stdexcept>
#include <string>

namespace nibble::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, std::string message, std::optional<std::string> param = std::nullopt,
           std::optional<std::string> code = std::nullopt);

  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::optional<std::string>& param() const { return param_; }
  const std::optional<std::string>& code() const { return code_; }
  nlohmann::json body() const;

  // 400 invalid_request_error naming the offending field.
  static ApiError invalid(const std::string& param, const std::string& message,
                          std::optional<std::string> code = std::nullopt);

 private:
  int status_;
  std::string type_;
  std::optional<std::string> param_;
  std::optional<std::string> code_;
};

}  // namespace nibble::server
