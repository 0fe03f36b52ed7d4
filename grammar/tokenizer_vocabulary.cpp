#include "grammar/tokenizer_vocabulary.h"

namespace nibble::grammar {

std::shared_ptr<const Vocabulary> vocabulary_of(const Tokenizer& tokenizer, std::size_t vocab_size,
                                                std::vector<TokenId> end_tokens) {
  std::vector<std::string> bytes(vocab_size);
  const std::size_t known = std::min(vocab_size, tokenizer.vocab_size());
  for (std::size_t id = 0; id < known; ++id) {
    const auto token = static_cast<TokenId>(id);
    if (!tokenizer.is_special(token)) bytes[id] = tokenizer.token_bytes(token);
  }
  return std::make_shared<const Vocabulary>(std::move(bytes), std::move(end_tokens));
}

}  // namespace nibble::grammar
