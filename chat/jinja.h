#pragma once
// A Jinja interpreter for the subset Hugging Face chat templates use, rendering the
// way transformers does (jinja2 with trim_blocks, lstrip_blocks and loopcontrols) so
// prompts match the model's training format byte for byte. Templates come from
// model files, so every failure — bad syntax, a runaway loop, a template's own
// raise_exception — is a nibble::Error, never a crash.
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "chat/jinja_value.h"

namespace nibble::jinja {

struct Node;

// Bounds on one render, so a hostile template fails cleanly instead of exhausting memory.
struct RenderLimits {
  size_t max_output_bytes = size_t{16} << 20;
  size_t max_loop_iterations = 1'000'000;  // summed over all loops, range() included
  int max_call_depth = 64;                 // macro recursion
};

class Template {
 public:
  // Parses now; throws Error("line N: ...") for bad syntax.
  explicit Template(std::string_view source);

  // `variables` is a JSON object of top-level names; `functions` adds callables
  // (e.g. raise_exception). range() and namespace() are always there.
  std::string render(const Json& variables, const std::map<std::string, Value>& functions = {},
                     const RenderLimits& limits = {}) const;

 private:
  std::shared_ptr<const std::vector<Node>> body_;
};

}  // namespace nibble::jinja
