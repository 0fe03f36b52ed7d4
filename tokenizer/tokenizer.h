#pragma once
// Text <-> token ids. Implementations: Hugging Face tokenizer.json (byte-level BPE
// and SentencePiece-style BPE), GGUF vocabularies (same BPE engine) and
// SentencePiece tokenizer.model files (libsentencepiece).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/token.h"

namespace nibble {

// Bytes [begin, end) of a text.
struct TextRange {
  std::size_t begin = 0, end = 0;
  bool operator==(const TextRange&) const = default;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Special/added tokens written in the text ("<|im_start|>") are matched as single
  // tokens, as Hugging Face does. add_special adds BOS/EOS as the model's
  // tokenizer config asks (post-processor / add_bos_token).
  std::vector<TokenId> encode(std::string_view text, bool add_special) const { return encode(text, add_special, {}); }
  // The same, except that no special token is matched where it would overlap one
  // of the `plain` ranges (sorted, disjoint): there its text is ordinary text, as
  // with Hugging Face's split_special_tokens. This is how untrusted text inside a
  // prompt (chat message contents) is kept from forging control tokens.
  virtual std::vector<TokenId> encode(std::string_view text, bool add_special,
                                      std::span<const TextRange> plain) const = 0;
  // Where encode() would match special tokens in `text` (leftmost, longest first).
  virtual std::vector<TextRange> find_special_tokens(std::string_view text) const = 0;
  // Full decode, equal to Hugging Face's decode(ids, skip_special_tokens=skip_special).
  virtual std::string decode(std::span<const TokenId> ids, bool skip_special) const = 0;

  // The raw bytes token `id` contributes when it follows other tokens (byte-level
  // symbols mapped back, "▁" -> " ", <0xNN> -> that byte). May be a partial UTF-8
  // sequence. Special tokens give their content.
  virtual std::string token_bytes(TokenId id) const = 0;
  // Whether decode() of a sequence starting with this token drops one leading space
  // (SentencePiece-style decoders strip the space the normalizer prepended).
  virtual bool strips_leading_space() const = 0;

  virtual std::size_t vocab_size() const = 0;
  virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(TokenId id) const = 0;  // the vocabulary string
  virtual bool is_special(TokenId id) const = 0;
  virtual std::optional<TokenId> bos_id() const = 0;
  virtual std::vector<TokenId> eos_ids() const = 0;
};

// Turns a stream of ids into text pieces that never split a UTF-8 character:
// bytes of an incomplete character are held back until it completes.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  // The ids to come continue the text of `context` (a completion its prompt): a
  // decoder that strips the leading space then keeps the first token's, as
  // decode(context + ids) has it after decode(context). Nothing of the context is
  // output. Call before the first push.
  void follow(std::span<const TokenId> context);
  std::string push(TokenId id);  // text that became complete with this token
  std::string flush();           // whatever is left (invalid bytes become U+FFFD)

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool at_start_ = true;
  std::string pending_;
};

// Loads the tokenizer that belongs to a model path: a .gguf file (its embedded
// vocabulary), or a folder with tokenizer.json (preferred) or tokenizer.model,
// plus tokenizer_config.json for special tokens and add_bos/add_eos.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_path);

}  // namespace nibble
