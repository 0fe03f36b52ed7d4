#include "loader/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>

#include <fmt/format.h>
#include <numbers>
#include <utility>

#include "common/error.h"
#include "common/half.h"
#include "common/mapped_file.h"
#include "loader/architecture.h"
#include "loader/gguf_mla.h"

namespace nibble {
namespace {

const Architecture& arch_info(const GgufFile& gguf) {
  const std::string arch = gguf.get_string("general.architecture");
  // llama.cpp writes Mixtral as "llama" with experts.
  if (arch == "llama" && gguf.find_int("llama.expert_count").value_or(0) > 0) {
    return architecture_of("MixtralForCausalLM");
  }
  // llama.cpp writes DeepSeek-V2 and V3 alike as "deepseek2".
  if (arch == "deepseek2") return architecture_of(deepseek_architecture_of(gguf));
  if (const Architecture* entry = find_gguf_architecture(arch)) return *entry;
  fail("{}: GGUF architecture '{}' is not supported (supported: {})", gguf.path().string(), arch,
       supported_gguf_architectures());
}

// llama.cpp's rule: a head is key_length wide, else hidden / heads; rope.dimension_count
// below that is partial rotary (Phi-4-mini), only the first features rotate.
void head_dims_of(const GgufFile& gguf, const std::string& prefix, ModelConfig& config) {
  const auto key_length = gguf.find_int(prefix + "attention.key_length");
  const auto rope_dims = gguf.find_int(prefix + "rope.dimension_count");
  config.head_dim = key_length ? *key_length : config.hidden_size / config.num_heads;
  if (rope_dims && *rope_dims != config.head_dim) config.rotary_dim = *rope_dims;
  if (const auto value_length = gguf.find_int(prefix + "attention.value_length");
      value_length && *value_length != config.head_dim) {
    fail("{}: attention.value_length {} differs from key_length {}; not supported", gguf.path().string(), *value_length,
         config.head_dim);
  }
}

// LongRoPE as llama.cpp's converter writes it (Phi-3 128k, Phi-3.5): the factor
// lists as rope_factors_long / rope_factors_short, the pretraining context and the
// attention factor as metadata. Sequence-length switching follows transformers.
RopeScaling longrope_from_factors(const GgufFile& gguf, const std::string& prefix, const GgufTensor& long_factors,
                                  const GgufTensor& short_factors, const ModelConfig& config) {
  const auto values = [](const GgufTensor& tensor) {
    std::vector<float> stored(static_cast<std::size_t>(tensor.numel()));
    dequantize_to_f32(tensor, stored);
    return std::vector<double>(stored.begin(), stored.end());
  };
  RopeScaling scaling;
  scaling.kind = RopeScaling::Kind::LongRope;
  scaling.long_factor = values(long_factors);
  scaling.short_factor = values(short_factors);
  scaling.original_max_position_embeddings = gguf.get_int(prefix + "rope.scaling.original_context_length");
  if (scaling.original_max_position_embeddings <= 0) {
    fail("{}: {}rope.scaling.original_context_length must be positive", gguf.path().string(), prefix);
  }
  const double factor = static_cast<double>(config.max_position_embeddings) /
                        static_cast<double>(scaling.original_max_position_embeddings);
  scaling.attention_factor = gguf.find_float(prefix + "rope.scaling.attn_factor")
                                 .value_or(factor <= 1 ? 1.0
                                                       : std::sqrt(1 + std::log(factor) /
                                                                           std::log(static_cast<double>(
                                                                               scaling.original_max_position_embeddings))));
  return scaling;
}

// llama.cpp bakes Llama 3 rope scaling into a per-frequency `rope_freqs` tensor
// instead of metadata; recover the HF parameters by regenerating the tensor from
// the published defaults and accepting them only when they reproduce it.
RopeScaling llama3_scaling_from_freqs(const GgufFile& gguf, const GgufTensor& freqs, const ModelConfig& config) {
  std::vector<float> stored(static_cast<std::size_t>(freqs.numel()));
  dequantize_to_f32(freqs, stored);
  if (static_cast<std::int64_t>(stored.size()) * 2 != config.head_dim) {
    fail("{}: rope_freqs.weight has {} entries, expected head_dim/2 = {}", gguf.path().string(), stored.size(),
         config.head_dim / 2);
  }
  RopeScaling scaling;
  scaling.kind = RopeScaling::Kind::Llama3;
  scaling.factor = *std::max_element(stored.begin(), stored.end());
  const double low_wavelen = static_cast<double>(scaling.original_max_position_embeddings) / scaling.low_freq_factor;
  const double high_wavelen = static_cast<double>(scaling.original_max_position_embeddings) / scaling.high_freq_factor;
  for (std::size_t i = 0; i < stored.size(); ++i) {
    const double exponent = static_cast<double>(2 * i) / static_cast<double>(config.head_dim);
    const double wavelen = 2 * std::numbers::pi * std::pow(config.rope_theta, exponent);
    double expected = scaling.factor;
    if (wavelen < high_wavelen) {
      expected = 1.0;
    } else if (wavelen <= low_wavelen) {
      const double smooth = (static_cast<double>(scaling.original_max_position_embeddings) / wavelen -
                             scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
      expected = 1.0 / ((1 - smooth) / scaling.factor + smooth);
    }
    if (std::abs(expected - stored[i]) > 1e-3 * expected) {
      fail("{}: rope_freqs.weight does not match Llama 3 rope scaling with factor {} (entry {}: {} vs {})",
           gguf.path().string(), scaling.factor, i, stored[i], expected);
    }
  }
  return scaling;
}

RopeScaling rope_scaling_of(const GgufFile& gguf, const std::string& prefix, const ModelConfig& config) {
  const std::string type = gguf.find_string(prefix + "rope.scaling.type").value_or("none");
  if (type == "linear") {
    RopeScaling scaling;
    scaling.kind = RopeScaling::Kind::Linear;
    scaling.factor = gguf.get_float(prefix + "rope.scaling.factor");
    if (scaling.factor <= 0) fail("{}: rope.scaling.factor must be positive", gguf.path().string());
    return scaling;
  }
  if (type != "none") {
    fail("{}: rope scaling type '{}' is not supported (supported: none, linear, llama3, longrope)", gguf.path().string(),
         type);
  }
  const auto* long_factors = gguf.find_tensor("rope_factors_long.weight");
  const auto* short_factors = gguf.find_tensor("rope_factors_short.weight");
  if ((long_factors == nullptr) != (short_factors == nullptr)) {
    fail("{}: rope_factors_long and rope_factors_short come as a pair", gguf.path().string());
  }
  if (long_factors != nullptr) return longrope_from_factors(gguf, prefix, *long_factors, *short_factors, config);
  if (const auto* freqs = gguf.find_tensor("rope_freqs.weight")) return llama3_scaling_from_freqs(gguf, *freqs, config);
  return {};
}

std::optional<std::int32_t> token_id(const GgufFile& gguf, const std::string& key) {
  const auto value = gguf.find_int(key);
  if (!value) return std::nullopt;
  if (*value < 0 || *value > std::numeric_limits<std::int32_t>::max()) {
    fail("{}: {} = {} is not a valid token id", gguf.path().string(), key, *value);
  }
  return static_cast<std::int32_t>(*value);
}

std::int64_t vocab_size_of(const GgufFile& gguf, const std::string& prefix) {
  const GgufTensor* embedding = gguf.find_tensor("token_embd.weight");
  std::optional<std::int64_t> from_tokens;
  if (gguf.has("tokenizer.ggml.tokens")) {
    const auto* array = std::get_if<std::shared_ptr<GgufArray>>(&gguf.metadata().at("tokenizer.ggml.tokens"));
    if (array == nullptr) fail("{}: tokenizer.ggml.tokens is not an array", gguf.path().string());
    from_tokens = static_cast<std::int64_t>((*array)->values.size());
  }
  if (embedding != nullptr && embedding->shape.size() == 2) {
    if (from_tokens && *from_tokens != embedding->shape[0]) {
      fail("{}: tokenizer.ggml.tokens has {} tokens but token_embd.weight has {} rows", gguf.path().string(),
           *from_tokens, embedding->shape[0]);
    }
    return embedding->shape[0];
  }
  if (from_tokens) return *from_tokens;
  return gguf.get_int(prefix + "vocab_size");
}

std::string torch_dtype_of(const GgufFile& gguf) {
  // general.file_type is llama_ftype: 0 all F32, 1 mostly F16, 32 mostly BF16.
  // Quantized files load as F32 since load() dequantizes them.
  switch (gguf.find_int("general.file_type").value_or(0)) {
    case 1: return "float16";
    case 32: return "bfloat16";
    default: return "float32";
  }
}

std::optional<DType> plain_dtype(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return DType::F32;
    case GgmlType::F16: return DType::F16;
    case GgmlType::BF16: return DType::BF16;
    default: return std::nullopt;
  }
}

bool is_unpacked_type(GgmlType type) { return type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q8_0; }

// Types whose matrices load as QuantizedMatrix: unpacked codes, or kept-packed blocks.
bool is_quantized_type(GgmlType type) { return is_unpacked_type(type) || block_format_of(type).has_value(); }

// K-quant, IQ4, ternary and Q5 rows as a block-quantized QuantizedMatrix: the
// bytes are copied as they are (rows in HF order), never decoded here.
QuantizedMatrix packed_blocks(const std::string& module, BlockFormat format, std::span<const std::byte> data,
                              std::int64_t rows, std::int64_t cols) {
  QuantizedMatrix m;
  m.name = module;
  m.rows = rows;
  m.cols = cols;
  m.groups = 0;
  m.bits = 0;
  m.block_format = format;
  m.blocks.assign(data.begin(), data.end());
  m.stored_bytes = data.size();
  m.validate();
  return m;
}

float block_f16(const std::byte* at) {
  std::uint16_t bits;
  std::memcpy(&bits, at, 2);
  return f16_to_f32(bits);
}

// Q4_0 / Q4_1 / Q8_0 rows (32 weights per block, blocks along the row) as a
// QuantizedMatrix with one group per block. `data` holds the rows in HF order.
QuantizedMatrix unpack_blocks(const std::string& module, GgmlType type, std::span<const std::byte> data,
                              std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t kBlock = 32;
  QuantizedMatrix m;
  m.name = module;
  m.rows = rows;
  m.cols = cols;
  m.groups = cols / kBlock;
  m.group_of_col = contiguous_groups(cols, kBlock);
  m.scale_dtype = DType::F16;
  m.bits = type == GgmlType::Q8_0 ? 8 : 4;
  m.offset = type == GgmlType::Q4_1 ? QuantizedMatrix::Offset::Min : QuantizedMatrix::Offset::ZeroPoint;
  m.codes.resize(static_cast<std::size_t>(rows * cols));
  m.scales.resize(static_cast<std::size_t>(rows * m.groups));
  if (m.offset == QuantizedMatrix::Offset::Min) {
    m.mins.resize(m.scales.size());
  } else {
    // Q4_0 stores q in [0, 16) for the value q - 8; Q8_0 stores signed q, kept as q + 128.
    m.zeros.assign(m.scales.size(), type == GgmlType::Q8_0 ? 128 : 8);
  }
  const std::size_t block_bytes = type == GgmlType::Q4_0 ? 18 : type == GgmlType::Q4_1 ? 20 : 34;
  for (std::int64_t b = 0; b < rows * m.groups; ++b) {
    const std::byte* block = data.data() + static_cast<std::size_t>(b) * block_bytes;
    // Blocks tile the rows exactly, so block b holds codes [32b, 32b + 32).
    std::uint8_t* codes = m.codes.data() + b * kBlock;
    m.scales[static_cast<std::size_t>(b)] = block_f16(block);
    if (type == GgmlType::Q8_0) {
      for (int j = 0; j < 32; ++j) codes[j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(block[2 + j]) + 128);
      continue;
    }
    if (type == GgmlType::Q4_1) m.mins[static_cast<std::size_t>(b)] = block_f16(block + 2);
    const std::byte* qs = block + (type == GgmlType::Q4_1 ? 4 : 2);
    // Element j < 16 is the low nibble of byte j, element j + 16 its high nibble.
    for (int j = 0; j < 16; ++j) {
      const auto byte = static_cast<std::uint8_t>(qs[j]);
      codes[j] = byte & 0x0f;
      codes[j + 16] = byte >> 4;
    }
  }
  m.stored_bytes = data.size();
  m.validate();
  return m;
}

bool is_norm(TensorRole role) {
  switch (role) {
    case TensorRole::FinalNorm:
    case TensorRole::AttentionNorm:
    case TensorRole::QueryNorm:
    case TensorRole::KeyNorm:
    case TensorRole::PostAttentionNorm:
    case TensorRole::MlpNorm:
    case TensorRole::PostMlpNorm:
      return true;
    default:
      return false;
  }
}

class GgufWeights final : public WeightSource {
 public:
  GgufWeights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config) : gguf_(std::move(gguf)) {
    const Architecture& arch = arch_info(*gguf_);
    for (const auto& tensor : gguf_->tensors()) {
      if (const auto experts = gguf_expert_tensor(arch, tensor.name)) {
        add_experts(arch, tensor, *experts, config.moe.num_experts);
        continue;
      }
      if (arch.latent_attention && tensor.name.ends_with(kKeyB)) {
        add_split_kv_b(arch, tensor, config);
        continue;
      }
      if (arch.latent_attention && tensor.name.ends_with(kValueB)) continue;  // read with its attn_k_b
      const auto hf = hf_tensor_of_gguf(arch, tensor.name);
      Entry entry{&tensor, 0, hf && arch.norm_weight_offset_one && is_norm(hf->role), nullptr, {}};
      // Unknown tensors (rope_freqs, ...) stay visible under their GGUF names.
      std::string name = hf ? hf->name : tensor.name;
      if (hf && arch.gguf_rope_rows_interleaved && (hf->role == TensorRole::Query || hf->role == TensorRole::Key)) {
        entry.rope_heads = hf->role == TensorRole::Query ? config.num_heads : config.num_kv_heads;
      }
      if (entry.rope_heads > 0) check_rope_rows(tensor, entry.rope_heads);
      if (!entries_.emplace(name, entry).second) {
        fail("{}: tensors '{}' map to the same name '{}'", gguf_->path().string(), tensor.name, name);
      }
    }
  }

  std::vector<StoredTensorInfo> list() const override {
    std::vector<StoredTensorInfo> out;
    out.reserve(entries_.size());
    for (const auto& [name, entry] : entries_) {
      if (entry.value_b != nullptr) {
        out.push_back({name, std::string(ggml_type_name(entry.tensor->type)), entry.joined_shape,
                       static_cast<std::uint64_t>(entry.tensor->data.size() + entry.value_b->data.size())});
        continue;
      }
      out.push_back({name, std::string(ggml_type_name(entry.tensor->type)), entry.tensor->shape,
                     static_cast<std::uint64_t>(entry.tensor->data.size())});
    }
    return out;
  }

  bool contains(const std::string& name) const override { return entries_.contains(name); }

  TensorView load(const std::string& name) const override {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail("{}: the GGUF file has no tensor for '{}'", gguf_->path().string(), name);
    const Entry& entry = it->second;
    if (entry.value_b != nullptr) {
      return make_owned_f32(name, entry.joined_shape, join_kv_b(*entry.tensor, *entry.value_b, *mla_, mla_heads_));
    }
    if (entry.stored_plus_one) return minus_one(convert(name, *entry.tensor, gguf_));
    if (entry.rope_heads == 0) return convert(name, *entry.tensor, gguf_);
    auto reordered = std::make_shared<std::vector<std::byte>>(entry.tensor->data.size());
    interleaved_rope_rows_to_halves(entry.tensor->data, *reordered, entry.tensor->shape[0], entry.rope_heads);
    GgufTensor tensor = *entry.tensor;
    tensor.data = *reordered;
    return convert(name, tensor, reordered);
  }

  // Q4_0 / Q4_1 / Q8_0 weights unpacked without dequantizing, every other
  // quantized type as its blocks (rows reordered exactly as load() does);
  // nullopt for plain F32/F16/BF16 tensors.
  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (!has_quantized(module)) return std::nullopt;
    const Entry& entry = entries_.at(module + ".weight");
    const GgufTensor& tensor = *entry.tensor;
    if (tensor.shape.size() != 2) {
      fail("{}: tensor '{}' has shape of rank {}, expected a matrix", gguf_->path().string(), tensor.name,
           tensor.shape.size());
    }
    std::span<const std::byte> data = tensor.data;
    std::vector<std::byte> reordered;
    if (entry.rope_heads > 0) {
      reordered.resize(data.size());
      interleaved_rope_rows_to_halves(data, reordered, tensor.shape[0], entry.rope_heads);
      data = reordered;
    }
    const auto format = block_format_of(tensor.type);
    QuantizedMatrix m = format ? packed_blocks(module, *format, data, tensor.shape[0], tensor.shape[1])
                               : unpack_blocks(module, tensor.type, data, tensor.shape[0], tensor.shape[1]);
    release_mapped_pages(tensor.data);
    return m;
  }

  bool has_quantized(const std::string& module) const override {
    const auto it = entries_.find(module + ".weight");
    // A joined kv_b is float32 (load()), whatever its halves' type.
    return it != entries_.end() && it->second.value_b == nullptr && is_quantized_type(it->second.tensor->type);
  }

  std::uint64_t file_bytes() const override { return gguf_->size(); }

 private:
  struct Entry {
    const GgufTensor* tensor;
    std::int64_t rope_heads;  // > 0: rows to reorder from interleaved to halves, per this many heads
    bool stored_plus_one;     // a (1 + w) norm weight llama.cpp's converter stored as w + 1
    // Set for a kv_b_proj llama.cpp stores split: `tensor` is attn_k_b, this attn_v_b,
    // joined by load() into joined_shape.
    const GgufTensor* value_b = nullptr;
    std::vector<std::int64_t> joined_shape;
  };

  static constexpr std::string_view kKeyB = ".attn_k_b.weight", kValueB = ".attn_v_b.weight";

  // llama.cpp's converter writes DeepSeek's kv_b_proj as attn_k_b and attn_v_b
  // (loader/gguf_mla.h); the pair stands for the Hugging Face kv_b_proj of its layer.
  void add_split_kv_b(const Architecture& arch, const GgufTensor& k_b, const ModelConfig& config) {
    const std::string stem = k_b.name.substr(0, k_b.name.size() - kKeyB.size());
    const GgufTensor* v_b = gguf_->find_tensor(stem + std::string(kValueB));
    if (v_b == nullptr) fail("{}: '{}' has no '{}{}' beside it", gguf_->path().string(), k_b.name, stem, kValueB);
    if (!config.mla) fail("{}: '{}' in a model without latent attention", gguf_->path().string(), k_b.name);
    const auto hf = hf_tensor_of_gguf(arch, stem + ".attn_kv_b.weight");
    if (!hf) fail("{}: '{}' is not a layer's tensor", gguf_->path().string(), k_b.name);
    mla_ = *config.mla;
    mla_heads_ = config.num_heads;
    Entry entry{&k_b, 0, false, v_b,
                {config.num_heads * (mla_->qk_nope_head_dim + mla_->v_head_dim), mla_->kv_lora_rank}};
    if (!entries_.emplace(hf->name, std::move(entry)).second) {
      fail("{}: layer '{}' has both attn_kv_b and attn_k_b / attn_v_b", gguf_->path().string(), stem);
    }
  }

  // A 3-D expert tensor [experts, rows, cols] as one matrix per expert under its
  // Hugging Face name: expert e's rows are one contiguous run of the file (any
  // type: a row's blocks never straddle experts), viewed, not copied.
  void add_experts(const Architecture& arch, const GgufTensor& tensor, const GgufExpertTensor& experts,
                   std::int64_t expected) {
    if (tensor.shape.size() != 3 || tensor.shape[0] <= 0 || tensor.data.size() % static_cast<std::size_t>(tensor.shape[0]) != 0) {
      fail("{}: expert tensor '{}' must be [experts, rows, cols]", gguf_->path().string(), tensor.name);
    }
    if (tensor.shape[0] != expected) {
      fail("{}: expert tensor '{}' holds {} experts, the metadata says {}", gguf_->path().string(), tensor.name,
           tensor.shape[0], expected);
    }
    const auto count = tensor.shape[0];
    const std::size_t bytes = tensor.data.size() / static_cast<std::size_t>(count);
    for (std::int64_t e = 0; e < count; ++e) {
      GgufTensor& part = expert_tensors_.emplace_back();
      part.name = fmt::format("{}[expert {}]", tensor.name, e);
      part.type = tensor.type;
      part.shape = {tensor.shape[1], tensor.shape[2]};
      part.data = tensor.data.subspan(static_cast<std::size_t>(e) * bytes, bytes);
      const std::string name = arch.expert_module(experts.role, experts.layer, e) + ".weight";
      if (!entries_.emplace(name, Entry{&part, 0, false, nullptr, {}}).second) {
        fail("{}: tensors '{}' map to the same name '{}'", gguf_->path().string(), part.name, name);
      }
    }
  }

  // w from the stored w + 1, in float32 as transformers' GGUF loader computes it,
  // so the engine's 1 + w rounds to the very value the file holds.
  static TensorView minus_one(const TensorView& stored) {
    if (stored.dtype != DType::F32 && stored.dtype != DType::F16 && stored.dtype != DType::BF16) {
      fail("norm weight '{}': dtype {} is not supported", stored.name, dtype_name(stored.dtype));
    }
    std::vector<float> values(static_cast<std::size_t>(stored.numel()));
    for (std::size_t i = 0; i < values.size(); ++i) {
      float w = 0;
      if (stored.dtype == DType::F32) {
        std::memcpy(&w, stored.bytes.data() + i * 4, 4);
      } else {
        std::uint16_t h = 0;
        std::memcpy(&h, stored.bytes.data() + i * 2, 2);
        w = stored.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      values[i] = w - 1.0f;
    }
    return make_owned_f32(stored.name, stored.shape, std::move(values));
  }

  void check_rope_rows(const GgufTensor& tensor, std::int64_t heads) const {
    if (heads <= 0 || tensor.shape[0] % (2 * heads) != 0) {
      fail("{}: tensor '{}' has {} rows, which do not split into {} heads of even size", gguf_->path().string(),
           tensor.name, tensor.shape[0], heads);
    }
  }

  // `storage` keeps tensor.data alive: the mapped file itself or a reordered copy.
  static TensorView convert(const std::string& name, const GgufTensor& tensor, std::shared_ptr<const void> storage) {
    if (const auto dtype = plain_dtype(tensor.type)) {
      TensorView view;
      view.name = name;
      view.dtype = *dtype;
      view.shape = tensor.shape;
      view.bytes = tensor.data;
      view.owner = std::move(storage);
      return view;
    }
    std::vector<float> values(static_cast<std::size_t>(tensor.numel()));
    dequantize_to_f32(tensor, values);
    return make_owned_f32(name, tensor.shape, std::move(values));
  }

  std::shared_ptr<const GgufFile> gguf_;
  std::optional<MlaConfig> mla_;  // what a split kv_b joins into
  std::int64_t mla_heads_ = 0;
  std::deque<GgufTensor> expert_tensors_;  // per-expert views of 3-D tensors (stable addresses for entries_)
  std::map<std::string, Entry> entries_;
};

// Mixture-of-experts metadata as llama.cpp's converter writes it. A layer is
// sparse when it has a router (ffn_gate_inp). llama.cpp's graphs renormalize the
// top-k weights for llama (Mixtral) and qwen3moe and not for qwen2moe, unless the
// file says (expert_weights_norm).
void moe_from_gguf(const GgufFile& gguf, const std::string& prefix, const Architecture& arch, ModelConfig& config) {
  MoeConfig& moe = config.moe;
  moe.num_experts = gguf.get_int(prefix + "expert_count");
  moe.experts_per_token = gguf.get_int(prefix + "expert_used_count");
  moe.expert_intermediate_size = gguf.find_int(prefix + "expert_feed_forward_length").value_or(config.intermediate_size);
  if (arch.has(TensorRole::SharedGate)) {
    moe.shared_expert_intermediate_size = gguf.find_int(prefix + "expert_shared_feed_forward_length").value_or(0);
    moe.shared_expert_gate = arch.has(TensorRole::SharedExpertGate);
  }
  const std::string norm_key = prefix + "expert_weights_norm";
  moe.norm_topk_prob = gguf.has(norm_key) ? gguf.get_bool(norm_key)
                                          : arch.norm_topk_prob_default || arch.model_type == "qwen3_moe";
  bool all_sparse = true;
  std::vector<bool> sparse;
  for (std::int64_t i = 0; i < config.num_layers && i < (std::int64_t{1} << 12); ++i) {
    sparse.push_back(gguf.find_tensor(fmt::format("blk.{}.ffn_gate_inp.weight", i)) != nullptr);
    all_sparse = all_sparse && sparse.back();
  }
  if (!all_sparse) moe.sparse_layers = std::move(sparse);
}

// What Gemma GGUF files leave to the reader, as llama.cpp reads them: the
// local/global layer pattern (every other layer local in Gemma 2, five local to
// one global in Gemma 3; llama.cpp's own period is n for sliding_window_pattern n),
// Gemma 3's local rope base (10K, unscaled), the query
// scale (1/sqrt(head_dim), except the 27B models, told apart by their layer
// count, which scale by 1/sqrt(hidden / heads) as their Hugging Face configs do)
// and Gemma 2's soft-capping defaults (50 / 30).
void gemma_from_gguf(const GgufFile& gguf, const std::string& prefix, ModelConfig& config) {
  const bool gemma3 = config.model_type == "gemma3_text";
  config.sliding_window = gguf.find_int(prefix + "attention.sliding_window").value_or(4096);
  // Newer converters may write the pattern (a period, or a flag per layer) and the local base.
  const std::string pattern_key = prefix + "attention.sliding_window_pattern";
  config.sliding_layers.clear();
  const auto* flags = gguf.has(pattern_key) ? std::get_if<std::shared_ptr<GgufArray>>(&gguf.metadata().at(pattern_key))
                                            : nullptr;
  if (flags != nullptr) {
    for (const auto& flag : (*flags)->values) {
      const bool* sliding = std::get_if<bool>(&flag);
      if (sliding == nullptr) fail("{}: {} must hold booleans", gguf.path().string(), pattern_key);
      config.sliding_layers.push_back(*sliding);
    }
  } else {
    // Period n: the last layer of every n is global; 0 (as in llama.cpp): all local.
    const std::int64_t pattern = gguf.find_int(pattern_key).value_or(gemma3 ? 6 : 2);
    if (pattern < 0) fail("{}: {} must not be negative", gguf.path().string(), pattern_key);
    for (std::int64_t i = 0; i < config.num_layers; ++i) {
      config.sliding_layers.push_back(pattern == 0 || (i + 1) % pattern != 0);
    }
  }
  if (gemma3) config.local_rope_theta = gguf.find_float(prefix + "rope.freq_base_swa").value_or(10000.0);
  const bool is_27b = config.num_layers == (gemma3 ? 62 : 46);
  config.query_pre_attn_scalar = static_cast<double>(is_27b ? config.hidden_size / config.num_heads : config.head_dim);
  config.attn_logit_softcapping = gguf.find_float(prefix + "attn_logit_softcapping").value_or(gemma3 ? 0.0 : 50.0);
  config.final_logit_softcapping = gguf.find_float(prefix + "final_logit_softcapping").value_or(gemma3 ? 0.0 : 30.0);
  // Instruction-tuned Gemma ends its turns with <end_of_turn>, which the files do
  // not name as an end token (Hugging Face's generation_config.json lists it
  // beside <eos>; llama.cpp finds it by its text, as here).
  if (gguf.has("tokenizer.ggml.tokens")) {
    const auto* array = std::get_if<std::shared_ptr<GgufArray>>(&gguf.metadata().at("tokenizer.ggml.tokens"));
    if (array == nullptr) return;
    const auto& tokens = (*array)->values;
    for (std::size_t id = 0; id < tokens.size(); ++id) {
      const auto* text = std::get_if<std::string>(&tokens[id]);
      if (text == nullptr || *text != "<end_of_turn>") continue;
      const auto token = static_cast<std::int32_t>(id);
      if (std::ranges::find(config.eos_token_ids, token) == config.eos_token_ids.end()) config.eos_token_ids.push_back(token);
      break;
    }
  }
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& gguf) {
  const Architecture& arch = arch_info(gguf);
  // The file's own architecture name ("llama" for Mixtral) prefixes its keys.
  const std::string prefix = gguf.get_string("general.architecture") + ".";
  ModelConfig config;
  config.architecture = arch.hf_architecture;
  config.model_type = arch.model_type;
  config.hidden_size = gguf.get_int(prefix + "embedding_length");
  config.intermediate_size = gguf.get_int(prefix + "feed_forward_length");
  config.num_layers = gguf.get_int(prefix + "block_count");
  config.num_heads = gguf.get_int(prefix + "attention.head_count");
  // llama.cpp treats a missing head_count_kv as plain multi-head attention.
  config.num_kv_heads = gguf.find_int(prefix + "attention.head_count_kv").value_or(config.num_heads);
  if (config.num_heads <= 0) fail("{}: {}attention.head_count must be positive", gguf.path().string(), prefix);
  config.max_position_embeddings = gguf.get_int(prefix + "context_length");
  config.rms_norm_eps = gguf.get_float(prefix + "attention.layer_norm_rms_epsilon");
  config.rope_theta = gguf.find_float(prefix + "rope.freq_base").value_or(10000.0);
  if (arch.latent_attention) {
    deepseek_from_gguf(gguf, prefix, config);  // head sizes, YaRN and routing in DeepSeek's own keys
  } else {
    head_dims_of(gguf, prefix, config);
    config.rope_scaling = rope_scaling_of(gguf, prefix, config);
  }
  config.vocab_size = vocab_size_of(gguf, prefix);
  config.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  config.attention_bias = arch.attention_bias;
  // As the Hugging Face config had it (llama.cpp's phi3 graph ignores the window;
  // transformers applies it, and it is the reference).
  if (const auto window = gguf.find_int(prefix + "attention.sliding_window"); window && *window > 0) {
    config.sliding_window = *window;
  }
  config.bos_token_id = token_id(gguf, "tokenizer.ggml.bos_token_id");
  // Chat models end turns with EOT/EOM tokens; HF lists those as extra eos ids.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    const auto id = token_id(gguf, key);
    if (id && std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), *id) == config.eos_token_ids.end()) {
      config.eos_token_ids.push_back(*id);
    }
  }
  config.torch_dtype = torch_dtype_of(gguf);
  if (config.model_type == "gemma2" || config.model_type == "gemma3_text") gemma_from_gguf(gguf, prefix, config);
  if (arch.has(TensorRole::Router) && !arch.latent_attention) moe_from_gguf(gguf, prefix, arch, config);
  try {
    config.validate();
  } catch (const Error& e) {
    fail("{}: {}", gguf.path().string(), e.what());
  }
  return config;
}

std::unique_ptr<WeightSource> make_gguf_weights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config) {
  return std::make_unique<GgufWeights>(std::move(gguf), config);
}

namespace {
// Row 2i + j of each head <-> row j * head_rows / 2 + i; `to_halves` picks the direction.
void permute_rope_rows(std::span<const std::byte> in, std::span<std::byte> out, std::int64_t rows, std::int64_t n_heads,
                       bool to_halves) {
  if (rows <= 0 || n_heads <= 0 || rows % (2 * n_heads) != 0 || in.size() != out.size() ||
      in.size() % static_cast<std::size_t>(rows) != 0) {
    fail("cannot reorder {} rows of {} bytes into {} rotary heads", rows, in.size(), n_heads);
  }
  const auto row_bytes = in.size() / static_cast<std::size_t>(rows);
  const std::int64_t head_rows = rows / n_heads;
  const std::int64_t half = head_rows / 2;
  for (std::int64_t head = 0; head < n_heads; ++head) {
    const std::int64_t base = head * head_rows;
    for (std::int64_t i = 0; i < half; ++i) {
      for (std::int64_t j = 0; j < 2; ++j) {
        auto from = static_cast<std::size_t>(base + 2 * i + j) * row_bytes;
        auto to = static_cast<std::size_t>(base + j * half + i) * row_bytes;
        if (!to_halves) std::swap(from, to);
        std::memcpy(out.data() + to, in.data() + from, row_bytes);
      }
    }
  }
}
}  // namespace

void interleaved_rope_rows_to_halves(std::span<const std::byte> in, std::span<std::byte> out, std::int64_t rows,
                                     std::int64_t n_heads) {
  permute_rope_rows(in, out, rows, n_heads, true);
}

void halves_to_interleaved_rope_rows(std::span<const std::byte> in, std::span<std::byte> out, std::int64_t rows,
                                     std::int64_t n_heads) {
  permute_rope_rows(in, out, rows, n_heads, false);
}

}  // namespace nibble
