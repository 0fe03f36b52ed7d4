#pragma once
// Calibration and evaluation text as token runs. A file is either
//   text (.txt or anything else): tokenized whole, then cut into consecutive,
//     non-overlapping runs of `seq_len` tokens, or
//   token ids (.json): a JSON array of arrays of ids, used as they are (each run cut
//     to `seq_len`), so nibble and another tool can be fed identical inputs.
#include <cstdint>
#include <filesystem>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace nibble::quant {

// At most `samples` runs of `seq_len` tokens from `path`. Throws nibble::Error when
// the file is missing, malformed, holds ids outside the vocabulary, or yields fewer
// than one full run.
std::vector<std::vector<std::int32_t>> read_calibration_runs(const std::filesystem::path& path,
                                                             const Tokenizer& tokenizer, std::int64_t samples,
                                                             std::int64_t seq_len);

// Every token of a text file (evaluation text), ids checked against the vocabulary.
// add_special adds BOS/EOS as the tokenizer's config asks, as llama-perplexity's
// tokenization of its text file does.
std::vector<std::int32_t> read_token_stream(const std::filesystem::path& path, const Tokenizer& tokenizer,
                                            bool add_special = false);

}  // namespace nibble::quant
