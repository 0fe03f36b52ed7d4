#pragma once
// CUDA graphs for decode steps: a decode step is dozens of small launches whose
// CPU launch cost rivals their GPU time; capturing the step once and replaying it
// removes that. `capture` records what `work` enqueues on `stream` (nothing runs),
// then instantiates it, or updates the existing executable graph in place when
// only kernel arguments changed; `launch` replays it on a stream.
//
// Captured work must read inputs from device memory that stays put between
// replays (write new positions/tokens there before each launch); host-side
// staging (the Backend methods that take std::span inputs) cannot be captured.
#include <cuda_runtime_api.h>

#include <functional>

namespace nibble::kernels::cuda {

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void capture(cudaStream_t stream, const std::function<void()>& work);
  void launch(cudaStream_t stream) const;
  bool ready() const { return exec_ != nullptr; }
  // Whether the last capture updated the previous executable graph in place.
  bool last_capture_updated() const { return updated_; }

 private:
  void reset();
  cudaGraphExec_t exec_ = nullptr;
  bool updated_ = false;
};

}  // namespace nibble::kernels::cuda
