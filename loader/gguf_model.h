#pragma once
// A GGUF file seen as a Hugging Face model: llama.cpp's metadata keys become a
// ModelConfig and its tensor names ("blk.0.attn_q.weight") become HF names.
#include <memory>

#include "loader/gguf.h"
#include "loader/model_config.h"
#include "loader/weight_source.h"

namespace nibble {

// Supports general.architecture "llama" and "qwen2" (MistralForCausalLM GGUFs say
// "llama"). Throws nibble::Error for other architectures or missing keys.
ModelConfig config_from_gguf(const GgufFile& gguf);

// Weights under HF names. llama.cpp stores the q/k projections of "llama" models
// with rows permuted for interleaved RoPE; load() undoes that so every format
// shares the HF (rotate-half) layout. Quantized tensors are dequantized to F32.
std::unique_ptr<WeightSource> make_gguf_weights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config);

}  // namespace nibble
