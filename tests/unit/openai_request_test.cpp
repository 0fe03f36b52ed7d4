// The OpenAI request bodies: every accepted form parses to the right request, and
// every bad field is a 400 whose error object names it.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "server/openai_request.h"
#include "server/responses_request.h"

namespace nibble::server {
namespace {

using nlohmann::json;

RequestLimits limits() {
  RequestLimits l;
  l.vocab_size = 512;
  l.max_tokens = 4096;
  return l;
}

// Runs `parse` and returns the ApiError it must throw.
template <typename F>
ApiError rejection(F&& parse) {
  try {
    parse();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "expected an ApiError";
  return ApiError(0, "", "");
}

ApiError completion_error(const json& body) {
  return rejection([&] { parse_completion_request(body, limits()); });
}

ApiError chat_error(const json& body) {
  return rejection([&] { parse_chat_request(body, limits()); });
}

json completion(json extra = json::object()) {
  json body = {{"model", "m"}, {"prompt", "Once upon a time"}};
  body.update(extra);
  return body;
}

json chat(json extra = json::object()) {
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body.update(extra);
  return body;
}

TEST(OpenAiRequest, CompletionDefaultsAreOpenAis) {
  const auto r = parse_completion_request(completion(), limits());
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Once upon a time");
  EXPECT_EQ(r.options.max_tokens, 16);
  EXPECT_EQ(r.options.sampling.temperature, 1.0);
  EXPECT_EQ(r.options.sampling.top_p, 1.0);
  EXPECT_EQ(r.options.n, 1);
  EXPECT_EQ(r.best_of, 1);
  EXPECT_FALSE(r.options.stream);
  EXPECT_FALSE(r.options.seeded);
  EXPECT_FALSE(r.logprobs.has_value());
}

TEST(OpenAiRequest, EveryPromptFormParses) {
  auto r = parse_completion_request(completion({{"prompt", {"a", "b"}}}), limits());
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].text, "b");
  r = parse_completion_request(completion({{"prompt", {1, 2, 3}}}), limits());
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].text.has_value());
  EXPECT_EQ(r.prompts[0].ids, (std::vector<TokenId>{1, 2, 3}));
  r = parse_completion_request(completion({{"prompt", {{1, 2}, {511}}}}), limits());
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].ids, (std::vector<TokenId>{511}));
}

TEST(OpenAiRequest, CompletionFieldsReachTheRequest) {
  const auto r = parse_completion_request(
      completion({{"max_tokens", 40},
                  {"temperature", 0},
                  {"top_p", 0.9},
                  {"top_k", 20},
                  {"min_p", 0.05},
                  {"n", 2},
                  {"best_of", 3},
                  {"stop", "\n"},
                  {"seed", 7},
                  {"logprobs", 5},
                  {"echo", true},
                  {"presence_penalty", 0.5},
                  {"frequency_penalty", -0.5},
                  {"repetition_penalty", 1.1},
                  {"logit_bias", {{"42", -100}, {"7", 2.5}}},
                  {"user", "u1"}}),
      limits());
  EXPECT_EQ(r.options.max_tokens, 40);
  EXPECT_EQ(r.options.sampling.temperature, 0.0);
  EXPECT_EQ(r.options.sampling.top_k, 20);
  EXPECT_DOUBLE_EQ(r.options.sampling.min_p, 0.05);
  EXPECT_EQ(r.options.n, 2);
  EXPECT_EQ(r.best_of, 3);
  EXPECT_EQ(r.options.stop, (std::vector<std::string>{"\n"}));
  EXPECT_TRUE(r.options.seeded);
  EXPECT_EQ(r.options.sampling.seed, 7u);
  EXPECT_EQ(r.logprobs, 5);
  EXPECT_TRUE(r.echo);
  EXPECT_DOUBLE_EQ(r.options.sampling.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(r.options.sampling.frequency_penalty, -0.5);
  EXPECT_DOUBLE_EQ(r.options.sampling.repetition_penalty, 1.1);
  EXPECT_EQ(r.options.logit_bias.at(42), -100.0f);
  EXPECT_EQ(r.options.logit_bias.at(7), 2.5f);
  EXPECT_EQ(r.options.user, "u1");
}

// JSON Schema counts 2.0 as an integer, so /openapi.json allows it: the parser
// takes whole-valued numbers for integer fields and token ids, and still refuses
// fractions.
TEST(OpenAiRequest, WholeValuedNumbersAreIntegers) {
  const auto r = parse_completion_request(
      completion({{"n", 2.0}, {"best_of", 3.0}, {"max_tokens", 7.0}, {"seed", -4.0}, {"prompt", {1.0, 2.0}}}), limits());
  EXPECT_EQ(r.options.n, 2);
  EXPECT_EQ(r.best_of, 3);
  EXPECT_EQ(r.options.max_tokens, 7);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<TokenId>{1, 2}));
  const auto chat = parse_chat_request(
      {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"logprobs", true}, {"top_logprobs", 2.0}},
      limits());
  EXPECT_EQ(chat.top_logprobs, 2);
  // Both names of the limit: the newer wins, neither is "unrecognized".
  const auto both = parse_chat_request({{"model", "m"},
                                        {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                        {"max_completion_tokens", 5},
                                        {"max_tokens", 9}},
                                       limits());
  EXPECT_EQ(both.options.max_tokens, 5);
  EXPECT_EQ(completion_error(completion({{"n", 2.5}})).param(), "n");
  EXPECT_EQ(completion_error(completion({{"prompt", {1.5}}})).param(), "prompt");
}

TEST(OpenAiRequest, ExplicitNullMeansDefault) {
  const auto r = parse_completion_request(completion({{"temperature", nullptr}, {"stop", nullptr}, {"suffix", nullptr}}),
                                          limits());
  EXPECT_EQ(r.options.sampling.temperature, 1.0);
  EXPECT_TRUE(r.options.stop.empty());
}

TEST(OpenAiRequest, StreamOptionsNeedStream) {
  const auto r = parse_completion_request(
      completion({{"stream", true}, {"stream_options", {{"include_usage", true}}}}), limits());
  EXPECT_TRUE(r.options.stream);
  EXPECT_TRUE(r.options.include_usage);
  EXPECT_EQ(completion_error(completion({{"stream_options", {{"include_usage", true}}}})).param(), "stream_options");
  EXPECT_EQ(completion_error(completion({{"stream", true}, {"stream_options", {{"include_usag", true}}}})).param(),
            "include_usag");
}

TEST(OpenAiRequest, BadFieldsAreNamed) {
  struct Case {
    json extra;
    std::string param;
  };
  const std::vector<Case> cases{
      {{{"temperature", "0.5"}}, "temperature"},
      {{{"temperature", 2.5}}, "temperature"},
      {{{"top_p", 0}}, "top_p"},
      {{{"top_p", 1.5}}, "top_p"},
      {{{"n", 0}}, "n"},
      {{{"n", 1.5}}, "n"},
      {{{"n", 129}}, "n"},
      {{{"max_tokens", -1}}, "max_tokens"},
      {{{"max_tokens", 0}}, "max_tokens"},
      {{{"max_tokens", 5000}}, "max_tokens"},
      {{{"max_tokens", "16"}}, "max_tokens"},
      {{{"logprobs", 21}}, "logprobs"},
      {{{"logprobs", true}}, "logprobs"},
      {{{"best_of", 1}, {"n", 2}}, "best_of"},
      {{{"best_of", 3}, {"stream", true}}, "best_of"},
      {{{"stop", {"a", "b", "c", "d", "e"}}}, "stop"},
      {{{"stop", {"a", 1}}}, "stop"},
      {{{"stop", ""}}, "stop"},
      {{{"stream", "yes"}}, "stream"},
      {{{"echo", 1}}, "echo"},
      {{{"presence_penalty", 3}}, "presence_penalty"},
      {{{"repetition_penalty", 0}}, "repetition_penalty"},
      {{{"logit_bias", {{"x", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{" 5", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"+5", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"-0", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"512", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"5", 101}}}}, "logit_bias"},
      {{{"logit_bias", {{"5", "1"}}}}, "logit_bias"},
      {{{"prompt", json::array()}}, "prompt"},
      {{{"prompt", 5}}, "prompt"},
      {{{"prompt", {1, 512}}}, "prompt"},
      {{{"prompt", {1, -1}}}, "prompt"},
      {{{"prompt", {"a", 3}}}, "prompt"},
      {{{"prompt", {{1}, json::array()}}}, "prompt"},
      {{{"model", 3}}, "model"},
      {{{"seed", 1.5}}, "seed"},
      {{{"user", 5}}, "user"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.extra.dump());
    const ApiError e = completion_error(completion(c.extra));
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.type(), "invalid_request_error");
    EXPECT_EQ(e.param(), c.param) << e.what();
    const json body = e.body();
    EXPECT_EQ(body["error"]["param"], c.param);
    EXPECT_FALSE(body["error"]["message"].get<std::string>().empty());
  }
}

TEST(OpenAiRequest, MissingRequiredFieldsAreNamed) {
  EXPECT_EQ(completion_error({{"prompt", "x"}}).param(), "model");
  EXPECT_EQ(completion_error({{"model", "m"}}).param(), "prompt");
  EXPECT_EQ(chat_error({{"model", "m"}}).param(), "messages");
  EXPECT_EQ(completion_error({{"model", "m"}}).code(), "missing_required_parameter");
}

TEST(OpenAiRequest, UnsupportedAndUnknownFieldsAreRejectedByName) {
  ApiError e = completion_error(completion({{"suffix", "end"}}));
  EXPECT_EQ(e.param(), "suffix");
  EXPECT_EQ(e.code(), "unsupported_parameter");
  e = completion_error(completion({{"frobnicate", 1}}));
  EXPECT_EQ(e.param(), "frobnicate");
  EXPECT_EQ(e.code(), "unrecognized_argument");
  EXPECT_NE(std::string(e.what()).find("frobnicate"), std::string::npos);
  e = chat_error(chat({{"functions", json::array({{{"name", "f"}}})}}));
  EXPECT_EQ(e.param(), "functions");
  EXPECT_EQ(e.code(), "unsupported_parameter");
  e = chat_error(chat({{"prediction", {{"type", "content"}, {"content", "x"}}}}));
  EXPECT_EQ(e.param(), "prediction");  // would change the output: refused, not ignored
}

TEST(OpenAiRequest, ChatMessagesParse) {
  const auto r = parse_chat_request(
      chat({{"messages",
             {{{"role", "system"}, {"content", "Be brief."}},
              {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
              {{"role", "assistant"}, {"content", nullptr}},
              {{"role", "user"}, {"content", "again"}, {"name", "bob"}}}},
            {"max_completion_tokens", 12},
            {"logprobs", true},
            {"top_logprobs", 3}}),
      limits());
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "a\nb");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].name, "bob");
  EXPECT_EQ(r.options.max_tokens, 12);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  // Without a limit, chat runs to the end of the context (OpenAI's default).
  EXPECT_FALSE(parse_chat_request(chat(), limits()).options.max_tokens.has_value());
  EXPECT_EQ(parse_chat_request(chat({{"max_tokens", 9}}), limits()).options.max_tokens, 9);
}

TEST(OpenAiRequest, BadChatMessagesAreNamed) {
  struct Case {
    json messages;
    std::string param;
  };
  const std::vector<Case> cases{
      {json::array(), "messages"},
      {"hi", "messages"},
      {{"hi"}, "messages[0]"},
      {{{{"content", "x"}}}, "messages[0].role"},
      {{{{"role", "function"}, {"content", "x"}}}, "messages[0].role"},
      {{{{"role", "tool"}, {"content", "x"}}}, "messages[0].tool_call_id"},
      {{{{"role", "user"}, {"content", "x"}, {"tool_calls", json::array()}}}, "messages[0].tool_calls"},
      {{{{"role", "user"}}}, "messages[0].content"},
      {{{{"role", "user"}, {"content", 5}}}, "messages[0].content"},
      {{{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", "x"}}}}}}, "messages[0].content"},
      {{{{"role", "user"}, {"content", "ok"}}, {{"role", "user"}, {"content", "x"}, {"colour", "red"}}},
       "messages[1].colour"},
      {{{{"role", "assistant"}, {"content", "x"}, {"tool_calls", json::array({1})}}}, "messages[0].tool_calls[0]"},
      {{{{"role", "assistant"}, {"tool_calls", {{{"id", "c"}, {"type", "function"}, {"function", {{"arguments", "{}"}}}}}}}},
       "messages[0].tool_calls[0].function.name"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.messages.dump());
    EXPECT_EQ(chat_error(chat({{"messages", c.messages}})).param(), c.param);
  }
  EXPECT_EQ(chat_error(chat({{"top_logprobs", 2}})).param(), "top_logprobs");
  EXPECT_EQ(chat_error(chat({{"max_completion_tokens", 0}})).param(), "max_completion_tokens");
}

TEST(OpenAiRequest, BodiesThatAreNotJsonObjectsAre400) {
  for (const std::string body : {"", "{", "{\"model\": }", "[1, 2]", "\"text\"", "{\"a\": 1} trailing"}) {
    SCOPED_TRACE(body);
    const ApiError e = rejection([&] { parse_request_body(body); });
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.code(), "invalid_json");
  }
  EXPECT_EQ(parse_request_body("{\"model\": \"m\"}")["model"], "m");
}

// Numbers JSON allows but a double cannot hold used to escape as a 500 whose log
// line quoted the whole number.
TEST(OpenAiRequest, NumbersTooLargeToRepresentAre400NamingTheField) {
  const std::string digits(400, '7');
  const std::string megabyte_number = fmt::format("1{}", std::string(1 << 20, '0'));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"model": "m", "temperature": 1e400})", "temperature"},
      {R"({"model": "m", "top_p": -1e400})", "top_p"},
      {fmt::format(R"({{"model": "m", "max_tokens": {}}})", digits), "max_tokens"},
      {R"({"model": "m", "logit_bias": {"5": 1e999}})", "logit_bias"},
      {fmt::format(R"({{"messages": [{{"role": "user", "content": "x"}}], "seed": {}}})", megabyte_number), "seed"},
  };
  for (const auto& [body, field] : cases) {
    SCOPED_TRACE(field);
    const ApiError e = rejection([&] { parse_request_body(body); });
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), field);
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    EXPECT_LT(std::string(e.what()).size(), 300u) << "the number must not be copied into the message";
  }
  const ApiError bare = rejection([&] { parse_request_body(fmt::format("[{}]", digits)); });
  EXPECT_EQ(bare.status(), 400);
  EXPECT_LT(std::string(bare.what()).size(), 300u);
}

TEST(OpenAiRequest, ErrorMessagesQuoteAtMostAFewHundredBytesOfTheRequest) {
  const std::string long_key(100'000, 'k');
  const ApiError unknown = completion_error(completion({{long_key, 1}}));
  EXPECT_EQ(unknown.status(), 400);
  EXPECT_LT(std::string(unknown.what()).size(), 400u);
  EXPECT_NE(std::string(unknown.what()).find("(100000 bytes)"), std::string::npos) << unknown.what();
  const ApiError not_json =
      rejection([&] { parse_request_body(fmt::format("{{\"model\": \"{}", std::string(100'000, 'x'))); });
  EXPECT_LT(std::string(not_json.what()).size(), 600u);
}

TEST(OpenAiRequest, OutputFormatsParse) {
  using Kind = OutputFormat::Kind;
  auto r = parse_chat_request(chat({{"response_format", {{"type", "json_object"}}}}), limits());
  EXPECT_EQ(r.options.format.kind, Kind::JsonObject);
  r = parse_chat_request(chat({{"response_format", {{"type", "text"}}}}), limits());
  EXPECT_EQ(r.options.format.kind, Kind::Text);
  r = parse_chat_request(
      chat({{"response_format",
             {{"type", "json_schema"},
              {"json_schema", {{"name", "P"}, {"strict", true}, {"schema", {{"type", "object"}}}}}}}}),
      limits());
  EXPECT_EQ(r.options.format.kind, Kind::JsonSchema);
  EXPECT_EQ(r.options.format.schema, nlohmann::ordered_json({{"type", "object"}}));
  EXPECT_EQ(r.options.format.schema_pointer, "/response_format/json_schema/schema");
  const auto c = parse_completion_request(completion({{"guided_choice", {"yes", "no"}}}), limits());
  EXPECT_EQ(c.options.format.kind, Kind::Choice);
  EXPECT_EQ(c.options.format.choices, (std::vector<std::string>{"yes", "no"}));
  EXPECT_EQ(parse_completion_request(completion({{"guided_regex", "a+"}}), limits()).options.format.text, "a+");
  EXPECT_EQ(parse_completion_request(completion({{"guided_json", R"({"type":"integer"})"}}), limits())
                .options.format.schema["type"],
            "integer");
  EXPECT_EQ(parse_chat_request(chat({{"guided_grammar", "root ::= \"a\""}}), limits()).options.format.kind, Kind::Grammar);

  // Properties come back in the client's order from the raw body.
  OutputFormat ordered = parse_chat_request(
      chat({{"guided_json", {{"type", "object"}, {"properties", {{"b", json::object()}, {"a", json::object()}}}}}}),
      limits()).options.format;
  restore_schema_order(ordered, R"({"guided_json":{"type":"object","properties":{"b":{},"a":{}}}})");
  EXPECT_EQ(ordered.schema["properties"].begin().key(), "b");
}

TEST(OpenAiRequest, BadOutputFormatsAreNamed) {
  EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "xml"}}}})).param(), "response_format.type");
  EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "json_schema"}}}})).param(), "response_format.json_schema");
  EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "json_object"}, {"extra", 1}}}})).param(),
            "response_format.extra");
  EXPECT_EQ(chat_error(chat({{"guided_choice", json::array()}})).param(), "guided_choice");
  EXPECT_EQ(chat_error(chat({{"guided_json", "not json"}})).param(), "guided_json");
  EXPECT_EQ(chat_error(chat({{"guided_regex", "a"}, {"guided_choice", {"a"}}})).param(), "guided_choice");
  EXPECT_EQ(completion_error(completion({{"guided_regex", "a"}, {"ignore_eos", true}})).param(), "ignore_eos");
}

TEST(OpenAiRequest, ClientDefaultFieldsThatCannotChangeTheOutputAreAccepted) {
  EXPECT_NO_THROW(parse_chat_request(
      chat({{"store", false}, {"metadata", {{"k", "v"}}}, {"service_tier", "auto"}, {"parallel_tool_calls", true}}),
      limits()));
  EXPECT_NO_THROW(parse_completion_request(completion({{"store", true}, {"user", "u"}}), limits()));
}

TEST(ResponsesRequest, TranslatesIntoTheChatRequestItMeans) {
  const json body = {
      {"model", "m"},
      {"instructions", "Be brief."},
      {"input",
       {{{"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Add 2 and 3."}}}}},
        {{"type", "function_call"}, {"call_id", "call_1"}, {"name", "add"}, {"arguments", "{\"a\":2}"}},
        {{"type", "function_call_output"}, {"call_id", "call_1"}, {"output", "5"}}}},
      {"tools", {{{"type", "function"}, {"name", "add"}, {"parameters", {{"type", "object"}}}}}},
      {"tool_choice", {{"type", "function"}, {"name", "add"}}},
      {"max_output_tokens", 12},
      {"store", false}};
  const auto r = parse_responses_request(body, limits());
  ASSERT_EQ(r.chat.messages.size(), 4U);
  EXPECT_EQ(r.chat.messages[0].role, "system");
  EXPECT_EQ(r.chat.messages[1].content, "Add 2 and 3.");
  ASSERT_EQ(r.chat.messages[2].tool_calls.size(), 1U);
  EXPECT_EQ(r.chat.messages[2].tool_calls[0].id, "call_1");
  EXPECT_EQ(r.chat.messages[3].role, "tool");
  EXPECT_EQ(r.chat.messages[3].tool_call_id, "call_1");
  EXPECT_EQ(r.chat.tools.at(0).name, "add");
  EXPECT_EQ(r.chat.tool_choice.mode, ToolChoice::Mode::Named);
  EXPECT_EQ(r.chat.options.max_tokens, 12);
  const json format = {{"type", "json_schema"}, {"name", "n"}, {"schema", {{"type", "object"}}}};
  const json with_format = {{"model", "m"}, {"input", "hi"}, {"text", {{"format", format}}}};
  EXPECT_EQ(parse_responses_request(with_format, limits()).chat.options.format.schema_pointer, "/text/format/schema");
  const auto refused = [](const json& b) {
    try {
      parse_responses_request(b, limits());
    } catch (const ApiError& e) {
      return e.param().value_or("");
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refused({{"model", "m"}, {"input", "x"}, {"previous_response_id", "resp_1"}}), "previous_response_id");
  EXPECT_EQ(refused({{"model", "m"}}), "input");
  EXPECT_EQ(refused({{"model", "m"}, {"input", json::array()}}), "input");
  EXPECT_EQ(refused({{"model", "m"}, {"input", {{{"type", "image"}}}}}), "input[0].type");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "x"}, {"tools", {{{"type", "web_search"}}}}}), "tools[0].type");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "x"}, {"frobnicate", 1}}), "frobnicate");
}

}  // namespace
}  // namespace nibble::server
