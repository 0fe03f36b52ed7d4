#pragma once
// A read-only memory map of a whole file: model weights are viewed in place,
// never copied, and the page cache shares them between processes.
#include <cstddef>
#include <filesystem>
#include <span>

namespace nibble {

class MappedFile {
 public:
  // Throws nibble::Error naming the path when the file cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// Drops the whole pages inside `bytes` (a range of some MappedFile) from this
// process's resident set. Used after a tensor was repacked into another layout:
// the file pages would otherwise stay resident next to their packed copy. Reading
// the range again later still works; the pages fault back in from the file.
void release_mapped_pages(std::span<const std::byte> bytes);

}  // namespace nibble
