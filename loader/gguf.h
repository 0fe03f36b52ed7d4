#pragma once
// GGUF v3 (llama.cpp's model file): typed key/value metadata, tensor infos, then
// aligned tensor data. Mapped, never copied; quantized blocks are decoded on request.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/block_format.h"
#include "common/mapped_file.h"

namespace nibble {

// ggml tensor types this reader understands (values are the on-disk enum).
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13,
  Q6_K = 14, Q8_K = 15, IQ4_NL = 20, IQ4_XS = 23, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35
};
std::string_view ggml_type_name(GgmlType type);
// The block encoding a type's tensors are kept in (nullopt for F32/F16/BF16 and
// Q4_0/Q4_1/Q8_0, which unpack into QuantizedMatrix codes).
std::optional<BlockFormat> block_format_of(GgmlType type);

struct GgufArray;
using GgufValue = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t, std::uint32_t, std::int32_t,
                               std::uint64_t, std::int64_t, float, double, bool, std::string,
                               std::shared_ptr<GgufArray>>;
struct GgufArray {
  std::vector<GgufValue> values;
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<std::int64_t> shape;  // row-major, outermost first (the reverse of ggml's ne[])
  std::span<const std::byte> data;

  std::int64_t numel() const;
};

class GgufFile {
 public:
  // Validates magic, version 3, every length and offset against the file size, and
  // known tensor types; errors name the file and the key or tensor at fault.
  explicit GgufFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  std::uint64_t size() const { return file_->size(); }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  // File offset where the (aligned) tensor data section starts; tensor offsets are relative to it.
  std::uint64_t data_offset() const { return data_offset_; }
  const GgufTensor* find_tensor(const std::string& name) const;

  bool has(const std::string& key) const { return metadata_.contains(key); }
  // Typed getters convert between integer widths; they throw nibble::Error naming
  // the key when it is missing or of an incompatible type.
  std::string get_string(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<std::int64_t> get_int_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  std::optional<std::int64_t> find_int(const std::string& key) const;
  std::optional<double> find_float(const std::string& key) const;
  std::optional<std::string> find_string(const std::string& key) const;

 private:
  template <typename T>
  T required(const std::string& key, const std::optional<T>& value, const char* kind) const;

  std::shared_ptr<MappedFile> file_;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, std::size_t> index_;
  std::uint64_t data_offset_ = 0;
};

// Decodes any supported tensor type into float32, row-major. `out` has numel() floats.
void dequantize_to_f32(const GgufTensor& tensor, std::span<float> out);

}  // namespace nibble
