#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/fp8.h"
#include "common/half.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/prefix_value_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fp8_linear.h"
#include "kernels/cuda/kv_store.h"
#include "kernels/cuda/quant_gemm.h"

namespace nibble::kernels::cuda {
namespace {

constexpr std::size_t kStagingSlots = 64;
constexpr std::size_t kStagingSlotBytes = 64 * 1024;
// Split-K partial sums may take up to this much (the planner splits less beyond it).
constexpr std::int64_t kMaxGemmWorkspaceFloats = std::int64_t{16} << 20;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

class CudaQuantWeights final : public LinearWeights {
 public:
  CudaQuantWeights(const RepackedQuant& r, cudaStream_t stream)
      : dims_(r.dims),
        description_(r.describe()),
        bytes_(r.bytes()),
        tile_group_host_(r.tile_group),
        column_source_host_(r.column_source),
        weights_(r.weights.size()),
        scales_(r.scales.size()),
        sub_scales_(r.sub_scales.size()),
        tile_group_(r.tile_group.size()) {
    weights_.upload(r.weights, stream);
    scales_.upload(r.scales, stream);
    if (!r.sub_scales.empty()) sub_scales_.upload(r.sub_scales, stream);
    tile_group_.upload(r.tile_group, stream);
    if (!r.identity_columns) {
      column_source_ = DeviceBuffer<std::int32_t>(r.column_source.size());
      column_source_.upload(r.column_source, stream);
    }
  }

  std::int64_t rows() const override { return dims_.rows; }
  std::int64_t cols() const override { return dims_.cols; }
  std::uint64_t resident_bytes() const override { return bytes_; }
  bool views_source() const override { return false; }
  std::string describe() const override { return description_; }

  void dequantize_row(std::int64_t row, float* out) const override {
    if (row < 0 || row >= dims_.rows) fail("row {} outside [0, {})", row, dims_.rows);
    // Read back this row's tile and scale records, then decode as the kernel does.
    const std::int64_t tile_words = dims_.k_chunks() * dims_.blob_words();
    std::vector<std::uint32_t> words(at(tile_words));
    std::vector<std::uint32_t> records(at(dims_.groups));
    NIBBLE_CUDA_CHECK(cudaMemcpy(words.data(), weights_.data() + (row / layout::kTileN) * tile_words,
                                 words.size() * sizeof(std::uint32_t), cudaMemcpyDeviceToHost));
    NIBBLE_CUDA_CHECK(cudaMemcpy2D(records.data(), sizeof(std::uint32_t), scales_.data() + row,
                                   at(dims_.n_pad) * sizeof(std::uint32_t), sizeof(std::uint32_t), at(dims_.groups),
                                   cudaMemcpyDeviceToHost));
    std::vector<std::uint32_t> sub_records;
    if (!sub_scales_.empty()) {
      sub_records.resize(at(dims_.k_chunks()));
      NIBBLE_CUDA_CHECK(cudaMemcpy2D(sub_records.data(), sizeof(std::uint32_t), sub_scales_.data() + row,
                                     at(dims_.n_pad) * sizeof(std::uint32_t), sizeof(std::uint32_t),
                                     sub_records.size(), cudaMemcpyDeviceToHost));
    }
    decode_row(dims_, words, records, tile_group_host_, column_source_host_, static_cast<int>(row % layout::kTileN),
               std::span<float>(out, at(dims_.cols)), sub_records);
  }

  QuantWeightsView view() const {
    return {dims_, weights_.data(), scales_.data(), tile_group_.data(),
            column_source_.empty() ? nullptr : column_source_.data(), sub_scales_.empty() ? nullptr : sub_scales_.data()};
  }
  const QuantLayoutDims& dims() const { return dims_; }

 private:
  QuantLayoutDims dims_;
  std::string description_;
  std::uint64_t bytes_;
  std::vector<std::int32_t> tile_group_host_;
  std::vector<std::int32_t> column_source_host_;
  DeviceBuffer<std::uint32_t> weights_;
  DeviceBuffer<std::uint32_t> scales_;
  DeviceBuffer<std::uint32_t> sub_scales_;  // K-quants only
  DeviceBuffer<std::int32_t> tile_group_;
  DeviceBuffer<std::int32_t> column_source_;
};

class CudaDenseWeights final : public LinearWeights {
 public:
  CudaDenseWeights(const Matrix& m, cudaStream_t stream)
      : dtype_(m.dtype), rows_(m.rows), cols_(m.cols), data_(at(m.rows * m.cols) * dtype_size(m.dtype)) {
    const auto* bytes = static_cast<const std::byte*>(m.data);
    data_.upload(std::span<const std::byte>(bytes, data_.size()), stream);
  }

  std::int64_t rows() const override { return rows_; }
  std::int64_t cols() const override { return cols_; }
  std::uint64_t resident_bytes() const override { return data_.bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override { return fmt::format("{} dense (cuBLASLt)", dtype_name(dtype_)); }

  void dequantize_row(std::int64_t row, float* out) const override {
    if (row < 0 || row >= rows_) fail("row {} outside [0, {})", row, rows_);
    const std::size_t row_bytes = at(cols_) * dtype_size(dtype_);
    std::vector<std::byte> bytes(row_bytes);
    NIBBLE_CUDA_CHECK(cudaMemcpy(bytes.data(), data_.data() + at(row) * row_bytes, row_bytes, cudaMemcpyDeviceToHost));
    const Matrix host{dtype_, 1, cols_, bytes.data()};
    for (std::int64_t i = 0; i < cols_; ++i) out[i] = matrix_element(host, i);
  }

  const void* data() const { return data_.data(); }
  DType dtype() const { return dtype_; }

 private:
  DType dtype_;
  std::int64_t rows_;
  std::int64_t cols_;
  DeviceBuffer<std::byte> data_;
};

// FP8 e4m3 codes kept at one byte per weight on the device (fp8_linear.h), with
// the matrix's per-row group scales and each column's group.
class CudaFp8Weights final : public LinearWeights {
 public:
  CudaFp8Weights(const QuantizedMatrix& m, cudaStream_t stream)
      : rows_(m.rows), cols_(m.cols), groups_(m.groups), codes_(m.codes.size()), scales_(m.scales.size()),
        col_group_(m.group_of_col.size()) {
    codes_.upload(m.codes, stream);
    scales_.upload(m.scales, stream);
    col_group_.upload(m.group_of_col, stream);
  }

  std::int64_t rows() const override { return rows_; }
  std::int64_t cols() const override { return cols_; }
  std::uint64_t resident_bytes() const override { return codes_.bytes() + scales_.bytes() + col_group_.bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override { return fmt::format("fp8 e4m3, {} scale groups per row", groups_); }

  void dequantize_row(std::int64_t row, float* out) const override {
    if (row < 0 || row >= rows_) fail("row {} outside [0, {})", row, rows_);
    std::vector<std::uint8_t> codes(at(cols_));
    std::vector<float> scales(at(groups_));
    std::vector<std::int32_t> col_group(at(cols_));
    NIBBLE_CUDA_CHECK(cudaMemcpy(codes.data(), codes_.data() + at(row * cols_), codes.size(), cudaMemcpyDeviceToHost));
    NIBBLE_CUDA_CHECK(cudaMemcpy(scales.data(), scales_.data() + at(row * groups_), scales.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost));
    NIBBLE_CUDA_CHECK(cudaMemcpy(col_group.data(), col_group_.data(), col_group.size() * sizeof(std::int32_t),
                                 cudaMemcpyDeviceToHost));
    for (std::int64_t k = 0; k < cols_; ++k) out[k] = scales[at(col_group[at(k)])] * e4m3_to_f32(codes[at(k)]);
  }

  Fp8WeightsView view() const { return {codes_.data(), scales_.data(), col_group_.data(), rows_, cols_, groups_}; }

 private:
  std::int64_t rows_;
  std::int64_t cols_;
  std::int64_t groups_;
  DeviceBuffer<std::uint8_t> codes_;
  DeviceBuffer<float> scales_;
  DeviceBuffer<std::int32_t> col_group_;
};

void check_dense_dtype(DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16) {
    fail("the CUDA backend runs F32, F16 and BF16 dense weights, not {}", dtype_name(dtype));
  }
}

void check_ids(std::span<const std::int32_t> ids, std::int64_t vocabulary) {
  for (const std::int32_t id : ids) {
    if (id < 0 || id >= vocabulary) fail("token id {} is outside the vocabulary of {} tokens", id, vocabulary);
  }
}

template <typename T>
void grow(DeviceBuffer<T>& buffer, std::int64_t count, CudaBackend& backend, bool zero) {
  if (count <= 0 || at(count) <= buffer.size()) return;
  backend.synchronize();  // work enqueued earlier may still use the old buffer
  buffer.reserve_discard(at(count));
  if (zero) buffer.fill_bytes(0, backend.stream());
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
  NIBBLE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    cublas_ = std::make_unique<CublasLtLinear>();
    staging_.resize(kStagingSlots);
    for (auto& slot : staging_) NIBBLE_CUDA_CHECK(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming));
  } catch (...) {
    for (auto& slot : staging_) {
      if (slot.copied != nullptr) static_cast<void>(cudaEventDestroy(slot.copied));
    }
    static_cast<void>(cudaStreamDestroy(stream_));
    throw;
  }
}

CudaBackend::~CudaBackend() {
  static_cast<void>(cudaStreamSynchronize(stream_));
  cublas_.reset();
  for (auto& slot : staging_) {
    if (slot.copied != nullptr) static_cast<void>(cudaEventDestroy(slot.copied));
  }
  static_cast<void>(cudaStreamDestroy(stream_));
}

std::string CudaBackend::name() const {
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device_) != cudaSuccess) return fmt::format("cuda(device {})", device_);
  return fmt::format("cuda(device {}: {}, sm_{}{}, {} SMs)", device_, properties.name, properties.major,
                     properties.minor, sm_count_);
}

void CudaBackend::synchronize() { NIBBLE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

const void* CudaBackend::stage_bytes(const void* host, std::size_t bytes) {
  if (bytes == 0) return nullptr;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  NIBBLE_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    fail("the CUDA backend cannot stage host inputs during graph capture: capture work whose inputs are on the device");
  }
  StagingSlot& slot = staging_[next_slot_];
  next_slot_ = (next_slot_ + 1) % staging_.size();
  if (slot.used) NIBBLE_CUDA_CHECK(cudaEventSynchronize(slot.copied));  // its page-locked buffer is free again
  const std::size_t capacity = std::max(kStagingSlotBytes, bytes);
  slot.host.reserve_discard(capacity);
  if (slot.device.size() < bytes) {
    synchronize();  // earlier kernels may still read the old device buffer
    slot.device.reserve_discard(capacity);
  }
  std::memcpy(slot.host.data(), host, bytes);
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(slot.device.data(), slot.host.data(), bytes, cudaMemcpyHostToDevice, stream_));
  NIBBLE_CUDA_CHECK(cudaEventRecord(slot.copied, stream_));
  slot.used = true;
  return slot.device.data();
}

template <typename T>
const T* CudaBackend::stage(std::span<const T> host) {
  return static_cast<const T*>(stage_bytes(host.data(), host.size_bytes()));
}

Buffer CudaBackend::allocate(DType dtype, std::vector<std::int64_t> shape) {
  std::int64_t numel = 1;
  for (const auto d : shape) {
    if (d < 0) fail("cannot allocate a buffer of negative extent");
    numel *= d;
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  const std::size_t bytes = static_cast<std::size_t>(numel) * dtype_size(dtype);
  auto memory = std::make_shared<DeviceBuffer<std::byte>>(std::max<std::size_t>(bytes, 1));
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(memory->data(), 0, memory->bytes(), stream_));
  void* data = memory->data();
  return Buffer(std::move(memory), data, device(), dtype, std::move(shape));
}

Buffer CudaBackend::upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                           std::shared_ptr<const void> /*keep_alive: copied now*/) {
  Buffer buffer = allocate(dtype, std::move(shape));
  if (buffer.bytes() > 0) {
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(buffer.raw(), host, buffer.bytes(), cudaMemcpyHostToDevice, stream_));
  }
  synchronize();  // `host` may go away once this returns
  return buffer;
}

void CudaBackend::download(const Buffer& source, std::size_t offset, std::size_t bytes, void* host) {
  if (offset + bytes > source.bytes()) {
    fail("download of bytes [{}, {}) from a buffer of {}", offset, offset + bytes, source.bytes());
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(host, source.data<const std::byte>() + offset, bytes, cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

void CudaBackend::kv_store(KvPool& pool, std::int64_t layer, std::span<const std::int32_t> block_table,
                           std::int64_t start, std::int64_t rows, const float* keys, const float* values) {
  const KvPoolShape& shape = pool.shape;
  // On the host: a bad id would write outside the pool on the device.
  check_kv_store(shape, layer, block_table, start, rows);
  if (rows <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  const std::size_t element = static_cast<std::size_t>(kv_element_bytes(shape.format));
  const std::int64_t first_row = layer * shape.rows_per_layer();
  const auto elements_at = static_cast<std::size_t>(first_row * shape.kv_dim()) * element;
  cuda::KvStoreArgs args;
  args.keys = pool.keys.data<std::byte>() + elements_at;
  args.keys_only = shape.values_in_keys;
  if (!args.keys_only) args.values = pool.values.data<std::byte>() + elements_at;
  if (shape.format == KvFormat::Int8) {
    args.key_scales = pool.key_scales.data<float>() + first_row * shape.kv_heads;
    if (!args.keys_only) args.value_scales = pool.value_scales.data<float>() + first_row * shape.kv_heads;
  }
  args.block_table = stage(block_table);
  args.block_size = shape.block_size;
  args.start = start;
  args.rows = rows;
  args.kv_heads = shape.kv_heads;
  args.head_dim = shape.head_dim;
  args.format = shape.format;
  cuda::kv_store(args, keys, values, stream_);
}

void CudaBackend::kv_copy_block(KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  for_each_block_copy(pool, from, to, tokens, [this](std::byte* dst, const std::byte* src, std::size_t bytes) {
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  });
}

void CudaBackend::copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first,
                               std::int64_t width, float* out, std::int64_t out_width, std::int64_t out_first) {
  if (rows <= 0 || width <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  NIBBLE_CUDA_CHECK(cudaMemcpy2DAsync(out + out_first, static_cast<std::size_t>(out_width) * sizeof(float), x + x_first,
                                      static_cast<std::size_t>(x_width) * sizeof(float),
                                      static_cast<std::size_t>(width) * sizeof(float), static_cast<std::size_t>(rows),
                                      cudaMemcpyDeviceToDevice, stream_));
}

std::unique_ptr<LinearWeights> CudaBackend::prepare_linear(const Matrix& dense, SparseChoice) {
  // Dense layers always run on cuBLASLt (no sparse CSR kernel on the GPU yet).
  check_dense_dtype(dense.dtype);
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  auto weights = std::make_unique<CudaDenseWeights>(dense, stream_);
  synchronize();  // the source may go away once this returns
  return weights;
}

std::unique_ptr<LinearWeights> CudaBackend::prepare_linear(const QuantizedMatrix& quantized) {
  // Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 run on the K-quant GEMM (kquant_layout.h); the
  // other block formats (Q2_K, Q3_K, Q8_K, IQ4_*, TQ*) have no CUDA kernel yet.
  if (quantized.block_format && !kquant_format_of(*quantized.block_format)) {
    fail("{}: {} blocks have no CUDA kernel yet (run it on --device cpu)", quantized.name,
         block_format_info(*quantized.block_format).name);
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  if (quantized.code_dtype == DType::F8_E4M3) {
    quantized.validate();
    auto weights = std::make_unique<CudaFp8Weights>(quantized, stream_);
    synchronize();  // the uploads read `quantized`
    return weights;
  }
  const RepackedQuant repacked = repack_quantized(quantized);
  auto weights = std::make_unique<CudaQuantWeights>(repacked, stream_);
  synchronize();  // the uploads read `repacked`
  return weights;
}

void CudaBackend::linear_dense(const float* x, std::int64_t rows, const void* weights, DType dtype, std::int64_t n,
                               std::int64_t k, const float* bias, float* y) {
  check_dense_dtype(dtype);
  const void* input = x;
  if (dtype != DType::F32) {
    grow(half_scratch_, rows * k, *this, false);
    convert_to_half(x, rows * k, half_scratch_.data(), dtype == DType::BF16, stream_);
    input = half_scratch_.data();
  }
  cublas_->run(weights, dtype, n, k, input, rows, y, n, stream_);
  add_bias(y, rows, n, n, bias, stream_);
}

void CudaBackend::linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) {
  if (rows <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  if (const auto* q = dynamic_cast<const CudaQuantWeights*>(&w)) {
    const QuantLayoutDims& d = q->dims();
    const QuantWeightsView view = q->view();
    grow(half_scratch_, rows * d.k_pad, *this, false);
    prepare_activations(x, rows, d.cols, d.cols, view.column_source, d.k_pad, half_scratch_.data(), stream_);
    const int blocks_per_sm = quant_gemm_blocks_per_sm(d.format, quant_gemm_m_tiles(rows));
    const QuantGemmPlan plan = plan_quant_gemm(rows, d, sm_count_, blocks_per_sm, kMaxGemmWorkspaceFloats);
    grow(gemm_workspace_, plan.workspace_floats, *this, false);
    grow(gemm_counters_, plan.counters, *this, true);
    quant_gemm(plan, view, half_scratch_.data(), d.k_pad, rows, y, d.rows, bias, gemm_workspace_.data(),
               gemm_counters_.data(), stream_);
    return;
  }
  if (const auto* fp8 = dynamic_cast<const CudaFp8Weights*>(&w)) {
    fp8_linear(fp8->view(), x, rows, bias, y, stream_);
    return;
  }
  if (const auto* dense = dynamic_cast<const CudaDenseWeights*>(&w)) {
    linear_dense(x, rows, dense->data(), dense->dtype(), dense->rows(), dense->cols(), bias, y);
    return;
  }
  fail("linear weights were prepared by another backend");
}

void CudaBackend::linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) {
  if (rows <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  linear_dense(x, rows, w.data, w.dtype, w.rows, w.cols, bias, y);
}

void CudaBackend::rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                           float* y) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::rms_norm(x, rows, dim, weight, eps, y, stream_);
}

void CudaBackend::add_rms_norm(const float* x, float* residual, std::int64_t rows, std::int64_t dim,
                               const float* weight, float eps, float* y) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::add_rms_norm(x, residual, rows, dim, weight, eps, y, stream_);
}

void CudaBackend::head_linear(const float* x, HeadStrides xs, std::int64_t rows, std::int64_t heads, const Matrix& w,
                              float* y, HeadStrides ys) {
  if (w.dtype != DType::F32 || heads <= 0 || w.rows % heads != 0) {
    fail("head_linear: needs float32 weights with one matrix per head ({} rows for {} heads)", w.rows, heads);
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::head_linear(x, xs.row, xs.head, rows, heads, static_cast<const float*>(w.data), w.rows / heads, w.cols, y,
                    ys.row, ys.head, stream_);
}

void CudaBackend::rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
                       std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
                       RopePairs pairs) {
  if (rows <= 0) return;
  if (static_cast<std::int64_t>(positions.size()) < rows) fail("rope: {} positions for {} rows", positions.size(), rows);
  if (inv_freq.empty() || 2 * static_cast<std::int64_t>(inv_freq.size()) > head_dim) {
    fail("rope: {} inverse frequencies for head_dim {}", inv_freq.size(), head_dim);
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  const std::int32_t* positions_d = stage(positions.first(at(rows)));
  const float* inv_freq_d = stage(inv_freq);
  cuda::rope(x, rows, heads, head_dim, static_cast<std::int64_t>(inv_freq.size()), positions_d, inv_freq_d, scale,
             pairs == RopePairs::Adjacent, stream_);
}

void CudaBackend::attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions,
                            const KvLayerView& kv, const AttentionShape& shape, float* out) {
  if (rows <= 0) return;
  if (static_cast<std::int64_t>(positions.size()) < rows) {
    fail("attention: {} positions for {} rows", positions.size(), rows);
  }
  // PagedKvView has no fp16 arrays: an fp16 view would otherwise look like an
  // incomplete float32 one.
  if (kv.format() == KvFormat::Float16) {
    fail("attention: the CUDA backend reads float32 or int8 KV caches, not float16 (--kv-cache-dtype)");
  }
  const auto used = positions.first(at(rows));
  const std::int32_t max_position = *std::max_element(used.begin(), used.end());
  if (*std::min_element(used.begin(), used.end()) < 0) fail("attention: negative position");
  if (!kv.block_table.empty()) {
    if (kv.block_size <= 0) fail("attention: a block table needs a block size");
    if (max_position / kv.block_size >= static_cast<std::int64_t>(kv.block_table.size())) {
      fail("attention: position {} is past the {} blocks of the block table", max_position, kv.block_table.size());
    }
  }
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  PagedKvView view;
  view.keys = kv.keys;
  view.values = kv.values;
  view.key_codes = kv.key_codes;
  view.value_codes = kv.value_codes;
  view.key_scales = kv.key_scales;
  view.value_scales = kv.value_scales;
  view.stride = kv.stride;
  view.block_size = kv.block_size;
  if (shape.value_width() != shape.head_dim || shape.head_dim > kAttentionMaxHeadDim) {
    // Values a prefix of the key row (MLA's latent) or heads wider than the tiled
    // kernel's: the plain kernel.
    const PrefixValueDims dims{shape.heads,        shape.kv_heads,        shape.head_dim,    shape.value_width(),
                               shape.sliding_window.value_or(0), shape.scale, shape.logit_softcap};
    grow(attention_workspace_, prefix_value_workspace(rows, dims, max_position), *this, false);
    const std::int32_t* positions_d = stage(used);
    view.block_table = kv.block_table.empty() ? nullptr : stage(kv.block_table);
    prefix_value_attention(q, rows, positions_d, view, dims, max_position, out, attention_workspace_.data(), stream_);
    return;
  }
  const AttentionDims dims{shape.heads,        shape.kv_heads, shape.head_dim, shape.sliding_window.value_or(0),
                          shape.scale,        shape.logit_softcap};
  const AttentionPlan plan = plan_attention(rows, dims, max_position, sm_count_);
  grow(attention_workspace_, plan.workspace_floats, *this, false);
  const std::int32_t* positions_d = stage(used);
  view.block_table = kv.block_table.empty() ? nullptr : stage(kv.block_table);
  paged_attention(plan, q, rows, positions_d, view, dims, out, attention_workspace_.data(), stream_);
}

void CudaBackend::swiglu(const float* gate, const float* up, std::int64_t n, float* out) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::swiglu(gate, up, n, out, stream_);
}

void CudaBackend::geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::geglu_tanh(gate, up, n, out, stream_);
}

void CudaBackend::add(const float* x, std::int64_t n, float* y) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::add(x, n, y, stream_);
}

void CudaBackend::scale(float* x, std::int64_t n, float factor) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::scale(x, n, factor, stream_);
}

void CudaBackend::soft_cap(float* x, std::int64_t n, float cap) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::soft_cap(x, n, cap, stream_);
}

void CudaBackend::gather_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids, float* out) {
  if (ids.empty() || width <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::gather_rows(x, width, stage(ids), static_cast<std::int64_t>(ids.size()), out, stream_);
}

void CudaBackend::scatter_add_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids,
                                   std::span<const float> weights, float* y) {
  if (ids.empty() || width <= 0) return;
  if (weights.size() != ids.size()) fail("scatter_add_rows: {} weights for {} rows", weights.size(), ids.size());
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  const std::int32_t* ids_d = stage(ids);
  const float* weights_d = stage(weights);
  cuda::scatter_add_rows(x, width, ids_d, weights_d, static_cast<std::int64_t>(ids.size()), y, stream_);
}

void CudaBackend::fill_zero(float* x, std::int64_t n) {
  if (n <= 0) return;
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(x, 0, static_cast<std::size_t>(n) * sizeof(float), stream_));
}

void CudaBackend::embedding(const Matrix& table, std::span<const std::int32_t> ids, float* out) {
  if (ids.empty()) return;
  check_ids(ids, table.rows);
  check_dense_dtype(table.dtype);
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  cuda::embedding(table.data, table.dtype, table.cols, stage(ids), static_cast<std::int64_t>(ids.size()), out, stream_);
}

void CudaBackend::embedding(const LinearWeights& table, std::span<const std::int32_t> ids, float* out) {
  if (ids.empty()) return;
  check_ids(ids, table.rows());
  NIBBLE_CUDA_CHECK(cudaSetDevice(device_));
  if (const auto* q = dynamic_cast<const CudaQuantWeights*>(&table)) {
    dequantize_rows(q->view(), stage(ids), static_cast<std::int64_t>(ids.size()), out, stream_);
    return;
  }
  if (const auto* dense = dynamic_cast<const CudaDenseWeights*>(&table)) {
    cuda::embedding(dense->data(), dense->dtype(), dense->cols(), stage(ids), static_cast<std::int64_t>(ids.size()), out,
                    stream_);
    return;
  }
  if (dynamic_cast<const CudaFp8Weights*>(&table) != nullptr) {
    fail("FP8 embedding tables have no CUDA kernel (checkpoints keep embeddings in 16 bits)");
  }
  fail("embedding weights were prepared by another backend");
}

}  // namespace nibble::kernels::cuda
