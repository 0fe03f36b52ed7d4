#pragma once
// Where a model's weights come from, independent of the file format. Names are
// Hugging Face parameter names ("model.layers.0.self_attn.q_proj.weight") whatever
// the file calls them, so the engine sees one layout.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/quantized_matrix.h"
#include "loader/tensor.h"

namespace nibble {

// What the file stores for one tensor, before any conversion.
struct StoredTensorInfo {
  std::string name;
  std::string stored_type;  // "F32", "BF16", "Q4_1", ...
  std::vector<std::int64_t> shape;
  std::uint64_t stored_bytes = 0;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::vector<StoredTensorInfo> list() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  // The tensor as a plain-dtype view: zero-copy when the stored form is a plain
  // dtype in the canonical layout, otherwise converted (e.g. GGUF blocks -> F32).
  // Throws nibble::Error naming the tensor and file when it is missing or corrupt.
  virtual TensorView load(const std::string& name) const = 0;
  // The weight of linear module `module` ("model.layers.0.mlp.up_proj") when the
  // file stores it quantized (GPTQ, AWQ, compressed-tensors, GGUF blocks),
  // unpacked into the format-neutral form; nullopt when it is stored as a plain
  // tensor `module + ".weight"` for load(). Throws for corrupt or inconsistent data.
  virtual std::optional<QuantizedMatrix> load_quantized(const std::string& module) const {
    (void)module;
    return std::nullopt;
  }
  // Whether load_quantized(module) would return a matrix, without unpacking it.
  virtual bool has_quantized(const std::string& module) const {
    (void)module;
    return false;
  }
  // Total bytes of all tensor files (what the model costs on disk).
  virtual std::uint64_t file_bytes() const = 0;
};

}  // namespace nibble
