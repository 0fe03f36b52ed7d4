#include "chat/chat_template.h"

#include <ctime>

#include "common/error.h"

namespace nibble {
namespace {

std::string strftime_local(const std::string& format) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[256];
  const size_t n = std::strftime(buffer, sizeof buffer, format.c_str(), &local);
  return std::string(buffer, n);
}

std::string string_argument(jinja::CallArgs& args, const char* function) {
  if (args.positional.size() != 1 || !args.positional[0].is_string()) {
    fail("chat template: {}() takes one string argument", function);
  }
  return args.positional[0].data.get<std::string>();
}

}  // namespace

ChatTemplate::ChatTemplate(std::string_view source, std::string bos_token, std::string eos_token)
    : template_([&] {
        try {
          return jinja::Template(source);
        } catch (const Error& e) {
          fail("chat template: {}", e.what());
        }
      }()),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      strftime_now_(strftime_local) {}

void ChatTemplate::set_clock(std::function<std::string(const std::string&)> strftime_now) {
  strftime_now_ = std::move(strftime_now);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) fail("chat template: messages must be a list");
  if (!extra.is_null() && !extra.is_object()) fail("chat template: extra variables must be an object");
  jinja::Json variables = extra.is_null() ? jinja::Json::object() : extra;
  variables["messages"] = messages;
  variables["bos_token"] = bos_token_;
  variables["eos_token"] = eos_token_;
  variables["add_generation_prompt"] = add_generation_prompt;

  std::map<std::string, jinja::Value> functions;
  functions["raise_exception"] = jinja::Value::function([](jinja::CallArgs& args) -> jinja::Value {
    throw Error("chat template raised an error: " + string_argument(args, "raise_exception"));
  });
  functions["strftime_now"] = jinja::Value::function([this](jinja::CallArgs& args) {
    return jinja::Value::of(strftime_now_(string_argument(args, "strftime_now")));
  });
  try {
    return template_.render(variables, functions, limits_);
  } catch (const Error& e) {
    if (std::string_view(e.what()).starts_with("chat template")) throw;
    fail("chat template: {}", e.what());
  }
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render(nlohmann::ordered_json::parse(messages.dump()), add_generation_prompt,
                extra.is_null() ? nlohmann::ordered_json::object() : nlohmann::ordered_json::parse(extra.dump()));
}

}  // namespace nibble
