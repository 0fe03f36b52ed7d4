#pragma once
// Hugging Face decoder chains (ByteLevel, Replace, ByteFallback, Fuse, Strip,
// Metaspace), applied exactly as the `tokenizers` library does.
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace nibble {

struct DecoderStep {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
  Kind kind;
  std::string from, to;           // Replace: pattern and content; Metaspace: replacement in `from`
  char32_t strip_char = ' ';      // Strip
  std::size_t strip_start = 0, strip_stop = 0;
  bool metaspace_prepends = true; // Metaspace: prepend_scheme != never
};

class Decoder {
 public:
  Decoder() = default;
  explicit Decoder(std::vector<DecoderStep> steps) : steps_(std::move(steps)) {}

  std::string decode(std::span<const std::string_view> tokens) const;
  // What one token contributes in the middle of a sequence (raw, possibly partial UTF-8).
  std::string token_bytes(std::string_view token) const;
  bool strips_leading_space() const;

 private:
  std::vector<DecoderStep> steps_;
};

// "<0x41>" -> 0x41; -1 for anything else.
int parse_byte_token(std::string_view token);

}  // namespace nibble
