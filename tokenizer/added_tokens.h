#pragma once
// Added tokens (special tokens such as "<|im_start|>", user-defined pieces) are cut
// out of the text before normalization and BPE, leftmost match first and the longest
// at that position, as Hugging Face's AddedVocabulary does.
#include <array>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace nibble {

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // swallows whitespace to its left
  bool rstrip = false;       // swallows whitespace to its right
  bool single_word = false;  // only matches with no word character on either side
};

struct TextSegment {
  std::string_view text;  // empty when this is an added token
  TokenId id = -1;        // the added token, or -1 for text
  std::size_t offset = 0; // byte offset of the segment in the input
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Special tokens overlapping a range of `plain` (sorted, disjoint) are not
  // matched: their text stays in the surrounding text segment.
  void split(std::string_view text, std::vector<TextSegment>& out, std::span<const TextRange> plain = {}) const;
  // Where special tokens occur in `text`, as split() would cut them out.
  std::vector<TextRange> find_special(std::string_view text) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  const AddedToken* match_at(std::string_view text, std::size_t pos, std::span<const TextRange> plain) const;

  std::vector<AddedToken> tokens_;                       // longest content first
  std::array<std::vector<std::size_t>, 256> by_first_;  // indices into tokens_ by first byte
};

}  // namespace nibble
