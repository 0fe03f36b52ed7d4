#include "loader/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "loader/json_file.h"

namespace nibble {
namespace {

using json = nlohmann::json;

// Real headers are well under a megabyte; the bound stops a corrupt length from
// making us parse the whole weight file as JSON.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

std::uint64_t read_u64_le(const std::byte* p) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<std::uint8_t>(p[i]);
  return value;
}

std::int64_t checked_numel(const std::vector<std::int64_t>& shape, const std::string& where) {
  std::int64_t n = 1;
  for (const auto d : shape) {
    if (d < 0) fail("{}: negative dimension in shape", where);
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) fail("{}: shape overflows", where);
    n *= d;
  }
  return n;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(std::make_shared<MappedFile>(path)) {
  const std::string file_name = path.string();
  if (file_->size() < 8) fail("{}: not a safetensors file (only {} bytes, truncated?)", file_name, file_->size());
  const std::uint64_t header_bytes = read_u64_le(file_->data());
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_->size() - 8) {
    fail("{}: header length {} does not fit in a {}-byte file (truncated or not safetensors)", file_name,
         header_bytes, file_->size());
  }
  const auto* header_begin = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_bytes);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", file_name, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", file_name);

  const std::byte* data = file_->data() + 8 + header_bytes;
  const std::uint64_t data_bytes = file_->size() - 8 - header_bytes;

  struct Range {
    std::uint64_t begin, end;
    std::size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: __metadata__ is not an object", file_name);
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail("{}: __metadata__ value for '{}' is not a string", file_name, key);
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor '{}'", file_name, name);
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      fail("{}: entry needs dtype, shape and data_offsets", where);
    }
    const auto& dtype_field = entry["dtype"];
    if (!dtype_field.is_string()) fail("{}: dtype is not a string", where);
    const auto dtype = parse_dtype(dtype_field.get<std::string>());
    if (!dtype) fail("{}: unknown dtype '{}'", where, dtype_field.get<std::string>());

    const auto& shape_field = entry["shape"];
    const auto& offsets = entry["data_offsets"];
    if (!shape_field.is_array()) fail("{}: shape is not an array", where);
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      fail("{}: data_offsets must be two non-negative integers", where);
    }
    std::vector<std::int64_t> shape;
    for (const auto& d : shape_field) {
      if (!d.is_number_integer()) fail("{}: shape holds a non-integer", where);
      shape.push_back(d.get<std::int64_t>());
    }
    const auto begin = offsets[0].get<std::uint64_t>();
    const auto end = offsets[1].get<std::uint64_t>();
    const auto numel = checked_numel(shape, where);
    if (end < begin) fail("{}: data_offsets end {} before begin {}", where, end, begin);
    const std::uint64_t expected = static_cast<std::uint64_t>(numel) * dtype_size(*dtype);
    if (end - begin != expected) {
      fail("{}: holds {} bytes but shape {} of {} needs {}", where, end - begin, shape_field.dump(),
           dtype_name(*dtype), expected);
    }
    if (end > data_bytes) {
      fail("{}: data [{}, {}) extends past the end of the data section ({} bytes): file truncated?", where, begin,
           end, data_bytes);
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    view.shape = std::move(shape);
    view.bytes = std::span<const std::byte>(data + begin, end - begin);
    view.owner = file_;
    ranges.push_back({begin, end, tensors_.size()});
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(view));
  }

  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      fail("{}: tensors '{}' and '{}' overlap", file_name, tensors_[ranges[i - 1].tensor].name,
           tensors_[ranges[i].tensor].name);
    }
  }
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::unique_ptr<SafetensorsWeights> SafetensorsWeights::open_folder(const std::filesystem::path& folder) {
  auto weights = std::unique_ptr<SafetensorsWeights>(new SafetensorsWeights());
  const auto index_path = folder / "model.safetensors.index.json";
  const auto single_path = folder / "model.safetensors";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> expected_shard;  // tensor -> shard, from the index
  if (std::filesystem::exists(index_path)) {
    const json index = read_json_file(index_path);
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail("{}: missing the weight_map object", index_path.string());
    }
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) fail("{}: weight_map entry for '{}' is not a string", index_path.string(), tensor);
      const auto shard_name = shard.get<std::string>();
      if (shard_name.find('/') != std::string::npos || shard_name.find("..") != std::string::npos) {
        fail("{}: shard name '{}' must be a plain file name", index_path.string(), shard_name);
      }
      expected_shard[tensor] = shard_name;
      if (std::find(shard_names.begin(), shard_names.end(), shard_name) == shard_names.end()) {
        shard_names.push_back(shard_name);
      }
    }
  } else if (std::filesystem::exists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", folder.string());
  }

  for (const auto& shard_name : shard_names) {
    const auto shard_path = folder / shard_name;
    if (!std::filesystem::exists(shard_path)) fail("{}: shard '{}' listed in the index is missing", folder.string(), shard_name);
    weights->files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
    for (const auto& tensor : weights->files_.back()->tensors()) {
      if (weights->by_name_.contains(tensor.name)) {
        fail("{}: tensor '{}' appears in more than one shard", folder.string(), tensor.name);
      }
      weights->by_name_[tensor.name] = &tensor;
    }
  }
  for (const auto& [tensor, shard] : expected_shard) {
    if (!weights->by_name_.contains(tensor)) {
      fail("{}: tensor '{}' is listed in the index for '{}' but that shard lacks it", folder.string(), tensor, shard);
    }
  }
  return weights;
}

std::vector<StoredTensorInfo> SafetensorsWeights::list() const {
  std::vector<StoredTensorInfo> infos;
  infos.reserve(by_name_.size());
  for (const auto& [name, view] : by_name_) {
    infos.push_back({name, std::string(dtype_name(view->dtype)), view->shape, view->bytes.size()});
  }
  return infos;
}

bool SafetensorsWeights::contains(const std::string& name) const { return by_name_.contains(name); }

TensorView SafetensorsWeights::load(const std::string& name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    fail("{}: tensor '{}' is missing from the checkpoint", files_.front()->path().parent_path().string(), name);
  }
  return *it->second;
}

std::uint64_t SafetensorsWeights::file_bytes() const {
  std::uint64_t total = 0;
  for (const auto& file : files_) total += file->size();
  return total;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorView*> sorted;
  for (const auto& tensor : tensors) sorted.push_back(&tensor);
  // Widest elements first keeps every tensor aligned to its element size.
  std::sort(sorted.begin(), sorted.end(), [](const TensorView* a, const TensorView* b) {
    const auto wa = dtype_size(a->dtype), wb = dtype_size(b->dtype);
    return wa != wb ? wa > wb : a->name < b->name;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto* tensor : sorted) {
    if (tensor->bytes.size() != static_cast<std::uint64_t>(tensor->numel()) * dtype_size(tensor->dtype)) {
      fail("write_safetensors: tensor '{}' has {} bytes for shape {}", tensor->name, tensor->bytes.size(),
           tensor->shape_string());
    }
    header[tensor->name] = {{"dtype", dtype_name(tensor->dtype)},
                            {"shape", tensor->shape},
                            {"data_offsets", {offset, offset + tensor->bytes.size()}}};
    offset += tensor->bytes.size();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write {}", path.string());
  const std::uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((header_size >> (8 * i)) & 0xff));
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const auto* tensor : sorted) {
    out.write(reinterpret_cast<const char*>(tensor->bytes.data()), static_cast<std::streamsize>(tensor->bytes.size()));
  }
  if (!out) fail("error while writing {}", path.string());
}

}  // namespace nibble
