#pragma once
// A tokenizer's tokens as the bytes a grammar sees: special and control tokens
// get none (a grammar never allows them), and `end_tokens` end the output once
// the grammar is complete.
#include <memory>
#include <vector>

#include "grammar/vocabulary.h"
#include "tokenizer/tokenizer.h"

namespace nibble::grammar {

// `vocab_size`: the model's (its logits may have rows past the tokenizer's ids).
std::shared_ptr<const Vocabulary> vocabulary_of(const Tokenizer& tokenizer, std::size_t vocab_size,
                                                std::vector<TokenId> end_tokens);

}  // namespace nibble::grammar
