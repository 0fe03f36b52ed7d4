// FP8 e4m3 weights with block scales on the GPU (fp8_linear.cu) against the CPU
// backend's FP8 kernel, which fp8_kernels_test checks against float64: DeepSeek's
// 128x128 blocks with partial last blocks, small blocks, per-channel scales;
// 1..65 activation rows (several passes of kFp8Rows), outputs poisoned with NaN first.
#include <gtest/gtest.h>

#include <random>

#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::GpuTest;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

QuantizedMatrix random_fp8(std::mt19937& rng, std::int64_t n, std::int64_t k, std::int64_t block_rows,
                           std::int64_t block_cols) {
  QuantizedMatrix m;
  m.name = "fp8";
  m.rows = n;
  m.cols = k;
  m.bits = 8;
  m.code_dtype = DType::F8_E4M3;
  m.scale_dtype = DType::F32;
  m.groups = (k + block_cols - 1) / block_cols;
  m.group_of_col = contiguous_groups(k, block_cols);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.5e-3f, 2e-3f);
  std::vector<float> grid(at((n + block_rows - 1) / block_rows * m.groups));
  for (auto& s : grid) s = scale(rng);
  for (std::int64_t row = 0; row < n; ++row) {
    for (std::int64_t g = 0; g < m.groups; ++g) m.scales.push_back(grid[at(row / block_rows * m.groups + g)]);
  }
  while (m.codes.size() < at(n * k)) {
    const auto code = static_cast<std::uint8_t>(byte(rng));
    if ((code & 0x7f) != 0x7f) m.codes.push_back(code);  // finite codes only
  }
  return m;
}

class Fp8Gpu : public GpuTest {};

TEST_F(Fp8Gpu, MatchesTheCpuKernel) {
  std::mt19937 rng(18);
  CudaBackend gpu;
  CpuBackend cpu(2);
  struct Case {
    std::int64_t n, k, block_rows, block_cols;
  };
  for (const Case c : {Case{576, 1536, 128, 128}, Case{200, 300, 128, 128}, Case{45, 100, 32, 32}, Case{33, 515, 1, 515}}) {
    const QuantizedMatrix m = random_fp8(rng, c.n, c.k, c.block_rows, c.block_cols);
    const auto on_gpu = gpu.prepare_linear(m);
    const auto on_cpu = cpu.prepare_linear(m);
    // One byte per weight, a float per row and column block, an int per column.
    EXPECT_EQ(on_gpu->resident_bytes(), at(c.n * c.k + c.n * m.groups * 4 + c.k * 4));
    std::vector<float> row(at(c.k));
    on_gpu->dequantize_row(c.n - 1, row.data());
    for (std::int64_t k = 0; k < c.k; ++k) ASSERT_EQ(row[at(k)], m.value(c.n - 1, k));
    for (const std::int64_t rows : {1, 3, 8, 9, 65}) {
      const auto x = cuda_testing::random_floats(rng, at(rows * c.k));
      const auto bias = cuda_testing::random_floats(rng, at(c.n));
      std::vector<float> expected(at(rows * c.n));
      cpu.linear(x.data(), rows, *on_cpu, bias.data(), expected.data());
      const DeviceBuffer<float> x_d = to_device(x);
      const DeviceBuffer<float> bias_d = to_device(bias);
      DeviceBuffer<float> y(at(rows * c.n));
      y.fill_bytes(0xff, gpu.stream());
      sync();
      gpu.linear(x_d.data(), rows, *on_gpu, bias_d.data(), y.data());
      std::vector<float> result(at(rows * c.n));
      y.download(result, gpu.stream());
      gpu.synchronize();
      EXPECT_LT(cuda_testing::relative_error(result, std::vector<double>(expected.begin(), expected.end())), 1e-5)
          << "[" << c.n << ", " << c.k << "] blocks " << c.block_rows << "x" << c.block_cols << ", " << rows << " rows";
    }
  }
}

}  // namespace
}  // namespace nibble::kernels::cuda
