#pragma once
// Bounds-checked little-endian reads from a byte span (a mapped model file).
// Every failure throws nibble::Error naming the file, what was being read and
// where, so a truncated or corrupt file never reads past its end.
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "common/error.h"

namespace nibble {

class ByteReader {
 public:
  ByteReader(std::span<const std::byte> bytes, std::string file) : bytes_(bytes), file_(std::move(file)) {}

  std::uint64_t offset() const { return offset_; }
  std::uint64_t remaining() const { return bytes_.size() - offset_; }
  const std::string& file() const { return file_; }
  void seek(std::uint64_t offset) { offset_ = offset < bytes_.size() ? offset : bytes_.size(); }

  void require(std::uint64_t count, std::string_view what) const {
    if (count > remaining()) {
      fail("{}: truncated: {} needs {} bytes at offset {}, but only {} remain", file_, what, count, offset_,
           remaining());
    }
  }

  // x86-64 and every target we build for are little-endian, so a copy is the read.
  template <typename T>
  T read(std::string_view what) {
    require(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }

  std::span<const std::byte> take(std::uint64_t count, std::string_view what) {
    require(count, what);
    const auto out = bytes_.subspan(offset_, count);
    offset_ += count;
    return out;
  }

 private:
  std::span<const std::byte> bytes_;
  std::string file_;
  std::uint64_t offset_ = 0;
};

}  // namespace nibble
