#include "server/openapi.h"

namespace nibble::server {
namespace {

using json = nlohmann::json;

json ref(const char* name) { return {{"$ref", std::string("#/components/schemas/") + name}}; }

json json_content(const json& schema) { return {{"application/json", {{"schema", schema}}}}; }

json error_responses(std::initializer_list<const char*> statuses) {
  json out = json::object();
  for (const char* status : statuses) {
    out[status] = {{"description", "An OpenAI error object"}, {"content", json_content(ref("Error"))}};
  }
  return out;
}

// A POST endpoint answering JSON, or server-sent events when the body asks to stream.
json generation_path(const char* summary, const char* request, const char* response, const char* chunk) {
  json responses = error_responses({"400", "401", "404", "413", "429", "503"});
  responses["200"] = {
      {"description", "The completion; with \"stream\": true, server-sent events of chunks ending with data: [DONE]"},
      {"content",
       {{"application/json", {{"schema", ref(response)}}},
        {"text/event-stream", {{"schema", {{"type", "string"}, {"description", std::string("data: <") + chunk + ">"}}}}}}}};
  return {{"post",
           {{"summary", summary},
            {"requestBody", {{"required", true}, {"content", json_content(ref(request))}}},
            {"responses", responses}}}};
}

json get_path(const char* summary, const json& ok, bool needs_key) {
  json responses = needs_key ? error_responses({"401"}) : json::object();
  responses["200"] = ok;
  json get = {{"summary", summary}, {"responses", responses}};
  if (!needs_key) get["security"] = json::array();
  return {{"get", get}};
}

json string_or_list_of_strings() {
  return {{"oneOf", {{{"type", "string"}}, {{"type", "array"}, {"items", {{"type", "string"}}}}}}};
}

// Fields both generation endpoints accept.
json sampling_properties() {
  const json number = {{"type", "number"}};
  const json integer = {{"type", "integer"}};
  return {{"model", {{"type", "string"}}},
          {"max_tokens", {{"type", "integer"}, {"minimum", 0}}},
          {"temperature", {{"type", "number"}, {"minimum", 0}, {"maximum", 2}}},
          {"top_p", {{"type", "number"}, {"minimum", 0}, {"maximum", 1}}},
          {"top_k", integer},
          {"min_p", number},
          {"n", {{"type", "integer"}, {"minimum", 1}}},
          {"stop", string_or_list_of_strings()},
          {"seed", integer},
          {"presence_penalty", number},
          {"frequency_penalty", number},
          {"repetition_penalty", number},
          {"logit_bias", {{"type", "object"}, {"additionalProperties", number}}},
          {"user", {{"type", "string"}}},
          {"ignore_eos", {{"type", "boolean"}, {"description", "vLLM's extension: do not stop at end-of-sequence"}}},
          {"stream", {{"type", "boolean"}}},
          {"stream_options", {{"type", "object"}, {"properties", {{"include_usage", {{"type", "boolean"}}}}}}}};
}

json usage_schema() {
  return {{"type", "object"},
          {"properties",
           {{"prompt_tokens", {{"type", "integer"}}},
            {"completion_tokens", {{"type", "integer"}}},
            {"total_tokens", {{"type", "integer"}}}}}};
}

json response_schema(const char* object, const json& choice) {
  return {{"type", "object"},
          {"properties",
           {{"id", {{"type", "string"}}},
            {"object", {{"type", "string"}, {"enum", {object}}}},
            {"created", {{"type", "integer"}}},
            {"model", {{"type", "string"}}},
            {"system_fingerprint", {{"type", "string"}}},
            {"choices", {{"type", "array"}, {"items", choice}}},
            {"usage", usage_schema()}}}};
}

json schemas() {
  json completion_request = {{"type", "object"}, {"required", {"model", "prompt"}}, {"additionalProperties", false}};
  completion_request["properties"] = sampling_properties();
  completion_request["properties"]["prompt"] = {
      {"oneOf",
       {{{"type", "string"}},
        {{"type", "array"}, {"items", {{"type", "string"}}}},
        {{"type", "array"}, {"items", {{"type", "integer"}}}},
        {{"type", "array"}, {"items", {{"type", "array"}, {"items", {{"type", "integer"}}}}}}}}};
  completion_request["properties"]["best_of"] = {{"type", "integer"}, {"minimum", 1}};
  completion_request["properties"]["logprobs"] = {{"type", "integer"}, {"minimum", 0}, {"maximum", 20}};
  completion_request["properties"]["echo"] = {{"type", "boolean"}};

  const json text_part = {
      {"type", "object"},
      {"properties", {{"type", {{"type", "string"}, {"enum", {"text"}}}}, {"text", {{"type", "string"}}}}}};
  const json content = {{"oneOf", {{{"type", "string"}}, {{"type", "array"}, {"items", text_part}}}}};
  const json role = {{"type", "string"}, {"enum", {"system", "developer", "user", "assistant"}}};
  const json message = {{"type", "object"},
                        {"required", {"role"}},
                        {"properties", {{"role", role}, {"content", content}, {"name", {{"type", "string"}}}}}};
  json chat_request = {{"type", "object"}, {"required", {"model", "messages"}}, {"additionalProperties", false}};
  chat_request["properties"] = sampling_properties();
  chat_request["properties"]["messages"] = {{"type", "array"}, {"minItems", 1}, {"items", message}};
  chat_request["properties"]["max_completion_tokens"] = {{"type", "integer"}, {"minimum", 1}};
  chat_request["properties"]["logprobs"] = {{"type", "boolean"}};
  chat_request["properties"]["top_logprobs"] = {{"type", "integer"}, {"minimum", 0}, {"maximum", 20}};

  const json finish_reason = {{"type", "string"}, {"enum", {"stop", "length"}}, {"nullable", true}};
  const json completion_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"text", {{"type", "string"}}},
        {"logprobs", {{"type", "object"}, {"nullable", true}}},
        {"finish_reason", finish_reason}}}};
  const json chat_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"message",
         {{"type", "object"},
          {"properties", {{"role", {{"type", "string"}}}, {"content", {{"type", "string"}}}}}}},
        {"logprobs", {{"type", "object"}, {"nullable", true}}},
        {"finish_reason", finish_reason}}}};
  const json chunk_choice = {
      {"type", "object"},
      {"properties",
       {{"index", {{"type", "integer"}}},
        {"delta",
         {{"type", "object"},
          {"properties", {{"role", {{"type", "string"}}}, {"content", {{"type", "string"}}}}}}},
        {"logprobs", {{"type", "object"}, {"nullable", true}}},
        {"finish_reason", finish_reason}}}};

  const json model = {{"type", "object"},
                      {"properties",
                       {{"id", {{"type", "string"}}},
                        {"object", {{"type", "string"}, {"enum", {"model"}}}},
                        {"created", {{"type", "integer"}}},
                        {"owned_by", {{"type", "string"}}},
                        {"max_model_len", {{"type", "integer"}}}}}};
  const json error = {
      {"type", "object"},
      {"required", {"error"}},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"required", {"message", "type"}},
          {"properties",
           {{"message", {{"type", "string"}}},
            {"type", {{"type", "string"}}},
            {"param", {{"type", "string"}, {"nullable", true}}},
            {"code", {{"type", "string"}, {"nullable", true}}}}}}}}}};

  return {{"CompletionRequest", completion_request},
          {"Completion", response_schema("text_completion", completion_choice)},
          {"ChatCompletionRequest", chat_request},
          {"ChatCompletion", response_schema("chat.completion", chat_choice)},
          {"ChatCompletionChunk", response_schema("chat.completion.chunk", chunk_choice)},
          {"Model", model},
          {"ModelList",
           {{"type", "object"},
            {"properties", {{"object", {{"type", "string"}, {"enum", {"list"}}}}, {"data", {{"type", "array"}, {"items", ref("Model")}}}}}}},
          {"Error", error}};
}

}  // namespace

json openapi_document(const std::string& version) {
  const json plain_json = {{"description", "OK"}, {"content", json_content({{"type", "object"}})}};
  json paths = {
      {"/v1/completions", generation_path("Complete prompts", "CompletionRequest", "Completion", "Completion")},
      {"/v1/chat/completions",
       generation_path("Answer a conversation (rendered with the model's chat template)", "ChatCompletionRequest",
                       "ChatCompletion", "ChatCompletionChunk")},
      {"/v1/models", get_path("The served model", {{"description", "OK"}, {"content", json_content(ref("ModelList"))}}, true)},
      {"/v1/models/{model}", get_path("One model", {{"description", "OK"}, {"content", json_content(ref("Model"))}}, true)},
      {"/health", get_path("200 when ready; 503 while loading or draining", plain_json, false)},
      {"/metrics",
       get_path("Prometheus metrics",
                {{"description", "Text exposition format 0.0.4"},
                 {"content", {{"text/plain", {{"schema", {{"type", "string"}}}}}}}},
                false)},
      {"/version", get_path("The server version", plain_json, false)},
      {"/openapi.json", get_path("This document", plain_json, false)},
  };
  paths["/v1/models/{model}"]["get"]["parameters"] = {
      {{"name", "model"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}}}}};
  return {{"openapi", "3.0.3"},
          {"info",
           {{"title", "nibble"},
            {"version", version},
            {"description", "OpenAI-compatible inference server for compressed (quantized and pruned) LLMs"}}},
          {"paths", paths},
          {"components",
           {{"schemas", schemas()},
            {"securitySchemes", {{"bearer", {{"type", "http"}, {"scheme", "bearer"}}}}}}},
          {"security", {{{"bearer", json::array()}}}}};
}

}  // namespace nibble::server
