// Chat templates (chat/): arbitrary template source parsed and rendered with
// arbitrary messages. The input is the template, then a NUL byte, then the
// messages as JSON (anything that is not a JSON list renders a fixed
// conversation). A template that does not parse, or that fails while rendering
// (raise_exception, type errors, limits), must end in a nibble::Error.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "common/error.h"
#include "fuzz_util.h"

namespace {

const nlohmann::ordered_json& default_messages() {
  static const auto messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi <|im_start|> {{ x }}", "name": "u"},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": "2"}])");
  return messages;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto [source, messages_json] = nibble::fuzz::split_at_nul(data, size);
  auto messages = nlohmann::ordered_json::parse(messages_json, nullptr, /*allow_exceptions=*/false);
  if (!messages.is_array()) messages = default_messages();
  try {
    nibble::ChatTemplate chat_template(source, "<s>", "</s>");
    chat_template.set_clock([](const std::string&) { return std::string("06 Dec 2026"); });
    // Small limits: a loop of a million iterations is allowed in production but
    // spends the fuzzer's time on one input; the limit checks themselves are tested.
    chat_template.set_limits({.max_output_bytes = 64 << 10, .max_loop_iterations = 20'000, .max_call_depth = 32});
    const auto extra = nlohmann::ordered_json{{"tools", nlohmann::ordered_json::array({{{"name", "f"}}})},
                                              {"enable_thinking", true}};
    for (const bool add_generation_prompt : {false, true}) {
      const std::string out = chat_template.render(messages, add_generation_prompt, extra);
      if (out.size() > (64 << 10)) nibble::fuzz::violated("output above max_output_bytes");
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
