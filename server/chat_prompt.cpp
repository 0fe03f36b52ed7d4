#include "server/chat_prompt.h"

#include <bitset>
#include <string_view>

#include "common/error.h"

namespace nibble::server {
namespace {

std::size_t code_point_length(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// The byte ranges where two renders of equal length differ.
std::vector<TextRange> differences(std::string_view a, std::string_view b) {
  std::vector<TextRange> ranges;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    if (!ranges.empty() && ranges.back().end == i) {
      ranges.back().end = i + 1;
    } else {
      ranges.push_back({i, i + 1});
    }
  }
  return ranges;
}

}  // namespace

ChatPromptEncoder::ChatPromptEncoder(const Tokenizer& tokenizer, bool special_tokens_in_messages)
    : tokenizer_(tokenizer), special_tokens_in_messages_(special_tokens_in_messages) {
  std::bitset<256> first_bytes;
  for (std::size_t id = 0; id < tokenizer.vocab_size(); ++id) {
    if (!tokenizer.is_special(static_cast<TokenId>(id))) continue;
    const std::string text = tokenizer.id_to_token(static_cast<TokenId>(id));
    if (!text.empty()) first_bytes.set(static_cast<unsigned char>(text[0]));
  }
  // Printable, not whitespace, and left alone by tojson and trim, so a template
  // treats the defused text as it treats the original.
  for (const char candidate : std::string_view("~^`#@$%&*=+")) {
    if (!first_bytes.test(static_cast<unsigned char>(candidate))) {
      filler_ = candidate;
      break;
    }
  }
  if (filler_ == 0) fail("chat prompts: every candidate filler byte starts a special token");
}

bool ChatPromptEncoder::defuse(nlohmann::ordered_json& value) const {
  bool changed = false;
  if (value.is_string()) {
    auto& text = value.get_ref<std::string&>();
    // Until no special token is left: breaking one occurrence may expose another
    // that overlapped it.
    for (auto found = tokenizer_.find_special_tokens(text); !found.empty(); found = tokenizer_.find_special_tokens(text)) {
      for (const TextRange& range : found) {
        const std::size_t length = code_point_length(static_cast<unsigned char>(text[range.begin]));
        text.replace(range.begin, length, length, filler_);
      }
      changed = true;
    }
  } else if (value.is_structured()) {
    for (auto& item : value) changed = defuse(item) || changed;
  }
  return changed;
}

ChatPrompt ChatPromptEncoder::encode(const ChatTemplate& chat_template, const nlohmann::ordered_json& messages,
                                     bool add_generation_prompt, const nlohmann::ordered_json& extra) const {
  ChatPrompt prompt;
  prompt.text = chat_template.render(messages, add_generation_prompt, extra);
  // The template writes BOS and the other special tokens itself, as transformers assumes.
  nlohmann::ordered_json defused = messages;
  if (special_tokens_in_messages_ || !defuse(defused)) {
    prompt.ids = tokenizer_.encode(prompt.text, false);
    return prompt;
  }
  // Render again with the special-token text in the messages broken. A template
  // copies message text into its output (trimmed, perhaps); wherever the two
  // renders differ is message text that spelled a special token, and no special
  // token may be matched over those bytes. Every other byte, the template's own
  // markup included, tokenizes exactly as before.
  const std::string reference = chat_template.render(defused, add_generation_prompt, extra);
  if (reference.size() != prompt.text.size()) {
    fail("a message contains special-token text that this model's chat template rewrites, so it cannot be kept "
         "as plain text; remove it or start the server with --allow-special-tokens-in-messages");
  }
  const std::vector<TextRange> plain = differences(prompt.text, reference);
  for (const TextRange& range : plain) {
    if (reference.find_first_not_of(filler_, range.begin) < range.end) {
      fail("the model's chat template renders messages differently when they contain special-token text; remove "
           "it or start the server with --allow-special-tokens-in-messages");
    }
  }
  prompt.ids = tokenizer_.encode(prompt.text, false, plain);
  return prompt;
}

}  // namespace nibble::server
