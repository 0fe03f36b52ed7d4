#pragma once
// Import of Andrej Karpathy's llama2.c checkpoints (model .bin + tokenizer .bin)
// into an ordinary Hugging Face model folder, so the rest of nibble only ever
// loads HF folders or GGUF files.
#include <cstdint>
#include <filesystem>

namespace nibble {

// Writes config.json, generation_config.json, model.safetensors (F32, HF names and
// HF rotate-half q/k layout), tokenizer.json and tokenizer_config.json into out_dir
// (created if missing). Reads the legacy header (7 int32) and the "ak42" version 1
// (fp32) and version 2 (int8 groups) exports. Throws nibble::Error naming the file
// when it is truncated, oversized or inconsistent.
void convert_llama2c(const std::filesystem::path& model_bin, const std::filesystem::path& tokenizer_bin,
                     const std::filesystem::path& out_dir);

// Writes tokenizer.json and tokenizer_config.json for a llama2.c tokenizer .bin:
// a SentencePiece-style byte-fallback BPE in the form Hugging Face uses for Llama 2.
void convert_llama2c_tokenizer(const std::filesystem::path& tokenizer_bin, const std::filesystem::path& out_dir,
                               std::int64_t model_max_length);

}  // namespace nibble
