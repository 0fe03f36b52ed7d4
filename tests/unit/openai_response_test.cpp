// Response objects in OpenAI's shapes: fields, nulls, usage totals, both logprob
// layouts, streaming deltas, and JSON that stays valid UTF-8 when a token holds
// part of a character.
#include <gtest/gtest.h>

#include "server/openai_response.h"

namespace nibble::server {
namespace {

using nlohmann::json;

const ResponseHeader kHeader{"cmpl-1", 1700000000, "smollm2", "fp_nibble"};

std::vector<std::string> keys(const json& object) {
  std::vector<std::string> out;
  for (const auto& [key, value] : object.items()) out.push_back(key);
  return out;
}

TEST(OpenAiResponse, CompletionHasOpenAisFieldsAndUsage) {
  CompletionChoice choice;
  choice.text = "Paris.";
  choice.finish_reason = "stop";
  const json r = completion_response(kHeader, {choice}, {7, 3});
  EXPECT_EQ(keys(r), (std::vector<std::string>{"choices", "created", "id", "model", "object", "system_fingerprint",
                                                "usage"}));
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["choices"][0]["text"], "Paris.");
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"], json({{"prompt_tokens", 7}, {"completion_tokens", 3}, {"total_tokens", 10}}));
}

TEST(OpenAiResponse, CompletionLogprobsAreParallelLists) {
  CompletionChoice choice;
  choice.text = "Hi there";
  choice.logprobs = std::vector<TokenLogprob>{{"Hi", -0.5f, {{"Hi", -0.5f}, {"Hello", -1.5f}}},
                                              {" there", -0.25f, {{" there", -0.25f}, {"!", -2.0f}}}};
  choice.text_offset = {0, 2};
  choice.finish_reason = "length";
  const json lp = completion_response(kHeader, {choice}, {1, 2})["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json({"Hi", " there"}));
  EXPECT_EQ(lp["token_logprobs"], json({-0.5, -0.25}));
  EXPECT_EQ(lp["top_logprobs"][0], json({{"Hi", -0.5}, {"Hello", -1.5}}));
  EXPECT_EQ(lp["text_offset"], json({0, 2}));
}

TEST(OpenAiResponse, ChatMessageAndLogprobsWithBytes) {
  ChatChoice choice;
  choice.content = "Bonjour";
  choice.logprobs = std::vector<TokenLogprob>{{"Bon", -0.1f, {{"Bon", -0.1f}}}};
  choice.finish_reason = "stop";
  const json r = chat_response(ResponseHeader{"chatcmpl-1", 1, "m", "fp"}, {choice}, {5, 1});
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "Bonjour");
  const json& content = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 1u);
  EXPECT_EQ(content[0]["token"], "Bon");
  EXPECT_EQ(content[0]["bytes"], json({66, 111, 110}));
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], "Bon");
  EXPECT_EQ(r["usage"]["total_tokens"], 6);
}

TEST(OpenAiResponse, ChatStreamDeltasFollowOpenAi) {
  const ResponseHeader header{"chatcmpl-2", 1, "m", "fp"};
  ChatChoice first;
  first.role = "assistant";
  json chunk = chat_chunk(header, {first});
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(chunk.contains("usage"));

  ChatChoice middle;
  middle.content = "Hel";
  EXPECT_EQ(chat_chunk(header, {middle})["choices"][0]["delta"], json({{"content", "Hel"}}));

  ChatChoice last;
  last.finish_reason = "length";
  chunk = chat_chunk(header, {last});
  EXPECT_EQ(chunk["choices"][0]["delta"], json::object());
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], "length");

  chunk = usage_chunk(header, true, {4, 2});
  EXPECT_EQ(chunk["choices"], json::array());
  EXPECT_EQ(chunk["usage"]["total_tokens"], 6);
  EXPECT_EQ(usage_chunk(header, false, {4, 2})["object"], "text_completion");
}

TEST(OpenAiResponse, JsonTextStaysValidUtf8AndEventsAreFramed) {
  CompletionChoice choice;
  choice.text = "caf\xC3";  // the first byte of "é" only
  const std::string text = to_json_text(completion_chunk(kHeader, {choice}));
  EXPECT_NE(text.find("caf\xEF\xBF\xBD"), std::string::npos) << text;  // U+FFFD
  EXPECT_TRUE(json::accept(text));

  const std::string event = sse_event(json{{"a", 1}});
  EXPECT_EQ(event, "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
}

}  // namespace
}  // namespace nibble::server
