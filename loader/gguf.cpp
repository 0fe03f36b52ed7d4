#include "loader/gguf.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "common/byte_reader.h"
#include "common/error.h"
#include "common/half.h"

namespace nibble {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {

constexpr std::uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr std::uint32_t kGgufVersion = 3;
constexpr std::uint64_t kDefaultAlignment = 32;
constexpr std::uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Arrays of arrays are legal; a bound keeps a hostile file from exhausting the stack.
constexpr int kMaxArrayDepth = 16;
constexpr std::uint64_t kMaxReserve = 1 << 16;
// Smallest tensor info: empty name (8), rank (4), one extent (8), type (4), offset (8).
constexpr std::uint64_t kMinTensorInfoBytes = 32;

enum class ValueType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};

// Smallest encoding of one element, used to bound array counts by the bytes left
// before anything is allocated.
std::uint64_t min_encoded_size(ValueType type) {
  switch (type) {
    case ValueType::U8: case ValueType::I8: case ValueType::Bool: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: case ValueType::String: return 8;
    case ValueType::Array: return 12;  // element type + count
  }
  return 0;
}

bool is_known_value_type(std::uint32_t raw) { return raw <= static_cast<std::uint32_t>(ValueType::F64); }

struct TypeTraits {
  std::int64_t block_elements;
  std::uint64_t block_bytes;
};

std::optional<TypeTraits> type_traits(std::uint32_t raw) {
  switch (static_cast<GgmlType>(raw)) {
    case GgmlType::F32: return TypeTraits{1, 4};
    case GgmlType::F16: return TypeTraits{1, 2};
    case GgmlType::BF16: return TypeTraits{1, 2};
    case GgmlType::Q4_0: return TypeTraits{32, 18};
    case GgmlType::Q4_1: return TypeTraits{32, 20};
    case GgmlType::Q8_0: return TypeTraits{32, 34};
    case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K:
    case GgmlType::Q5_K: case GgmlType::Q6_K: case GgmlType::Q8_K: case GgmlType::IQ4_NL: case GgmlType::IQ4_XS:
    case GgmlType::TQ1_0: case GgmlType::TQ2_0: {
      const BlockFormatInfo& info = block_format_info(*block_format_of(static_cast<GgmlType>(raw)));
      return TypeTraits{info.elements, static_cast<std::uint64_t>(info.bytes)};
    }
  }
  return std::nullopt;
}

// Names of the ggml types this reader does not decode, so errors can say what the file holds.
std::string_view other_ggml_type_name(std::uint32_t raw) {
  static constexpr std::array<std::string_view, 40> names = {
      "F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0",    "Q5_1",    "Q8_0",    "Q8_1",
      "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS",  "IQ3_XXS", "IQ1_S",
      "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32",  "I64",     "F64",     "IQ1_M",
      "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8",
      "MXFP4"};
  return raw < names.size() ? names[raw] : std::string_view("unknown");
}

// GGUF strings: a uint64 length, then that many bytes (no terminator).
std::string read_string(ByteReader& reader, std::string_view what) {
  const auto length = reader.read<std::uint64_t>(what);
  if (length > reader.remaining()) {
    fail("{}: truncated or corrupt GGUF: {} claims a string of {} bytes at offset {}, but only {} bytes remain",
         reader.file(), what, length, reader.offset() - 8, reader.remaining());
  }
  const auto bytes = reader.take(length, what);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

GgufValue read_value(ByteReader& reader, ValueType type, const std::string& key, int depth);

GgufValue read_array(ByteReader& reader, const std::string& key, int depth) {
  if (depth >= kMaxArrayDepth) fail("{}: corrupt GGUF: key '{}' nests arrays deeper than {}", reader.file(), key, kMaxArrayDepth);
  const auto raw_type = reader.read<std::uint32_t>(fmt::format("the element type of key '{}'", key));
  if (!is_known_value_type(raw_type)) {
    fail("{}: corrupt GGUF: key '{}' is an array of unknown value type {}", reader.file(), key, raw_type);
  }
  const auto element_type = static_cast<ValueType>(raw_type);
  const auto count = reader.read<std::uint64_t>(fmt::format("the length of key '{}'", key));
  if (count > reader.remaining() / min_encoded_size(element_type)) {
    fail("{}: truncated or corrupt GGUF: key '{}' claims {} array elements, more than the {} bytes left can hold", reader.file(),
         key, count, reader.remaining());
  }
  auto array = std::make_shared<GgufArray>();
  // A GgufValue is far larger than its encoding; grow with the elements actually read.
  array->values.reserve(std::min<std::uint64_t>(count, kMaxReserve));
  for (std::uint64_t i = 0; i < count; ++i) array->values.push_back(read_value(reader, element_type, key, depth + 1));
  return array;
}

GgufValue read_value(ByteReader& reader, ValueType type, const std::string& key, int depth) {
  const auto what = [&] { return fmt::format("the value of key '{}'", key); };
  switch (type) {
    case ValueType::U8: return reader.read<std::uint8_t>(what());
    case ValueType::I8: return reader.read<std::int8_t>(what());
    case ValueType::U16: return reader.read<std::uint16_t>(what());
    case ValueType::I16: return reader.read<std::int16_t>(what());
    case ValueType::U32: return reader.read<std::uint32_t>(what());
    case ValueType::I32: return reader.read<std::int32_t>(what());
    case ValueType::U64: return reader.read<std::uint64_t>(what());
    case ValueType::I64: return reader.read<std::int64_t>(what());
    case ValueType::F32: return reader.read<float>(what());
    case ValueType::F64: return reader.read<double>(what());
    case ValueType::Bool: {
      const auto raw = reader.read<std::uint8_t>(what());
      if (raw > 1) fail("{}: corrupt GGUF: key '{}' holds bool byte {}", reader.file(), key, raw);
      return raw == 1;
    }
    case ValueType::String: return read_string(reader, what());
    case ValueType::Array: return read_array(reader, key, depth);
  }
  fail("{}: corrupt GGUF: key '{}' has unknown value type {}", reader.file(), key, static_cast<std::uint32_t>(type));
}

void read_header(ByteReader& reader, std::uint64_t& tensor_count, std::uint64_t& kv_count) {
  if (reader.remaining() < 4) fail("{}: not a GGUF file: only {} bytes long", reader.file(), reader.remaining());
  const auto magic = reader.read<std::uint32_t>("the magic");
  if (magic != kGgufMagic) fail("{}: not a GGUF file: bad magic 0x{:08x} (expected \"GGUF\")", reader.file(), magic);
  const auto version = reader.read<std::uint32_t>("the version");
  if (version == 1 || version == 2) {
    fail("{}: GGUF version {} is not supported (only version 3); re-convert it with a current llama.cpp",
         reader.file(), version);
  }
  if (version != kGgufVersion) fail("{}: unknown GGUF version {} (only version 3 is supported)", reader.file(), version);
  tensor_count = reader.read<std::uint64_t>("the tensor count");
  kv_count = reader.read<std::uint64_t>("the metadata key count");
  // Rejects absurd counts before anything is reserved.
  if (kv_count > reader.remaining() / 8 || tensor_count > reader.remaining() / kMinTensorInfoBytes) {
    fail("{}: truncated or corrupt GGUF: header claims {} tensors and {} metadata keys, more than the file can hold",
         reader.file(), tensor_count, kv_count);
  }
}

std::uint64_t alignment_of(const std::map<std::string, GgufValue>& metadata, const std::string& file) {
  const auto it = metadata.find("general.alignment");
  if (it == metadata.end()) return kDefaultAlignment;
  const auto* value = std::get_if<std::uint32_t>(&it->second);
  if (value == nullptr || *value == 0 || !std::has_single_bit(*value)) {
    fail("{}: corrupt GGUF: general.alignment must be a power-of-two uint32", file);
  }
  return *value;
}

bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) { return __builtin_mul_overflow(a, b, &out); }

struct RawTensorInfo {
  GgufTensor tensor;
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

RawTensorInfo read_tensor_info(ByteReader& reader, std::uint64_t index) {
  RawTensorInfo info;
  info.tensor.name = read_string(reader, fmt::format("the name of tensor #{}", index));
  const std::string& name = info.tensor.name;
  const auto n_dims = reader.read<std::uint32_t>(fmt::format("the rank of tensor '{}'", name));
  if (n_dims == 0 || n_dims > kMaxDims) {
    fail("{}: corrupt GGUF: tensor '{}' has {} dimensions (1 to {} allowed)", reader.file(), name, n_dims, kMaxDims);
  }
  std::vector<std::int64_t> ne(n_dims);
  std::uint64_t numel = 1;
  for (auto& extent : ne) {
    const auto raw = reader.read<std::uint64_t>(fmt::format("the shape of tensor '{}'", name));
    if (raw == 0 || raw > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
        mul_overflows(numel, raw, numel)) {
      fail("{}: corrupt GGUF: tensor '{}' has an invalid extent {}", reader.file(), name, raw);
    }
    extent = static_cast<std::int64_t>(raw);
  }
  info.tensor.shape.assign(ne.rbegin(), ne.rend());
  const auto raw_type = reader.read<std::uint32_t>(fmt::format("the type of tensor '{}'", name));
  const auto traits = type_traits(raw_type);
  if (!traits) {
    fail("{}: tensor '{}' has ggml type {} ({}), which nibble does not support (supported: F32, F16, BF16, Q4_0, "
         "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0)",
         reader.file(), name, raw_type, other_ggml_type_name(raw_type));
  }
  info.tensor.type = static_cast<GgmlType>(raw_type);
  if (ne[0] % traits->block_elements != 0) {
    fail("{}: corrupt GGUF: tensor '{}' has {} columns, not a multiple of the {} block size {}", reader.file(), name,
         ne[0], ggml_type_name(info.tensor.type), traits->block_elements);
  }
  if (mul_overflows(numel / static_cast<std::uint64_t>(traits->block_elements), traits->block_bytes, info.bytes)) {
    fail("{}: corrupt GGUF: tensor '{}' is impossibly large", reader.file(), name);
  }
  info.offset = reader.read<std::uint64_t>(fmt::format("the data offset of tensor '{}'", name));
  return info;
}

void place_tensor(RawTensorInfo& info, std::span<const std::byte> file, std::uint64_t data_start,
                  std::uint64_t alignment, const std::string& path) {
  const std::string& name = info.tensor.name;
  if (info.offset % alignment != 0) {
    fail("{}: corrupt GGUF: tensor '{}' data offset {} is not a multiple of the alignment {}", path, name, info.offset,
         alignment);
  }
  const std::uint64_t available = file.size() - data_start;
  if (info.offset > available || info.bytes > available - info.offset) {
    fail("{}: corrupt GGUF: tensor '{}' data ({} bytes at offset {}) extends past the end of the file ({} bytes)",
         path, name, info.bytes, data_start + info.offset, file.size());
  }
  info.tensor.data = file.subspan(data_start + info.offset, info.bytes);
}

template <typename T>
const T* get_typed(const std::map<std::string, GgufValue>& metadata, const std::string& key, const std::string& file,
                   std::string_view expected) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) fail("{}: GGUF metadata key '{}' is missing", file, key);
  const auto* value = std::get_if<T>(&it->second);
  if (value == nullptr) fail("{}: GGUF metadata key '{}' is not {}", file, key, expected);
  return value;
}

std::optional<std::int64_t> as_int(const GgufValue& value) {
  return std::visit(
      [](const auto& v) -> std::optional<std::int64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::uint64_t>) {
          if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
          return static_cast<std::int64_t>(v);
        } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<std::int64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      value);
}

std::optional<double> as_float(const GgufValue& value) {
  if (const auto* f = std::get_if<float>(&value)) return *f;
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto i = as_int(value)) return static_cast<double>(*i);
  return std::nullopt;
}

const GgufArray& get_array(const std::map<std::string, GgufValue>& metadata, const std::string& key,
                           const std::string& file) {
  return **get_typed<std::shared_ptr<GgufArray>>(metadata, key, file, "an array");
}

// An fp16 scale stored unaligned inside a block.
float read_f16(const std::byte* at) {
  std::uint16_t bits;
  std::memcpy(&bits, at, 2);
  return f16_to_f32(bits);
}

// ---- Block decoders. Arithmetic mirrors ggml's dequantize_row_* (and gguf-py's
// quants.py) operation for operation so results are bit-identical.

struct BlockQ4_0 {
  static constexpr std::size_t kBytes = 18;
  static void decode(const std::byte* block, float* out) {
    const float d = read_f16(block);
    const auto* qs = reinterpret_cast<const std::uint8_t*>(block + 2);
    for (int j = 0; j < 16; ++j) {
      const int low = (qs[j] & 0x0f) - 8;
      const int high = (qs[j] >> 4) - 8;
      out[j] = static_cast<float>(low) * d;
      out[j + 16] = static_cast<float>(high) * d;
    }
  }
};

struct BlockQ4_1 {
  static constexpr std::size_t kBytes = 20;
  // gguf-py rounds q*d before adding m; a fused multiply-add (which GCC emits for
  // -march=native even in ISO mode) would round once and differ in the last bit.
  __attribute__((optimize("fp-contract=off"))) static void decode(const std::byte* block, float* out) {
    const float d = read_f16(block);
    const float m = read_f16(block + 2);
    const auto* qs = reinterpret_cast<const std::uint8_t*>(block + 4);
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      out[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
};

struct BlockQ8_0 {
  static constexpr std::size_t kBytes = 34;
  static void decode(const std::byte* block, float* out) {
    const float d = read_f16(block);
    const auto* qs = reinterpret_cast<const std::int8_t*>(block + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(qs[j]) * d;
  }
};

template <typename Block>
void decode_blocks(std::span<const std::byte> data, std::span<float> out) {
  const std::size_t blocks = data.size() / Block::kBytes;
  for (std::size_t b = 0; b < blocks; ++b) Block::decode(data.data() + b * Block::kBytes, out.data() + b * 32);
}

template <float (*Convert)(std::uint16_t)>
void decode_halves(std::span<const std::byte> data, std::span<float> out) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, data.data() + 2 * i, 2);
    out[i] = Convert(bits);
  }
}

}  // namespace

std::string_view ggml_type_name(GgmlType type) { return other_ggml_type_name(static_cast<std::uint32_t>(type)); }

std::optional<BlockFormat> block_format_of(GgmlType type) {
  switch (type) {
    case GgmlType::Q5_0: return BlockFormat::Q5_0;
    case GgmlType::Q5_1: return BlockFormat::Q5_1;
    case GgmlType::Q2_K: return BlockFormat::Q2_K;
    case GgmlType::Q3_K: return BlockFormat::Q3_K;
    case GgmlType::Q4_K: return BlockFormat::Q4_K;
    case GgmlType::Q5_K: return BlockFormat::Q5_K;
    case GgmlType::Q6_K: return BlockFormat::Q6_K;
    case GgmlType::Q8_K: return BlockFormat::Q8_K;
    case GgmlType::IQ4_NL: return BlockFormat::IQ4_NL;
    case GgmlType::IQ4_XS: return BlockFormat::IQ4_XS;
    case GgmlType::TQ1_0: return BlockFormat::TQ1_0;
    case GgmlType::TQ2_0: return BlockFormat::TQ2_0;
    default: return std::nullopt;
  }
}

std::int64_t GgufTensor::numel() const {
  std::int64_t n = 1;
  for (const auto d : shape) n *= d;
  return n;
}

GgufFile::GgufFile(const std::filesystem::path& path) : file_(std::make_shared<MappedFile>(path)) {
  const std::string name = path.string();
  ByteReader reader(file_->bytes(), name);
  std::uint64_t tensor_count = 0;
  std::uint64_t kv_count = 0;
  read_header(reader, tensor_count, kv_count);

  for (std::uint64_t i = 0; i < kv_count; ++i) {
    std::string key = read_string(reader, fmt::format("metadata key #{}", i));
    const auto raw_type = reader.read<std::uint32_t>(fmt::format("the value type of key '{}'", key));
    if (!is_known_value_type(raw_type)) fail("{}: corrupt GGUF: key '{}' has unknown value type {}", name, key, raw_type);
    GgufValue value = read_value(reader, static_cast<ValueType>(raw_type), key, 0);
    if (!metadata_.emplace(key, std::move(value)).second) fail("{}: corrupt GGUF: duplicate metadata key '{}'", name, key);
  }

  std::vector<RawTensorInfo> infos;
  infos.reserve(std::min<std::uint64_t>(tensor_count, kMaxReserve));
  for (std::uint64_t i = 0; i < tensor_count; ++i) infos.push_back(read_tensor_info(reader, i));

  const std::uint64_t alignment = alignment_of(metadata_, name);
  const std::uint64_t data_start = (reader.offset() + alignment - 1) / alignment * alignment;
  data_offset_ = data_start;
  if (!infos.empty() && data_start > file_->size()) {
    fail("{}: truncated GGUF: tensor data would start at offset {}, past the end of the file ({} bytes)", name,
         data_start, file_->size());
  }
  tensors_.reserve(infos.size());
  for (auto& info : infos) {
    place_tensor(info, file_->bytes(), data_start, alignment, name);
    if (!index_.emplace(info.tensor.name, tensors_.size()).second) {
      fail("{}: corrupt GGUF: duplicate tensor '{}'", name, info.tensor.name);
    }
    tensors_.push_back(std::move(info.tensor));
  }
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::string GgufFile::get_string(const std::string& key) const {
  return *get_typed<std::string>(metadata_, key, path().string(), "a string");
}

// The value a find_* lookup gave, or an error saying whether the key is absent or
// of another type.
template <typename T>
T GgufFile::required(const std::string& key, const std::optional<T>& value, const char* kind) const {
  if (!value) {
    if (!has(key)) fail("{}: GGUF metadata key '{}' is missing", path().string(), key);
    fail("{}: GGUF metadata key '{}' is not {}", path().string(), key, kind);
  }
  return *value;
}

std::int64_t GgufFile::get_int(const std::string& key) const { return required(key, find_int(key), "an integer"); }

double GgufFile::get_float(const std::string& key) const { return required(key, find_float(key), "a number"); }

bool GgufFile::get_bool(const std::string& key) const {
  return *get_typed<bool>(metadata_, key, path().string(), "a bool");
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufArray& array = get_array(metadata_, key, path().string());
  std::vector<std::string> out;
  out.reserve(array.values.size());
  for (const auto& value : array.values) {
    const auto* text = std::get_if<std::string>(&value);
    if (text == nullptr) fail("{}: GGUF metadata key '{}' is not an array of strings", path().string(), key);
    out.push_back(*text);
  }
  return out;
}

std::vector<std::int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufArray& array = get_array(metadata_, key, path().string());
  std::vector<std::int64_t> out;
  out.reserve(array.values.size());
  for (const auto& value : array.values) {
    const auto number = as_int(value);
    if (!number) fail("{}: GGUF metadata key '{}' is not an array of integers", path().string(), key);
    out.push_back(*number);
  }
  return out;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufArray& array = get_array(metadata_, key, path().string());
  std::vector<float> out;
  out.reserve(array.values.size());
  for (const auto& value : array.values) {
    const auto number = as_float(value);
    if (!number) fail("{}: GGUF metadata key '{}' is not an array of numbers", path().string(), key);
    out.push_back(static_cast<float>(*number));
  }
  return out;
}

std::optional<std::int64_t> GgufFile::find_int(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end()) return std::nullopt;
  const auto value = as_int(it->second);
  if (!value) fail("{}: GGUF metadata key '{}' is not an integer", path().string(), key);
  return value;
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end()) return std::nullopt;
  const auto value = as_float(it->second);
  if (!value) fail("{}: GGUF metadata key '{}' is not a number", path().string(), key);
  return value;
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_string(key);
}

void dequantize_to_f32(const GgufTensor& tensor, std::span<float> out) {
  const auto numel = static_cast<std::uint64_t>(tensor.numel());
  if (out.size() != numel) {
    fail("dequantize {}: output holds {} floats, tensor has {} elements", tensor.name, out.size(), numel);
  }
  const auto traits = type_traits(static_cast<std::uint32_t>(tensor.type));
  if (!traits || tensor.data.size() != numel / static_cast<std::uint64_t>(traits->block_elements) * traits->block_bytes) {
    fail("dequantize {}: {} bytes do not match {} elements of {}", tensor.name, tensor.data.size(), numel,
         ggml_type_name(tensor.type));
  }
  switch (tensor.type) {
    case GgmlType::F32: std::memcpy(out.data(), tensor.data.data(), tensor.data.size()); return;
    case GgmlType::F16: decode_halves<f16_to_f32>(tensor.data, out); return;
    case GgmlType::BF16: decode_halves<bf16_to_f32>(tensor.data, out); return;
    case GgmlType::Q4_0: decode_blocks<BlockQ4_0>(tensor.data, out); return;
    case GgmlType::Q4_1: decode_blocks<BlockQ4_1>(tensor.data, out); return;
    case GgmlType::Q8_0: decode_blocks<BlockQ8_0>(tensor.data, out); return;
    default: break;
  }
  const BlockFormat format = *block_format_of(tensor.type);
  const BlockFormatInfo& info = block_format_info(format);
  for (std::uint64_t b = 0; b < numel / static_cast<std::uint64_t>(info.elements); ++b) {
    decode_block(format, tensor.data.data() + b * static_cast<std::uint64_t>(info.bytes), out.data() + b * static_cast<std::uint64_t>(info.elements));
  }
}

}  // namespace nibble
