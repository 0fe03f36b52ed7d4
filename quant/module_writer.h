#pragma once
// Where compress_model puts each compressed module: a Hugging Face folder
// (checkpoint_writer.h) or a GGUF file (gguf_writer.h).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/quantized_matrix.h"
#include "loader/gguf.h"

namespace nibble::quant {

class ModuleWriter {
 public:
  virtual ~ModuleWriter() = default;
  // A module quantized with the uniform group quantizer (QuantSpec).
  virtual void add_quantized(const std::string& module, const QuantizedMatrix& matrix) = 0;
  // A module pruned but not quantized: float weights [rows, cols].
  virtual void add_pruned(const std::string& module, std::span<const float> weights, std::int64_t rows,
                          std::int64_t cols) = 0;
  // The GGUF block type the writer stores `module` in ([rows, cols]); nullopt: the
  // uniform quantizer's path (add_quantized).
  virtual std::optional<GgmlType> block_type(const std::string& /*module*/, std::int64_t /*rows*/,
                                             std::int64_t /*cols*/) const {
    return std::nullopt;
  }
  // A module encoded in GGUF blocks of block_type(module): rows in HF order.
  virtual void add_blocks(const std::string& module, GgmlType type, std::vector<std::byte> /*blocks*/,
                          std::int64_t /*rows*/, std::int64_t /*cols*/) {
    fail("module '{}': this checkpoint format cannot hold GGUF {} blocks", module, ggml_type_name(type));
  }
  // Whether the writer can copy the rest of the model from a GGUF source (the HF
  // folder writers copy safetensors files).
  virtual bool reads_gguf_source() const { return false; }
  // Whether the format can hold a mixture-of-experts model's per-expert modules
  // (GGUF stacks a layer's experts into 3-D tensors, which the GGUF writer does not write yet).
  virtual bool writes_experts() const { return true; }
  virtual void finish() = 0;
};

}  // namespace nibble::quant
