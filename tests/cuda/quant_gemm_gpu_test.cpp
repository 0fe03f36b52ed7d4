// The quantized GEMM on the GPU against float64 references on fresh random
// inputs: every format (int2/3/4 on the int4 kernel, int8, 2:4 int4 on mma.sp),
// group sizes (16..128, per-row, ragged), act-order, minimum offsets, odd shapes,
// M = 1..130 (every token-tile size, several token blocks), with and without the
// K split, outputs poisoned with NaN first. Two references: the checkpoint's exact
// weights (bound: the fp16 roundings of weights and activations, relative to the
// sum of |terms|) and the fp16 weights the kernel multiplies (bound: fp32
// accumulation only — any layout slip is far outside it). GGUF Q4_K / Q5_K / Q6_K
// blocks the same way, their exact weights being the CPU block decoder's floats.
#include <gtest/gtest.h>

#include <bit>
#include <random>

#include "common/error.h"
#include "common/half.h"
#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/quant_gemm.h"
#include "kernels/cuda/quant_repack.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::GpuTest;
using cuda_testing::QuantCase;
using cuda_testing::random_blocks;
using cuda_testing::random_floats;
using cuda_testing::random_quantized;
using Offset = QuantizedMatrix::Offset;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

struct DeviceLayout {
  DeviceBuffer<std::uint32_t> weights;
  DeviceBuffer<std::uint32_t> scales;
  DeviceBuffer<std::int32_t> tile_group;
  DeviceBuffer<std::int32_t> column_source;
  DeviceBuffer<std::uint32_t> sub_scales;
  QuantWeightsView view;
};

struct References {
  std::vector<double> exact;     // from QuantizedMatrix::value and float32 x
  std::vector<double> exact_scale;
  std::vector<double> f16;       // from the fp16 weights and fp16 x the kernel multiplies
  std::vector<double> f16_scale;
};

References references(const QuantizedMatrix& m, const RepackedQuant& r, const std::vector<float>& x, std::int64_t rows,
                      const std::vector<float>& bias) {
  References refs;
  const auto cells = at(rows * m.rows);
  refs.exact.assign(cells, 0);
  refs.exact_scale.assign(cells, 0);
  refs.f16.assign(cells, 0);
  refs.f16_scale.assign(cells, 0);
  std::vector<double> w(at(m.rows * m.cols));
  std::vector<double> w16(at(m.rows * m.cols));
  std::vector<float> row(at(m.cols));
  for (std::int64_t n = 0; n < m.rows; ++n) {
    m.dequantize_row(n, row.data());  // value(n, k) for every k; a block decoded once
    for (std::int64_t k = 0; k < m.cols; ++k) w[at(n * m.cols + k)] = row[at(k)];
    for (std::int64_t j = 0; j < r.dims.k_pad; ++j) {
      const std::int32_t col = r.column_source[at(j)];
      if (col >= 0) w16[at(n * m.cols + col)] = f16_to_f32(repacked_weight_f16(r, n, j));
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t n = 0; n < m.rows; ++n) {
      const std::size_t cell = at(i * m.rows + n);
      double exact = bias.empty() ? 0.0 : bias[at(n)];
      double f16 = exact;
      double scale = std::abs(exact);
      double scale16 = std::abs(exact);
      for (std::int64_t k = 0; k < m.cols; ++k) {
        const double xv = x[at(i * m.cols + k)];
        const double x16 = f16_to_f32(f32_to_f16(x[at(i * m.cols + k)]));
        exact += xv * w[at(n * m.cols + k)];
        scale += std::abs(xv * w[at(n * m.cols + k)]);
        f16 += x16 * w16[at(n * m.cols + k)];
        scale16 += std::abs(x16 * w16[at(n * m.cols + k)]);
      }
      refs.exact[cell] = exact;
      refs.exact_scale[cell] = scale;
      refs.f16[cell] = f16;
      refs.f16_scale[cell] = scale16;
    }
  }
  return refs;
}

class QuantGemmGpu : public GpuTest {
 protected:
  DeviceLayout upload(const RepackedQuant& r) const {
    DeviceLayout d;
    d.weights = to_device(r.weights);
    d.scales = to_device(r.scales);
    d.tile_group = to_device(r.tile_group);
    if (!r.identity_columns) d.column_source = to_device(r.column_source);
    if (!r.sub_scales.empty()) d.sub_scales = to_device(r.sub_scales);
    d.view = {r.dims, d.weights.data(), d.scales.data(), d.tile_group.data(),
              r.identity_columns ? nullptr : d.column_source.data(), r.sub_scales.empty() ? nullptr : d.sub_scales.data()};
    return d;
  }

  int sm_count() const {
    int device = 0;
    int count = 0;
    NIBBLE_CUDA_CHECK(cudaGetDevice(&device));
    NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  }

  // Runs the GEMM through the launcher API; `split` forces a K split (by pretending
  // the device is much larger) or forbids it (no workspace).
  void check(std::mt19937& rng, const QuantCase& c, std::int64_t rows, bool split, bool with_bias = true) {
    check_matrix(rng, random_quantized(rng, c), rows, split, with_bias);
  }

  void check_matrix(std::mt19937& rng, const QuantizedMatrix& m, std::int64_t rows, bool split, bool with_bias = true) {
    const RepackedQuant r = repack_quantized(m);
    SCOPED_TRACE(::testing::Message() << m.name << " M=" << rows << (split ? " split-K" : "") << " -> " << r.describe());
    const DeviceLayout layout = upload(r);
    const std::vector<float> x = random_floats(rng, at(rows * m.cols));
    const std::vector<float> bias = with_bias ? random_floats(rng, at(m.rows)) : std::vector<float>{};
    const DeviceBuffer<float> x_d = to_device(x);
    const DeviceBuffer<float> bias_d = to_device(bias);
    DeviceBuffer<std::uint16_t> prepared(at(rows * r.dims.k_pad));
    prepare_activations(x_d.data(), rows, m.cols, m.cols, layout.view.column_source, r.dims.k_pad, prepared.data(), stream);

    const int m_tiles = quant_gemm_m_tiles(rows);
    const int occupancy = quant_gemm_blocks_per_sm(r.dims.format, m_tiles);
    ASSERT_GT(occupancy, 0) << "the kernel cannot launch (shared memory or registers)";
    const QuantGemmPlan plan =
        plan_quant_gemm(rows, r.dims, split ? 50 * sm_count() : sm_count(), occupancy, split ? std::int64_t{1} << 26 : 0);
    if (split) {
      EXPECT_GT(plan.splits, 1) << "the case was meant to split K";
    } else {
      EXPECT_EQ(plan.splits, 1);
    }
    DeviceBuffer<float> workspace(at(std::max<std::int64_t>(plan.workspace_floats, 1)));
    DeviceBuffer<int> counters(at(std::max<std::int64_t>(plan.counters, 1)));
    counters.fill_bytes(0, stream);
    DeviceBuffer<float> y = poisoned(at(rows * m.rows));
    quant_gemm(plan, layout.view, prepared.data(), r.dims.k_pad, rows, y.data(), m.rows,
               with_bias ? bias_d.data() : nullptr, workspace.data(), counters.data(), stream);
    const std::vector<float> result = to_host(y, at(rows * m.rows));

    const References refs = references(m, r, x, rows, bias);
    // fp16 weight (and scale, for f32 scales) and activation roundings: <= 3 * 2^-11 of each |term|.
    EXPECT_LT(cuda_testing::error_over_scale(result, refs.exact, refs.exact_scale), 2e-3);
    EXPECT_LT(cuda_testing::error_over_scale(result, refs.f16, refs.f16_scale), 1e-4) << "wrong weights or activations";
    EXPECT_LT(cuda_testing::relative_error(result, refs.exact), 2e-2);

    // The split's counters are left at zero, and a second run gives the same bits.
    if (plan.splits > 1) {
      for (const int counter : to_host(counters, at(plan.counters))) ASSERT_EQ(counter, 0);
    }
    DeviceBuffer<float> again = poisoned(at(rows * m.rows));
    quant_gemm(plan, layout.view, prepared.data(), r.dims.k_pad, rows, again.data(), m.rows,
               with_bias ? bias_d.data() : nullptr, workspace.data(), counters.data(), stream);
    const std::vector<float> second = to_host(again, at(rows * m.rows));
    for (std::size_t i = 0; i < result.size(); ++i) {
      ASSERT_EQ(std::bit_cast<std::uint32_t>(result[i]), std::bit_cast<std::uint32_t>(second[i]))
          << "output " << i << " differs between two runs: a race or a missing barrier";
    }
  }
};

TEST_F(QuantGemmGpu, DenseInt4EveryGroupSizeAndTokenCount) {
  std::mt19937 rng(11);
  const std::int64_t token_counts[] = {1, 3, 8, 9, 16, 17, 32, 33, 64, 65, 130};
  int i = 0;
  for (const std::int64_t group : {16, 32, 64, 128, -1, 40, 48}) {
    for (const bool act_order : {false, true}) {
      const std::int64_t rows = token_counts[(i++) % std::size(token_counts)];
      check(rng, {130, 448, 4, group, act_order}, rows, false);
      check(rng, {33, 200, 4, group, act_order}, token_counts[(i + 5) % std::size(token_counts)], false);
    }
  }
  for (const std::int64_t rows : token_counts) check(rng, {257, 320, 4, 64}, rows, false, rows % 2 == 0);
}

TEST_F(QuantGemmGpu, OtherWidthsOffsetsAndScaleTypes) {
  std::mt19937 rng(12);
  for (const int bits : {2, 3, 8}) {
    check(rng, {96, 256, bits, 32}, 5, false);
    check(rng, {200, 384, bits, 128, true}, 40, false);
  }
  check(rng, {77, 320, 4, 32, false, false, Offset::Min}, 7, false);   // GGUF Q4_1
  check(rng, {77, 320, 4, 32, false, true}, 12, false);                // GGUF Q4_0 (symmetric)
  check(rng, {64, 256, 8, 32, false, true}, 2, false);                 // GGUF Q8_0
  check(rng, {50, 192, 4, 64, false, false, Offset::ZeroPoint, DType::BF16}, 20, false);
  check(rng, {50, 192, 4, 64, false, false, Offset::ZeroPoint, DType::F32}, 20, false);
  check(rng, {1, 64, 4, 32}, 1, false);
  check(rng, {3, 16, 4, 16}, 2, false);
}

TEST_F(QuantGemmGpu, Sparse24OnTheSparseTensorCores) {
  std::mt19937 rng(13);
  for (const std::int64_t group : {32, 64, 128, -1}) {
    for (const std::int64_t rows : {1, 8, 16, 24, 64, 100}) {
      check(rng, {136, 512, 4, group, false, false, Offset::ZeroPoint, DType::F16, true}, rows, false);
    }
  }
  check(rng, {40, 100, 4, -1, false, false, Offset::ZeroPoint, DType::F16, true}, 3, false);  // ragged K
  // Not eligible for mma.sp (act-order, groups of 48, 8 bits): the dense kernels, same results.
  check(rng, {64, 256, 4, 64, true, false, Offset::ZeroPoint, DType::F16, true}, 9, false);
  check(rng, {64, 192, 4, 48, false, false, Offset::ZeroPoint, DType::F16, true}, 9, false);
  check(rng, {64, 256, 8, 64, false, false, Offset::ZeroPoint, DType::F16, true}, 9, false);
}

TEST_F(QuantGemmGpu, SplitKSumsThePartialsOnceInOrder) {
  std::mt19937 rng(14);
  for (const std::int64_t rows : {1, 5, 16, 40, 64, 70}) {
    check(rng, {256, 4096, 4, 128}, rows, true);
    check(rng, {130, 2048, 4, 128, true}, rows, true);
  }
  check(rng, {128, 4096, 8, 128}, 3, true);
  check(rng, {128, 4096, 4, 128, false, false, Offset::ZeroPoint, DType::F16, true}, 3, true);
}

TEST_F(QuantGemmGpu, LlamaShapesAgainstTheReference) {
  std::mt19937 rng(15);
  check(rng, {4096, 4096, 4, 128, true}, 1, false);
  check(rng, {4096, 4096, 4, 128}, 16, false);
  check(rng, {1024, 11008, 4, 128}, 2, false);
}

// The GGUF block formats the K-quant layout runs (Q5_0 / Q5_1 on the same machinery).
constexpr BlockFormat kKquants[] = {BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K, BlockFormat::Q5_0,
                                    BlockFormat::Q5_1};

TEST_F(QuantGemmGpu, KquantsEveryTokenCountAndOddShapes) {
  std::mt19937 rng(21);
  const std::int64_t token_counts[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 130};
  int i = 0;
  for (const BlockFormat format : kKquants) {
    for (const auto& [n, k] : {std::pair<std::int64_t, std::int64_t>{130, 256}, {33, 768}, {257, 512}, {1, 256}, {128, 1280}}) {
      for (int repeat = 0; repeat < 3; ++repeat) {
        const std::int64_t rows = token_counts[(i++) % std::size(token_counts)];
        check_matrix(rng, random_blocks(rng, format, n, k), rows, false, rows % 2 == 1);
      }
    }
    if (block_format_info(format).elements == 32) {  // rows of 32-weight blocks may end mid-chunk
      check_matrix(rng, random_blocks(rng, format, 70, 96), 5, false);
      check_matrix(rng, random_blocks(rng, format, 33, 160), 40, false);
    }
  }
  // Every M from 1 to 64 once, on one shape per format.
  for (std::int64_t rows = 1; rows <= 64; ++rows) {
    check_matrix(rng, random_blocks(rng, kKquants[rows % std::size(kKquants)], 96, 512), rows, false);
  }
}

TEST_F(QuantGemmGpu, KquantsSplitKAndLlamaShapes) {
  std::mt19937 rng(22);
  for (const BlockFormat format : kKquants) {
    for (const std::int64_t rows : {1, 5, 40}) check_matrix(rng, random_blocks(rng, format, 256, 4096), rows, true);
  }
  // Realistic scales (d, dmin around 2^-9 .. 2^-6, as quantized checkpoints have).
  check_matrix(rng, random_blocks(rng, BlockFormat::Q4_K, 4096, 4096, 6, 9), 1, false);
  check_matrix(rng, random_blocks(rng, BlockFormat::Q6_K, 1024, 11008, 6, 9), 2, false);
  check_matrix(rng, random_blocks(rng, BlockFormat::Q5_K, 4096, 4096, 6, 9), 16, false);
  check_matrix(rng, random_blocks(rng, BlockFormat::Q5_0, 896, 4864, 6, 9), 3, false);
}

TEST_F(QuantGemmGpu, KquantDequantizedRowsAreTheCpuDecodersFloats) {
  std::mt19937 rng(23);
  for (const BlockFormat format : kKquants) {
    const QuantizedMatrix m = random_blocks(rng, format, 70, 768);
    const RepackedQuant r = repack_quantized(m);
    SCOPED_TRACE(r.describe());
    const DeviceLayout layout = upload(r);
    std::vector<std::int32_t> ids;
    for (std::int64_t n = 0; n < m.rows; n += 3) ids.push_back(static_cast<std::int32_t>(n));
    const DeviceBuffer<std::int32_t> ids_d = to_device(ids);
    DeviceBuffer<float> out = poisoned(ids.size() * at(m.cols));
    dequantize_rows(layout.view, ids_d.data(), static_cast<std::int64_t>(ids.size()), out.data(), stream);
    const std::vector<float> rows = to_host(out, ids.size() * at(m.cols));
    std::vector<float> expected(at(m.cols));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      m.dequantize_row(ids[i], expected.data());
      for (std::int64_t k = 0; k < m.cols; ++k) {
        const float got = rows[i * at(m.cols) + at(k)];
        ASSERT_FALSE(std::isnan(got)) << "row " << ids[i] << " column " << k;
        ASSERT_EQ(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(expected[at(k)]))
            << "row " << ids[i] << " column " << k << ": " << got << " vs " << expected[at(k)];
      }
    }
  }
}

TEST_F(QuantGemmGpu, BackendRunsKquantsAndRefusesOtherBlockFormats) {
  std::mt19937 rng(24);
  CudaBackend backend;
  for (const BlockFormat format : kKquants) {
    const QuantizedMatrix m = random_blocks(rng, format, 200, 1024, 6, 12);
    const auto weights = backend.prepare_linear(m);
    SCOPED_TRACE(weights->describe());
    EXPECT_LE(static_cast<double>(weights->resident_bytes()), 1.15 * static_cast<double>(m.stored_bytes) + 4.0 * 56 * 1024)
        << "beyond the file's bytes plus the padding of 56 rows";
    for (const std::int64_t rows : {1, 7, 33, 80}) {
      const std::vector<float> x = random_floats(rng, at(rows * m.cols));
      const std::vector<float> bias = random_floats(rng, at(m.rows));
      const DeviceBuffer<float> x_d = to_device(x);
      const DeviceBuffer<float> bias_d = to_device(bias);
      DeviceBuffer<float> y(at(rows * m.rows));
      y.fill_bytes(0xff, backend.stream());
      backend.linear(x_d.data(), rows, *weights, bias_d.data(), y.data());
      std::vector<float> result(at(rows * m.rows));
      y.download(result, backend.stream());
      backend.synchronize();
      const References refs = references(m, repack_quantized(m), x, rows, bias);
      EXPECT_LT(cuda_testing::error_over_scale(result, refs.exact, refs.exact_scale), 2e-3) << rows << " rows";
    }
    const std::vector<std::int32_t> ids = {0, static_cast<std::int32_t>(m.rows - 1), 5, 5};
    DeviceBuffer<float> out(ids.size() * at(m.cols));
    backend.embedding(*weights, ids, out.data());
    std::vector<float> rows(ids.size() * at(m.cols));
    out.download(rows, backend.stream());
    backend.synchronize();
    std::vector<float> expected(at(m.cols));
    std::vector<float> cpu(at(m.cols));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      weights->dequantize_row(ids[i], expected.data());
      m.dequantize_row(ids[i], cpu.data());
      for (std::int64_t k = 0; k < m.cols; ++k) {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(rows[i * at(m.cols) + at(k)]), std::bit_cast<std::uint32_t>(expected[at(k)]));
        ASSERT_EQ(std::bit_cast<std::uint32_t>(expected[at(k)]), std::bit_cast<std::uint32_t>(cpu[at(k)]));
      }
    }
  }
  for (const BlockFormat format : {BlockFormat::Q2_K, BlockFormat::Q3_K, BlockFormat::IQ4_XS, BlockFormat::TQ1_0}) {
    const std::string name(block_format_info(format).name);
    try {
      static_cast<void>(backend.prepare_linear(random_blocks(rng, format, 8, 256)));
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(name + " blocks have no CUDA kernel yet"), std::string::npos)
          << error.what();
    }
  }
}

TEST_F(QuantGemmGpu, DequantizedRowsAreTheKernelsWeights) {
  std::mt19937 rng(16);
  for (const QuantCase& c : {QuantCase{70, 300, 4, 40, true}, QuantCase{70, 256, 8, 64},
                             QuantCase{70, 256, 4, 32, false, false, Offset::Min},
                             QuantCase{70, 256, 4, 64, false, false, Offset::ZeroPoint, DType::F16, true}}) {
    const QuantizedMatrix m = random_quantized(rng, c);
    const RepackedQuant r = repack_quantized(m);
    SCOPED_TRACE(r.describe());
    const DeviceLayout layout = upload(r);
    std::vector<std::int32_t> ids;
    for (std::int64_t n = 0; n < m.rows; n += 3) ids.push_back(static_cast<std::int32_t>(n));
    const DeviceBuffer<std::int32_t> ids_d = to_device(ids);
    DeviceBuffer<float> out = poisoned(ids.size() * at(m.cols));
    dequantize_rows(layout.view, ids_d.data(), static_cast<std::int64_t>(ids.size()), out.data(), stream);
    const std::vector<float> rows = to_host(out, ids.size() * at(m.cols));
    const std::int64_t tile_words = r.dims.k_chunks() * r.dims.blob_words();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int64_t n = ids[i];
      std::vector<std::uint32_t> records(at(r.dims.groups));
      for (std::int64_t g = 0; g < r.dims.groups; ++g) records[at(g)] = r.scales[at(g * r.dims.n_pad + n)];
      std::vector<float> expected(at(m.cols));
      decode_row(r.dims, std::span(r.weights).subspan(at(n / 16 * tile_words), at(tile_words)), records, r.tile_group,
                 r.column_source, static_cast<int>(n % 16), expected);
      for (std::int64_t k = 0; k < m.cols; ++k) {
        ASSERT_EQ(rows[i * at(m.cols) + at(k)], expected[at(k)]) << "row " << n << " column " << k;
      }
    }
  }
}

TEST_F(QuantGemmGpu, BackendLinearAndEmbeddingOnQuantizedWeights) {
  std::mt19937 rng(17);
  CudaBackend backend;
  for (const QuantCase& c : {QuantCase{300, 576, 4, 128, true}, QuantCase{96, 320, 8, 32},
                             QuantCase{130, 512, 4, 64, false, false, Offset::ZeroPoint, DType::F16, true}}) {
    const QuantizedMatrix m = random_quantized(rng, c);
    const auto weights = backend.prepare_linear(m);
    SCOPED_TRACE(weights->describe());
    EXPECT_EQ(weights->rows(), m.rows);
    EXPECT_EQ(weights->cols(), m.cols);
    for (const std::int64_t rows : {1, 7, 33, 80}) {
      const std::vector<float> x = random_floats(rng, at(rows * m.cols));
      const std::vector<float> bias = random_floats(rng, at(m.rows));
      const DeviceBuffer<float> x_d = to_device(x);
      const DeviceBuffer<float> bias_d = to_device(bias);
      DeviceBuffer<float> y(at(rows * m.rows));
      y.fill_bytes(0xff, backend.stream());
      backend.linear(x_d.data(), rows, *weights, bias_d.data(), y.data());
      std::vector<float> result(at(rows * m.rows));
      y.download(result, backend.stream());
      backend.synchronize();
      const References refs = references(m, repack_quantized(m), x, rows, bias);
      EXPECT_LT(cuda_testing::error_over_scale(result, refs.exact, refs.exact_scale), 2e-3) << rows << " rows";
    }
    // Embedding rows from the quantized table equal dequantize_row.
    const std::vector<std::int32_t> ids = {0, static_cast<std::int32_t>(m.rows - 1), 5, 5};
    DeviceBuffer<float> out(ids.size() * at(m.cols));
    backend.embedding(*weights, ids, out.data());
    std::vector<float> rows(ids.size() * at(m.cols));
    out.download(rows, backend.stream());
    backend.synchronize();
    std::vector<float> expected(at(m.cols));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      weights->dequantize_row(ids[i], expected.data());
      for (std::int64_t k = 0; k < m.cols; ++k) ASSERT_EQ(rows[i * at(m.cols) + at(k)], expected[at(k)]);
      for (std::int64_t k = 0; k < m.cols; ++k) {
        ASSERT_NEAR(expected[at(k)], m.value(ids[i], k), 1e-3 * std::abs(m.value(ids[i], k)) + 1e-6);
      }
    }
  }
}

}  // namespace
}  // namespace nibble::kernels::cuda
