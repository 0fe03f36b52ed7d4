#include "quant/gguf_file_writer.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "common/error.h"

namespace nibble::quant {
namespace {

// GGUF's value type ids in the order of GgufValue's alternatives.
constexpr std::uint32_t kTypeIds[] = {0, 1, 2, 3, 4, 5, 10, 11, 6, 12, 7, 8, 9};
static_assert(std::variant_size_v<GgufValue> == std::size(kTypeIds));
constexpr std::uint32_t kArrayId = 9;

class Out {
 public:
  void bytes(const void* data, std::size_t n) {
    // resize + memcpy: GCC 12's -Wstringop-overflow misreads vector::insert of a few bytes.
    const std::size_t at = buffer.size();
    buffer.resize(at + n);
    if (n > 0) std::memcpy(buffer.data() + at, data, n);
  }
  template <typename T>
  void put(T value) {
    bytes(&value, sizeof value);
  }
  void string(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad(std::size_t alignment) { buffer.resize((buffer.size() + alignment - 1) / alignment * alignment); }
  std::vector<std::byte> buffer;
};

std::uint32_t type_id(const GgufValue& value) { return kTypeIds[value.index()]; }

void put_value(Out& out, const GgufValue& value, const std::string& key) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          out.string(v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out.put<std::uint8_t>(v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
          const std::uint32_t element = v->values.empty() ? 0 : type_id(v->values.front());
          out.put<std::uint32_t>(element);
          out.put<std::uint64_t>(v->values.size());
          for (const auto& item : v->values) {
            if (type_id(item) != element) fail("GGUF key '{}': an array mixes value types", key);
            put_value(out, item, key);
          }
        } else {
          out.put<T>(v);
        }
      },
      value);
}

}  // namespace

std::uint64_t ggml_tensor_bytes(GgmlType type, const std::vector<std::int64_t>& shape) {
  std::uint64_t numel = 1;
  for (const auto extent : shape) {
    if (extent <= 0) fail("tensor extent {} is not positive", extent);
    numel *= static_cast<std::uint64_t>(extent);
  }
  std::uint64_t block = 1, bytes = 0;
  switch (type) {
    case GgmlType::F32: bytes = 4; break;
    case GgmlType::F16: case GgmlType::BF16: bytes = 2; break;
    case GgmlType::Q4_0: block = 32, bytes = 18; break;
    case GgmlType::Q4_1: block = 32, bytes = 20; break;
    case GgmlType::Q8_0: block = 32, bytes = 34; break;
    default: {
      const auto format = block_format_of(type);
      if (!format) fail("no size known for GGUF type {}", ggml_type_name(type));
      block = static_cast<std::uint64_t>(block_format_info(*format).elements);
      bytes = static_cast<std::uint64_t>(block_format_info(*format).bytes);
    }
  }
  if (shape.empty() || static_cast<std::uint64_t>(shape.back()) % block != 0) {
    fail("rows of {} elements are not whole {} blocks of {}", shape.empty() ? 0 : shape.back(), ggml_type_name(type), block);
  }
  return numel / block * bytes;
}

void GgufFileWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : kvs_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  kvs_.emplace_back(key, std::move(value));
}

void GgufFileWriter::erase(const std::string& key) {
  std::erase_if(kvs_, [&](const auto& kv) { return kv.first == key; });
}

bool GgufFileWriter::has(const std::string& key) const {
  return std::any_of(kvs_.begin(), kvs_.end(), [&](const auto& kv) { return kv.first == key; });
}

void GgufFileWriter::add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> shape,
                                std::vector<std::byte> data) {
  if (shape.empty() || shape.size() > 4) fail("GGUF tensor '{}' has rank {}; GGUF holds 1 to 4", name, shape.size());
  const std::uint64_t want = ggml_tensor_bytes(type, shape);
  if (data.size() != want) {
    fail("GGUF tensor '{}': {} bytes for a {} tensor that takes {}", name, data.size(), ggml_type_name(type), want);
  }
  for (const auto& t : tensors_) {
    if (t.name == name) fail("GGUF tensor '{}' added twice", name);
  }
  tensors_.push_back({std::move(name), type, std::move(shape), std::move(data)});
}

void GgufFileWriter::write(const std::filesystem::path& path, std::uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("GGUF alignment {} is not a power of two", alignment);
  if (alignment != 32) set("general.alignment", alignment);
  Out out;
  out.put<std::uint32_t>(0x46554747u);  // "GGUF"
  out.put<std::uint32_t>(3);
  out.put<std::uint64_t>(tensors_.size());
  out.put<std::uint64_t>(kvs_.size());
  for (const auto& [key, value] : kvs_) {
    out.string(key);
    out.put<std::uint32_t>(type_id(value));
    put_value(out, value, key);
  }
  std::uint64_t offset = 0;
  for (const auto& t : tensors_) {
    out.string(t.name);
    out.put<std::uint32_t>(static_cast<std::uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) out.put<std::uint64_t>(static_cast<std::uint64_t>(*it));
    out.put<std::uint32_t>(static_cast<std::uint32_t>(t.type));
    out.put<std::uint64_t>(offset);
    offset += (t.data.size() + alignment - 1) / alignment * alignment;
  }
  out.pad(alignment);
  const std::filesystem::path temporary = path.string() + ".partial";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) fail("cannot create {}", temporary.string());
    file.write(reinterpret_cast<const char*>(out.buffer.data()), static_cast<std::streamsize>(out.buffer.size()));
    const std::vector<char> zeros(alignment, 0);
    for (const auto& t : tensors_) {
      file.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
      const std::size_t pad = (alignment - t.data.size() % alignment) % alignment;
      file.write(zeros.data(), static_cast<std::streamsize>(pad));
    }
    file.flush();
    if (!file) fail("writing {} failed", temporary.string());
  }
  std::filesystem::rename(temporary, path);
}

}  // namespace nibble::quant
