#pragma once
// OpenAI `stop` strings over streamed text: generation ends where the first one
// completes and the text returned stops just before it. While streaming, text that might be the
// start of a stop string is held back until the next piece settles it, so a client
// never receives part of a stop string.
#include <string>
#include <string_view>
#include <vector>

namespace nibble::server {

class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stop);

  struct Output {
    std::string text;      // safe to send now
    bool stopped = false;  // a stop string appeared; `text` ends right before it
  };
  // Adds the next piece of generated text.
  Output push(std::string_view piece);
  // The held-back text at the end of generation (no stop string followed).
  std::string flush();

 private:
  std::vector<std::string> stop_;
  std::string pending_;  // received, held back as a possible start of a stop string
  bool stopped_ = false;
};

}  // namespace nibble::server
