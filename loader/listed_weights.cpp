#include "loader/listed_weights.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "loader/architecture.h"

namespace nibble {
namespace {

class ListedWeights final : public WeightSource {
 public:
  explicit ListedWeights(std::map<std::string, StoredTensorInfo> tensors) : tensors_(std::move(tensors)) {
    for (const auto& [name, info] : tensors_) bytes_ += info.stored_bytes;
  }

  std::vector<StoredTensorInfo> list() const override {
    std::vector<StoredTensorInfo> out;
    out.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) out.push_back(info);
    return out;
  }
  bool contains(const std::string& name) const override { return tensors_.contains(name); }
  bool has_quantized(const std::string&) const override { return false; }
  std::uint64_t file_bytes() const override { return bytes_; }
  TensorView load(const std::string& name) const override {
    fail("{}: the weights of a config are listed for sizing only, not loadable", name);
  }
  std::optional<QuantizedMatrix> load_quantized(const std::string&) const override { return std::nullopt; }

 private:
  std::map<std::string, StoredTensorInfo> tensors_;
  std::uint64_t bytes_ = 0;
};

// Collects the listing: vectors and matrices in bfloat16, linear layers in the format's.
class Lister {
 public:
  explicit Lister(const ListedFormat& format) : format_(format) {}

  void vector(const std::string& name, std::int64_t size) { add(name, "BF16", {size}, 2 * size); }
  void table(const std::string& module, std::int64_t rows, std::int64_t cols) {
    add(module + ".weight", "BF16", {rows, cols}, 2 * rows * cols);
  }
  void linear(const std::string& module, std::int64_t rows, std::int64_t cols) {
    const std::int64_t block = format_.fp8_block;
    if (block == 0) return table(module, rows, cols);
    add(module + ".weight", "F8_E4M3", {rows, cols}, rows * cols);
    const std::int64_t tiles_r = (rows + block - 1) / block, tiles_c = (cols + block - 1) / block;
    add(module + ".weight_scale_inv", "F32", {tiles_r, tiles_c}, 4 * tiles_r * tiles_c);
  }
  std::map<std::string, StoredTensorInfo> take() { return std::move(tensors_); }

 private:
  void add(const std::string& name, const char* type, std::vector<std::int64_t> shape, std::int64_t bytes) {
    tensors_[name] = {name, type, std::move(shape), static_cast<std::uint64_t>(bytes)};
  }
  ListedFormat format_;
  std::map<std::string, StoredTensorInfo> tensors_;
};

void list_attention(Lister& out, const Architecture& arch, const ModelConfig& c, std::int64_t layer) {
  const std::int64_t h = c.hidden_size;
  const auto module = [&](TensorRole role) { return arch.module(role, layer); };
  if (const auto& mla = c.mla) {
    const std::int64_t q_rows = c.num_heads * mla->qk_head_dim();
    if (mla->q_lora_rank > 0) {
      out.linear(module(TensorRole::QueryA), mla->q_lora_rank, h);
      out.vector(module(TensorRole::QueryANorm) + ".weight", mla->q_lora_rank);
      out.linear(module(TensorRole::QueryB), q_rows, mla->q_lora_rank);
    } else {
      out.linear(module(TensorRole::Query), q_rows, h);
    }
    out.linear(module(TensorRole::KvA), mla->latent_width(), h);
    out.vector(module(TensorRole::KvANorm) + ".weight", mla->kv_lora_rank);
    out.linear(module(TensorRole::KvB), c.num_heads * (mla->qk_nope_head_dim + mla->v_head_dim), mla->kv_lora_rank);
    out.linear(module(TensorRole::AttentionOutput), h, c.num_heads * mla->v_head_dim);
    return;
  }
  out.linear(module(TensorRole::Query), c.q_dim(), h);
  out.linear(module(TensorRole::Key), c.kv_dim(), h);
  out.linear(module(TensorRole::Value), c.kv_dim(), h);
  out.linear(module(TensorRole::AttentionOutput), h, c.q_dim());
  for (const TensorRole norm : {TensorRole::QueryNorm, TensorRole::KeyNorm}) {
    if (arch.has(norm)) out.vector(module(norm) + ".weight", c.head_dim);
  }
}

void list_mlp(Lister& out, const Architecture& arch, const ModelConfig& c, std::int64_t layer) {
  const std::int64_t h = c.hidden_size;
  const auto module = [&](TensorRole role) { return arch.module(role, layer); };
  const MoeConfig& moe = c.moe;
  if (!moe.sparse_layer(layer)) {
    out.linear(module(TensorRole::Gate), c.intermediate_size, h);
    out.linear(module(TensorRole::Up), c.intermediate_size, h);
    out.linear(module(TensorRole::Down), h, c.intermediate_size);
    return;
  }
  out.table(module(TensorRole::Router), moe.num_experts, h);
  if (arch.has(TensorRole::RouterBias) && moe.scoring == MoeConfig::Scoring::Sigmoid) {
    out.vector(module(TensorRole::RouterBias), moe.num_experts);
  }
  for (std::int64_t e = 0; e < moe.num_experts; ++e) {
    out.linear(arch.expert_module(TensorRole::ExpertGate, layer, e), moe.expert_intermediate_size, h);
    out.linear(arch.expert_module(TensorRole::ExpertUp, layer, e), moe.expert_intermediate_size, h);
    out.linear(arch.expert_module(TensorRole::ExpertDown, layer, e), h, moe.expert_intermediate_size);
  }
  if (const std::int64_t shared = moe.shared_expert_intermediate_size; shared > 0) {
    out.linear(module(TensorRole::SharedGate), shared, h);
    out.linear(module(TensorRole::SharedUp), shared, h);
    out.linear(module(TensorRole::SharedDown), h, shared);
    if (moe.shared_expert_gate) out.table(module(TensorRole::SharedExpertGate), 1, h);
  }
}

}  // namespace

std::unique_ptr<WeightSource> listed_weights(const ModelConfig& c, const ListedFormat& format) {
  const Architecture& arch = architecture_of(c.architecture);
  Lister out(format);
  const std::int64_t h = c.hidden_size;
  out.table(arch.module(TensorRole::TokenEmbedding), c.vocab_size, h);
  if (!c.tie_word_embeddings) out.table(arch.module(TensorRole::LmHead), c.vocab_size, h);
  out.vector(arch.module(TensorRole::FinalNorm) + ".weight", h);
  for (std::int64_t layer = 0; layer < c.num_layers; ++layer) {
    for (const TensorRole norm : {TensorRole::AttentionNorm, TensorRole::PostAttentionNorm, TensorRole::MlpNorm,
                                  TensorRole::PostMlpNorm}) {
      if (arch.has(norm)) out.vector(arch.module(norm, layer) + ".weight", h);
    }
    list_attention(out, arch, c, layer);
    list_mlp(out, arch, c, layer);
  }
  return std::make_unique<ListedWeights>(out.take());
}

}  // namespace nibble
