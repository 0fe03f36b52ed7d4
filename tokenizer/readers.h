#pragma once
// Format readers: each builds a Tokenizer from one on-disk representation.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace nibble {

class GgufFile;

// tokenizer.json (Hugging Face `tokenizers`), with tokenizer_config.json next to it
// when present.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& tokenizer_json);
// The vocabulary embedded in a GGUF file (tokenizer.ggml.* keys).
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& gguf);
// A SentencePiece tokenizer.model through libsentencepiece, with tokenizer_config.json
// next to it when present.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& model_file);

// SentencePiece-style BPE from pieces, scores and types (the GGUF "llama" model and
// llama2.c tokenizer.bin): merges come from the scores, best-scoring result first.
// Types follow SentencePiece: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
struct SpmVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;  // empty: all normal, except <0xNN> (byte) and the ids below
  TokenId unk = 0;
  std::optional<TokenId> bos, eos;
  bool add_bos = true, add_eos = false;
  bool add_space_prefix = true;
};
std::unique_ptr<Tokenizer> make_spm_bpe_tokenizer(const SpmVocab& vocab);

// Reads a JSON file into text; nibble::Error naming the file when it cannot.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace nibble
