#pragma once
// safetensors: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the data. Mapped, never copied.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "loader/tensor.h"
#include "loader/weight_source.h"

namespace nibble {

class SafetensorsFile {
 public:
  // Validates the whole header: known dtypes, offsets inside the file, sizes equal
  // to shape x dtype, no overlapping ranges. Errors name the file and the tensor.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return file_->path(); }
  std::uint64_t size() const { return file_->size(); }

 private:
  std::shared_ptr<MappedFile> file_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One model.safetensors, or the shards listed by model.safetensors.index.json.
class SafetensorsWeights final : public WeightSource {
 public:
  static std::unique_ptr<SafetensorsWeights> open_folder(const std::filesystem::path& folder);

  std::vector<StoredTensorInfo> list() const override;
  bool contains(const std::string& name) const override;
  TensorView load(const std::string& name) const override;
  std::uint64_t file_bytes() const override;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
};

// Writes tensors (plain dtypes) as one safetensors file: data section 8-byte
// aligned, tensors ordered widest dtype first so each is aligned to its element.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace nibble
