#pragma once
// Tool calling: the formats model families write calls in, parsed out of the
// generated text into OpenAI's message.tool_calls; the grammar that forces a call
// when tool_choice is "required" or names a function; and the prompt text that
// tells a model about its tools when its chat template does not render them.
//
//   hermes       <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>  (Hermes, Qwen2.5, SmolLM3)
//   llama3_json  {"name": "f", "parameters": {...}}                            (Llama 3.1/3.2; <|python_tag|> is special)
//   mistral      [TOOL_CALLS] [{"name": "f", "arguments": {...}}]              ([TOOL_CALLS] is special)
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "grammar/grammar.h"

namespace nibble::server {

struct ToolFunction {
  std::string name;
  std::string description;
  nlohmann::ordered_json parameters = nlohmann::ordered_json::object();  // JSON Schema of the arguments
  std::string parameters_pointer;  // where in the body, to restore its key order
};

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text, as OpenAI sends it
};

enum class ToolCallFormat { Hermes, Llama3Json, Mistral };

std::optional<ToolCallFormat> tool_call_format_named(std::string_view name);  // hermes, llama3_json, mistral
const char* tool_call_format_name(ToolCallFormat format);
// The format a chat template's own markup shows (hermes when it shows none).
ToolCallFormat tool_call_format_of_template(std::string_view template_source);

struct ParsedToolCalls {
  std::string content;          // text that is not a call
  std::vector<ToolCall> calls;  // with fresh ids
};

// Text that does not hold complete, well-formed calls is all content.
ParsedToolCalls parse_tool_calls(ToolCallFormat format, std::string_view text);

// Streaming: content is passed on until a call may start; from there the text is
// held and parsed at the end, so the deltas reassemble to what parse_tool_calls
// returns for the whole text.
class ToolCallSplitter {
 public:
  explicit ToolCallSplitter(ToolCallFormat format) : format_(format) {}
  std::string push(std::string_view text);  // content that can be sent now
  ParsedToolCalls finish();                 // the rest: held content and the calls

 private:
  ToolCallFormat format_;
  std::string held_;
  bool calls_started_ = false;
  bool past_start_ = false;  // formats whose calls open the output: no call once other text came
};

// The output that tool_choice "required" (any of `functions`) or a named function
// must produce: one call (or up to `max_calls` with parallel_tool_calls) whose
// arguments validate against the function's parameters. Throws nibble::Error for
// a parameters schema that cannot be enforced.
grammar::Grammar forced_tool_call_grammar(ToolCallFormat format, const std::vector<ToolFunction>& functions,
                                          int max_calls);

// For templates that do not render `tools`: a system prompt text describing them
// and how to call them in `format`.
std::string tools_prompt(ToolCallFormat format, const std::vector<ToolFunction>& tools);
// An assistant turn's calls as the model would have written them (templates that
// do not render tool_calls get this as the message content).
std::string tool_calls_text(ToolCallFormat format, const std::vector<ToolCall>& calls);

}  // namespace nibble::server
