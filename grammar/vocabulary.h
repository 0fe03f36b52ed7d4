#pragma once
// The model's tokens as bytes, in a prefix tree laid out in preorder with each
// node's subtree end, so "which tokens can follow this parse" is one linear walk
// that skips every subtree whose prefix the grammar refuses.
#include <cstdint>
#include <string>
#include <vector>

#include "common/token.h"

namespace nibble::grammar {

class Vocabulary {
 public:
  // token_bytes[id]: what token id adds to the text; empty for tokens a grammar
  // never allows (special and control tokens). end_tokens end the output; they
  // are allowed once the grammar is complete.
  Vocabulary(std::vector<std::string> token_bytes, std::vector<TokenId> end_tokens);

  struct Node {
    std::uint8_t byte = 0;
    std::uint32_t depth = 0;        // bytes from the root (the root is not stored)
    std::uint32_t subtree_end = 0;  // first node after this one's subtree
    std::uint32_t tokens_begin = 0, tokens_end = 0;  // into token_order(): tokens spelled by this path
  };

  std::size_t size() const { return token_bytes_.size(); }
  const std::string& bytes(TokenId id) const { return token_bytes_[static_cast<std::size_t>(id)]; }
  const std::vector<TokenId>& end_tokens() const { return end_tokens_; }
  bool is_end(TokenId id) const;
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<TokenId>& token_order() const { return token_order_; }
  std::uint32_t max_depth() const { return max_depth_; }

 private:
  std::vector<std::string> token_bytes_;
  std::vector<TokenId> end_tokens_;
  std::vector<Node> nodes_;
  std::vector<TokenId> token_order_;
  std::uint32_t max_depth_ = 0;
};

}  // namespace nibble::grammar
