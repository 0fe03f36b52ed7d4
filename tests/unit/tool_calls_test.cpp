// Tool calls: the three formats parsed out of text, streaming splits that
// reassemble to the same calls, and the forced-call grammar accepting only calls
// whose arguments fit the function's schema.
#include <gtest/gtest.h>

#include "grammar/pushdown.h"
#include "server/tool_calls.h"

namespace nibble::server {
namespace {

using ojson = nlohmann::ordered_json;

TEST(ToolCalls, HermesCallsAndContentAreParsed) {
  const auto parsed = parse_tool_calls(ToolCallFormat::Hermes,
                                       "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": "
                                       "\"Paris\"}}\n</tool_call>\n<tool_call>{\"name\":\"time\",\"arguments\":{}}</tool_call>");
  ASSERT_EQ(parsed.calls.size(), 2U);
  EXPECT_EQ(parsed.content, "Let me check.");
  EXPECT_EQ(parsed.calls[0].name, "weather");
  EXPECT_EQ(ojson::parse(parsed.calls[0].arguments), ojson({{"city", "Paris"}}));
  EXPECT_EQ(parsed.calls[1].name, "time");
  EXPECT_NE(parsed.calls[0].id, parsed.calls[1].id);
  EXPECT_EQ(parsed.calls[0].id.rfind("call_", 0), 0U);
  // Not a complete, well-formed call: all of it is content.
  for (const char* text : {"<tool_call>{\"name\": \"weather\"", "<tool_call>not json</tool_call>", "plain answer"}) {
    const auto p = parse_tool_calls(ToolCallFormat::Hermes, text);
    EXPECT_TRUE(p.calls.empty()) << text;
    EXPECT_EQ(p.content, text);
  }
}

TEST(ToolCalls, Llama3AndMistralFormats) {
  auto p = parse_tool_calls(ToolCallFormat::Llama3Json, " {\"name\": \"f\", \"parameters\": {\"x\": 1}}");
  ASSERT_EQ(p.calls.size(), 1U);
  EXPECT_EQ(p.calls[0].arguments, R"({"x":1})");
  EXPECT_TRUE(parse_tool_calls(ToolCallFormat::Llama3Json, "The answer is {1}").calls.empty());
  p = parse_tool_calls(ToolCallFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": \"{\\\"k\\\": 2}\"}]");
  ASSERT_EQ(p.calls.size(), 2U);
  EXPECT_EQ(p.calls[1].arguments, R"({"k": 2})");
  EXPECT_EQ(tool_call_format_of_template("{{ '[TOOL_CALLS]' }}"), ToolCallFormat::Mistral);
  EXPECT_EQ(tool_call_format_of_template("<|python_tag|>"), ToolCallFormat::Llama3Json);
  EXPECT_EQ(tool_call_format_of_template("<tool_call>"), ToolCallFormat::Hermes);
}

TEST(ToolCalls, StreamedPiecesReassembleToTheSameCallsAndContent) {
  const std::string text =
      "Sure.<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
  for (std::size_t piece = 1; piece <= 7; ++piece) {
    ToolCallSplitter splitter(ToolCallFormat::Hermes);
    std::string content;
    for (std::size_t i = 0; i < text.size(); i += piece) content += splitter.push(text.substr(i, piece));
    EXPECT_EQ(content.find('<'), std::string::npos) << "a marker leaked into content, piece " << piece;
    const auto rest = splitter.finish();
    content += rest.content;
    ASSERT_EQ(rest.calls.size(), 1U);
    EXPECT_EQ(rest.calls[0].arguments, R"({"city":"Oslo"})");
    EXPECT_EQ(content, "Sure.");
  }
  ToolCallSplitter plain(ToolCallFormat::Hermes);
  std::string content = plain.push("a < b and <tool");
  content += plain.push(" is not a call");
  content += plain.finish().content;
  EXPECT_EQ(content, "a < b and <tool is not a call");
  ToolCallSplitter json(ToolCallFormat::Llama3Json);
  EXPECT_EQ(json.push("  "), "");
  EXPECT_EQ(json.push("Hello {"), "  Hello {");  // text first: never a call
}

TEST(ToolCalls, ForcedGrammarAcceptsOnlySchemaValidCalls) {
  ToolFunction weather{"weather", "", ojson::parse(R"({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"],"additionalProperties":false})"), ""};
  ToolFunction time{"time", "", ojson::parse(R"({"type":"object","properties":{}})"), ""};
  const auto accepts = [](const grammar::Grammar& g, std::string_view text) {
    grammar::PushdownAutomaton pda(g);
    return grammar::PushdownAutomaton::accepts(pda.advance(pda.initial(), text));
  };
  const auto hermes = forced_tool_call_grammar(ToolCallFormat::Hermes, {weather, time}, 2);
  EXPECT_TRUE(accepts(hermes, "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Rome\", \"days\": 2}}\n</tool_call>"));
  EXPECT_TRUE(accepts(hermes, "<tool_call>\n{\"name\":\"time\",\"arguments\":{}}\n</tool_call>\n<tool_call>\n{\"name\":\"time\",\"arguments\":{}}\n</tool_call>"));
  EXPECT_FALSE(accepts(hermes, "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"days\": 2}}\n</tool_call>"));
  EXPECT_FALSE(accepts(hermes, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(accepts(hermes, "Sure! <tool_call>\n{\"name\":\"time\",\"arguments\":{}}\n</tool_call>"));
  const auto one = forced_tool_call_grammar(ToolCallFormat::Hermes, {time}, 1);
  EXPECT_FALSE(accepts(one, "<tool_call>\n{\"name\":\"time\",\"arguments\":{}}\n</tool_call>\n<tool_call>\n{\"name\":\"time\",\"arguments\":{}}\n</tool_call>"));
  const auto llama = forced_tool_call_grammar(ToolCallFormat::Llama3Json, {weather}, 1);
  EXPECT_TRUE(accepts(llama, R"({"name": "weather", "parameters": {"city": "Rome"}})"));
  // Every accepted text parses back into the call.
  const auto p = parse_tool_calls(ToolCallFormat::Llama3Json, R"({"name": "weather", "parameters": {"city": "Rome"}})");
  ASSERT_EQ(p.calls.size(), 1U);
  EXPECT_EQ(p.calls[0].name, "weather");
}

}  // namespace
}  // namespace nibble::server
