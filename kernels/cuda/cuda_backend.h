#pragma once
// kernels::Backend on one CUDA device. Every pointer the interface passes
// (activations, outputs, biases, norm weights, dense Matrix data, KvLayerView
// keys/values/codes/scales) is device memory; the std::span arguments
// (positions, inv_freq, token ids, block tables) are host memory, staged to the
// device through a ring of page-locked buffers. All work runs on one stream owned
// by the backend, in order; nothing synchronizes except where a host value is
// returned (LinearWeights::dequantize_row) or a buffer must grow.
//
// Weights: a QuantizedMatrix is repacked on the host (quant_repack.h) and uploaded
// once; dense matrices given to prepare_linear are uploaded once in their dtype
// (F16/BF16/F32) and run on cuBLASLt; a dense Matrix passed straight to linear()
// must already be on the device.
//
// Memory: the engine's activations, its paged KV pool and its norm weights and
// biases are Buffers this backend allocated or uploaded (cudaMalloc), so a whole
// model runs on the device; logits come back once per step (download).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cublas_linear.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/quant_repack.h"

namespace nibble::kernels::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override;
  Device device() const override { return {DeviceKind::Cuda, device_}; }
  Buffer allocate(DType dtype, std::vector<std::int64_t> shape) override;
  Buffer upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                std::shared_ptr<const void> keep_alive) override;
  void download(const Buffer& source, std::size_t offset, std::size_t bytes, void* host) override;
  void kv_store(KvPool& pool, std::int64_t layer, std::span<const std::int32_t> block_table, std::int64_t start,
                std::int64_t rows, const float* keys, const float* values) override;
  void kv_copy_block(KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) override;
  void copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first, std::int64_t width,
                    float* out, std::int64_t out_width, std::int64_t out_first) override;
  void head_linear(const float* x, HeadStrides xs, std::int64_t rows, std::int64_t heads, const Matrix& w, float* y,
                   HeadStrides ys) override;
  cudaStream_t stream() const { return stream_; }
  int device_index() const { return device_; }
  int sm_count() const { return sm_count_; }
  // Waits for everything enqueued so far; rethrows asynchronous errors.
  void synchronize();

  std::unique_ptr<LinearWeights> prepare_linear(const Matrix& dense, SparseChoice sparse = SparseChoice::Auto) override;
  std::unique_ptr<LinearWeights> prepare_linear(const QuantizedMatrix& quantized) override;
  void linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) override;
  void linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) override;
  // grouped_linear is Backend's default: one linear() launch per job, in order on
  // the stream (correct, not yet grouped). A grouped GEMM (one launch over every
  // (job, tile), as vLLM's fused_moe does) is future work.

  void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                float* y) override;
  void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
            std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
            RopePairs pairs = RopePairs::Halves) override;
  void attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions, const KvLayerView& kv,
                 const AttentionShape& shape, float* out) override;
  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override;
  void geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out) override;
  void add(const float* x, std::int64_t n, float* y) override;
  void scale(float* x, std::int64_t n, float factor) override;
  void soft_cap(float* x, std::int64_t n, float cap) override;
  void embedding(const Matrix& table, std::span<const std::int32_t> ids, float* out) override;
  void embedding(const LinearWeights& table, std::span<const std::int32_t> ids, float* out) override;
  void gather_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids, float* out) override;
  void scatter_add_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids,
                        std::span<const float> weights, float* y) override;
  void fill_zero(float* x, std::int64_t n) override;

  // Beyond the interface: residual += x; y = rms_norm(residual) in one pass.
  void add_rms_norm(const float* x, float* residual, std::int64_t rows, std::int64_t dim, const float* weight,
                    float eps, float* y);

 private:
  // Copies a host span to device memory valid for work enqueued after it.
  template <typename T>
  const T* stage(std::span<const T> host);
  const void* stage_bytes(const void* host, std::size_t bytes);
  void linear_dense(const float* x, std::int64_t rows, const void* weights, DType dtype, std::int64_t n,
                    std::int64_t k, const float* bias, float* y);

  struct StagingSlot {
    PinnedBuffer<std::byte> host;
    DeviceBuffer<std::byte> device;
    cudaEvent_t copied = nullptr;  // recorded after the slot's last upload
    bool used = false;
  };

  int device_ = 0;
  int sm_count_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CublasLtLinear> cublas_;
  std::vector<StagingSlot> staging_;
  std::size_t next_slot_ = 0;
  DeviceBuffer<std::uint16_t> half_scratch_;  // activations converted for the GEMMs
  DeviceBuffer<float> gemm_workspace_;        // split-K partial sums
  DeviceBuffer<int> gemm_counters_;           // split-K tile counters (kept zero by the kernel)
  DeviceBuffer<float> attention_workspace_;
};

}  // namespace nibble::kernels::cuda
