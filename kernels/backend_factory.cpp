#include "kernels/backend_factory.h"

#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_backend.h"
#endif

namespace nibble::kernels {

bool cuda_compiled() {
#ifdef NIBBLE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const BackendChoice& choice) {
  if (choice.device.kind == DeviceKind::Cpu) return std::make_unique<CpuBackend>(choice.cpu);
#ifdef NIBBLE_WITH_CUDA
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    // cudaGetDeviceCount reports "no CUDA-capable device" or a missing driver the same way.
    throw DeviceUnavailable(fmt::format("--device {}: no CUDA GPU is available here ({}); use --device cpu",
                                        choice.device.name(),
                                        status != cudaSuccess ? cudaGetErrorString(status) : "0 devices"));
  }
  if (choice.device.index >= count) {
    throw DeviceUnavailable(fmt::format("--device {}: this machine has {} CUDA GPU{} (cuda:0..cuda:{})",
                                        choice.device.name(), count, count == 1 ? "" : "s", count - 1));
  }
  return std::make_unique<cuda::CudaBackend>(choice.device.index);
#else
  throw DeviceUnavailable(fmt::format("--device {}: this nibble was built without CUDA (configure with nvcc "
                                      "installed or -DNIBBLE_CUDA=ON); use --device cpu",
                                      choice.device.name()));
#endif
}

void* work_stream(const Backend& backend) {
#ifdef NIBBLE_WITH_CUDA
  if (const auto* cuda = dynamic_cast<const cuda::CudaBackend*>(&backend)) return cuda->stream();
#endif
  (void)backend;
  return nullptr;
}

}  // namespace nibble::kernels
