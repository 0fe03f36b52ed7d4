#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/huge_pages.h"
#include "kernels/cpu/elementwise_kernels.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/kv_kernels.h"
#include "kernels/cpu/linear_kernels.h"
#include "kernels/cpu/prepared_weights.h"

namespace nibble::kernels {
namespace {

// Elementwise work below this many values a task runs on the calling thread: a
// hand-off costs about as much as that.
constexpr std::int64_t kElementsPerTask = 16384;

// out = activation(gate) * up, in tasks of kElementsPerTask values.
void run_gated(cpu::ThreadPool& pool, cpu::GatedKernel kernel, const float* gate, const float* up, std::int64_t n,
               float* out) {
  pool.parallel_for((n + kElementsPerTask - 1) / kElementsPerTask, [&](std::int64_t task, int) {
    const std::int64_t first = task * kElementsPerTask;
    kernel(gate + first, up + first, std::min(kElementsPerTask, n - first), out + first);
  });
}

const cpu::CpuLinearWeights& cpu_weights(const LinearWeights& w) {
  const auto* mine = dynamic_cast<const cpu::CpuLinearWeights*>(&w);
  if (mine == nullptr) fail("linear weights were prepared by another backend");
  return *mine;
}

// Symmetric per head: the largest magnitude maps to 127.
void quantize_kv_row(const float* row, std::int64_t kv_heads, std::int64_t head_dim, std::int8_t* codes,
                     float* scales) {
  for (std::int64_t h = 0; h < kv_heads; ++h) {
    const float* x = row + h * head_dim;
    float max_abs = 0.0f;
    for (std::int64_t i = 0; i < head_dim; ++i) max_abs = std::max(max_abs, std::abs(x[i]));
    const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
    scales[h] = scale;
    for (std::int64_t i = 0; i < head_dim; ++i) {
      codes[h * head_dim + i] = static_cast<std::int8_t>(std::lrint(std::clamp(x[i] / scale, -127.0f, 127.0f)));
    }
  }
}

}  // namespace

Buffer CpuBackend::allocate(DType dtype, std::vector<std::int64_t> shape) {
  std::int64_t numel = 1;
  for (const auto d : shape) {
    if (d < 0) fail("cannot allocate a buffer of negative extent");
    numel *= d;
  }
  // Large buffers (the KV pool, wide activations) go on huge pages: attention walks
  // a few rows in each of thousands of pages every step.
  void* data = allocate_large(static_cast<std::size_t>(numel) * dtype_size(dtype));
  std::shared_ptr<void> owner(data, free_large);
  return Buffer(std::move(owner), data, device(), dtype, std::move(shape));
}

Buffer CpuBackend::upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                          std::shared_ptr<const void> keep_alive) {
  return Buffer(std::const_pointer_cast<void>(std::move(keep_alive)), const_cast<void*>(host), device(), dtype,
                std::move(shape));
}

void CpuBackend::download(const Buffer& source, std::size_t offset, std::size_t bytes, void* host) {
  if (offset + bytes > source.bytes()) fail("download of bytes [{}, {}) from a buffer of {}", offset, offset + bytes, source.bytes());
  std::memcpy(host, source.data<const std::byte>() + offset, bytes);
}

void CpuBackend::kv_store(KvPool& pool, std::int64_t layer, std::span<const std::int32_t> block_table,
                          std::int64_t start, std::int64_t rows, const float* keys, const float* values) {
  const KvPoolShape& shape = pool.shape;
  check_kv_store(shape, layer, block_table, start, rows);
  const std::int64_t kv_dim = shape.kv_dim();
  const std::int64_t layer_rows = layer * shape.rows_per_layer();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t position = start + r;
    const std::int32_t block = block_table[static_cast<std::size_t>(position / shape.block_size)];
    const std::int64_t row = layer_rows + std::int64_t{block} * shape.block_size + position % shape.block_size;
    const float* k = keys + r * kv_dim;
    // A pool that reads its values from the keys has no values array (and takes none).
    const float* v = shape.values_in_keys ? nullptr : values + r * kv_dim;
    switch (shape.format) {
      case KvFormat::Float32:
        std::copy_n(k, kv_dim, pool.keys.data<float>() + row * kv_dim);
        if (v != nullptr) std::copy_n(v, kv_dim, pool.values.data<float>() + row * kv_dim);
        break;
      case KvFormat::Float16:
        cpu::store_f16(k, kv_dim, pool.keys.data<std::uint16_t>() + row * kv_dim);
        if (v != nullptr) cpu::store_f16(v, kv_dim, pool.values.data<std::uint16_t>() + row * kv_dim);
        break;
      case KvFormat::Int8:
        quantize_kv_row(k, shape.kv_heads, shape.head_dim, pool.keys.data<std::int8_t>() + row * kv_dim,
                        pool.key_scales.data<float>() + row * shape.kv_heads);
        if (v != nullptr) {
          quantize_kv_row(v, shape.kv_heads, shape.head_dim, pool.values.data<std::int8_t>() + row * kv_dim,
                          pool.value_scales.data<float>() + row * shape.kv_heads);
        }
        break;
    }
  }
}

void CpuBackend::kv_copy_block(KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) {
  for_each_block_copy(pool, from, to, tokens,
                      [](std::byte* dst, const std::byte* src, std::size_t bytes) { std::memcpy(dst, src, bytes); });
}

void CpuBackend::copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first,
                              std::int64_t width, float* out, std::int64_t out_width, std::int64_t out_first) {
  for (std::int64_t r = 0; r < rows; ++r) std::copy_n(x + r * x_width + x_first, width, out + r * out_width + out_first);
}

void CpuBackend::head_linear(const float* x, HeadStrides xs, std::int64_t rows, std::int64_t heads, const Matrix& w,
                             float* y, HeadStrides ys) {
  if (w.dtype != DType::F32 || heads <= 0 || w.rows % heads != 0) {
    fail("head_linear: needs float32 weights with one matrix per head ({} rows for {} heads)", w.rows, heads);
  }
  const std::int64_t out = w.rows / heads, in = w.cols;
  const auto* weights = static_cast<const float*>(w.data);
  const cpu::LinearKernel kernel = cpu::linear_kernel_table(cpu::active_isa()).f32;
  // One task per head: its input slice gathered into the worker's contiguous
  // scratch, then the dense float32 kernel over all rows, writing the output slice
  // in place (the kernel takes an output stride). The head's matrix is read once.
  pool_->parallel_for(heads, [&](std::int64_t h, int worker) {
    std::vector<float>& scratch = linear_scratch_[static_cast<std::size_t>(worker)];
    if (scratch.size() < static_cast<std::size_t>(rows * in)) scratch.resize(static_cast<std::size_t>(rows * in));
    for (std::int64_t r = 0; r < rows; ++r) std::copy_n(x + r * xs.row + h * xs.head, in, scratch.data() + r * in);
    kernel(scratch.data(), rows, in, weights + h * out * in, 0, out, nullptr, y + h * ys.head, ys.row);
  });
}

// Row copies and one multiply-add per value: memory-bound and small next to the
// experts' linear layers, so one thread.
void CpuBackend::gather_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids, float* out) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    std::copy_n(x + static_cast<std::int64_t>(ids[i]) * width, width, out + static_cast<std::int64_t>(i) * width);
  }
}

void CpuBackend::scatter_add_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids,
                                  std::span<const float> weights, float* y) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const float* row = x + static_cast<std::int64_t>(i) * width;
    float* target = y + static_cast<std::int64_t>(ids[i]) * width;
    const float weight = weights[i];
    for (std::int64_t c = 0; c < width; ++c) target[c] += weight * row[c];
  }
}

void CpuBackend::fill_zero(float* x, std::int64_t n) { std::fill_n(x, n, 0.0f); }

CpuBackend::CpuBackend(int threads) : CpuBackend(CpuBackendOptions{threads, false}) {}

CpuBackend::CpuBackend(const CpuBackendOptions& options)
    : pool_(std::make_unique<cpu::ThreadPool>(
          options.threads > 0 ? options.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())))),
      int8_activations_(options.int8_activations && int8_activations_supported()),
      attention_scores_(static_cast<std::size_t>(pool_->size())),
      attention_rows_(static_cast<std::size_t>(pool_->size())),
      linear_scratch_(static_cast<std::size_t>(pool_->size())) {}

std::string CpuBackend::name() const {
  return fmt::format("cpu({}, {} threads{})", cpu::isa_name(cpu::active_isa()), pool_->size(),
                     int8_activations_ ? ", int8 activations" : "");
}

bool CpuBackend::int8_activations_supported() { return cpu::int8_kernel_table(cpu::active_isa()) != nullptr; }

std::unique_ptr<LinearWeights> CpuBackend::prepare_linear(const Matrix& dense, SparseChoice sparse) {
  const bool csr_possible = dense.cols <= 65536;
  bool use_csr = sparse == SparseChoice::Sparse;
  if (sparse == SparseChoice::Sparse && !csr_possible) {
    fail("sparse kernel needs at most 65536 input features, got {}", dense.cols);
  }
  if (sparse == SparseChoice::Auto && csr_possible) {
    use_csr = cpu::matrix_density(dense) <= cpu::csr_density_threshold(dense.dtype);
  }
  if (use_csr) return cpu::make_csr_weights(dense);
  return cpu::make_dense_weights(dense);
}

std::unique_ptr<LinearWeights> CpuBackend::prepare_linear(const QuantizedMatrix& quantized) {
  return cpu::make_quantized_weights(quantized);
}

void CpuBackend::linear(const float* x, std::int64_t rows, const LinearWeights& w, const float* bias, float* y) {
  cpu::LinearRunContext context{*pool_, cpu::active_isa(), int8_activations_, linear_scratch_};
  if (linear_inputs_.empty()) linear_inputs_.resize(1);
  cpu_weights(w).run(context, linear_inputs_.front(), linear_splits_, x, rows, bias, y);
}

void CpuBackend::grouped_linear(std::span<const GroupedLinearJob> jobs) {
  cpu::LinearRunContext context{*pool_, cpu::active_isa(), int8_activations_, linear_scratch_};
  // Grown before any is filled: a job's prepared input must not move while the
  // later jobs are prepared.
  if (linear_inputs_.size() < jobs.size()) linear_inputs_.resize(jobs.size());
  linear_calls_.clear();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const GroupedLinearJob& job = jobs[i];
    if (job.rows <= 0) continue;  // an expert no token chose
    linear_calls_.push_back(
        cpu_weights(*job.weights).prepare(context, linear_inputs_[i], job.x, job.rows, job.bias, job.y));
  }
  cpu::run_calls(context, linear_calls_, linear_splits_);
}

void CpuBackend::linear(const float* x, std::int64_t rows, const Matrix& w, const float* bias, float* y) {
  linear(x, rows, *cpu::make_dense_weights(w), bias, y);
}

void CpuBackend::rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                          float* y) {
  const cpu::RmsNormKernel kernel = cpu::elementwise_kernel_table(cpu::active_isa()).rms_norm;
  // Rows are independent; a task takes enough of them to be worth a hand-off.
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, kElementsPerTask / std::max<std::int64_t>(dim, 1));
  pool_->parallel_for((rows + rows_per_task - 1) / rows_per_task, [&](std::int64_t task, int) {
    const std::int64_t first = task * rows_per_task, count = std::min(rows_per_task, rows - first);
    kernel(x + first * dim, count, dim, weight, eps, y + first * dim);
  });
}

void CpuBackend::rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
                      std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
                      RopePairs pairs) {
  const auto half = static_cast<std::int64_t>(inv_freq.size());
  if (2 * half > head_dim) fail("rope: {} inverse frequencies for head_dim {}", inv_freq.size(), head_dim);
  const auto used = positions.first(static_cast<std::size_t>(rows));
  // A step rotates q and k of every layer at the same positions: the angles are
  // computed once and kept until the positions, frequencies or scale change.
  if (!std::ranges::equal(used, rope_positions_) || !std::ranges::equal(inv_freq, rope_inv_freq_) ||
      scale != rope_scale_) {
    rope_positions_.assign(used.begin(), used.end());
    rope_inv_freq_.assign(inv_freq.begin(), inv_freq.end());
    rope_scale_ = scale;
    rope_cos_.resize(static_cast<std::size_t>(rows * half));
    rope_sin_.resize(rope_cos_.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t i = 0; i < half; ++i) {
        // float32 angle like the reference; cos/sin of it evaluated accurately.
        const float angle =
            static_cast<float>(used[static_cast<std::size_t>(r)]) * inv_freq[static_cast<std::size_t>(i)];
        // Scaled after rounding, as transformers multiplies its float32 cos and sin.
        rope_cos_[static_cast<std::size_t>(r * half + i)] =
            static_cast<float>(std::cos(static_cast<double>(angle))) * scale;
        rope_sin_[static_cast<std::size_t>(r * half + i)] =
            static_cast<float>(std::sin(static_cast<double>(angle))) * scale;
      }
    }
  }
  // Pair i is (i, i + half) or (2i, 2i + 1).
  const std::int64_t first_step = pairs == RopePairs::Halves ? 1 : 2;
  const std::int64_t partner = pairs == RopePairs::Halves ? half : 1;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* cos_row = rope_cos_.data() + r * half;
    const float* sin_row = rope_sin_.data() + r * half;
    for (std::int64_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        float& a = v[i * first_step];
        float& b = v[i * first_step + partner];
        const float a0 = a, b0 = b;
        a = a0 * cos_row[i] - b0 * sin_row[i];
        b = b0 * cos_row[i] + a0 * sin_row[i];
      }
    }
  }
}

void CpuBackend::attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions,
                           const KvLayerView& kv, const AttentionShape& shape, float* out) {
  const AttentionSegment segment{q, rows, positions, kv, out};
  attention_batch(std::span(&segment, 1), shape);
}

void CpuBackend::attention_batch(std::span<const AttentionSegment> segments, const AttentionShape& shape) {
  if (segments.empty()) return;
  const KvFormat format = segments.front().kv.format();
  const cpu::AttentionKernel kernel = cpu::attention_kernel(format, cpu::active_isa());
  const std::int64_t group = shape.heads / shape.kv_heads;
  const std::int64_t head_dim = shape.head_dim;
  const std::int64_t value_dim = shape.value_width();
  if (value_dim > head_dim) fail("attention: values of {} features in heads of {}", value_dim, head_dim);
  const float scale = shape.scale > 0 ? shape.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::int64_t total_rows = 0, max_len = 0;
  for (const auto& segment : segments) {
    if (segment.kv.format() != format) fail("attention: segments of one call read KV caches of different formats");
    total_rows += segment.rows;
    for (std::int64_t r = 0; r < segment.rows; ++r) {
      max_len = std::max<std::int64_t>(max_len, segment.positions[static_cast<std::size_t>(r)] + 1);
    }
  }
  for (auto& scores : attention_scores_) scores.resize(static_cast<std::size_t>(max_len));
  for (auto& storage_rows : attention_rows_) storage_rows.resize(static_cast<std::size_t>(max_len));
  // The query heads that share a key/value head run in one task, so that head's
  // rows come from memory once and from cache for the others. A step of one or
  // two rows splits by head instead, to keep every thread busy. Each head's
  // arithmetic is the same either way, so results do not change.
  const std::int64_t heads_per_task = total_rows * shape.kv_heads >= 2 * pool_->size() ? group : 1;
  const std::int64_t tasks_per_row = shape.heads / heads_per_task;
  // Tasks are numbered segment by segment, row by row; first_task[s] is segment s's first.
  attention_first_task_.assign(1, 0);
  for (const auto& segment : segments) {
    attention_first_task_.push_back(attention_first_task_.back() + segment.rows * tasks_per_row);
  }
  pool_->parallel_for(attention_first_task_.back(), [&](std::int64_t task, int worker) {
    const auto s = static_cast<std::size_t>(
        std::upper_bound(attention_first_task_.begin(), attention_first_task_.end(), task) -
        attention_first_task_.begin() - 1);
    const AttentionSegment& segment = segments[s];
    const KvLayerView& kv = segment.kv;
    const std::int64_t local = task - attention_first_task_[s];
    const std::int64_t r = local / tasks_per_row;
    const std::int64_t first_head = local % tasks_per_row * heads_per_task;
    const std::int64_t last = segment.positions[static_cast<std::size_t>(r)];
    const std::int64_t first = shape.sliding_window ? std::max<std::int64_t>(0, last - *shape.sliding_window + 1) : 0;
    // Each position's storage row, walked block by block (no division per position).
    std::int64_t* storage = attention_rows_[static_cast<std::size_t>(worker)].data();
    if (kv.block_table.empty()) {
      for (std::int64_t t = first; t <= last; ++t) storage[t] = t;
    } else {
      std::int64_t block = first / kv.block_size, slot = first % kv.block_size;
      for (std::int64_t t = first; t <= last; ++t) {
        storage[t] = std::int64_t{kv.block_table[static_cast<std::size_t>(block)]} * kv.block_size + slot;
        if (++slot == kv.block_size) {
          slot = 0;
          ++block;
        }
      }
    }
    for (std::int64_t h = first_head; h < first_head + heads_per_task; ++h) {
      cpu::AttentionHeadArgs args;
      args.kv = &kv;
      args.q = segment.q + (r * shape.heads + h) * head_dim;
      args.out = segment.out + (r * shape.heads + h) * value_dim;
      args.rows = storage;
      args.scores = attention_scores_[static_cast<std::size_t>(worker)].data();
      args.first = first;
      args.last = last;
      args.kv_head = h / group;
      args.kv_heads = shape.kv_heads;
      args.head_dim = head_dim;
      args.value_dim = value_dim;
      args.scale = scale;
      args.softcap = shape.logit_softcap;
      kernel(args);
    }
  });
}

void CpuBackend::swiglu(const float* gate, const float* up, std::int64_t n, float* out) {
  run_gated(*pool_, cpu::elementwise_kernel_table(cpu::active_isa()).swiglu, gate, up, n, out);
}

void CpuBackend::geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out) {
  run_gated(*pool_, cpu::elementwise_kernel_table(cpu::active_isa()).geglu_tanh, gate, up, n, out);
}

void CpuBackend::add(const float* x, std::int64_t n, float* y) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void CpuBackend::scale(float* x, std::int64_t n, float factor) {
  for (std::int64_t i = 0; i < n; ++i) x[i] *= factor;
}

void CpuBackend::soft_cap(float* x, std::int64_t n, float cap) {
  // Divide, tanh, multiply as PyTorch does, so a capped logit rounds the same.
  pool_->parallel_for((n + kElementsPerTask - 1) / kElementsPerTask, [&](std::int64_t task, int) {
    const std::int64_t first = task * kElementsPerTask, last = std::min(n, first + kElementsPerTask);
    for (std::int64_t i = first; i < last; ++i) x[i] = std::tanh(x[i] / cap) * cap;
  });
}

void CpuBackend::embedding(const Matrix& table, std::span<const std::int32_t> ids, float* out) {
  for (std::size_t r = 0; r < ids.size(); ++r) {
    const std::int64_t id = ids[r];
    if (id < 0 || id >= table.rows) fail("token id {} is outside the vocabulary of {} tokens", id, table.rows);
    for (std::int64_t i = 0; i < table.cols; ++i) out[static_cast<std::int64_t>(r) * table.cols + i] = matrix_element(table, id * table.cols + i);
  }
}

void CpuBackend::embedding(const LinearWeights& table, std::span<const std::int32_t> ids, float* out) {
  for (std::size_t r = 0; r < ids.size(); ++r) {
    const std::int64_t id = ids[r];
    if (id < 0 || id >= table.rows()) fail("token id {} is outside the vocabulary of {} tokens", id, table.rows());
    table.dequantize_row(id, out + static_cast<std::int64_t>(r) * table.cols());
  }
}

}  // namespace nibble::kernels
