#pragma once
// The BPE tokenizer behind tokenizer.json and GGUF vocabularies: added-token split,
// normalizer, pre-tokenizer, BPE model, post-processor and decoder, each configured
// from a BpeTokenizerSpec that the format readers fill in.
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace nibble {

struct NormalizerStep {
  enum class Kind { Nfc, Prepend, Replace };
  Kind kind;
  std::string from, to;  // Prepend: text in `to`; Replace: pattern -> content
};

enum class PrependScheme { Never, First, Always };

struct MetaspaceSpec {
  std::string replacement = "\xE2\x96\x81";  // "▁"
  PrependScheme prepend = PrependScheme::Always;
  bool split = false;  // each replacement starts a new word
};

struct BpeTokenizerSpec {
  std::vector<std::string> vocab;  // id -> token; holes are empty strings
  std::vector<std::pair<std::string, std::string>> merges;  // priority order
  BpeOptions options;
  std::vector<AddedToken> added_tokens;
  std::vector<NormalizerStep> normalizer;
  // Pre-tokenizer: Metaspace (SentencePiece style) or byte-level, then the splitters.
  std::optional<MetaspaceSpec> metaspace;
  bool byte_level = false;
  bool byte_level_prefix_space = false;
  std::vector<Splitter> splitters;
  std::vector<DecoderStep> decoder;
  // Post-processor for add_special.
  std::vector<TokenId> prefix, suffix;
  std::optional<TokenId> bos;
  std::vector<TokenId> eos;
};

class GgufFile;
struct SpmVocab;

// The spec of the vocabulary embedded in a GGUF file (what load_gguf_tokenizer
// builds; nibble convert --tokenizer-only writes it as tokenizer.json).
BpeTokenizerSpec gguf_tokenizer_spec(const GgufFile& gguf);
// The spec of a SentencePiece-style vocabulary (make_spm_bpe_tokenizer builds it).
BpeTokenizerSpec spm_bpe_spec(const SpmVocab& vocab);

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeTokenizerSpec spec);

  using Tokenizer::encode;
  std::vector<TokenId> encode(std::string_view text, bool add_special, std::span<const TextRange> plain) const override;
  std::vector<TextRange> find_special_tokens(std::string_view text) const override { return added_.find_special(text); }
  std::string decode(std::span<const TokenId> ids, bool skip_special) const override;
  std::string token_bytes(TokenId id) const override;
  bool strips_leading_space() const override { return decoder_.strips_leading_space(); }
  std::size_t vocab_size() const override { return vocab_.size(); }
  std::optional<TokenId> token_to_id(std::string_view token) const override;
  std::string id_to_token(TokenId id) const override;
  bool is_special(TokenId id) const override;
  std::optional<TokenId> bos_id() const override { return bos_; }
  std::vector<TokenId> eos_ids() const override { return eos_; }

 private:
  void encode_segment(std::string_view text, bool at_start, std::vector<TokenId>& out) const;
  std::string_view token_text(TokenId id) const;

  std::vector<std::string> vocab_;
  TokenMap token_ids_;
  std::vector<bool> special_;
  AddedTokenMatcher added_;
  std::vector<NormalizerStep> normalizer_;
  std::optional<MetaspaceSpec> metaspace_;
  bool byte_level_;
  bool byte_level_prefix_space_;
  std::vector<Splitter> splitters_;
  std::unique_ptr<BpeModel> model_;  // refers to token_ids_, so built after it
  Decoder decoder_;
  std::vector<std::string> token_bytes_;
  std::vector<TokenId> prefix_, suffix_;
  std::optional<TokenId> bos_;
  std::vector<TokenId> eos_;
};

}  // namespace nibble
