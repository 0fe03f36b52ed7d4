#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace nibble {
namespace {

// Whitespace as Rust's char::is_whitespace sees it, scanning backwards over UTF-8.
std::size_t space_before(std::string_view text, std::size_t end, std::size_t floor) {
  while (end > floor) {
    std::size_t start = end - 1;
    while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    std::size_t pos = start;
    if (!unicode::is_space(unicode::next(text, pos)) || pos != end) break;
    end = start;
  }
  return end;
}

std::size_t space_after(std::string_view text, std::size_t start) {
  while (start < text.size()) {
    std::size_t pos = start;
    if (!unicode::is_space(unicode::next(text, pos))) break;
    start = pos;
  }
  return start;
}

bool is_word_char(char32_t c) { return c == '_' || unicode::is_letter(c) || unicode::is_number(c); }

bool word_char_before(std::string_view text, std::size_t at) {
  if (at == 0) return false;
  std::size_t start = at - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return is_word_char(unicode::next(text, start));
}

bool word_char_after(std::string_view text, std::size_t at) {
  return at < text.size() && is_word_char(unicode::next(text, at));
}

// Whether [begin, end) shares a byte with one of the sorted, disjoint `ranges`.
bool overlaps(std::span<const TextRange> ranges, std::size_t begin, std::size_t end) {
  const auto after = std::upper_bound(ranges.begin(), ranges.end(), begin,
                                      [](std::size_t at, const TextRange& r) { return at < r.end; });
  return after != ranges.end() && after->begin < end;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  std::erase_if(tokens_, [](const AddedToken& t) { return t.content.empty(); });
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (std::size_t i = 0; i < tokens_.size(); ++i)
    by_first_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
}

const AddedToken* AddedTokenMatcher::match_at(std::string_view text, std::size_t pos,
                                               std::span<const TextRange> plain) const {
  for (std::size_t index : by_first_[static_cast<unsigned char>(text[pos])]) {
    const AddedToken& token = tokens_[index];
    const std::size_t end = pos + token.content.size();
    if (text.compare(pos, token.content.size(), token.content) != 0) continue;
    if (token.single_word && (word_char_before(text, pos) || word_char_after(text, end))) continue;
    if (token.special && overlaps(plain, pos, end)) continue;
    return &token;
  }
  return nullptr;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<TextSegment>& out,
                              std::span<const TextRange> plain) const {
  std::size_t done = 0;  // end of the last emitted segment
  for (std::size_t pos = 0; pos < text.size(); ++pos) {
    const AddedToken* hit = match_at(text, pos, plain);
    if (hit == nullptr) continue;
    const std::size_t start = hit->lstrip ? space_before(text, pos, done) : pos;
    const std::size_t end =
        hit->rstrip ? space_after(text, pos + hit->content.size()) : pos + hit->content.size();
    if (start > done) out.push_back({text.substr(done, start - done), -1, done});
    out.push_back({{}, hit->id, start});
    done = end;
    pos = end - 1;
  }
  if (done < text.size()) out.push_back({text.substr(done), -1, done});
}

std::vector<TextRange> AddedTokenMatcher::find_special(std::string_view text) const {
  std::vector<TextRange> found;
  for (std::size_t pos = 0; pos < text.size(); ++pos) {
    const AddedToken* hit = match_at(text, pos, {});
    if (hit == nullptr) continue;
    const std::size_t end = pos + hit->content.size();
    if (hit->special) found.push_back({pos, end});
    pos = end - 1;
  }
  return found;
}

}  // namespace nibble
