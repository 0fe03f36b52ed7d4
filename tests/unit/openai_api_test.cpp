// The routes without a socket or a model: readiness, draining, routing errors,
// the API key, and the documents the server describes itself with.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include "server/openai_api.h"
#include "server/openapi.h"

namespace nibble::server {
namespace {

using nlohmann::json;

// Keeps what the API answered.
class RecordingExchange : public HttpExchange {
 public:
  void respond(HttpResponse r) override { response = std::move(r); }
  void start_stream(int, std::string, HttpHeaders) override { ADD_FAILURE() << "no stream expected"; }
  void stream(std::string) override {}
  void end_stream() override {}
  void on_disconnect(std::function<void()>) override {}
  void annotate(std::string) override {}

  std::string header(const std::string& name) const {
    for (const auto& [key, value] : response.headers) {
      if (key == name) return value;
    }
    return "";
  }
  json body() const { return json::parse(response.body); }
  HttpResponse response{0, "", "", {}};
};

class OpenAiApiTest : public ::testing::Test {
 protected:
  HttpResponse call(OpenAiApi& api, const std::string& method, const std::string& path,
                    const std::string& authorization = "", std::string* retry_after = nullptr) {
    HttpRequest request;
    request.method = method;
    request.path = path;
    if (!authorization.empty()) request.headers.emplace_back("Authorization", authorization);
    auto exchange = std::make_shared<RecordingExchange>();
    api.handle(request, exchange);
    if (retry_after != nullptr) *retry_after = exchange->header("Retry-After");
    return exchange->response;
  }
  static json error_of(const HttpResponse& r) {
    const json body = json::parse(r.body);
    EXPECT_EQ(body.size(), 1u);
    EXPECT_TRUE(body["error"].contains("message") && body["error"].contains("type") &&
                body["error"].contains("param") && body["error"].contains("code"))
        << body;
    return body["error"];
  }

  ServerMetrics metrics_{"m"};
};

TEST_F(OpenAiApiTest, WhileLoadingHealthAndTheApiSay503WithRetryAfter) {
  OpenAiApi api({std::nullopt, true, "1.2.3", 2, {}}, metrics_);
  const auto health = call(api, "GET", "/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(json::parse(health.body), json({{"status", "loading"}}));
  std::string retry_after;
  const auto completion = call(api, "POST", "/v1/completions", "", &retry_after);
  EXPECT_EQ(completion.status, 503);
  EXPECT_EQ(error_of(completion)["code"], "loading");
  EXPECT_EQ(retry_after, "2");
  EXPECT_EQ(call(api, "GET", "/v1/models").status, 503);
  // What does not need the model answers at once.
  EXPECT_EQ(call(api, "GET", "/metrics").status, 200);
  EXPECT_EQ(json::parse(call(api, "GET", "/version").body),
            json({{"version", "1.2.3"}, {"parallel", {{"tensor", 1}, {"expert", 1}, {"pipeline", 1}, {"ranks", 1}}}}));

  // Loading is alive: liveness only fails on a stalled step loop.
  const auto live = call(api, "GET", "/health/live");
  EXPECT_EQ(live.status, 200);
  EXPECT_EQ(json::parse(live.body), json({{"status", "loading"}}));
  EXPECT_EQ(call(api, "GET", "/health/ready").status, 503);

  api.set_draining();
  EXPECT_EQ(json::parse(call(api, "GET", "/health/ready").body)["status"], "draining");
  EXPECT_EQ(call(api, "GET", "/health/live").status, 200) << "draining is alive";
  const auto draining = call(api, "GET", "/health");
  EXPECT_EQ(draining.status, 503);
  EXPECT_EQ(json::parse(draining.body)["status"], "draining");
  EXPECT_EQ(error_of(call(api, "POST", "/v1/chat/completions"))["code"], "shutting_down");
}

TEST_F(OpenAiApiTest, UnknownRoutesAre404AndWrongMethods405NamingTheRightOne) {
  OpenAiApi api({std::nullopt, true, "1", 1, {}}, metrics_);
  const auto missing = call(api, "POST", "/v1/embeddings");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(error_of(missing)["message"].get<std::string>().find("/v1/embeddings"), std::string::npos);
  EXPECT_EQ(call(api, "GET", "/v1/completionsX").status, 404);
  auto exchange = std::make_shared<RecordingExchange>();
  HttpRequest request;
  request.method = "GET";
  request.path = "/v1/chat/completions";
  api.handle(request, exchange);
  EXPECT_EQ(exchange->response.status, 405);
  EXPECT_EQ(exchange->header("Allow"), "POST");
  EXPECT_EQ(call(api, "DELETE", "/health").status, 405);
  EXPECT_NE(metrics_.exposition().find("nibble_request_errors_total{model=\"m\",code=\"404\"} 2"), std::string::npos)
      << metrics_.exposition();
}

TEST_F(OpenAiApiTest, TheKeyGuardsTheApiAndOptionallyTheProbes) {
  OpenAiApi open_probes({std::string("s3cret"), true, "1", 1, {}}, metrics_);
  EXPECT_EQ(call(open_probes, "GET", "/v1/models").status, 401);
  EXPECT_EQ(error_of(call(open_probes, "GET", "/v1/models", "Bearer s3cre"))["code"], "invalid_api_key");
  EXPECT_EQ(call(open_probes, "GET", "/v1/models", "Bearer s3cret!").status, 401);
  EXPECT_EQ(call(open_probes, "GET", "/v1/models", "Basic s3cret").status, 401);
  EXPECT_EQ(call(open_probes, "GET", "/v1/models", "Bearer s3cret").status, 503) << "past the key: still loading";
  EXPECT_EQ(call(open_probes, "GET", "/health").status, 503);
  EXPECT_EQ(call(open_probes, "GET", "/health/live").status, 200);
  EXPECT_EQ(call(open_probes, "GET", "/metrics").status, 200);
  // The tokenizer endpoints are the API's, not probes.
  EXPECT_EQ(call(open_probes, "POST", "/tokenize").status, 401);
  EXPECT_EQ(call(open_probes, "POST", "/detokenize").status, 401);

  OpenAiApi closed_probes({std::string("s3cret"), false, "1", 1, {}}, metrics_);
  for (const char* path : {"/health", "/health/live", "/health/ready", "/metrics", "/version", "/openapi.json"}) {
    EXPECT_EQ(call(closed_probes, "GET", path).status, 401) << path;
  }
  EXPECT_EQ(call(closed_probes, "GET", "/metrics", "Bearer s3cret").status, 200);
}

// A 404 or 405 before the key check told callers without the key which routes exist.
TEST_F(OpenAiApiTest, WithAKeySetUnknownRoutesAndWrongMethodsAre401WithoutIt) {
  OpenAiApi api({std::string("s3cret"), true, "1", 1, {}}, metrics_);
  for (const auto& [method, path] : std::vector<std::pair<std::string, std::string>>{
           {"POST", "/v1/embeddings"}, {"GET", "/v1/chat/completions"}, {"GET", "/admin"}, {"GET", "/v1/modelsX"}}) {
    SCOPED_TRACE(method + " " + path);
    const auto anonymous = call(api, method, path);
    EXPECT_EQ(anonymous.status, 401);
    EXPECT_EQ(error_of(anonymous)["code"], "invalid_api_key");
    EXPECT_EQ(call(api, method, path, "Bearer wrong").status, 401);
    EXPECT_EQ(call(api, method, path, "Bearer s3cret").status, path == "/v1/chat/completions" ? 405 : 404);
  }
  // The public probes stay public, wrong methods included (their existence is no secret).
  EXPECT_EQ(call(api, "GET", "/health").status, 503);
  EXPECT_EQ(call(api, "GET", "/version").status, 200);
  EXPECT_EQ(call(api, "DELETE", "/health").status, 405);
  // Without a key nothing changes: unknown routes are 404.
  OpenAiApi open({std::nullopt, true, "1", 1, {}}, metrics_);
  EXPECT_EQ(call(open, "GET", "/admin").status, 404);
}

TEST_F(OpenAiApiTest, TheProbeListenerServesOnlyHealthAndMetrics) {
  OpenAiApi api({std::string("s3cret"), true, "1", 1, {}}, metrics_);
  const auto on_probe_port = [&](const std::string& path, const std::string& authorization = "") {
    HttpRequest request;
    request.method = "GET";
    request.path = path;
    request.probe = true;
    if (!authorization.empty()) request.headers.emplace_back("Authorization", authorization);
    auto exchange = std::make_shared<RecordingExchange>();
    api.handle(request, exchange);
    return exchange->response.status;
  };
  EXPECT_EQ(on_probe_port("/health"), 503) << "still loading";
  EXPECT_EQ(on_probe_port("/health/ready"), 503) << "still loading";
  EXPECT_EQ(on_probe_port("/health/live"), 200);
  EXPECT_EQ(on_probe_port("/metrics"), 200);
  for (const char* path : {"/v1/models", "/version", "/nowhere", "/tokenize"}) {
    EXPECT_EQ(on_probe_port(path, "Bearer s3cret"), 404) << path;
  }
}

TEST_F(OpenAiApiTest, TheOpenApiDocumentDescribesEveryRoute) {
  OpenAiApi api({std::nullopt, true, "9.9", 1, {}}, metrics_);
  const auto response = call(api, "GET", "/openapi.json");
  ASSERT_EQ(response.status, 200);
  const json doc = json::parse(response.body);
  EXPECT_EQ(doc["openapi"].get<std::string>().substr(0, 2), "3.");
  EXPECT_EQ(doc["info"]["version"], "9.9");
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize",
                           "/health", "/health/live", "/health/ready", "/metrics", "/version"}) {
    EXPECT_TRUE(doc["paths"].contains(path)) << path;
  }
  // Every $ref points at a schema that exists.
  std::function<void(const json&)> check_refs = [&](const json& node) {
    if (node.is_object()) {
      if (node.contains("$ref")) {
        const std::string ref = node["$ref"];
        const std::string prefix = "#/components/schemas/";
        ASSERT_EQ(ref.rfind(prefix, 0), 0u) << ref;
        EXPECT_TRUE(doc["components"]["schemas"].contains(ref.substr(prefix.size()))) << ref;
      }
      for (const auto& [key, value] : node.items()) check_refs(value);
    } else if (node.is_array()) {
      for (const auto& value : node) check_refs(value);
    }
  };
  check_refs(doc);
  const auto& completion = doc["components"]["schemas"]["CompletionRequest"]["properties"];
  for (const char* field : {"prompt", "max_tokens", "logprobs", "echo", "best_of", "stream_options", "logit_bias"}) {
    EXPECT_TRUE(completion.contains(field)) << field;
  }
}

// The document used to declare no penalty or range limits the parser enforced;
// both now come from numeric_fields(), and this walks every entry of it.
TEST(OpenApiDocument, DeclaresExactlyTheNumericLimitsTheParserEnforces) {
  RequestLimits limits;
  limits.vocab_size = 512;
  limits.max_tokens = 300;
  limits.max_n = 7;
  limits.max_logprobs = 5;
  const json doc = openapi_document({"1", false, true, limits});
  const json base_messages = {{{"role", "user"}, {"content", "Hi"}}};
  for (const auto endpoint : {Endpoint::Completions, Endpoint::ChatCompletions}) {
    const bool chat = endpoint == Endpoint::ChatCompletions;
    const json& properties =
        doc["components"]["schemas"][chat ? "ChatCompletionRequest" : "CompletionRequest"]["properties"];
    const auto parse = [&](const std::string& field, const json& value) {
      json body = {{"model", "m"}};
      if (chat) body["messages"] = base_messages;
      if (!chat) body["prompt"] = "x";
      body[field] = value;
      // Rules between fields, so each value is judged by its own range alone.
      if (field == "max_tokens" && !chat) body["echo"] = true;
      if (field == "top_logprobs") body["logprobs"] = true;
      if (field == "best_of") body["n"] = 1;
      if (chat) {
        parse_chat_request(body, limits);
      } else {
        parse_completion_request(body, limits);
      }
    };
    const auto rejected_as = [&](const std::string& field, const json& value) {
      try {
        parse(field, value);
      } catch (const ApiError& e) {
        return e.param().value_or("");
      }
      return std::string("<accepted>");
    };
    for (const NumericField& field : numeric_fields(endpoint, limits)) {
      SCOPED_TRACE((chat ? "chat " : "completion ") + field.name);
      ASSERT_TRUE(properties.contains(field.name));
      const json& schema = properties[field.name];
      // Optional, so null is allowed too (OpenAPI 3.1: a type list).
      EXPECT_EQ(schema["type"], json::array({field.integer ? "integer" : "number", "null"}));
      EXPECT_EQ(schema[field.exclusive_minimum ? "exclusiveMinimum" : "minimum"], field.minimum);
      EXPECT_FALSE(schema.contains(field.exclusive_minimum ? "minimum" : "exclusiveMinimum"));
      EXPECT_EQ(schema["maximum"], field.maximum);
      // The bounds themselves, and just past them.
      EXPECT_NO_THROW(parse(field.name, field.maximum));
      if (field.exclusive_minimum) {
        EXPECT_EQ(rejected_as(field.name, field.minimum), field.name);
      } else {
        EXPECT_NO_THROW(parse(field.name, field.minimum));
      }
      if (field.integer) {
        const auto low = field.minimum.get<std::int64_t>(), high = field.maximum.get<std::int64_t>();
        if (low > std::numeric_limits<std::int64_t>::min()) {
          EXPECT_EQ(rejected_as(field.name, low - 1), field.name);
        }
        if (high < std::numeric_limits<std::int64_t>::max()) {
          EXPECT_EQ(rejected_as(field.name, high + 1), field.name);
        }
        EXPECT_EQ(rejected_as(field.name, 1.5), field.name);
      } else {
        EXPECT_EQ(rejected_as(field.name, field.minimum.get<double>() - 1e-3), field.name);
        EXPECT_EQ(rejected_as(field.name, field.maximum.get<double>() + 1e-3), field.name);
      }
    }
    // Fields outside the table: stop strings and logit_bias values.
    EXPECT_EQ(properties["stop"]["oneOf"][1]["maxItems"], limits.max_stop);
    EXPECT_EQ(rejected_as("stop", json::array({"a", "b", "c", "d", "e"})), "stop");
    EXPECT_EQ(properties["logit_bias"]["additionalProperties"]["maximum"], kMaxLogitBias);
    EXPECT_EQ(rejected_as("logit_bias", {{"5", kMaxLogitBias + 1}}), "logit_bias");
    EXPECT_NO_THROW(parse("logit_bias", {{"5", -kMaxLogitBias}}));
    // The keys' pattern allows exactly the token ids the parser takes.
    const std::regex key_pattern(properties["logit_bias"]["propertyNames"]["pattern"].get<std::string>());
    std::vector<std::string> keys{"", "x", " 5", "+5", "-0", "5 ", "0x1", "1e2", "007", "0000000000000000000000511",
                                  "0000000000000000000000512", "99999999999999999999999"};
    for (int id = 0; id < 1100; ++id) keys.push_back(std::to_string(id));
    for (const auto& key : keys) {
      SCOPED_TRACE("logit_bias key '" + key + "'");
      const bool documented = std::regex_match(key, key_pattern);
      EXPECT_EQ(rejected_as("logit_bias", {{key, 1}}), documented ? "<accepted>" : "logit_bias");
    }
  }
}

// messages[].content is required except from the assistant, as the parser checks
// (system/developer/user, assistant, and tool messages, which also need tool_call_id).
TEST(OpenApiDocument, ChatMessagesNeedContentExceptFromTheAssistant) {
  const json doc = openapi_document({"1", false, true, RequestLimits{}});
  const json& variants = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["messages"]["items"]["oneOf"];
  ASSERT_EQ(variants.size(), 3u);
  for (const json& variant : variants) {
    const bool assistant = variant["properties"]["role"]["enum"] == json::array({"assistant"});
    const bool needs_content =
        std::find(variant["required"].begin(), variant["required"].end(), "content") != variant["required"].end();
    EXPECT_EQ(needs_content, !assistant) << variant;
    const std::string role = variant["properties"]["role"]["enum"][0];
    json body = {{"model", "m"}, {"messages", {{{"role", role}}}}};
    if (assistant) {
      EXPECT_NO_THROW(parse_chat_request(body, RequestLimits{}));
    } else {
      EXPECT_THROW(parse_chat_request(body, RequestLimits{}), ApiError);
    }
  }
}

// Security is declared only where the server asks for the key, and the 404 for
// another model's id is documented.
TEST(OpenApiDocument, SecurityAndErrorsFollowTheServersConfiguration) {
  const auto needs_key = [](const json& doc, const std::string& path, const std::string& method) {
    const json& operation = doc["paths"][path][method];
    const bool secured = operation.contains("security") ? !operation["security"].empty() : doc.contains("security");
    EXPECT_EQ(secured, operation["responses"].contains("401")) << path;
    return secured;
  };
  const json open = openapi_document({"1", false, true, RequestLimits{}});
  EXPECT_FALSE(open.contains("security"));
  EXPECT_FALSE(open["components"].contains("securitySchemes"));
  for (const auto& [path, item] : open["paths"].items()) {
    for (const auto& [method, operation] : item.items()) EXPECT_FALSE(needs_key(open, path, method)) << path;
  }
  const json keyed = openapi_document({"1", true, true, RequestLimits{}});
  EXPECT_TRUE(needs_key(keyed, "/v1/completions", "post"));
  EXPECT_TRUE(needs_key(keyed, "/v1/models/{model}", "get"));
  EXPECT_FALSE(needs_key(keyed, "/health", "get"));
  EXPECT_FALSE(needs_key(keyed, "/openapi.json", "get"));
  const json closed = openapi_document({"1", true, false, RequestLimits{}});
  EXPECT_TRUE(needs_key(closed, "/health", "get"));
  EXPECT_TRUE(needs_key(closed, "/metrics", "get"));

  for (const auto& [path, method] : std::vector<std::pair<std::string, std::string>>{
           {"/v1/completions", "post"}, {"/v1/chat/completions", "post"}, {"/v1/models/{model}", "get"}}) {
    EXPECT_TRUE(open["paths"][path][method]["responses"].contains("404")) << path;
  }
}

}  // namespace
}  // namespace nibble::server
