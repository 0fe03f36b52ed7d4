#include "loader/tensor_shard.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "loader/architecture.h"

namespace nibble {

namespace {

// Whether some layer runs the dense MLP (whose intermediate_size then splits):
// Mixtral has none, DeepSeek its first_k_dense_replace layers.
bool has_dense_mlp(const ModelConfig& c) {
  for (std::int64_t layer = 0; layer < c.num_layers; ++layer) {
    if (!c.moe.sparse_layer(layer)) return true;
  }
  return false;
}

// Why `tensor` x `expert` ranks cannot split `c`, or "" when they can.
std::string why_not(const ModelConfig& c, int tensor, int expert = 1) {
  const int size = tensor * expert;
  if (c.num_heads % size != 0) return fmt::format("{} query heads do not divide by {}", c.num_heads, size);
  if (c.num_kv_heads >= size ? c.num_kv_heads % size != 0 : size % c.num_kv_heads != 0) {
    return fmt::format("{} key/value heads neither divide by {} nor divide it", c.num_kv_heads, size);
  }
  if (has_dense_mlp(c) && c.intermediate_size % size != 0) {
    return fmt::format("intermediate_size {} does not divide by {}", c.intermediate_size, size);
  }
  if (c.moe.enabled() && c.moe.expert_intermediate_size % tensor != 0) {
    return fmt::format("the experts' moe_intermediate_size {} does not divide by {}", c.moe.expert_intermediate_size,
                       tensor);
  }
  if (c.moe.shared_expert_intermediate_size % size != 0) {
    return fmt::format("the shared expert's width {} does not divide by {}", c.moe.shared_expert_intermediate_size,
                       size);
  }
  return {};
}

enum class Split : std::uint8_t { Whole, Rows, Cols };

struct Slice {
  Split split = Split::Whole;
  std::int64_t first = 0;
  std::int64_t count = 0;
  bool zero_row = false;  // the embedding's row for tokens another rank owns
  std::int64_t whole = 0;  // the split dimension's full extent
};

// A tensor as rank `layout.rank` reads it. Quantized modules are sliced in their
// stored form (slice_rows/slice_cols); plain tensors as views where the slice is
// contiguous (row ranges) and as owned copies otherwise.
class ShardedWeightSource final : public WeightSource {
 public:
  ShardedWeightSource(std::unique_ptr<WeightSource> inner, const Architecture& arch, const ModelConfig& full,
                      const TensorShardLayout& layout)
      : inner_(std::move(inner)),
        arch_(arch),
        full_(full),
        layout_(layout),
        head_dim_(full.head_dim),
        // o_proj's input per head: v_head_dim under MLA (whose head_dim is q/k's width).
        output_head_dim_(full.mla ? full.mla->v_head_dim : full.head_dim),
        // kv_b_proj's rows per head: W_UK's then W_UV's.
        kv_b_head_rows_(full.mla ? full.mla->qk_nope_head_dim + full.mla->v_head_dim : 0) {}

  std::vector<StoredTensorInfo> list() const override {
    std::vector<StoredTensorInfo> infos = inner_->list();
    // Another expert group's experts are not this rank's to map (or to count).
    std::erase_if(infos, [this](const StoredTensorInfo& info) { return !held(info.name); });
    for (auto& info : infos) {
      Slice slice = slice_of(module_of(info.name));
      // A packed part of a quantized module (GPTQ's qweight, scales, qzeros; FP8's
      // weight_scale_inv): its layout is the format's, so only its bytes are scaled.
      const bool packed_part = slice.split == Split::Whole;
      if (const auto dot = info.name.rfind('.'); packed_part && dot != std::string::npos) {
        slice = slice_of(info.name.substr(0, dot));
      }
      if (slice.split == Split::Whole || info.shape.empty() || slice.whole <= 0) continue;
      const std::int64_t kept = slice.count + (slice.zero_row ? 1 : 0);
      info.stored_bytes = static_cast<std::uint64_t>(static_cast<double>(info.stored_bytes) *
                                                     static_cast<double>(kept) / static_cast<double>(slice.whole));
      if (packed_part) continue;
      // Rows are the outer dimension of every matrix, input columns the inner; a
      // GGUF layer's stacked experts [experts, rows, cols] split each expert's rows.
      const std::size_t rows_dim = info.shape.size() >= 2 ? info.shape.size() - 2 : 0;
      info.shape[slice.split == Split::Rows ? rows_dim : info.shape.size() - 1] = kept;
    }
    return infos;
  }
  bool contains(const std::string& name) const override { return held(name) && inner_->contains(name); }
  bool has_quantized(const std::string& module) const override {
    return held(module) && inner_->has_quantized(module);
  }
  std::uint64_t file_bytes() const override { return inner_->file_bytes(); }

  TensorView load(const std::string& name) const override {
    check_held(name);
    TensorView tensor = inner_->load(name);
    const Slice slice = slice_of(module_of(name));
    if (slice.split == Split::Whole) return tensor;
    const bool bias = name.ends_with(".bias");
    if (bias && slice.split == Split::Cols) {
      fail("{}: a bias on a row-parallel layer is not supported with tensor parallelism (it would be added once "
           "per rank)",
           name);
    }
    if (tensor.shape.size() != (bias ? 1u : 2u)) {
      fail("{}: expected a {} tensor to split across ranks, got shape {}", name, bias ? "1-D" : "2-D",
           tensor.shape_string());
    }
    return slice.split == Split::Rows ? slice_tensor_rows(std::move(tensor), slice)
                                      : slice_tensor_cols(std::move(tensor), slice);
  }

  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    check_held(module);
    auto matrix = inner_->load_quantized(module);
    if (!matrix) return matrix;
    const Slice slice = slice_of(module);
    switch (slice.split) {
      case Split::Whole: return matrix;
      case Split::Rows: {
        QuantizedMatrix rows = slice_rows(*matrix, slice.first, slice.count);
        return slice.zero_row ? append_zero_row(std::move(rows)) : rows;
      }
      case Split::Cols: return slice_cols(*matrix, slice.first, slice.count);
    }
    return matrix;
  }

 private:
  static std::string module_of(const std::string& name) {
    for (const std::string_view suffix : {".weight", ".bias"}) {
      if (name.ends_with(suffix)) return name.substr(0, name.size() - suffix.size());
    }
    return name;
  }

  // The routed expert a tensor or module name belongs to (a quantized module's
  // packed parts, "...experts.3.up_proj.qweight", included); -1 for any other.
  std::int64_t expert_of(const std::string& name) const {
    if (const auto ref = arch_.parse_module(module_of(name))) return ref->expert;
    const auto dot = name.rfind('.');
    if (dot == std::string::npos) return -1;
    const auto ref = arch_.parse_module(name.substr(0, dot));
    return ref ? ref->expert : -1;
  }

  bool held(const std::string& name) const {
    if (layout_.expert_size == 1) return true;
    const std::int64_t expert = expert_of(name);
    return expert < 0 || (expert >= layout_.first_expert && expert < layout_.first_expert + layout_.experts);
  }

  void check_held(const std::string& name) const {
    if (held(name)) return;
    fail("{}: expert {} belongs to another expert-parallel group; rank {} holds experts {}..{}", name,
         expert_of(name), layout_.rank, layout_.first_expert, layout_.first_expert + layout_.experts - 1);
  }

  Slice slice_of(const std::string& module) const {
    const auto ref = arch_.parse_module(module);
    if (!ref) return {};
    const TensorShardLayout& l = layout_;
    const ModelConfig& c = full_;
    const std::int64_t expert = c.moe.expert_intermediate_size, shared = c.moe.shared_expert_intermediate_size;
    switch (ref->role) {
      // q_proj, or MLA's q_b_proj: the rank's heads. (MLA's q_a_proj, kv_a_proj_with_mqa
      // and their norms are whole: every head reads the one latent.)
      case TensorRole::Query:
      case TensorRole::QueryB:
        return {Split::Rows, l.first_q_head * head_dim_, l.q_heads * head_dim_, false, c.num_heads * head_dim_};
      case TensorRole::KvB:
        return {Split::Rows, l.first_q_head * kv_b_head_rows_, l.q_heads * kv_b_head_rows_, false,
                c.num_heads * kv_b_head_rows_};
      case TensorRole::Key:
      case TensorRole::Value:
        return {Split::Rows, l.first_kv_head * head_dim_, l.kv_heads * head_dim_, false, c.num_kv_heads * head_dim_};
      case TensorRole::AttentionOutput:
        return {Split::Cols, l.first_q_head * output_head_dim_, l.q_heads * output_head_dim_, false,
                c.num_heads * output_head_dim_};
      case TensorRole::Gate:
      case TensorRole::Up: return {Split::Rows, l.first_intermediate, l.intermediate, false, c.intermediate_size};
      case TensorRole::Down: return {Split::Cols, l.first_intermediate, l.intermediate, false, c.intermediate_size};
      // Every routed expert and the shared expert split like the dense MLP; the
      // router and the shared expert's sigmoid gate are whole, so every rank
      // routes the same tokens to the same experts.
      case TensorRole::ExpertGate:
      case TensorRole::ExpertUp: return {Split::Rows, l.first_expert_intermediate, l.expert_intermediate, false, expert};
      case TensorRole::ExpertDown: return {Split::Cols, l.first_expert_intermediate, l.expert_intermediate, false, expert};
      case TensorRole::SharedGate:
      case TensorRole::SharedUp: return {Split::Rows, l.first_shared_intermediate, l.shared_intermediate, false, shared};
      case TensorRole::SharedDown: return {Split::Cols, l.first_shared_intermediate, l.shared_intermediate, false, shared};
      case TensorRole::TokenEmbedding: return {Split::Rows, l.first_vocab, l.vocab, true, c.vocab_size};
      case TensorRole::LmHead: return {Split::Rows, l.first_vocab, l.vocab, false, c.vocab_size};
      default: return {};
    }
  }

  static TensorView slice_tensor_rows(TensorView tensor, const Slice& slice) {
    const std::int64_t rows = tensor.shape[0];
    if (slice.first + slice.count > rows) {
      fail("{}: rows [{}, {}) of this rank lie outside its {} rows", tensor.name, slice.first,
           slice.first + slice.count, rows);
    }
    const std::size_t row_bytes = tensor.bytes.size() / static_cast<std::size_t>(rows);
    const auto part = tensor.bytes.subspan(static_cast<std::size_t>(slice.first) * row_bytes,
                                           static_cast<std::size_t>(slice.count) * row_bytes);
    tensor.shape[0] = slice.count;
    if (!slice.zero_row) {
      tensor.bytes = part;  // a view of the mapped (or converted) whole
      return tensor;
    }
    std::vector<std::byte> bytes(part.begin(), part.end());
    bytes.resize(bytes.size() + row_bytes);  // zeros: +0.0 in every float dtype
    tensor.shape[0] += 1;
    return make_owned_tensor(tensor.name, tensor.dtype, tensor.shape, std::move(bytes));
  }

  static TensorView slice_tensor_cols(TensorView tensor, const Slice& slice) {
    const std::int64_t rows = tensor.shape[0];
    const std::int64_t cols = tensor.shape[1];
    if (slice.first + slice.count > cols) {
      fail("{}: input columns [{}, {}) of this rank lie outside its {} columns", tensor.name, slice.first,
           slice.first + slice.count, cols);
    }
    const std::size_t element = dtype_size(tensor.dtype);
    std::vector<std::byte> bytes(static_cast<std::size_t>(rows * slice.count) * element);
    for (std::int64_t r = 0; r < rows; ++r) {
      std::memcpy(bytes.data() + static_cast<std::size_t>(r * slice.count) * element,
                  tensor.bytes.data() + static_cast<std::size_t>(r * cols + slice.first) * element,
                  static_cast<std::size_t>(slice.count) * element);
    }
    return make_owned_tensor(tensor.name, tensor.dtype, {rows, slice.count}, std::move(bytes));
  }

  std::unique_ptr<WeightSource> inner_;
  const Architecture& arch_;
  ModelConfig full_;
  TensorShardLayout layout_;
  std::int64_t head_dim_;
  std::int64_t output_head_dim_;
  std::int64_t kv_b_head_rows_;
};

}  // namespace

TensorShardLayout plan_tensor_shard(const ModelConfig& c, int rank, int tensor_size, int expert_size) {
  if (tensor_size < 1) fail("tensor-parallel size must be at least 1, got {}", tensor_size);
  if (expert_size < 1) fail("expert-parallel size must be at least 1, got {}", expert_size);
  const int size = tensor_size * expert_size;
  if (rank < 0 || rank >= size) fail("rank {} is outside a tensor-parallel group of {}", rank, size);
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || (has_dense_mlp(c) && c.intermediate_size <= 0) ||
      c.vocab_size <= 0) {
    fail("the model's config has no heads, MLP width or vocabulary to split");
  }
  if (expert_size > 1 && !c.moe.enabled()) {
    fail("expert-parallel size {} needs a mixture-of-experts model, and {} has no routed experts", expert_size,
         c.architecture);
  }
  if (expert_size > 1 && c.moe.num_experts % expert_size != 0) {
    fail("expert-parallel size {} cannot split this model: {} routed experts do not divide by {} (every expert "
         "group holds num_experts / size whole experts); expert-parallel sizes that work{}: {}",
         expert_size, c.moe.num_experts, expert_size,
         tensor_size > 1 ? fmt::format(" with tensor-parallel size {}", tensor_size) : "",
         workable_expert_parallel_sizes(c, tensor_size));
  }
  if (const std::string reason = why_not(c, tensor_size, expert_size); !reason.empty()) {
    if (expert_size == 1) {
      fail("tensor-parallel size {} cannot split this model: {} (query heads, intermediate_size and the experts' "
           "widths must divide by the size, and key/value heads divide by it or divide it); sizes that work: {}",
           size, reason, workable_tensor_parallel_sizes(c));
    }
    fail("tensor-parallel size {} x expert-parallel size {} cannot split this model: {} (attention, the dense MLP "
         "and the shared expert split over all {} ranks, each routed expert's width over the {} tensor ranks); "
         "expert-parallel sizes that work with tensor-parallel size {}: {}",
         tensor_size, expert_size, reason, size, tensor_size, tensor_size,
         workable_expert_parallel_sizes(c, tensor_size));
  }
  TensorShardLayout l;
  l.rank = rank;
  l.size = size;
  l.tensor_size = tensor_size;
  l.expert_size = expert_size;
  l.expert_rank = rank / tensor_size;
  l.q_heads = c.num_heads / size;
  l.first_q_head = rank * l.q_heads;
  if (c.num_kv_heads >= size) {
    l.kv_heads = c.num_kv_heads / size;
    l.first_kv_head = rank * l.kv_heads;
  } else {
    // Fewer key/value heads than ranks: each rank keeps the one head its query
    // heads read (groups of num_heads / num_kv_heads query heads share one).
    l.kv_heads = 1;
    l.first_kv_head = l.first_q_head / (c.num_heads / c.num_kv_heads);
  }
  l.intermediate = c.intermediate_size / size;
  l.first_intermediate = rank * l.intermediate;
  if (c.moe.enabled()) {
    // Within its expert group the rank is tensor rank rank % tensor_size.
    l.expert_intermediate = c.moe.expert_intermediate_size / tensor_size;
    l.first_expert_intermediate = (rank % tensor_size) * l.expert_intermediate;
    l.experts = c.moe.num_experts / expert_size;
    l.first_expert = l.expert_rank * l.experts;
  }
  l.shared_intermediate = c.moe.shared_expert_intermediate_size / size;
  l.first_shared_intermediate = rank * l.shared_intermediate;
  l.vocab_stride = (c.vocab_size + size - 1) / size;
  l.first_vocab = std::min<std::int64_t>(rank * l.vocab_stride, c.vocab_size);
  l.vocab = std::min<std::int64_t>(l.vocab_stride, c.vocab_size - l.first_vocab);
  if (l.vocab <= 0) fail("tensor-parallel size {} leaves rank {} no vocabulary rows of {}", size, rank, c.vocab_size);
  return l;
}

std::string workable_expert_parallel_sizes(const ModelConfig& config, int tensor_size) {
  std::string sizes;
  if (config.num_heads <= 0 || config.num_kv_heads <= 0) return sizes;
  for (std::int64_t size = 1; size <= std::max<std::int64_t>(config.moe.num_experts, 1); ++size) {
    if (size > 1 && config.moe.num_experts % size != 0) continue;
    const auto ranks = tensor_size * size;
    if (!why_not(config, tensor_size, static_cast<int>(size)).empty()) continue;
    if ((config.vocab_size + ranks - 1) / ranks * (ranks - 1) >= config.vocab_size) continue;
    sizes += sizes.empty() ? fmt::format("{}", size) : fmt::format(", {}", size);
  }
  return sizes;
}

std::string workable_tensor_parallel_sizes(const ModelConfig& config, int max_size) {
  std::string sizes;
  for (int size = 1; size <= max_size; ++size) {
    if (config.num_heads <= 0 || config.num_kv_heads <= 0 || !why_not(config, size).empty()) continue;
    if ((config.vocab_size + size - 1) / size * (size - 1) >= config.vocab_size) continue;
    sizes += sizes.empty() ? fmt::format("{}", size) : fmt::format(", {}", size);
  }
  return sizes;
}

ModelSource shard_model_source(ModelSource full, const TensorShardLayout& layout) {
  const Architecture& arch = architecture_of(full.config.architecture);
  const ModelConfig whole = full.config;
  full.weights = std::make_unique<ShardedWeightSource>(std::move(full.weights), arch, whole, layout);
  full.config.num_heads = layout.q_heads;
  full.config.num_kv_heads = layout.kv_heads;
  full.config.intermediate_size = layout.intermediate;
  if (full.config.moe.enabled()) {
    full.config.moe.expert_intermediate_size = layout.expert_intermediate;
    full.config.moe.expert_parallel_size = layout.expert_size;
    full.config.moe.expert_parallel_rank = layout.expert_rank;
  }
  full.config.moe.shared_expert_intermediate_size = layout.shared_intermediate;
  return full;
}

}  // namespace nibble
