#include "grammar/vocabulary.h"

#include <algorithm>

namespace nibble::grammar {

Vocabulary::Vocabulary(std::vector<std::string> token_bytes, std::vector<TokenId> end_tokens)
    : token_bytes_(std::move(token_bytes)), end_tokens_(std::move(end_tokens)) {
  for (std::size_t id = 0; id < token_bytes_.size(); ++id) {
    if (!token_bytes_[id].empty() && !is_end(static_cast<TokenId>(id))) {
      token_order_.push_back(static_cast<TokenId>(id));
    }
  }
  std::sort(token_order_.begin(), token_order_.end(),
            [&](TokenId a, TokenId b) { return bytes(a) < bytes(b) || (bytes(a) == bytes(b) && a < b); });
  // Sorted strings give the preorder directly: each string adds the nodes past
  // its common prefix with the one before; a node's subtree ends when it is popped.
  std::vector<std::uint32_t> path;  // node index per depth - 1
  const std::string* previous = nullptr;
  for (std::uint32_t i = 0; i < token_order_.size(); ++i) {
    const std::string& s = bytes(token_order_[i]);
    std::size_t common = 0;
    if (previous != nullptr) {
      while (common < s.size() && common < previous->size() && s[common] == (*previous)[common]) ++common;
    }
    while (path.size() > common) {
      nodes_[path.back()].subtree_end = static_cast<std::uint32_t>(nodes_.size());
      path.pop_back();
    }
    for (std::size_t d = common; d < s.size(); ++d) {
      path.push_back(static_cast<std::uint32_t>(nodes_.size()));
      nodes_.push_back(Node{static_cast<std::uint8_t>(s[d]), static_cast<std::uint32_t>(d + 1), 0, i, i});
    }
    Node& last = nodes_[path.back()];
    if (last.tokens_end == last.tokens_begin) last.tokens_begin = i;
    last.tokens_end = i + 1;
    max_depth_ = std::max(max_depth_, static_cast<std::uint32_t>(s.size()));
    previous = &s;
  }
  while (!path.empty()) {
    nodes_[path.back()].subtree_end = static_cast<std::uint32_t>(nodes_.size());
    path.pop_back();
  }
}

bool Vocabulary::is_end(TokenId id) const {
  return std::find(end_tokens_.begin(), end_tokens_.end(), id) != end_tokens_.end();
}

}  // namespace nibble::grammar
