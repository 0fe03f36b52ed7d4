#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace nibble {

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

void IncrementalDecoder::follow(std::span<const TokenId> context) {
  for (const TokenId id : context) {
    if (skip_special_ && tokenizer_.is_special(id)) continue;
    if (!tokenizer_.token_bytes(id).empty()) {
      at_start_ = false;
      return;
    }
  }
}

std::string IncrementalDecoder::push(TokenId id) {
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  std::string bytes = tokenizer_.token_bytes(id);
  if (at_start_ && !bytes.empty()) {
    at_start_ = false;
    // Mirrors decode(): the space the normalizer prepended to the text is not output.
    if (tokenizer_.strips_leading_space() && bytes.front() == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  const std::size_t ready = unicode::complete_prefix(pending_);
  std::string out = unicode::to_valid_utf8(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out = unicode::to_valid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace nibble
