// GGUF vocabularies (tokenizer.ggml.*) and SentencePiece-style vocabularies given as
// pieces + scores, both served by the BPE tokenizer.
#include <algorithm>

#include "common/error.h"
#include "common/log.h"
#include "loader/gguf.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/readers.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

constexpr int kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kByte = 6;
const std::string kSpace = "\xE2\x96\x81";  // "▁"

// llama.cpp's tokenizer.ggml.pre names, mapped to the splits the matching Hugging Face
// tokenizer.json performs.
std::vector<Splitter> gguf_splitters(const std::string& pre, bool& ignore_merges) {
  std::vector<Splitter> s;
  ignore_merges = false;
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2" || pre == "olmo" || pre == "mpt") {
    s.emplace_back(SplitKind::Gpt2);
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe" || pre == "dbrx") {
    s.emplace_back(SplitKind::Llama3);
    ignore_merges = true;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    s.emplace_back(SplitKind::Qwen2);
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell" || pre == "command-r" ||
             pre == "exaone" || pre == "minerva") {
    // Digits(individual_digits) then ByteLevel's GPT-2 regex.
    s.emplace_back(SplitKind::EachDigit);
    s.emplace_back(SplitKind::Gpt2);
  } else {
    fail("unsupported GGUF pre-tokenizer tokenizer.ggml.pre = {}", log::quoted(pre));
  }
  return s;
}

std::vector<AddedToken> added_from_types(const std::vector<std::string>& tokens, const std::vector<int>& types) {
  std::vector<AddedToken> added;
  for (std::size_t id = 0; id < types.size(); ++id) {
    const int type = types[id];
    if (type != kUnknown && type != kControl && type != kUserDefined) continue;
    AddedToken token;
    token.id = static_cast<TokenId>(id);
    token.content = tokens[id];
    token.special = type != kUserDefined;
    added.push_back(std::move(token));
  }
  return added;
}

std::vector<int> int_types(const GgufFile& gguf, std::size_t n) {
  if (!gguf.has("tokenizer.ggml.token_type")) return {};
  const auto raw = gguf.get_int_array("tokenizer.ggml.token_type");
  if (raw.size() != n) fail("tokenizer.ggml.token_type has {} entries for {} tokens", raw.size(), n);
  return std::vector<int>(raw.begin(), raw.end());
}

std::optional<TokenId> optional_id(const GgufFile& gguf, const std::string& key, std::size_t n) {
  auto v = gguf.find_int(key);
  if (!v) return std::nullopt;
  if (*v < 0 || static_cast<std::size_t>(*v) >= n) fail("{} = {} is outside the vocabulary", key, *v);
  return static_cast<TokenId>(*v);
}

bool optional_bool(const GgufFile& gguf, const std::string& key, bool fallback) {
  return gguf.has(key) ? gguf.get_bool(key) : fallback;
}

BpeTokenizerSpec gpt2_vocab_spec(const GgufFile& gguf) {
  BpeTokenizerSpec spec;
  spec.vocab = gguf.get_string_array("tokenizer.ggml.tokens");
  const std::size_t n = spec.vocab.size();
  for (const std::string& merge : gguf.get_string_array("tokenizer.ggml.merges")) {
    const auto space = merge.find(' ');
    if (space == std::string::npos) fail("malformed tokenizer.ggml.merges entry {}", log::quoted(merge));
    spec.merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
  }
  const std::string pre = gguf.find_string("tokenizer.ggml.pre").value_or("default");
  spec.splitters = gguf_splitters(pre, spec.options.ignore_merges);
  // Qwen2's tokenizer.json normalizes to NFC before splitting; its GGUF cannot say so.
  if (spec.splitters.front().kind() == SplitKind::Qwen2) spec.normalizer.push_back({NormalizerStep::Kind::Nfc, {}, {}});
  spec.byte_level = true;
  spec.decoder.push_back({DecoderStep::Kind::ByteLevel, {}, {}});
  spec.added_tokens = added_from_types(spec.vocab, int_types(gguf, n));
  spec.bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", n);
  if (auto eos = optional_id(gguf, "tokenizer.ggml.eos_token_id", n)) spec.eos.push_back(*eos);
  if (auto eot = optional_id(gguf, "tokenizer.ggml.eot_token_id", n); eot && !std::ranges::count(spec.eos, *eot))
    spec.eos.push_back(*eot);
  // llama.cpp adds BOS for BPE vocabularies only when asked (Llama-3 asks).
  const bool add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token", spec.options.ignore_merges);
  const bool add_eos = optional_bool(gguf, "tokenizer.ggml.add_eos_token", false);
  if (add_bos && spec.bos) spec.prefix.push_back(*spec.bos);
  if (add_eos && !spec.eos.empty()) spec.suffix.push_back(spec.eos.front());
  return spec;
}

SpmVocab llama_vocab(const GgufFile& gguf) {
  SpmVocab vocab;
  vocab.pieces = gguf.get_string_array("tokenizer.ggml.tokens");
  const std::size_t n = vocab.pieces.size();
  vocab.scores = gguf.get_float_array("tokenizer.ggml.scores");
  if (vocab.scores.size() != n) fail("tokenizer.ggml.scores has {} entries for {} tokens", vocab.scores.size(), n);
  vocab.types = int_types(gguf, n);
  vocab.unk = optional_id(gguf, "tokenizer.ggml.unknown_token_id", n).value_or(0);
  vocab.bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", n);
  vocab.eos = optional_id(gguf, "tokenizer.ggml.eos_token_id", n);
  vocab.add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token", true);
  vocab.add_eos = optional_bool(gguf, "tokenizer.ggml.add_eos_token", false);
  vocab.add_space_prefix = optional_bool(gguf, "tokenizer.ggml.add_space_prefix", true);
  return vocab;
}

}  // namespace

std::unique_ptr<Tokenizer> make_spm_bpe_tokenizer(const SpmVocab& vocab) {
  return std::make_unique<BpeTokenizer>(spm_bpe_spec(vocab));
}

BpeTokenizerSpec spm_bpe_spec(const SpmVocab& vocab) {
  const std::size_t n = vocab.pieces.size();
  if (vocab.scores.size() != n) fail("{} scores for {} pieces", vocab.scores.size(), n);
  std::vector<int> types = vocab.types;
  if (types.empty()) {
    types.assign(n, kNormal);
    for (std::size_t id = 0; id < n; ++id)
      if (parse_byte_token(vocab.pieces[id]) >= 0) types[id] = kByte;
    auto mark = [&](std::optional<TokenId> id) {
      if (id && *id >= 0 && static_cast<std::size_t>(*id) < n) types[static_cast<std::size_t>(*id)] = kControl;
    };
    mark(vocab.bos);
    mark(vocab.eos);
    if (vocab.unk >= 0 && static_cast<std::size_t>(vocab.unk) < n) types[static_cast<std::size_t>(vocab.unk)] = kUnknown;
  }
  if (types.size() != n) fail("{} token types for {} pieces", types.size(), n);

  BpeTokenizerSpec spec;
  spec.vocab = vocab.pieces;
  TokenMap ids;
  ids.reserve(n);
  for (std::size_t id = 0; id < n; ++id) ids.try_emplace(vocab.pieces[id], static_cast<TokenId>(id));

  // Every split of a piece into two pieces is a merge, ranked by the merged piece's
  // score (best first; ties by piece id, then by the halves' ids), which is how
  // transformers converts SentencePiece BPE models to tokenizer.json.
  struct Candidate {
    float score;
    TokenId merged, left, right;
  };
  std::vector<Candidate> candidates;
  for (std::size_t id = 0; id < n; ++id) {
    const int type = types[id];
    if (type != kNormal && type != kUserDefined) continue;
    const std::string& piece = vocab.pieces[id];
    for (std::size_t cut = 0; cut < piece.size();) {
      unicode::next(piece, cut);
      if (cut >= piece.size()) break;
      auto l = ids.find(std::string_view(piece).substr(0, cut));
      auto r = ids.find(std::string_view(piece).substr(cut));
      if (l != ids.end() && r != ids.end())
        candidates.push_back({vocab.scores[id], static_cast<TokenId>(id), l->second, r->second});
    }
  }
  std::ranges::stable_sort(candidates, [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.merged != b.merged) return a.merged < b.merged;
    return a.left != b.left ? a.left < b.left : a.right < b.right;
  });
  spec.merges.reserve(candidates.size());
  for (const Candidate& c : candidates)
    spec.merges.emplace_back(vocab.pieces[static_cast<std::size_t>(c.left)], vocab.pieces[static_cast<std::size_t>(c.right)]);

  spec.options.byte_fallback = true;
  spec.options.fuse_unk = true;
  spec.options.unk = vocab.unk;
  spec.added_tokens = added_from_types(vocab.pieces, types);
  if (vocab.add_space_prefix) spec.normalizer.push_back({NormalizerStep::Kind::Prepend, {}, kSpace});
  spec.normalizer.push_back({NormalizerStep::Kind::Replace, " ", kSpace});
  spec.decoder = {{DecoderStep::Kind::Replace, kSpace, " "},
                  {DecoderStep::Kind::ByteFallback, {}, {}},
                  {DecoderStep::Kind::Fuse, {}, {}}};
  if (vocab.add_space_prefix) {
    DecoderStep strip{DecoderStep::Kind::Strip, {}, {}};
    strip.strip_start = 1;
    spec.decoder.push_back(strip);
  }
  spec.bos = vocab.bos;
  if (vocab.eos) spec.eos.push_back(*vocab.eos);
  if (vocab.add_bos && vocab.bos) spec.prefix.push_back(*vocab.bos);
  if (vocab.add_eos && vocab.eos) spec.suffix.push_back(*vocab.eos);
  return spec;
}

BpeTokenizerSpec gguf_tokenizer_spec(const GgufFile& gguf) {
  try {
    const std::string model = gguf.get_string("tokenizer.ggml.model");
    if (model == "gpt2") return gpt2_vocab_spec(gguf);
    if (model == "llama") return spm_bpe_spec(llama_vocab(gguf));
    fail("unsupported tokenizer.ggml.model {} (gpt2 and llama are)", log::quoted(model));
  } catch (const Error& e) {
    fail("{}: {}", gguf.path().string(), e.what());
  }
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& gguf) {
  return std::make_unique<BpeTokenizer>(gguf_tokenizer_spec(gguf));
}

}  // namespace nibble
