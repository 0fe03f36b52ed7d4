#pragma once
// Writes a GGUF v3 file (docs/formats.md, "GGUF v3"): key/values in the order they
// were set, tensor infos in the order they were added, then the tensor data, each
// tensor padded to the alignment. The counterpart of loader/gguf.h, which reads
// back everything this writes.
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "loader/gguf.h"

namespace nibble::quant {

class GgufFileWriter {
 public:
  // Replaces a key already set (keeping its place). Arrays take their element
  // type from their first element (u8 when empty) and must hold one type.
  void set(const std::string& key, GgufValue value);
  void erase(const std::string& key);
  bool has(const std::string& key) const;
  // `shape` row-major (outermost first, as GgufTensor::shape); data must be
  // exactly the bytes the type needs for that shape. Names must be unique.
  void add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> shape, std::vector<std::byte> data);
  // Writes the file under a temporary name next to `path` and renames it into
  // place, so a failure leaves no half-written model. general.alignment is
  // written when the alignment is not GGUF's default of 32.
  void write(const std::filesystem::path& path, std::uint32_t alignment = 32);

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::vector<Tensor> tensors_;
};

// Bytes a tensor of `type` and row-major `shape` takes (rows must be whole blocks).
std::uint64_t ggml_tensor_bytes(GgmlType type, const std::vector<std::int64_t>& shape);

}  // namespace nibble::quant
