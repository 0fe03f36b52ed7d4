#pragma once
// Helpers for the GPU tests (label gpu): a fixture that skips without a device,
// host <-> device copies, NaN poisoning, error measures. Every CUDA call checked.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"

namespace nibble::cuda_testing {

using kernels::cuda::DeviceBuffer;

// True when a CUDA device can be used (checked once).
inline bool gpu_available() {
  static const bool available = [] {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      return false;
    }
    return count > 0;
  }();
  return available;
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_available()) GTEST_SKIP() << "no CUDA device";
    NIBBLE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream != nullptr) {
      NIBBLE_CUDA_CHECK(cudaStreamSynchronize(stream));
      NIBBLE_CUDA_CHECK(cudaStreamDestroy(stream));
    }
  }
  void sync() const { NIBBLE_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  template <typename T>
  DeviceBuffer<T> to_device(std::span<const T> host) const {
    DeviceBuffer<T> buffer(host.size());
    buffer.upload(host, stream);
    return buffer;
  }
  template <typename T>
  DeviceBuffer<T> to_device(const std::vector<T>& host) const {
    return to_device(std::span<const T>(host));
  }
  template <typename T>
  std::vector<T> to_host(const DeviceBuffer<T>& buffer, std::size_t count) const {
    std::vector<T> host(count);
    buffer.download(host, stream);
    sync();
    return host;
  }
  // A float buffer filled with NaN (0xff bytes), so unwritten outputs fail the checks.
  DeviceBuffer<float> poisoned(std::size_t count) const {
    DeviceBuffer<float> buffer(count);
    buffer.fill_bytes(0xff, stream);
    return buffer;
  }

  cudaStream_t stream = nullptr;
};

// max |actual - expected| / max |expected| (infinity for anything not finite).
inline double relative_error(std::span<const float> actual, std::span<const double> expected) {
  if (actual.size() != expected.size()) return INFINITY;
  double diff = 0;
  double ref = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i]) || !std::isfinite(expected[i])) return INFINITY;
    diff = std::max(diff, std::abs(actual[i] - expected[i]));
    ref = std::max(ref, std::abs(expected[i]));
  }
  return ref == 0 ? diff : diff / ref;
}

// max over i of |actual - expected| / scale[i] (scale: the sum of |terms|, what a
// rounding error of each term is proportional to).
inline double error_over_scale(std::span<const float> actual, std::span<const double> expected,
                               std::span<const double> scale) {
  double worst = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i])) return INFINITY;
    worst = std::max(worst, std::abs(actual[i] - expected[i]) / std::max(scale[i], 1e-30));
  }
  return worst;
}

}  // namespace nibble::cuda_testing
