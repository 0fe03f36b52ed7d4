// The small decoder-layer kernels, the cuBLASLt dense path and CUDA graph replay
// on the GPU, against kernels/reference.h (float64) on fresh random inputs, with
// outputs poisoned (NaN) before each kernel.
#include <gtest/gtest.h>

#include <random>
#include <tuple>

#include "common/error.h"
#include "common/half.h"
#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_graph.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/reference.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::GpuTest;
using cuda_testing::random_floats;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }
std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

class OpsGpu : public GpuTest {};

TEST_F(OpsGpu, RmsNormInPlaceAndFusedWithTheResidualAdd) {
  std::mt19937 rng(31);
  for (const std::int64_t dim : {1, 63, 576, 4096, 5000}) {
    const std::int64_t rows = 7;
    const std::vector<float> x = random_floats(rng, at(rows * dim), 3.0f);
    const std::vector<float> residual = random_floats(rng, at(rows * dim));
    const std::vector<float> weight = random_floats(rng, at(dim));
    const DeviceBuffer<float> weight_d = to_device(weight);
    // Plain, with y aliasing x.
    DeviceBuffer<float> xy = to_device(x);
    rms_norm(xy.data(), rows, dim, weight_d.data(), 1e-5f, xy.data(), stream);
    EXPECT_LT(cuda_testing::relative_error(to_host(xy, x.size()), widen(reference::rms_norm(x, rows, dim, weight, 1e-5f))),
              2e-6)
        << dim;
    // Fused: residual += x, y = norm(residual).
    const DeviceBuffer<float> x_d = to_device(x);
    DeviceBuffer<float> residual_d = to_device(residual);
    DeviceBuffer<float> y = poisoned(x.size());
    add_rms_norm(x_d.data(), residual_d.data(), rows, dim, weight_d.data(), 1e-6f, y.data(), stream);
    std::vector<float> sum(x.size());
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = x[i] + residual[i];
    EXPECT_EQ(to_host(residual_d, sum.size()), sum);
    EXPECT_LT(cuda_testing::relative_error(to_host(y, x.size()), widen(reference::rms_norm(sum, rows, dim, weight, 1e-6f))),
              2e-6);
  }
}

TEST_F(OpsGpu, RopeRotatesHalvesByPosition) {
  std::mt19937 rng(32);
  // Whole heads, then partial rotary (Phi-4-mini: 96 of 128) with LongRoPE's scale.
  for (const auto& [head_dim, rotary, scale] : {std::tuple{64, 64, 1.0f}, std::tuple{128, 128, 1.0f},
                                               std::tuple{80, 80, 1.0f}, std::tuple{128, 96, 1.19f}}) {
    const std::int64_t rows = 5, heads = 6;
    std::vector<float> x = random_floats(rng, at(rows * heads * head_dim));
    const std::vector<std::int32_t> positions = {0, 1, 517, 4095, 131071};
    std::vector<float> inv_freq(at(rotary / 2));
    for (std::size_t i = 0; i < inv_freq.size(); ++i) {
      inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * static_cast<double>(i) / static_cast<double>(rotary)));
    }
    DeviceBuffer<float> x_d = to_device(x);
    const DeviceBuffer<std::int32_t> positions_d = to_device(positions);
    const DeviceBuffer<float> inv_freq_d = to_device(inv_freq);
    rope(x_d.data(), rows, heads, head_dim, rotary / 2, positions_d.data(), inv_freq_d.data(), scale, false, stream);
    std::vector<float> expected = x;
    reference::rope(expected, rows, heads, head_dim, positions, inv_freq, scale);
    EXPECT_LT(cuda_testing::relative_error(to_host(x_d, x.size()), widen(expected)), 2e-6) << head_dim << " " << rotary;
  }
}

TEST_F(OpsGpu, SwigluAddBiasEmbeddingAndConversions) {
  std::mt19937 rng(33);
  const std::int64_t n = 100003;
  const std::vector<float> gate = random_floats(rng, at(n), 4.0f);
  const std::vector<float> up = random_floats(rng, at(n));
  const DeviceBuffer<float> gate_d = to_device(gate);
  const DeviceBuffer<float> up_d = to_device(up);
  DeviceBuffer<float> out = poisoned(at(n));
  swiglu(gate_d.data(), up_d.data(), n, out.data(), stream);
  EXPECT_LT(cuda_testing::relative_error(to_host(out, at(n)), widen(reference::swiglu(gate, up))), 2e-6);

  DeviceBuffer<float> y = to_device(up);
  add(gate_d.data(), n, y.data(), stream);
  const std::vector<float> added = to_host(y, at(n));
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(added[at(i)], up[at(i)] + gate[at(i)]);

  const std::int64_t rows = 3, cols = 1000, ld = 1003;
  const std::vector<float> base = random_floats(rng, at(rows * ld));
  const std::vector<float> bias = random_floats(rng, at(cols));
  DeviceBuffer<float> biased = to_device(base);
  const DeviceBuffer<float> bias_d = to_device(bias);
  add_bias(biased.data(), rows, cols, ld, bias_d.data(), stream);
  const std::vector<float> got = to_host(biased, base.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t i = 0; i < ld; ++i) {
      const float want = base[at(r * ld + i)] + (i < cols ? bias[at(i)] : 0.0f);
      ASSERT_EQ(got[at(r * ld + i)], want);
    }
  }

  // Embedding from F32, F16 and BF16 tables, and the float -> fp16/bf16 conversion.
  const std::int64_t vocab = 50, width = 37;
  const std::vector<float> table = random_floats(rng, at(vocab * width));
  std::vector<std::uint16_t> table16(table.size());
  std::vector<std::uint16_t> table_bf16(table.size());
  for (std::size_t i = 0; i < table.size(); ++i) {
    table16[i] = f32_to_f16(table[i]);
    table_bf16[i] = f32_to_bf16(table[i]);
  }
  const std::vector<std::int32_t> ids = {49, 0, 7, 7};
  const DeviceBuffer<std::int32_t> ids_d = to_device(ids);
  const DeviceBuffer<float> table_d = to_device(table);
  const DeviceBuffer<std::uint16_t> table16_d = to_device(table16);
  const DeviceBuffer<std::uint16_t> table_bf16_d = to_device(table_bf16);
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    DeviceBuffer<float> rows_out = poisoned(ids.size() * at(width));
    const void* source = dtype == DType::F32 ? static_cast<const void*>(table_d.data())
                         : dtype == DType::F16 ? static_cast<const void*>(table16_d.data())
                                               : static_cast<const void*>(table_bf16_d.data());
    embedding(source, dtype, width, ids_d.data(), static_cast<std::int64_t>(ids.size()), rows_out.data(), stream);
    const std::vector<float> got_rows = to_host(rows_out, ids.size() * at(width));
    for (std::size_t r = 0; r < ids.size(); ++r) {
      for (std::int64_t c = 0; c < width; ++c) {
        const std::size_t index = at(ids[r] * width + c);
        const float want = dtype == DType::F32 ? table[index] : dtype == DType::F16 ? f16_to_f32(table16[index])
                                                                                    : bf16_to_f32(table_bf16[index]);
        ASSERT_EQ(got_rows[r * at(width) + at(c)], want);
      }
    }
  }
  std::vector<float> wide = random_floats(rng, 4096, 100.0f);
  wide[0] = 1e6f;
  wide[1] = -1e6f;
  wide[2] = 65519.0f;
  const DeviceBuffer<float> wide_d = to_device(wide);
  for (const bool bf16 : {false, true}) {
    DeviceBuffer<std::uint16_t> narrow(wide.size());
    convert_to_half(wide_d.data(), static_cast<std::int64_t>(wide.size()), narrow.data(), bf16, stream);
    const std::vector<std::uint16_t> bits = to_host(narrow, wide.size());
    for (std::size_t i = 0; i < wide.size(); ++i) {
      const float clamped = std::min(std::max(wide[i], -65504.0f), 65504.0f);
      ASSERT_EQ(bits[i], bf16 ? f32_to_bf16(wide[i]) : f32_to_f16(clamped)) << wide[i];
    }
  }
}

TEST_F(OpsGpu, DenseLayersOnCublasLt) {
  std::mt19937 rng(34);
  CudaBackend backend;
  for (const DType dtype : {DType::F16, DType::BF16, DType::F32}) {
    for (const auto& [n, k] : {std::pair<std::int64_t, std::int64_t>{576, 576}, {1536, 576}, {33, 100}}) {
      const std::vector<float> w = random_floats(rng, at(n * k), 0.05f);
      std::vector<std::uint16_t> w16(w.size());
      for (std::size_t i = 0; i < w.size(); ++i) w16[i] = dtype == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
      const Matrix host{dtype, n, k, dtype == DType::F32 ? static_cast<const void*>(w.data()) : w16.data()};
      const auto prepared = backend.prepare_linear(host);
      for (const std::int64_t rows : {1, 4, 65}) {
        const std::vector<float> x = random_floats(rng, at(rows * k));
        const std::vector<float> bias = random_floats(rng, at(n));
        const DeviceBuffer<float> x_d = to_device(x);
        const DeviceBuffer<float> bias_d = to_device(bias);
        DeviceBuffer<float> y(at(rows * n));
        y.fill_bytes(0xff, backend.stream());
        sync();
        backend.linear(x_d.data(), rows, *prepared, bias_d.data(), y.data());
        std::vector<float> result(at(rows * n));
        y.download(result, backend.stream());
        backend.synchronize();
        // Reference on the stored weights; the activations are rounded to the weights' type on the GPU.
        std::vector<float> x_rounded = x;
        if (dtype != DType::F32) {
          for (auto& v : x_rounded) v = dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : f16_to_f32(f32_to_f16(v));
        }
        const std::vector<float> expected = reference::linear(x_rounded, rows, host, bias.data());
        EXPECT_LT(cuda_testing::relative_error(result, widen(expected)), dtype == DType::F32 ? 1e-5 : 2e-4)
            << dtype_name(dtype) << " [" << n << ", " << k << "] x " << rows;
      }
    }
  }
}

TEST_F(OpsGpu, GraphReplayRepeatsTheCapturedStep) {
  std::mt19937 rng(35);
  CudaBackend backend;
  const std::int64_t dim = 1000;
  const std::vector<float> x = random_floats(rng, at(dim));
  const std::vector<float> weight = random_floats(rng, at(dim));
  const DeviceBuffer<float> x_d = to_device(x);
  const DeviceBuffer<float> weight_d = to_device(weight);
  DeviceBuffer<float> residual = to_device(std::vector<float>(at(dim), 0.0f));
  DeviceBuffer<float> y(at(dim));
  sync();
  CudaGraph graph;
  // One "step": residual += x, y = norm(residual), y = silu(y) * x.
  graph.capture(backend.stream(), [&] {
    backend.add_rms_norm(x_d.data(), residual.data(), 1, dim, weight_d.data(), 1e-5f, y.data());
    backend.swiglu(y.data(), x_d.data(), dim, y.data());
  });
  ASSERT_TRUE(graph.ready());
  // Nothing ran during capture.
  std::vector<float> before(at(dim));
  residual.download(before, backend.stream());
  backend.synchronize();
  for (const float v : before) ASSERT_EQ(v, 0.0f);
  for (int step = 0; step < 3; ++step) graph.launch(backend.stream());
  std::vector<float> residual_host(at(dim));
  std::vector<float> y_host(at(dim));
  residual.download(residual_host, backend.stream());
  y.download(y_host, backend.stream());
  backend.synchronize();
  std::vector<float> expected_residual(at(dim));
  for (std::int64_t i = 0; i < dim; ++i) expected_residual[at(i)] = x[at(i)] + x[at(i)] + x[at(i)];
  EXPECT_LT(cuda_testing::relative_error(residual_host, widen(expected_residual)), 1e-6);
  const std::vector<float> normed = reference::rms_norm(expected_residual, 1, dim, weight, 1e-5f);
  EXPECT_LT(cuda_testing::relative_error(y_host, widen(reference::swiglu(normed, x))), 5e-6);
  // Host-staged inputs cannot be captured: a clear error, and the stream stays usable.
  const std::vector<std::int32_t> positions = {0};
  const std::vector<float> inv_freq(8, 1.0f);
  DeviceBuffer<float> q(16);
  EXPECT_THROW(graph.capture(backend.stream(), [&] { backend.rope(q.data(), 1, 1, 16, positions, inv_freq, 1.0f); }), Error);
  graph.launch(backend.stream());
  backend.synchronize();
}

}  // namespace
}  // namespace nibble::kernels::cuda
