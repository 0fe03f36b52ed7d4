#include "kernels/cuda/cuda_graph.h"

#include "common/error.h"
#include "kernels/cuda/cuda_check.h"

namespace nibble::kernels::cuda {
namespace {

struct GraphHandle {
  cudaGraph_t graph = nullptr;
  GraphHandle() = default;
  GraphHandle(const GraphHandle&) = delete;
  GraphHandle& operator=(const GraphHandle&) = delete;
  ~GraphHandle() {
    if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
  }
};

}  // namespace

CudaGraph::~CudaGraph() { reset(); }

void CudaGraph::reset() {
  if (exec_ != nullptr) static_cast<void>(cudaGraphExecDestroy(exec_));
  exec_ = nullptr;
}

void CudaGraph::capture(cudaStream_t stream, const std::function<void()>& work) {
  if (stream == nullptr) fail("CUDA graph capture needs a created stream, not the legacy default stream");
  GraphHandle captured;
  NIBBLE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    work();
  } catch (...) {
    static_cast<void>(cudaStreamEndCapture(stream, &captured.graph));  // leave the stream usable
    throw;
  }
  NIBBLE_CUDA_CHECK(cudaStreamEndCapture(stream, &captured.graph));
  updated_ = false;
  if (exec_ != nullptr) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(exec_, captured.graph, &info) == cudaSuccess) {
      updated_ = true;
      return;
    }
    static_cast<void>(cudaGetLastError());  // a failed update is not an error: instantiate anew
    reset();
  }
  NIBBLE_CUDA_CHECK(cudaGraphInstantiate(&exec_, captured.graph, 0));
}

void CudaGraph::launch(cudaStream_t stream) const {
  if (exec_ == nullptr) fail("CUDA graph launched before it was captured");
  NIBBLE_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

}  // namespace nibble::kernels::cuda
