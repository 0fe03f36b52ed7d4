#pragma once
// compressed-tensors checkpoints (llm-compressor, quant_method
// "compressed-tensors"). A WeightSource over the safetensors files that turns each
// module's compressed tensors back into what the engine reads:
//   pack-quantized   `weight_packed` int32 [N, ceil(K*bits/32)] (codes q + 2^(bits-1),
//                    LSB-first along the input dim), `weight_scale` [N, groups],
//                    `weight_zero_point` (asymmetric: packed along the output dim),
//                    `weight_shape` [N, K], optional `weight_g_idx` [K]
//                    -> load_quantized(), with sparse_2_4 when the sparsity config
//                    declares 2:4 for the module.
//   int-quantized    `weight` int8 [N, K] + `weight_scale` (+ `weight_zero_point`)
//                    -> load_quantized() with bits from the config.
//   sparse-24-bitmask / sparse-bitmask
//                    `compressed` values, `bitmask` uint8 [N, ceil(K/8)], `shape`
//                    (+ `row_offsets`) -> load() of `module.weight` rebuilds the dense
//                    tensor in the stored dtype; when the values are int-quantized
//                    codes, load_quantized() unpacks them instead.
// Unknown formats are rejected when the config is parsed (quantization_config.h).
#include <memory>

#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"
#include "loader/weight_source.h"

namespace nibble {

// `quantization.method` must be CompressedTensors; `model` gives the expected [N, K]
// of each module so mis-shaped tensors are reported by name.
std::unique_ptr<WeightSource> make_compressed_tensors_weights(std::unique_ptr<SafetensorsWeights> base,
                                                              QuantizationConfig quantization, ModelConfig model);

}  // namespace nibble
