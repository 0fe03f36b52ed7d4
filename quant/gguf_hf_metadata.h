#pragma once
// What llama.cpp's convert_hf_to_gguf.py writes for a Hugging Face folder, for
// GgufWriter when its source is one: hyperparameters, the tokenizer as
// tokenizer.ggml.* and the chat template, and GGUF tensor names. Covers the
// architectures nibble reads back from GGUF (llama, qwen2) with byte-level BPE
// tokenizers (tokenizer.json); anything else is refused with a clear error.
#include <optional>
#include <string>

#include "loader/architecture.h"
#include "loader/model_source.h"
#include "quant/gguf_file_writer.h"

namespace nibble::quant {

// Sets general.*, {arch}.* and tokenizer.* keys for `source` (a Hugging Face folder).
void set_hf_metadata(const ModelSource& source, GgufFileWriter& file);

// The GGUF name of a Hugging Face tensor ("model.layers.3.self_attn.q_proj.weight"
// -> "blk.3.attn_q.weight"); nullopt for names the architecture does not use.
std::optional<std::string> gguf_tensor_name(const Architecture& architecture, const std::string& hf_name);

}  // namespace nibble::quant
