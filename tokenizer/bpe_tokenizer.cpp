#include "tokenizer/bpe_tokenizer.h"

#include "common/error.h"
#include "common/log.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeTokenizerSpec spec)
    : vocab_(std::move(spec.vocab)),
      normalizer_(std::move(spec.normalizer)),
      metaspace_(std::move(spec.metaspace)),
      byte_level_(spec.byte_level),
      byte_level_prefix_space_(spec.byte_level_prefix_space),
      splitters_(std::move(spec.splitters)),
      decoder_(std::move(spec.decoder)),
      prefix_(std::move(spec.prefix)),
      suffix_(std::move(spec.suffix)),
      bos_(spec.bos),
      eos_(std::move(spec.eos)) {
  if (byte_level_ && metaspace_) fail("tokenizer combines ByteLevel and Metaspace pre-tokenizers");
  for (const AddedToken& t : spec.added_tokens) {
    if (t.id < 0) fail("added token {} has a negative id", log::quoted(t.content));
    if (static_cast<std::size_t>(t.id) >= vocab_.size()) vocab_.resize(static_cast<std::size_t>(t.id) + 1);
    if (vocab_[static_cast<std::size_t>(t.id)].empty()) vocab_[static_cast<std::size_t>(t.id)] = t.content;
  }
  token_ids_.reserve(vocab_.size());
  for (std::size_t id = 0; id < vocab_.size(); ++id)
    if (!vocab_[id].empty()) token_ids_.try_emplace(vocab_[id], static_cast<TokenId>(id));

  special_.assign(vocab_.size(), false);
  token_bytes_.resize(vocab_.size());
  for (std::size_t id = 0; id < vocab_.size(); ++id) token_bytes_[id] = decoder_.token_bytes(vocab_[id]);
  for (const AddedToken& t : spec.added_tokens) {
    const auto id = static_cast<std::size_t>(t.id);
    special_[id] = special_[id] || t.special;
    // Decoding uses the added token's own text (tokenizers' id_to_token prefers it).
    vocab_[id] = t.content;
    token_bytes_[id] = decoder_.token_bytes(t.content);
    token_ids_.insert_or_assign(t.content, t.id);
  }
  auto check_id = [&](TokenId id, const char* what) {
    if (id < 0 || static_cast<std::size_t>(id) >= vocab_.size()) fail("{} token id {} is outside the vocabulary", what, id);
  };
  for (TokenId id : prefix_) check_id(id, "post-processor");
  for (TokenId id : suffix_) check_id(id, "post-processor");
  if (bos_) check_id(*bos_, "BOS");
  for (TokenId id : eos_) check_id(id, "EOS");
  if (spec.options.unk) check_id(*spec.options.unk, "unknown");

  added_ = AddedTokenMatcher(std::move(spec.added_tokens));
  spec.options.cache_words = byte_level_;
  model_ = std::make_unique<BpeModel>(token_ids_, spec.merges, spec.options);
}

std::vector<TokenId> BpeTokenizer::encode(std::string_view text, bool add_special,
                                          std::span<const TextRange> plain) const {
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + prefix_.size() + suffix_.size() + 1);
  if (add_special) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
  std::vector<TextSegment> segments;
  added_.split(text, segments, plain);
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      encode_segment(segment.text, segment.offset == 0, ids);
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

void BpeTokenizer::encode_segment(std::string_view text, bool at_start, std::vector<TokenId>& out) const {
  std::string normalized(text);
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::Kind::Nfc: normalized = unicode::nfc(normalized); break;
      case NormalizerStep::Kind::Prepend:
        if (!normalized.empty()) normalized.insert(0, step.to);
        break;
      case NormalizerStep::Kind::Replace: replace_all(normalized, step.from, step.to); break;
    }
  }
  if (normalized.empty()) return;

  if (metaspace_) {
    replace_all(normalized, " ", metaspace_->replacement);
    const bool prepend = metaspace_->prepend == PrependScheme::Always ||
                         (metaspace_->prepend == PrependScheme::First && at_start);
    if (prepend && !normalized.starts_with(metaspace_->replacement)) normalized.insert(0, metaspace_->replacement);
  } else if (byte_level_ && byte_level_prefix_space_ && !normalized.starts_with(' ')) {
    normalized.insert(0, 1, ' ');
  }

  std::vector<std::string_view> words;
  if (metaspace_ && metaspace_->split) {
    // Each replacement character begins a new word (MergedWithNext).
    std::vector<std::string_view> pieces;
    const std::string_view all(normalized);
    const std::string& r = metaspace_->replacement;
    std::size_t start = 0;
    for (std::size_t hit = all.find(r, r.size()); hit != std::string_view::npos; hit = all.find(r, hit + r.size())) {
      if (hit > start) pieces.push_back(all.substr(start, hit - start));
      start = hit;
    }
    pieces.push_back(all.substr(start));
    for (std::string_view piece : pieces) split_all(splitters_, piece, words);
  } else {
    split_all(splitters_, normalized, words);
  }

  if (!byte_level_) {
    for (std::string_view word : words) model_->encode(word, out);
    return;
  }
  std::string mapped;
  for (std::string_view word : words) {
    mapped.clear();
    byte_level::encode(word, mapped);
    model_->encode(mapped, out);
  }
}

std::string_view BpeTokenizer::token_text(TokenId id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= vocab_.size()) fail("token id {} is outside the vocabulary", id);
  return vocab_[static_cast<std::size_t>(id)];
}

std::string BpeTokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::vector<std::string_view> tokens;
  tokens.reserve(ids.size());
  for (TokenId id : ids) {
    const std::string_view text = token_text(id);
    if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
    tokens.push_back(text);
  }
  return decoder_.decode(tokens);
}

std::string BpeTokenizer::token_bytes(TokenId id) const {
  token_text(id);
  return token_bytes_[static_cast<std::size_t>(id)];
}

std::optional<TokenId> BpeTokenizer::token_to_id(std::string_view token) const {
  auto it = token_ids_.find(token);
  if (it == token_ids_.end()) return std::nullopt;
  return it->second;
}

std::string BpeTokenizer::id_to_token(TokenId id) const { return std::string(token_text(id)); }

bool BpeTokenizer::is_special(TokenId id) const {
  return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[static_cast<std::size_t>(id)];
}

}  // namespace nibble
