#pragma once
// The compute interface the engine is written against. A backend owns how the
// numbers are crunched (CPU SIMD now; CUDA later); the engine owns what is
// computed. Activations are float32, row-major, one row per token; pointers are
// the backend's own memory (host memory for the CPU backend).
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "common/dtype.h"
#include "common/quantized_matrix.h"

namespace nibble::kernels {

// A weight matrix stored [rows = output features, cols = input features], the
// PyTorch nn.Linear layout. Low-precision dtypes are widened inside the kernel,
// never expanded in memory.
struct Matrix {
  DType dtype = DType::F32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const void* data = nullptr;
};

// Element `index` (row-major) of a matrix of any supported dtype, as float32.
// For small host-side uses (embedding rows, references), not for hot loops.
float matrix_element(const Matrix& m, std::int64_t index);

// A weight matrix a backend has prepared for its linear kernels: packed into the
// backend's own layout (quantized, sparse) or a view of dense weights the caller
// keeps alive. Opaque above the backend.
class LinearWeights {
 public:
  virtual ~LinearWeights() = default;
  virtual std::int64_t rows() const = 0;  // output features
  virtual std::int64_t cols() const = 0;  // input features
  // Memory the backend holds for these weights (0 for a view of the caller's data).
  virtual std::uint64_t resident_bytes() const = 0;
  // True when the weights still read the caller's dense data, which must outlive them.
  virtual bool views_source() const = 0;
  // What the kernels run on, for logs and `nibble inspect`: "int4 g128 zero-point", "csr f16 density 0.21"...
  virtual std::string describe() const = 0;
  // Row `row` dequantized to float32 (cols() values): embedding lookups from a
  // quantized table, tests. Not for hot loops.
  virtual void dequantize_row(std::int64_t row, float* out) const = 0;
};

// How prepare_linear treats dense weights that contain many zeros.
enum class SparseChoice : std::uint8_t {
  Auto,    // a sparse layout when the backend measured it to be faster at this density
  Dense,   // always the dense kernel
  Sparse,  // always the sparse kernel (tests, benchmarks)
};

// How a KV cache stores its elements: float32; IEEE fp16 (half the memory, each
// element rounded once to 11 significant bits); or int8 codes with one float scale
// per (position, kv head).
enum class KvFormat : std::uint8_t { Float32, Float16, Int8 };

// One layer's keys and values as attention reads them: position t is row row(t).
// Contiguous (a sequence's own cache) or paged: the position's block from the
// sequence's block table, then its slot in the block. Row r's elements start at
// r * stride in the format's arrays: keys/values (float32), keys_f16/values_f16
// (fp16 bits), or key_codes/value_codes (int8) with the scale of (row r, kv head h)
// at key_scales/value_scales + r * kv_heads + h. Exactly one pair is set.
struct KvLayerView {
  const float* keys = nullptr;
  const float* values = nullptr;
  std::int64_t stride = 0;
  std::span<const std::int32_t> block_table;  // empty: contiguous
  std::int64_t block_size = 0;
  const std::int8_t* key_codes = nullptr;  // set: the 8-bit layout
  const std::int8_t* value_codes = nullptr;
  const float* key_scales = nullptr;
  const float* value_scales = nullptr;
  const std::uint16_t* keys_f16 = nullptr;  // set: the fp16 layout
  const std::uint16_t* values_f16 = nullptr;

  std::int64_t row(std::int64_t position) const {
    if (block_table.empty()) return position;
    return std::int64_t{block_table[static_cast<std::size_t>(position / block_size)]} * block_size +
           position % block_size;
  }
  static KvLayerView floats(const float* keys, const float* values, std::int64_t stride,
                            std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view;
    view.keys = keys;
    view.values = values;
    view.stride = stride;
    view.block_table = block_table;
    view.block_size = block_size;
    return view;
  }
  static KvLayerView f16(const std::uint16_t* keys, const std::uint16_t* values, std::int64_t stride,
                         std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view = floats(nullptr, nullptr, stride, block_table, block_size);
    view.keys_f16 = keys;
    view.values_f16 = values;
    return view;
  }
  static KvLayerView int8(const std::int8_t* key_codes, const std::int8_t* value_codes, const float* key_scales,
                          const float* value_scales, std::int64_t stride,
                          std::span<const std::int32_t> block_table = {}, std::int64_t block_size = 0) {
    KvLayerView view = floats(nullptr, nullptr, stride, block_table, block_size);
    view.key_codes = key_codes;
    view.value_codes = value_codes;
    view.key_scales = key_scales;
    view.value_scales = value_scales;
    return view;
  }

  KvFormat format() const {
    if (key_codes != nullptr) return KvFormat::Int8;
    if (keys_f16 != nullptr) return KvFormat::Float16;
    return KvFormat::Float32;
  }
  bool quantized() const { return format() == KvFormat::Int8; }
  const float* key(std::int64_t position) const { return keys + row(position) * stride; }
  const float* value(std::int64_t position) const { return values + row(position) * stride; }
};

struct AttentionShape {
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::optional<std::int64_t> sliding_window;  // attend to at most this many latest positions
};

// One sequence's rows in a batched attention call: q [rows, heads * head_dim] at
// `positions`, attending over `kv`, written to out [rows, heads * head_dim].
struct AttentionSegment {
  const float* q = nullptr;
  std::int64_t rows = 0;
  std::span<const std::int32_t> positions;
  KvLayerView kv;
  float* out = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Prepares weights for linear(). Dense weights are viewed in place unless a
  // sparse layout is chosen; quantized weights are packed into the backend's
  // layout, never expanded to floating point.
  virtual std::unique_ptr<LinearWeights> prepare_linear(const Matrix& dense, SparseChoice sparse = SparseChoice::Auto) = 0;
  virtual std::unique_ptr<LinearWeights> prepare_linear(const QuantizedMatrix& quantized) = 0;

  // y[m, n] = sum_k x[m, k] * w[n, k] + bias[n] (bias may be null). x: [rows, w.cols].
  virtual void linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) = 0;
  // The same for a dense matrix viewed in place (no preparation).
  virtual void linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) = 0;
  // y = x / rms(x) * weight, row by row; x and y may alias.
  virtual void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                        float* y) = 0;
  // Rotates each head of x [rows, heads * head_dim] in place by its position
  // (rotate-half convention); inv_freq has head_dim / 2 entries.
  virtual void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
                    std::span<const std::int32_t> positions, std::span<const float> inv_freq) = 0;
  // Causal attention for the rows of q [rows, heads * head_dim] at `positions`:
  // row i attends to cached positions 0..positions[i]. Writes out [rows, heads * head_dim].
  virtual void attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions,
                         const KvLayerView& kv, const AttentionShape& shape, float* out) = 0;
  // Attention for several sequences of one step, each over its own cache view
  // (AttentionSegment). The same results as one attention() call per segment; a
  // backend overrides it to spread all segments over its threads in one pass
  // instead of a pass (and a barrier) per sequence.
  virtual void attention_batch(std::span<const AttentionSegment> segments, const AttentionShape& shape) {
    for (const auto& segment : segments) {
      attention(segment.q, segment.rows, segment.positions, segment.kv, shape, segment.out);
    }
  }
  // out = silu(gate) * up, elementwise over n values.
  virtual void swiglu(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // y += x, elementwise.
  virtual void add(const float* x, std::int64_t n, float* y) = 0;
  // Copies rows `ids` of table [*, table.cols] into out as float32.
  virtual void embedding(const Matrix& table, std::span<const std::int32_t> ids, float* out) = 0;
  virtual void embedding(const LinearWeights& table, std::span<const std::int32_t> ids, float* out) = 0;
};

}  // namespace nibble::kernels
