#pragma once
// A model's chat template (tokenizer_config.json `chat_template` or GGUF
// `tokenizer.chat_template`) turned into the prompt text the model was trained on,
// with the variables and functions transformers' apply_chat_template provides.
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "chat/jinja.h"

namespace nibble {

class ChatTemplate {
 public:
  // Parses the template now, so a broken one fails at load time (nibble::Error).
  ChatTemplate(std::string_view source, std::string bos_token, std::string eos_token);

  // Renders `messages` (a JSON list of {"role", "content", ...}). `extra` holds more
  // top-level variables (tools, enable_thinking, ...). Throws nibble::Error, carrying
  // the template's own message when it calls raise_exception().
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  // The same from unordered JSON (dict keys then iterate in sorted order).
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nlohmann::json::object()) const;

  // What strftime_now(format) returns; the default formats the current local time.
  // Tests pin it so renders are reproducible.
  void set_clock(std::function<std::string(const std::string& format)> strftime_now);

  void set_limits(const jinja::RenderLimits& limits) { limits_ = limits; }

 private:
  jinja::Template template_;
  std::string bos_token_, eos_token_;
  std::function<std::string(const std::string&)> strftime_now_;
  jinja::RenderLimits limits_;
};

}  // namespace nibble
