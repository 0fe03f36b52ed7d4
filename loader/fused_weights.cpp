#include "loader/fused_weights.h"

#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "common/error.h"

namespace nibble {
namespace {

// Where one part's rows are in its fused tensor.
struct Part {
  std::string fused;         // the fused module: "model.layers.0.self_attn.qkv_proj"
  std::int64_t first = 0;    // its first row there
  std::int64_t rows = 0;     // its rows
  std::int64_t fused_rows = 0;  // all the fused tensor's rows, the parts' sum
  std::size_t siblings = 0;     // how many parts the fused tensor holds
};

// "x.weight" / "x.bias" as ("x", ".weight"); nullopt for other names.
std::optional<std::pair<std::string, std::string>> split_suffix(const std::string& name) {
  for (const char* suffix : {".weight", ".bias"}) {
    if (name.ends_with(suffix)) {
      const std::string_view s(suffix);
      return std::pair{name.substr(0, name.size() - s.size()), std::string(s)};
    }
  }
  return std::nullopt;
}

// Rows [first, first + rows) of a tensor whose outermost dimension is `fused_rows`:
// a view of the same bytes, kept alive by the same owner.
TensorView row_range(const TensorView& tensor, const std::string& name, const Part& part) {
  if (tensor.shape.empty() || tensor.shape[0] != part.fused_rows) {
    fail("tensor '{}' has shape {} but its parts need {} rows", tensor.name, tensor.shape_string(), part.fused_rows);
  }
  const std::size_t row_bytes = tensor.bytes.size() / static_cast<std::size_t>(part.fused_rows);
  TensorView view = tensor;
  view.name = name;
  view.shape[0] = part.rows;
  view.bytes = tensor.bytes.subspan(static_cast<std::size_t>(part.first) * row_bytes,
                                    static_cast<std::size_t>(part.rows) * row_bytes);
  return view;
}

class FusedWeights final : public WeightSource {
 public:
  FusedWeights(std::unique_ptr<WeightSource> base, const Architecture& arch, const ModelConfig& config)
      : base_(std::move(base)) {
    for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
      for (const auto& name : arch.names) {
        const auto roles = fused_parts(name.role);
        if (roles.empty()) continue;
        const std::string fused = arch.module(name.role, layer);
        // A file may store the parts separately instead (a phi3 GGUF with attn_q/attn_k/attn_v).
        if (!base_->contains(fused + ".weight") && !base_->has_quantized(fused)) continue;
        std::vector<Part> parts;
        std::int64_t first = 0;
        for (const TensorRole role : roles) {
          const std::string module = arch.module(role, layer);
          const auto shape = linear_module_shape(config, module);
          if (!shape) fail("internal error: no shape for '{}', a part of '{}'", module, fused);
          parts_[module] = Part{fused, first, (*shape)[0], 0};
          first += (*shape)[0];
        }
        for (const TensorRole role : roles) {
          Part& part = parts_[arch.module(role, layer)];
          part.fused_rows = first;
          part.siblings = roles.size();
        }
        fused_.insert(fused);
      }
    }
  }

  std::vector<StoredTensorInfo> list() const override {
    std::vector<StoredTensorInfo> out;
    for (auto& info : base_->list()) {
      const auto split = split_suffix(info.name);
      if (!split || !fused_.contains(split->first) || info.shape.empty() || info.shape[0] <= 0) {
        out.push_back(std::move(info));
        continue;
      }
      // The fused tensor as its parts, its bytes shared out by rows.
      for (const auto& [module, part] : parts_) {
        if (part.fused != split->first) continue;
        StoredTensorInfo piece = info;
        piece.name = module + split->second;
        piece.shape[0] = part.rows;
        piece.stored_bytes = info.stored_bytes * static_cast<std::uint64_t>(part.rows) /
                             static_cast<std::uint64_t>(info.shape[0]);
        out.push_back(std::move(piece));
      }
    }
    return out;
  }

  bool contains(const std::string& name) const override {
    if (base_->contains(name)) return true;
    const auto [part, suffix] = part_of(name);
    return part != nullptr && base_->contains(part->fused + suffix);
  }

  TensorView load(const std::string& name) const override {
    const auto [part, suffix] = part_of(name);
    if (part == nullptr || base_->contains(name) || !base_->contains(part->fused + suffix)) return base_->load(name);
    return row_range(base_->load(part->fused + suffix), name, *part);
  }

  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    const auto it = parts_.find(module);
    if (it == parts_.end() || !base_->has_quantized(it->second.fused)) return base_->load_quantized(module);
    const Part& part = it->second;
    const std::lock_guard lock(mutex_);
    if (!cached_ || cached_fused_ != part.fused) {
      cached_ = base_->load_quantized(part.fused);
      cached_fused_ = part.fused;
      taken_.clear();
      if (!cached_) fail("quantized weight '{}' is listed but could not be loaded", part.fused);
      if (cached_->rows != part.fused_rows) {
        fail("quantized weight '{}' has {} rows but its parts need {}", part.fused, cached_->rows, part.fused_rows);
      }
    }
    QuantizedMatrix rows = slice_rows(*cached_, part.first, part.rows, module);
    taken_.insert(module);
    if (taken_.size() == part.siblings) cached_.reset();  // every part served: the matrix is done
    return rows;
  }

  bool has_quantized(const std::string& module) const override {
    const auto it = parts_.find(module);
    return it == parts_.end() ? base_->has_quantized(module) : base_->has_quantized(it->second.fused);
  }

  std::uint64_t file_bytes() const override { return base_->file_bytes(); }

 private:
  // The part `name` ("….k_proj.weight") is, and its suffix; nullptr when it is none.
  std::pair<const Part*, std::string> part_of(const std::string& name) const {
    const auto split = split_suffix(name);
    if (!split) return {nullptr, ""};
    const auto it = parts_.find(split->first);
    return {it == parts_.end() ? nullptr : &it->second, split->second};
  }

  std::unique_ptr<WeightSource> base_;
  std::map<std::string, Part> parts_;  // part module -> its rows
  std::set<std::string> fused_;        // the fused modules the file has
  // The fused matrix whose parts are being loaded, kept until each part has been
  // taken: a layer asks for them one after another, and the file's matrix is then
  // read (a GPTQ one unpacked, GGUF pages touched) once instead of once per part.
  mutable std::mutex mutex_;
  mutable std::optional<QuantizedMatrix> cached_;
  mutable std::string cached_fused_;
  mutable std::set<std::string> taken_;
};

}  // namespace

std::unique_ptr<WeightSource> split_fused_weights(std::unique_ptr<WeightSource> base, const Architecture& architecture,
                                                  const ModelConfig& config) {
  return std::make_unique<FusedWeights>(std::move(base), architecture, config);
}

}  // namespace nibble
