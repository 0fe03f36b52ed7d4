#include "kernels/cpu/prepared_weights.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/linear_kernels.h"
#include "kernels/cpu/quant_layout.h"

namespace nibble::kernels::cpu {
namespace {

// Each thread gets a few long runs of output columns: long runs keep the weight
// reads sequential for the prefetcher, and a few per thread let a thread that
// lost its core be covered by the others.
constexpr std::int64_t kTasksPerThread = 4;
constexpr std::int64_t kColumnAlignment = 16;

std::vector<float>& worker_buffer(LinearRunContext& context, int worker, std::int64_t floats) {
  auto& buffer = context.worker_scratch[static_cast<std::size_t>(worker)];
  if (static_cast<std::int64_t>(buffer.size()) < floats) buffer.resize(static_cast<std::size_t>(floats));
  return buffer;
}

// The fields every call has; `bytes` is what the weights read per pass over the
// rows. The kernels reuse a weight load for up to kMaxRowBlock rows, so the work
// estimate counts passes of that many rows.
LinearCall base_call(const CpuLinearWeights& w, const LinearRunContext& context, const float* x, std::int64_t ldx,
                     std::int64_t rows, const float* bias, float* y, std::uint64_t bytes) {
  LinearCall call;
  call.weights = &w;
  call.isa = context.isa;
  call.args.x = x;
  call.args.ldx = ldx;
  call.args.rows = rows;
  call.args.bias = bias;
  call.args.y = y;
  call.args.ldy = w.rows();
  call.units = w.rows();
  call.alignment = kColumnAlignment;
  call.work = static_cast<double>(bytes) * static_cast<double>((rows + kMaxRowBlock - 1) / kMaxRowBlock);
  return call;
}

class DenseWeights final : public CpuLinearWeights {
 public:
  explicit DenseWeights(const Matrix& m) : m_(m) {}
  std::int64_t rows() const override { return m_.rows; }
  std::int64_t cols() const override { return m_.cols; }
  std::uint64_t resident_bytes() const override { return 0; }
  bool views_source() const override { return true; }
  std::string describe() const override { return fmt::format("dense {}", dtype_name(m_.dtype)); }
  void dequantize_row(std::int64_t row, float* out) const override {
    if (row < 0 || row >= m_.rows) fail("row {} outside a matrix of {} rows", row, m_.rows);
    for (std::int64_t k = 0; k < m_.cols; ++k) out[k] = matrix_element(m_, row * m_.cols + k);
  }
  LinearCall prepare(LinearRunContext& context, LinearInputs&, const float* x, std::int64_t rows, const float* bias,
                     float* y) const override {
    return base_call(*this, context, x, m_.cols, rows, bias, y,
                     static_cast<std::uint64_t>(m_.rows * m_.cols) * dtype_size(m_.dtype));
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float*) const override {
    linear_kernel(m_.dtype, call.isa)(call.args.x, call.args.rows, m_.cols, m_.data, begin, end, call.args.bias,
                                      call.args.y, m_.rows);
  }

 private:
  Matrix m_;
};

class CsrWeights final : public CpuLinearWeights {
 public:
  explicit CsrWeights(CsrMatrix m) : m_(std::move(m)) {}
  std::int64_t rows() const override { return m_.rows; }
  std::int64_t cols() const override { return m_.cols; }
  std::uint64_t resident_bytes() const override {
    return m_.values.size() + m_.columns.size() * sizeof(std::uint16_t) + m_.row_begin.size() * sizeof(std::int64_t);
  }
  bool views_source() const override { return false; }
  std::string describe() const override {
    return fmt::format("csr {} density {:.3f}", dtype_name(m_.dtype),
                       static_cast<double>(m_.columns.size()) / static_cast<double>(m_.rows * m_.cols));
  }
  void dequantize_row(std::int64_t row, float* out) const override {
    if (row < 0 || row >= m_.rows) fail("row {} outside a matrix of {} rows", row, m_.rows);
    std::fill(out, out + m_.cols, 0.0f);
    const Matrix values{m_.dtype, 1, static_cast<std::int64_t>(m_.columns.size()), m_.values.data()};
    for (std::int64_t j = m_.row_begin[static_cast<std::size_t>(row)]; j < m_.row_begin[static_cast<std::size_t>(row) + 1]; ++j) {
      out[m_.columns[static_cast<std::size_t>(j)]] = matrix_element(values, j);
    }
  }
  LinearCall prepare(LinearRunContext& context, LinearInputs&, const float* x, std::int64_t rows, const float* bias,
                     float* y) const override {
    return base_call(*this, context, x, m_.cols, rows, bias, y, resident_bytes());
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float*) const override {
    csr_kernel(m_, call.isa)(m_, call.args.x, call.args.rows, begin, end, call.args.bias, call.args.y, m_.rows);
  }

 private:
  CsrMatrix m_;
};

// x in a layout's packed order: reordered only when the layout has a gather.
const float* packed_input(LinearInputs& inputs, const QuantLayout& w, const float* x, std::int64_t rows) {
  if (w.gather.empty()) return x;
  const std::int64_t packed = w.packed_cols();
  inputs.packed_input.resize(static_cast<std::size_t>(rows * packed));
  for (std::int64_t r = 0; r < rows; ++r) {
    float* out = inputs.packed_input.data() + r * packed;
    const float* in = x + r * w.cols;
    for (std::int64_t p = 0; p < packed; ++p) {
      const std::int32_t col = w.gather[static_cast<std::size_t>(p)];
      out[p] = col < 0 ? 0.0f : in[col];
    }
  }
  return inputs.packed_input.data();
}

// The sum of packed x over each quantization group, once per call for all threads.
void sum_groups(LinearInputs& inputs, const QuantLayout& w, const float* xp, std::int64_t rows) {
  const std::int64_t packed = w.packed_cols();
  inputs.group_sums.resize(static_cast<std::size_t>(rows * w.groups));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t g = 0; g < w.groups; ++g) {
      const float* begin = xp + r * packed + w.group_unit_begin[static_cast<std::size_t>(g)] * w.codes_per_unit;
      const float* end = xp + r * packed + w.group_unit_begin[static_cast<std::size_t>(g) + 1] * w.codes_per_unit;
      float sum = 0.0f;
      for (const float* v = begin; v != end; ++v) sum += *v;
      inputs.group_sums[static_cast<std::size_t>(r * w.groups + g)] = sum;
    }
  }
}

// A decode step's few rows are not worth waking the pool for when rounding to int8.
constexpr std::int64_t kRowsPerQuantizeTask = 16;

// Rounds packed x to int8 (codes, block scales, group sums), rows split across the pool.
void quantize_input(LinearRunContext& context, LinearInputs& inputs, const Int8KernelTable& table,
                    const QuantLayout& w, std::int64_t blocks, const float* xp, std::int64_t rows) {
  const std::int64_t packed = w.packed_cols();
  inputs.activation_codes.resize(static_cast<std::size_t>(rows * packed));
  inputs.activation_scales.resize(static_cast<std::size_t>(rows * blocks));
  inputs.group_sums.resize(static_cast<std::size_t>(rows * w.groups));
  const ActivationQuantizer quantize = table.quantize[int8_bits_slot(w.bits)];
  const auto run = [&](std::int64_t begin, std::int64_t end) {
    quantize(w, xp + begin * packed, end - begin, inputs.activation_codes.data() + begin * packed,
             inputs.activation_scales.data() + begin * blocks, inputs.group_sums.data() + begin * w.groups);
  };
  if (rows <= kRowsPerQuantizeTask) {
    run(0, rows);
    return;
  }
  context.pool.parallel_for((rows + kRowsPerQuantizeTask - 1) / kRowsPerQuantizeTask, [&](std::int64_t task, int) {
    run(task * kRowsPerQuantizeTask, std::min(rows, (task + 1) * kRowsPerQuantizeTask));
  });
}

// Rounds x to int8 for the block kernels, rows split across the pool. The codes'
// two layouts (int8_activations.h) share one buffer: input order first, then tiles.
BlockActivations quantize_block_input(LinearRunContext& context, LinearInputs& inputs, const Int8KernelTable& table,
                                      const float* x, std::int64_t rows, std::int64_t cols) {
  const std::int64_t ldx = block_activation_ldx(cols), tile_ldx = block_activation_tile_ldx(cols);
  const std::int64_t sub_blocks = tile_ldx / kBlockSubBlock;
  inputs.activation_codes.resize(static_cast<std::size_t>(rows * (ldx + tile_ldx)));
  inputs.activation_scales.resize(static_cast<std::size_t>(rows * sub_blocks));
  inputs.group_sums.resize(static_cast<std::size_t>(rows * sub_blocks));
  std::int8_t* codes = inputs.activation_codes.data();
  std::int8_t* tile_codes = codes + rows * ldx;
  float* scales = inputs.activation_scales.data();
  float* sums = inputs.group_sums.data();
  const auto run = [&](std::int64_t begin, std::int64_t end) {
    table.quantize_blocks(x + begin * cols, end - begin, cols,
                          BlockActivationOutput{codes + begin * ldx, tile_codes + begin * tile_ldx,
                                                scales + begin * sub_blocks, sums + begin * sub_blocks});
  };
  if (rows <= kRowsPerQuantizeTask) {
    run(0, rows);
  } else {
    context.pool.parallel_for((rows + kRowsPerQuantizeTask - 1) / kRowsPerQuantizeTask, [&](std::int64_t task, int) {
      run(task * kRowsPerQuantizeTask, std::min(rows, (task + 1) * kRowsPerQuantizeTask));
    });
  }
  return BlockActivations{codes, tile_codes, scales, sums, ldx, tile_ldx, rows};
}

std::string offset_name(QuantizedMatrix::Offset offset) {
  return offset == QuantizedMatrix::Offset::Min ? "min" : "zero-point";
}

class QuantWeights final : public CpuLinearWeights {
 public:
  explicit QuantWeights(QuantLayout w) : w_(std::move(w)), activation_blocks_(activation_blocks(w_)) {}
  std::int64_t rows() const override { return w_.rows; }
  std::int64_t cols() const override { return w_.cols; }
  std::uint64_t resident_bytes() const override { return w_.resident_bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override {
    return fmt::format("int{} {} groups {}{} scales {}", w_.bits, w_.groups, offset_name(w_.offset),
                       w_.gather.empty() ? "" : " reordered", dtype_name(w_.scale_dtype));
  }
  void dequantize_row(std::int64_t row, float* out) const override { w_.dequantize_row(row, out); }
  LinearCall prepare(LinearRunContext& context, LinearInputs& inputs, const float* x, std::int64_t rows,
                     const float* bias, float* y) const override {
    const Int8KernelTable* int8 =
        context.int8_activations && int8_layout_supported(w_) ? int8_kernel_table(context.isa) : nullptr;
    const float* xp = packed_input(inputs, w_, x, rows);
    LinearCall call = base_call(*this, context, nullptr, w_.packed_cols(), rows, bias, y, resident_bytes());
    call.int8 = int8;
    if (int8 != nullptr) {
      quantize_input(context, inputs, *int8, w_, activation_blocks_, xp, rows);
      call.args.x_codes = inputs.activation_codes.data();
      call.args.x_scales = inputs.activation_scales.data();
      call.args.x_blocks = activation_blocks_;
    } else {
      sum_groups(inputs, w_, xp, rows);
      call.args.x = xp;
    }
    call.args.group_sums = inputs.group_sums.data();
    call.units = w_.tiles;
    call.alignment = 1;
    call.scratch_floats = packed_scratch_floats(rows);
    return call;
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float* scratch) const override {
    const QuantKernel kernel = call.int8 != nullptr ? int8_quant_kernel(*call.int8, w_) : quant_kernel(w_, call.isa);
    PackedKernelArgs args = call.args;
    args.scratch = scratch;
    kernel(w_, args, begin, end);
  }

 private:
  QuantLayout w_;
  std::int64_t activation_blocks_;
};

class Sparse24Weights final : public CpuLinearWeights {
 public:
  explicit Sparse24Weights(Sparse24Layout w) : w_(std::move(w)) {}
  std::int64_t rows() const override { return w_.rows; }
  std::int64_t cols() const override { return w_.cols; }
  std::uint64_t resident_bytes() const override { return w_.resident_bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override {
    return fmt::format("int4 2:4-sparse {} groups zero-point scales {}", w_.groups, dtype_name(w_.scale_dtype));
  }
  void dequantize_row(std::int64_t row, float* out) const override { w_.dequantize_row(row, out); }
  LinearCall prepare(LinearRunContext& context, LinearInputs&, const float* x, std::int64_t rows, const float* bias,
                     float* y) const override {
    LinearCall call = base_call(*this, context, x, w_.cols, rows, bias, y, resident_bytes());
    call.units = w_.tiles;
    call.alignment = 1;
    return call;
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float*) const override {
    sparse24_kernel(w_, call.isa)(w_, call.args, begin, end);
  }

 private:
  Sparse24Layout w_;
};

// Block-quantized rows, split across the pool by output rows like dense weights.
class BlockWeights final : public CpuLinearWeights {
 public:
  explicit BlockWeights(BlockLayout w) : w_(std::move(w)) {}
  std::int64_t rows() const override { return w_.rows; }
  std::int64_t cols() const override { return w_.cols; }
  std::uint64_t resident_bytes() const override { return w_.resident_bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override { return fmt::format("{} blocks", block_format_info(w_.format).name); }
  void dequantize_row(std::int64_t row, float* out) const override { w_.dequantize_row(row, out); }
  LinearCall prepare(LinearRunContext& context, LinearInputs& inputs, const float* x, std::int64_t rows,
                     const float* bias, float* y) const override {
    LinearCall call = base_call(*this, context, x, w_.cols, rows, bias, y, resident_bytes());
    call.int8 = context.int8_activations && int8_block_supported(w_) ? int8_kernel_table(context.isa) : nullptr;
    if (call.int8 != nullptr) {
      call.int8_blocks = quantize_block_input(context, inputs, *call.int8, x, rows, w_.cols);
      call.scratch_floats = block_int8_scratch_floats(rows);
    } else {
      call.scratch_floats = block_scratch_floats(rows);
    }
    return call;
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float* scratch) const override {
    if (call.int8 != nullptr) {
      call.int8->block[static_cast<int>(w_.format)](w_, call.int8_blocks, begin, end, call.args.bias, call.args.y,
                                                     w_.rows, scratch);
      return;
    }
    block_kernel(w_, call.isa)(w_, call.args.x, call.args.rows, begin, end, call.args.bias, call.args.y, w_.rows,
                               scratch);
  }

 private:
  BlockLayout w_;
};

// FP8 rows, split across the pool by output rows. The kernel reads activations in
// whole runs of kFp8Padding columns, so x is copied zero-padded when cols is not
// a multiple of that (DeepSeek-style shapes with a partial last block).
class Fp8Weights final : public CpuLinearWeights {
 public:
  explicit Fp8Weights(Fp8Layout w) : w_(std::move(w)) {}
  std::int64_t rows() const override { return w_.rows; }
  std::int64_t cols() const override { return w_.cols; }
  std::uint64_t resident_bytes() const override { return w_.resident_bytes(); }
  bool views_source() const override { return false; }
  std::string describe() const override {
    return fmt::format("fp8 e4m3, {} scale groups per row ({} scales)", w_.groups, dtype_name(w_.scale_dtype));
  }
  void dequantize_row(std::int64_t row, float* out) const override { w_.dequantize_row(row, out); }
  LinearCall prepare(LinearRunContext& context, LinearInputs& inputs, const float* x, std::int64_t rows,
                     const float* bias, float* y) const override {
    const std::int64_t ldx = (w_.cols + kFp8Padding - 1) / kFp8Padding * kFp8Padding;
    const float* xp = x;
    if (ldx != w_.cols) {
      inputs.packed_input.assign(static_cast<std::size_t>(rows * ldx), 0.0f);
      for (std::int64_t r = 0; r < rows; ++r) {
        std::copy(x + r * w_.cols, x + (r + 1) * w_.cols, inputs.packed_input.data() + r * ldx);
      }
      xp = inputs.packed_input.data();
    }
    LinearCall call = base_call(*this, context, xp, ldx, rows, bias, y, resident_bytes());
    call.scratch_floats = block_scratch_floats(rows);
    return call;
  }
  void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float* scratch) const override {
    linear_kernel_table(call.isa).fp8(w_, call.args.x, call.args.ldx, call.args.rows, begin, end, call.args.bias,
                                      call.args.y, w_.rows, scratch);
  }

 private:
  Fp8Layout w_;
};

}  // namespace

void CpuLinearWeights::run(LinearRunContext& context, LinearInputs& inputs, std::vector<CallSplit>& splits,
                           const float* x, std::int64_t rows, const float* bias, float* y) const {
  const LinearCall call = prepare(context, inputs, x, rows, bias, y);
  run_calls(context, std::span(&call, 1), splits);
}

void run_calls(LinearRunContext& context, std::span<const LinearCall> calls, std::vector<CallSplit>& splits) {
  std::int64_t scratch = 0;
  for (const LinearCall& call : calls) scratch = std::max(scratch, call.scratch_floats);
  // Each call is cut as it would be alone: kTasksPerThread runs per thread, whole
  // alignments each. Coarser runs for a group (one per expert, say) were measured
  // slower: a run's weights stop fitting in L2 between its passes over the rows.
  const std::int64_t wanted = kTasksPerThread * context.pool.size();
  splits.resize(calls.size());
  for (std::size_t c = 0; c < calls.size(); ++c) {
    const LinearCall& call = calls[c];
    const std::int64_t align = call.alignment;
    const std::int64_t per_task =
        std::max<std::int64_t>(align, ((call.units + wanted - 1) / wanted + align - 1) / align * align);
    const double task_work =
        call.work * static_cast<double>(per_task) / static_cast<double>(std::max<std::int64_t>(call.units, 1));
    splits[c] = {0, per_task, c, task_work};
  }
  // The largest runs are claimed first and the small ones fill the end, so the
  // threads finish together (longest-processing-time-first order).
  std::stable_sort(splits.begin(), splits.end(),
                   [](const CallSplit& a, const CallSplit& b) { return a.task_work > b.task_work; });
  std::int64_t tasks = 0;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    splits[i].first_task = tasks;
    const std::int64_t units = calls[splits[i].call].units;
    tasks += (units + splits[i].per_task - 1) / splits[i].per_task;
  }
  context.pool.parallel_for(tasks, [&](std::int64_t task, int worker) {
    const auto later = [](std::int64_t t, const CallSplit& split) { return t < split.first_task; };
    const auto i =
        static_cast<std::size_t>(std::upper_bound(splits.begin(), splits.end(), task, later) - splits.begin() - 1);
    const CallSplit& split = splits[i];
    const LinearCall& call = calls[split.call];
    const std::int64_t begin = (task - split.first_task) * split.per_task;
    call.weights->run_units(call, begin, std::min(call.units, begin + split.per_task),
                            worker_buffer(context, worker, scratch).data());
  });
}

std::unique_ptr<CpuLinearWeights> make_dense_weights(const Matrix& dense) {
  (void)linear_kernel(dense.dtype, Isa::Scalar);  // rejects dtypes without a kernel now, not at the first call
  return std::make_unique<DenseWeights>(dense);
}

std::unique_ptr<CpuLinearWeights> make_csr_weights(const Matrix& dense) {
  if (dense.cols > 65536) fail("CSR weights need at most 65536 input features, got {}", dense.cols);
  (void)linear_kernel(dense.dtype, Isa::Scalar);
  CsrMatrix csr;
  csr.rows = dense.rows;
  csr.cols = dense.cols;
  csr.dtype = dense.dtype;
  const std::size_t element = dtype_size(dense.dtype);
  const auto* bytes = static_cast<const std::byte*>(dense.data);
  const auto is_zero = [&](std::int64_t index) {
    // -0.0 is a zero too; compare values, not bits.
    return matrix_element(dense, index) == 0.0f;
  };
  csr.row_begin.reserve(static_cast<std::size_t>(dense.rows) + 1);
  csr.row_begin.push_back(0);
  std::int64_t nonzero = 0;
  for (std::int64_t i = 0; i < dense.rows * dense.cols; ++i) nonzero += is_zero(i) ? 0 : 1;
  csr.columns.reserve(static_cast<std::size_t>(nonzero));
  csr.values = AlignedBytes(static_cast<std::size_t>(nonzero) * element);
  std::byte* out = csr.values.data();
  for (std::int64_t n = 0; n < dense.rows; ++n) {
    for (std::int64_t k = 0; k < dense.cols; ++k) {
      const std::int64_t index = n * dense.cols + k;
      if (is_zero(index)) continue;
      std::memcpy(out, bytes + static_cast<std::size_t>(index) * element, element);
      out += element;
      csr.columns.push_back(static_cast<std::uint16_t>(k));
    }
    csr.row_begin.push_back(static_cast<std::int64_t>(csr.columns.size()));
  }
  return std::make_unique<CsrWeights>(std::move(csr));
}

std::unique_ptr<CpuLinearWeights> make_quantized_weights(const QuantizedMatrix& quantized) {
  quantized.validate();
  if (quantized.block_format) return std::make_unique<BlockWeights>(pack_blocks(quantized));
  if (quantized.code_dtype == DType::F8_E4M3) return std::make_unique<Fp8Weights>(pack_fp8(quantized));
  if (fits_sparse24(quantized)) return std::make_unique<Sparse24Weights>(pack_sparse24(quantized));
  return std::make_unique<QuantWeights>(pack_quantized(quantized));
}

double matrix_density(const Matrix& dense) {
  const std::int64_t total = dense.rows * dense.cols;
  if (total == 0) return 1.0;
  // A strided sample of about a million elements decides the kernel without
  // reading every page of a large dense model; CSR building counts exactly.
  constexpr std::int64_t kSample = 1 << 20;
  const std::int64_t stride = std::max<std::int64_t>(1, total / kSample) | 1;
  std::int64_t nonzero = 0;
  std::int64_t seen = 0;
  for (std::int64_t i = 0; i < total; i += stride, ++seen) nonzero += matrix_element(dense, i) != 0.0f ? 1 : 0;
  return static_cast<double>(nonzero) / static_cast<double>(seen);
}

double csr_density_threshold(DType dtype) {
  // A nonzero costs its value, a 2-byte column index and a gathered input, so CSR
  // wins only well below the byte break-even point. bench/quant_bench on AVX-512
  // (4096x4096, 1 and 4 rows): f16 CSR breaks even with dense f16 at 14-18%
  // density; dense f32 moves twice the bytes, which moves its break-even to ~21-40%.
  return dtype == DType::F32 ? 0.25 : 0.15;
}

}  // namespace nibble::kernels::cpu
