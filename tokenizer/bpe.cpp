#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <queue>

#include "tokenizer/unicode.h"

namespace nibble {
namespace {

std::uint64_t pair_key(TokenId left, TokenId right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

// Bounds the cache so a long-running server fed unique words cannot grow it forever.
constexpr std::size_t kMaxCachedWords = 1 << 16;
constexpr std::size_t kMaxCachedWordBytes = 256;

}  // namespace

BpeModel::BpeModel(const TokenMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options)
    : vocab_(vocab), options_(options) {
  merges_.reserve(merges.size());
  std::string joined;
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    auto l = vocab.find(left);
    auto r = vocab.find(right);
    joined = left;
    joined += right;
    auto m = vocab.find(joined);
    if (l == vocab.end() || r == vocab.end() || m == vocab.end()) continue;
    // The first occurrence of a pair wins, as in Hugging Face.
    merges_.try_emplace(pair_key(l->second, r->second), Merge{static_cast<std::uint32_t>(rank), m->second});
  }
  if (options_.byte_fallback) {
    have_byte_tokens_ = true;
    for (int b = 0; b < 256; ++b) {
      auto it = vocab.find(fmt::format("<0x{:02X}>", b));
      if (it == vocab.end()) {
        have_byte_tokens_ = false;
        break;
      }
      byte_tokens_[b] = it->second;
    }
  }
}

const BpeModel::Merge* BpeModel::find_merge(TokenId left, TokenId right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::encode(std::string_view word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (!options_.cache_words || word.size() > kMaxCachedWordBytes) {
    encode_uncached(word, out);
    return;
  }
  {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t start = out.size();
  encode_uncached(word, out);
  std::lock_guard lock(cache_mutex_);
  if (cache_.size() >= kMaxCachedWords) cache_.clear();
  cache_.emplace(std::string(word),
                 std::vector<TokenId>(out.begin() + static_cast<std::ptrdiff_t>(start), out.end()));
}

void BpeModel::encode_uncached(std::string_view word, std::vector<TokenId>& out) const {
  // Symbols form a linked list over a vector; a merged-away symbol gets id -1.
  struct Symbol {
    TokenId id;
    int prev, next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_unknown = false;
  auto push = [&](TokenId id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, index + 1});
  };
  for (std::size_t pos = 0; pos < word.size();) {
    const std::size_t start = pos;
    unicode::next(word, pos);
    const std::string_view ch = word.substr(start, pos - start);
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      push(it->second);
      last_unknown = false;
    } else if (have_byte_tokens_) {
      for (char byte : ch) push(byte_tokens_[static_cast<unsigned char>(byte)]);
      last_unknown = false;
    } else if (options_.unk) {
      if (!(options_.fuse_unk && last_unknown)) push(*options_.unk);
      last_unknown = true;
    }
    // Without an unk token Hugging Face drops the character; so do we.
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    std::uint32_t rank;
    int left;
    TokenId result;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = symbols[static_cast<std::size_t>(left)].next;
    if (right < 0) return;
    if (const Merge* m = find_merge(symbols[static_cast<std::size_t>(left)].id, symbols[static_cast<std::size_t>(right)].id))
      queue.push({m->rank, left, m->result});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(top.left)];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[static_cast<std::size_t>(left.next)];
    // Stale entry: one side has merged since it was queued.
    const Merge* m = find_merge(left.id, right.id);
    if (m == nullptr || m->rank != top.rank || m->result != top.result) continue;
    left.id = top.result;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.left;
    consider(left.prev);
    consider(top.left);
  }
  for (int i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next) out.push_back(symbols[static_cast<std::size_t>(i)].id);
}

}  // namespace nibble
