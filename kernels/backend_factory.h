#pragma once
// The one place a backend is chosen: `--device cpu|cuda[:N]` becomes a CpuBackend
// or, in a build with CUDA, a CudaBackend. Nothing above kernels/ names a
// concrete backend.
#include <memory>
#include <string_view>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace nibble::kernels {

// The device asked for cannot be used here (no GPU, a build without CUDA, an
// index past the last GPU). The CLI exits with code 2 on it, before loading.
class DeviceUnavailable : public Error {
 public:
  using Error::Error;
};

struct BackendChoice {
  Device device;
  CpuBackendOptions cpu;  // threads and int8 activations, for the CPU backend
};

// True when this build has the CUDA backend compiled in.
bool cuda_compiled();
// Throws DeviceUnavailable with one clear message when the device cannot be used.
std::unique_ptr<Backend> make_backend(const BackendChoice& choice);
// The queue `backend`'s device work runs on in order (a CudaBackend's
// cudaStream_t), for collectives between GPU ranks to run in order with its
// kernels; null for a backend whose work runs as it is called (the CPU).
void* work_stream(const Backend& backend);

}  // namespace nibble::kernels
