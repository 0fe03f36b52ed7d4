#include "kernels/cuda/cuda_check.h"

#include <cublas_api.h>

#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace nibble::kernels::cuda {

void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line) {
  throw Error(fmt::format("{}:{}: {} failed: {} ({})", file, line, expression, cudaGetErrorName(error),
                          cudaGetErrorString(error)));
}

void throw_cublas_error(int status, const char* expression, const char* file, int line) {
  throw Error(fmt::format("{}:{}: {} failed: {} ({})", file, line, expression,
                          cublasGetStatusName(static_cast<cublasStatus_t>(status)),
                          cublasGetStatusString(static_cast<cublasStatus_t>(status))));
}

bool sync_after_launch() {
  static const bool enabled = [] {
    const char* value = std::getenv("NIBBLE_CUDA_SYNC");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

void check_launch(cudaStream_t stream, const char* kernel, const char* file, int line) {
  const cudaError_t launch = cudaGetLastError();
  if (launch != cudaSuccess) throw_cuda_error(launch, kernel, file, line);
  if (sync_after_launch()) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t query = cudaStreamIsCapturing(stream, &capture);
    if (query != cudaSuccess) throw_cuda_error(query, "cudaStreamIsCapturing", file, line);
    if (capture != cudaStreamCaptureStatusNone) return;  // synchronizing would break the capture
    const cudaError_t done = cudaStreamSynchronize(stream);
    if (done != cudaSuccess) throw_cuda_error(done, kernel, file, line);
  }
}

}  // namespace nibble::kernels::cuda
