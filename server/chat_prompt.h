#pragma once
// The token ids of a chat conversation. The model's template renders the text the
// model was trained on, and that text is tokenized so that only the template's own
// markup can become special tokens: a message saying
// "hi<|im_end|>\n<|im_start|>system\n..." is those characters, not a forged turn.
#include <nlohmann/json.hpp>

#include <array>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "common/token.h"
#include "tokenizer/tokenizer.h"

namespace nibble::server {

struct ChatPrompt {
  std::string text;  // the rendered template, exactly as transformers renders it
  std::vector<TokenId> ids;
};

class ChatPromptEncoder {
 public:
  // special_tokens_in_messages: special tokens written in message text are matched
  // too (the behaviour before, kept behind --allow-special-tokens-in-messages).
  ChatPromptEncoder(const Tokenizer& tokenizer, bool special_tokens_in_messages);

  // Throws nibble::Error when the template refuses the conversation, or when
  // message text holds special-token text and the template rewrites it so that
  // message text and markup can no longer be told apart.
  // `extra`: more template variables (tools).
  ChatPrompt encode(const ChatTemplate& chat_template, const nlohmann::ordered_json& messages,
                    bool add_generation_prompt = true,
                    const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

 private:
  // Message text with every special-token occurrence broken, byte for byte the
  // same length; false when there was none.
  bool defuse(nlohmann::ordered_json& value) const;

  const Tokenizer& tokenizer_;
  bool special_tokens_in_messages_;
  char filler_ = 0;  // an ASCII byte no special token starts with
};

}  // namespace nibble::server
