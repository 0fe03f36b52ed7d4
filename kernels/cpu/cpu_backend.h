#pragma once
// The CPU backend: a task-claiming thread pool splits every op, SIMD kernels
// chosen by CPUID.
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/prepared_weights.h"
#include "kernels/cpu/thread_pool.h"

namespace nibble::kernels {

struct CpuBackendOptions {
  int threads = 0;  // <= 0: one per available core
  // Quantized layers (2/4/8-bit) take int8-rounded activations on integer dot
  // products (cpu/int8_activations.h), where the CPU has AVX-512 VNNI: several
  // times the throughput for batches and prefill, at a small cost in accuracy.
  bool int8_activations = false;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads = 0);
  explicit CpuBackend(const CpuBackendOptions& options);

  std::string name() const override;
  Device device() const override { return {DeviceKind::Cpu, 0}; }
  bool host_visible_memory() const override { return true; }
  Buffer allocate(DType dtype, std::vector<std::int64_t> shape) override;
  // A view of `host`: the CPU reads mapped weights where they are.
  Buffer upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                std::shared_ptr<const void> keep_alive) override;
  void download(const Buffer& source, std::size_t offset, std::size_t bytes, void* host) override;
  void kv_store(KvPool& pool, std::int64_t layer, std::span<const std::int32_t> block_table, std::int64_t start,
                std::int64_t rows, const float* keys, const float* values) override;
  void kv_copy_block(KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) override;
  int threads() const { return pool_->size(); }
  // Whether int8 activations were asked for and this CPU can run them.
  bool int8_activations() const { return int8_activations_; }
  static bool int8_activations_supported();

  std::unique_ptr<LinearWeights> prepare_linear(const Matrix& dense, SparseChoice sparse = SparseChoice::Auto) override;
  std::unique_ptr<LinearWeights> prepare_linear(const QuantizedMatrix& quantized) override;
  void linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) override;
  void linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) override;
  // Every job's input prepared in turn, then all their (job, output-column run)
  // tasks in one parallel_for, the largest runs first (cpu::run_calls).
  void grouped_linear(std::span<const GroupedLinearJob> jobs) override;
  void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                float* y) override;
  void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
            std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
            RopePairs pairs = RopePairs::Halves) override;
  void attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions, const KvLayerView& kv,
                 const AttentionShape& shape, float* out) override;
  void attention_batch(std::span<const AttentionSegment> segments, const AttentionShape& shape) override;
  void copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first, std::int64_t width,
                    float* out, std::int64_t out_width, std::int64_t out_first) override;
  void head_linear(const float* x, HeadStrides xs, std::int64_t rows, std::int64_t heads, const Matrix& w, float* y,
                   HeadStrides ys) override;
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

 private:
  std::unique_ptr<cpu::ThreadPool> pool_;
  bool int8_activations_ = false;
  std::vector<std::vector<float>> attention_scores_;  // per pool thread
  std::vector<std::vector<std::int64_t>> attention_rows_;  // per pool thread: each position's storage row
  std::vector<std::int64_t> attention_first_task_;         // per segment of an attention_batch call
  std::vector<std::vector<float>> linear_scratch_;    // per pool thread
  std::vector<std::int32_t> rope_positions_;  // the last rope call's positions, frequencies and scale,
  std::vector<float> rope_inv_freq_;          // and their scaled cos/sin [row, inv_freq.size()]
  float rope_scale_ = 1.0f;
  std::vector<float> rope_cos_, rope_sin_;
  // Prepared linear inputs: [0] for linear(), one per job of a grouped_linear().
  std::vector<cpu::LinearInputs> linear_inputs_;
  std::vector<cpu::LinearCall> linear_calls_;
  std::vector<cpu::CallSplit> linear_splits_;
};

}  // namespace nibble::kernels
