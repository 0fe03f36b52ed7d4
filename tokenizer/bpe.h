#pragma once
// The byte-pair-encoding engine shared by every BPE tokenizer: a word's symbols are
// merged lowest rank first (ties: leftmost), as Hugging Face's BPE model does.
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace nibble {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>>;

struct BpeOptions {
  bool byte_fallback = false;        // unknown characters become <0xNN> tokens
  bool ignore_merges = false;        // a word that is itself in the vocabulary is one token
  std::optional<TokenId> unk;        // for characters nothing else covers
  bool fuse_unk = false;             // consecutive unknowns give one unk
  bool cache_words = false;          // worth it when words repeat (byte-level pre-tokenized text)
};

class BpeModel {
 public:
  // `merges` in priority order (first = rank 0); pairs whose parts or result are not in
  // `vocab` are skipped, as they can never apply.
  BpeModel(const TokenMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);

  // Appends the ids of one pre-tokenized word (already in the vocabulary's alphabet).
  void encode(std::string_view word, std::vector<TokenId>& out) const;

 private:
  struct Merge {
    std::uint32_t rank;
    TokenId result;
  };
  void encode_uncached(std::string_view word, std::vector<TokenId>& out) const;
  const Merge* find_merge(TokenId left, TokenId right) const;

  const TokenMap& vocab_;
  BpeOptions options_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  TokenId byte_tokens_[256];
  bool have_byte_tokens_ = false;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<TokenId>, StringHash, std::equal_to<>> cache_;
};

}  // namespace nibble
