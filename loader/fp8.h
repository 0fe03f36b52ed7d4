#pragma once
// FP8 e4m3 weights with scales, from either checkpoint family that stores them:
//   DeepSeek-V3 / Qwen3-*-FP8 / transformers FineGrainedFP8 (quant_method "fp8"):
//     `weight` F8_E4M3 [N, K], `weight_scale_inv` F32 [ceil(N/br), ceil(K/bc)] for
//     weight_block_size [br, bc]; weight = fp8 * scale_inv. The last row and column
//     blocks may be partial (N, K need not be multiples of the block).
//   compressed-tensors "float-quantized": `weight` F8_E4M3 and `weight_scale`
//     (F32/BF16/F16) per tensor [1], channel [N, 1], group [N, K/g] or block
//     [ceil(N/br), ceil(K/bc)]; weight = fp8 * scale. (Read by compressed_tensors.cpp
//     through fp8_matrix below.)
// Both become a QuantizedMatrix with code_dtype F8_E4M3 and one scale per row and
// column group: the codes are copied byte for byte (never widened) and the backend
// keeps them at one byte per weight. Every code is accepted; the two NaN encodings
// (0x7f, 0xff) decode as NaN, as PyTorch decodes them, so a corrupt weight shows
// up as NaN logits rather than being guessed around.
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/quantized_matrix.h"
#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"
#include "loader/tensor.h"
#include "loader/weight_source.h"

namespace nibble {

// How the scale tensor covers the weight: each scale serves block_rows x
// block_cols weights (0 for either: the whole extent, i.e. per tensor or per row
// with block_rows 1).
struct Fp8ScaleBlocks {
  std::int64_t block_rows = 0;
  std::int64_t block_cols = 0;
};

// The matrix for `module` from its F8_E4M3 `weight` [N, K] and `scale`. `expected`
// is the [N, K] the model config implies, when known. Throws nibble::Error naming
// the tensor for a wrong dtype, a weight shape that disagrees with the model, or a
// scale grid that is not [ceil(N/br), ceil(K/bc)] (a single value for per tensor;
// [N] or [N, 1] for per channel); non-finite scales are refused too.
QuantizedMatrix fp8_matrix(const std::string& module, const TensorView& weight, const TensorView& scale,
                           Fp8ScaleBlocks blocks, std::optional<std::array<std::int64_t, 2>> expected);

// The scale blocks a module's quantization describes (FP8 formats only).
Fp8ScaleBlocks fp8_scale_blocks(const ModuleQuantization& q);

// `quantization.method` must be Fp8. Quantized modules (the config's, where the
// file has `module.weight_scale_inv`) come from load_quantized(); load() of their
// `.weight` throws pointing there. An F8_E4M3 weight without its scale is refused.
std::unique_ptr<WeightSource> make_fp8_weights(std::unique_ptr<SafetensorsWeights> base,
                                               QuantizationConfig quantization, ModelConfig model);

}  // namespace nibble
