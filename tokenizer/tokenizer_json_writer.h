#pragma once
// A BpeTokenizerSpec written as Hugging Face `tokenizers`' tokenizer.json, so a
// vocabulary nibble reads from elsewhere (a GGUF file) can be used by tools that
// only speak tokenizer.json (benchmark clients such as aiperf and guidellm):
// `nibble convert --from gguf --tokenizer-only`. The inverse of hf_tokenizer_json.cpp
// for everything a GGUF vocabulary can hold.
#include <nlohmann/json.hpp>

#include "tokenizer/bpe_tokenizer.h"

namespace nibble {

// Throws nibble::Error for what tokenizer.json cannot express the same way (a
// regex splitter whose text is not kept, duplicate vocabulary entries).
nlohmann::ordered_json tokenizer_json(const BpeTokenizerSpec& spec);

}  // namespace nibble
