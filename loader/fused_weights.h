#pragma once
// Splits tensors a checkpoint stores fused (Phi-3's qkv_proj and gate_up_proj,
// llama.cpp's attn_qkv and ffn_up) back into the modules they hold, so everything
// above the loader sees one layout: "model.layers.0.self_attn.k_proj.weight" is a
// row range of "model.layers.0.self_attn.qkv_proj.weight". Which tensors are fused
// and in which row order comes from the architecture table (TensorRole::QueryKeyValue,
// GateUp and fused_parts); each part's rows from the model config.
//
// Nothing is widened: a plain tensor's part is a view of its rows in the mapped
// file, a quantized one's part is its rows of the format-neutral QuantizedMatrix
// (codes, scales and offsets, or a GGUF row's blocks, copied as they are). The
// engine's LinearGroup stacks the parts again into one matrix when they are
// quantized alike, which they are when they come from one tensor.
#include <memory>

#include "loader/architecture.h"
#include "loader/model_config.h"
#include "loader/weight_source.h"

namespace nibble {

// `base` with every fused tensor of `architecture` listed, loaded and quantized-loaded
// as its parts; tensors that are not fused pass through. Throws nibble::Error naming
// the tensor when a fused tensor's rows are not the sum of its parts' rows.
std::unique_ptr<WeightSource> split_fused_weights(std::unique_ptr<WeightSource> base, const Architecture& architecture,
                                                  const ModelConfig& config);

}  // namespace nibble
