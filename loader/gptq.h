#pragma once
// GPTQ (AutoGPTQ, GPTQModel, optimum) and AWQ (AutoAWQ "gemm") checkpoints. Both
// store each quantized linear module as `qweight`, `qzeros`, `scales` (and GPTQ's
// optional `g_idx`) int32/fp16 tensors instead of `weight`; this WeightSource sits
// on the safetensors files and unpacks them into QuantizedMatrix on request.
// Layouts (docs/formats.md has the bit-level picture):
//   GPTQ qweight [K*bits/32, N]: codes packed along the input dim as one LSB-first
//        bit stream per output column (3-bit codes straddle words: 32 per 3 words);
//        qzeros [groups, N*bits/32] packed the same way along the output dim;
//        scales [groups, N]; g_idx [K] the group of each input column.
//        Format "gptq" (v1) stores zero - 1 per field, "gptq_v2" the zero itself.
//   AWQ  qweight [K, N*bits/32] and qzeros [groups, N*bits/32] packed along the
//        output dim; for 4 bits the 8 nibbles of a word hold output columns
//        0,2,4,6,1,3,5,7 of its block of 8; zeros are true zeros.
#include <memory>

#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"
#include "loader/weight_source.h"

namespace nibble {

// `quantization.method` must be Gptq or Awq. `model` gives the expected [N, K] of
// each module so mis-shaped tensors are reported by name. load() of a quantized
// module's `.weight` throws, pointing at load_quantized(); modules the config
// leaves unquantized (lm_head unless `lm_head`, "-:" dynamic rules,
// modules_to_not_convert) are plain tensors and load_quantized() returns nullopt.
std::unique_ptr<WeightSource> make_gptq_weights(std::unique_ptr<SafetensorsWeights> base,
                                                QuantizationConfig quantization, ModelConfig model);

}  // namespace nibble
