#pragma once
// Every CUDA runtime and cuBLAS call in nibble goes through these macros: a
// failure throws nibble::Error naming the call, its file and line and the CUDA
// error, so nothing fails silently. Usable from .cu and .cpp files alike (no fmt
// here: the messages are built in cuda_check.cpp).
//
// Kernel launches are followed by NIBBLE_CUDA_CHECK_LAUNCH(stream): it reads the
// launch error, and when NIBBLE_CUDA_SYNC=1 is set in the environment it also
// synchronizes the stream, so an asynchronous fault is reported at the launch that
// caused it (slow; for debugging on the GPU machine).
#include <cuda_runtime_api.h>

namespace nibble::kernels::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line);
// `status` is a cublasStatus_t (kept as int so this header needs no cuBLAS include).
[[noreturn]] void throw_cublas_error(int status, const char* expression, const char* file, int line);
void check_launch(cudaStream_t stream, const char* kernel, const char* file, int line);
// True when NIBBLE_CUDA_SYNC=1 (read once).
bool sync_after_launch();

}  // namespace nibble::kernels::cuda

#define NIBBLE_CUDA_CHECK(expression)                                                           \
  do {                                                                                          \
    const cudaError_t nibble_cuda_status_ = (expression);                                       \
    if (nibble_cuda_status_ != cudaSuccess) {                                                   \
      ::nibble::kernels::cuda::throw_cuda_error(nibble_cuda_status_, #expression, __FILE__, __LINE__); \
    }                                                                                           \
  } while (false)

// Needs cuBLAS' headers where used (CUBLAS_STATUS_SUCCESS).
#define NIBBLE_CUBLAS_CHECK(expression)                                                         \
  do {                                                                                          \
    const auto nibble_cublas_status_ = (expression);                                            \
    if (nibble_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                       \
      ::nibble::kernels::cuda::throw_cublas_error(static_cast<int>(nibble_cublas_status_), #expression, __FILE__, \
                                                  __LINE__);                                    \
    }                                                                                           \
  } while (false)

#define NIBBLE_CUDA_CHECK_LAUNCH(stream, kernel) \
  ::nibble::kernels::cuda::check_launch((stream), (kernel), __FILE__, __LINE__)
