#pragma once
// A GGUF file seen as a Hugging Face model: llama.cpp's metadata keys become a
// ModelConfig and its tensor names ("blk.0.attn_q.weight") become HF names.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "loader/gguf.h"
#include "loader/model_config.h"
#include "loader/weight_source.h"

namespace nibble {

// Supports the general.architecture names of the architecture table (MistralForCausalLM
// and Mixtral GGUFs say "llama", DeepSeek-V2/V3 ones "deepseek2": loader/gguf_mla.h).
// Throws nibble::Error for other architectures or missing keys.
ModelConfig config_from_gguf(const GgufFile& gguf);

// Weights under HF names. llama.cpp stores the q/k projections of "llama" models
// with rows permuted for interleaved RoPE; load() undoes that so every format
// shares the HF (rotate-half) layout. Quantized tensors are dequantized to F32.
std::unique_ptr<WeightSource> make_gguf_weights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config);

// Reorders the rows of a q or k projection (weight or bias) from Meta's interleaved
// RoPE layout, which llama.cpp and llama2.c store, to the HF rotate-half layout:
// within each head, row 2i+j moves to j*head_rows/2 + i. Rows are opaque byte
// strings of in.size()/rows bytes, so it works for block-quantized rows too.
void interleaved_rope_rows_to_halves(std::span<const std::byte> in, std::span<std::byte> out, std::int64_t rows,
                                     std::int64_t n_heads);
// The inverse, for writing GGUF files: HF rotate-half rows to llama.cpp's order.
void halves_to_interleaved_rope_rows(std::span<const std::byte> in, std::span<std::byte> out, std::int64_t rows,
                                     std::int64_t n_heads);

}  // namespace nibble
