#pragma once
// The interface the engine is written against. A backend owns the memory the
// model computes on (activations, the paged KV pool, uploaded weights) and how the
// numbers are crunched (CPU SIMD, CUDA); the engine owns what is computed.
// Activations are float32, row-major, one row per token; pointers are the
// backend's own memory (Buffers it allocated: host memory for the CPU backend,
// device memory for CUDA). std::span arguments (positions, ids, block tables) are
// host memory; a device backend stages them itself.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/quantized_matrix.h"
#include "kernels/buffer.h"
#include "kernels/kv_pool.h"
#include "kernels/kv_view.h"

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

struct AttentionShape {
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::optional<std::int64_t> sliding_window;  // attend to at most this many latest positions
  // Scores are q·k * scale; 0 means 1 / sqrt(head_dim). Gemma scales by
  // query_pre_attn_scalar^-1/2, which need not be the head size.
  float scale = 0.0f;
  // > 0: scores become cap * tanh(score / cap) before the softmax (Gemma 2's
  // attention-logit soft-capping); 0: none.
  float logit_softcap = 0.0f;
  // The values are the first value_dim features of each kv head's value row, and a
  // head's output is value_dim wide (out: [rows, heads * value_dim]); 0: head_dim.
  // MLA's absorbed attention reads keys [c_kv ; k_rope] and values c_kv, a prefix
  // of the same cached row (KvPoolShape::values_in_keys).
  std::int64_t value_dim = 0;

  std::int64_t value_width() const { return value_dim > 0 ? value_dim : head_dim; }
};

// Which features RoPE rotates together in a head's rotary part of width 2n:
// i with i + n (rotate-half, Llama and most Hugging Face models) or 2i with 2i + 1
// (DeepSeek's interleaved pairs). Frequency i turns pair i either way.
enum class RopePairs : std::uint8_t { Halves, Adjacent };

// Where a head's slice of a row-major activation is: row r, head h starts at
// r * row + h * head (elements).
struct HeadStrides {
  std::int64_t row = 0;
  std::int64_t head = 0;
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

// One linear layer of a grouped_linear call: y [rows, weights->rows()] =
// x [rows, weights->cols()] W^T (+ bias, may be null).
struct GroupedLinearJob {
  const LinearWeights* weights = nullptr;
  const float* x = nullptr;
  std::int64_t rows = 0;
  const float* bias = nullptr;
  float* y = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Where the memory it allocates lives, and so every pointer its ops take.
  virtual Device device() const = 0;

  // True when the host reads and writes the backend's memory directly (the CPU):
  // results then go straight into host buffers, with no copy.
  virtual bool host_visible_memory() const { return false; }

  // --- Memory ---
  // Room for `shape` elements of `dtype` on the backend's device, zeroed. Grown
  // rarely (the engine keeps its workspace between steps), never per op.
  virtual Buffer allocate(DType dtype, std::vector<std::int64_t> shape) = 0;
  // Small host data the kernels read (norm weights, biases) on the device. The
  // CPU backend views `host` in place, so `keep_alive` must keep it valid for as
  // long as the buffer lives; device backends copy it once.
  virtual Buffer upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                        std::shared_ptr<const void> keep_alive) = 0;
  // Copies `bytes` bytes of `source`, from byte `offset`, into host memory (logits
  // for the host's sampler). Waits for the work that writes them.
  virtual void download(const Buffer& source, std::size_t offset, std::size_t bytes, void* host) = 0;

  // --- The paged KV cache ---
  // The pool for `shape`, in this backend's memory.
  virtual KvPool allocate_kv(const KvPoolShape& shape);
  // Stores rows [0, rows) of keys/values [rows, kv_dim] (device memory) at
  // positions start.. of the sequence whose blocks are `block_table` (host ids),
  // converting to the pool's format. Throws for positions outside the table.
  virtual void kv_store(KvPool& pool, std::int64_t layer, std::span<const std::int32_t> block_table, std::int64_t start,
                        std::int64_t rows, const float* keys, const float* values) = 0;
  // Copy-on-write: the first `tokens` positions of block `from` into block `to`, every layer.
  virtual void kv_copy_block(KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) = 0;

  // --- Compute ---

  // Prepares weights for linear(). Dense weights are viewed in place unless a
  // sparse layout is chosen; quantized weights are packed into the backend's
  // layout, never expanded to floating point.
  virtual std::unique_ptr<LinearWeights> prepare_linear(const Matrix& dense, SparseChoice sparse = SparseChoice::Auto) = 0;
  virtual std::unique_ptr<LinearWeights> prepare_linear(const QuantizedMatrix& quantized) = 0;

  // y[m, n] = sum_k x[m, k] * w[n, k] + bias[n] (bias may be null). x: [rows, w.cols].
  virtual void linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) = 0;
  // The same for a dense matrix viewed in place (no preparation).
  virtual void linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) = 0;
  // Independent linear layers as one op (a mixture's experts, each over the few
  // rows routed to it): the same results, bit for bit, as one linear() per job;
  // jobs with no rows cost nothing. No job's y may overlap another job's x or y.
  // The default runs the jobs one by one; a backend overrides it to spread every
  // job's output tiles over its threads at once, one fork-join for all of them.
  virtual void grouped_linear(std::span<const GroupedLinearJob> jobs) {
    for (const GroupedLinearJob& job : jobs) {
      if (job.rows > 0) linear(job.x, job.rows, *job.weights, job.bias, job.y);
    }
  }
  // y = x / rms(x) * weight, row by row; x and y may alias.
  virtual void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                        float* y) = 0;
  // Rotates each head of x [rows, heads * head_dim] in place by its position
  // (rotate-half convention). inv_freq has rotary / 2 <= head_dim / 2 entries: the
  // first `rotary` features of a head rotate, the rest pass through (partial rotary).
  // The rotated features are multiplied by `scale` (LongRoPE's and YaRN's attention
  // factor, as transformers scales cos and sin; 1 for every other rope). `pairs`:
  // which features a frequency turns together (RopePairs).
  virtual void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
                    std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
                    RopePairs pairs = RopePairs::Halves) = 0;
  // Causal attention for the rows of q [rows, heads * head_dim] at `positions`:
  // row i attends to cached positions 0..positions[i]. Writes out [rows, heads *
  // shape.value_width()].
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
  // out [rows, width] = columns [first, first + width) of x [rows, x_width]: splits
  // a stacked linear's output into its modules' outputs.
  void slice_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t first, std::int64_t width,
                     float* out) {
    copy_columns(x, rows, x_width, first, width, out, width, 0);
  }
  // Columns [out_first, out_first + width) of out [rows, out_width] = columns
  // [x_first, x_first + width) of x [rows, x_width]; out's other columns are kept.
  virtual void copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first,
                            std::int64_t width, float* out, std::int64_t out_width, std::int64_t out_first) = 0;
  // A product per head (MLA's absorbed projections): for every row r < rows, head
  // h < heads and j < out = w.rows / heads,
  //   y[r * ys.row + h * ys.head + j] = sum over i < w.cols of x[r * xs.row + h * xs.head + i] * w[h * out + j][i],
  // w (float32, in this backend's memory) holding one [out, w.cols] matrix per head.
  // y's elements outside those slices are kept.
  virtual void head_linear(const float* x, HeadStrides xs, std::int64_t rows, std::int64_t heads, const Matrix& w,
                           float* y, HeadStrides ys) = 0;
  // out = silu(gate) * up, elementwise over n values.
  virtual void swiglu(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // out = gelu_tanh(gate) * up, elementwise over n values (GeGLU with GELU's tanh
  // approximation, PyTorch's gelu(approximate="tanh"): Gemma's MLP).
  virtual void geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // y += x, elementwise.
  virtual void add(const float* x, std::int64_t n, float* y) = 0;
  // x *= factor, elementwise (Gemma's embedding scale).
  virtual void scale(float* x, std::int64_t n, float factor) = 0;
  // x = cap * tanh(x / cap), elementwise (Gemma 2's final-logit soft-capping).
  virtual void soft_cap(float* x, std::int64_t n, float cap) = 0;
  // Copies rows `ids` of table [*, table.cols] into out as float32.
  virtual void embedding(const Matrix& table, std::span<const std::int32_t> ids, float* out) = 0;
  virtual void embedding(const LinearWeights& table, std::span<const std::int32_t> ids, float* out) = 0;

  // --- Mixture of experts: an expert runs over the step's rows routed to it ---
  // out [ids.size(), width] = rows ids[i] of x [*, width] (ids: host memory).
  virtual void gather_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids, float* out) = 0;
  // y[ids[i]] += weights[i] * x[i] for the rows of x [ids.size(), width] (ids and
  // weights: host memory; ids distinct, so rows never race): an expert's outputs
  // added into its tokens' rows with their routing weights.
  virtual void scatter_add_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids,
                                std::span<const float> weights, float* y) = 0;
  // x[0, n) = 0 (the sum the experts' outputs are added into).
  virtual void fill_zero(float* x, std::int64_t n) = 0;
};

}  // namespace nibble::kernels
