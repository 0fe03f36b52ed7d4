#include "dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <thread>

namespace nibble::dist {

namespace {

using Clock = std::chrono::steady_clock;

void check_nccl(ncclResult_t result, std::string_view call) {
  if (result != ncclSuccess && result != ncclInProgress) fail("{}: NCCL error: {}", call, ncclGetErrorString(result));
}

void check_cuda(cudaError_t result, std::string_view call) {
  if (result != cudaSuccess) fail("{}: CUDA error: {}", call, cudaGetErrorString(result));
}

ncclDataType_t nccl_type(DType dtype, std::string_view call) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::I8: return ncclInt8;
    case DType::U8: return ncclUint8;
    default: fail("{}: NCCL cannot move {} elements", call, dtype_name(dtype));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclMax; }

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream, std::chrono::milliseconds deadline)
      : comm_(comm), device_(device), stream_(stream), deadline_(deadline) {
    check_nccl(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check_nccl(ncclCommCount(comm_, &size_), "ncclCommCount");
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaMalloc(&scratch_, sizeof(std::int32_t)), "cudaMalloc");
  }
  ~NcclCommunicator() override {
    cudaFree(scratch_);
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view engine() const override { return "nccl"; }
  bool device_memory() const override { return true; }

  void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    count_call(Collective::AllReduce, count, dtype);
    check_nccl(ncclAllReduce(data, data, static_cast<std::size_t>(count), nccl_type(dtype, "all_reduce"), nccl_op(op),
                             comm_, stream_),
               "all_reduce");
  }
  void all_gather(const void* send, void* recv, std::int64_t count, DType dtype) override {
    count_call(Collective::AllGather, count, dtype);
    check_nccl(ncclAllGather(send, recv, static_cast<std::size_t>(count), nccl_type(dtype, "all_gather"), comm_, stream_),
               "all_gather");
  }
  void reduce_scatter(const void* send, void* recv, std::int64_t count, DType dtype, ReduceOp op) override {
    count_call(Collective::ReduceScatter, count * size_, dtype);
    check_nccl(ncclReduceScatter(send, recv, static_cast<std::size_t>(count), nccl_type(dtype, "reduce_scatter"),
                                 nccl_op(op), comm_, stream_),
               "reduce_scatter");
  }
  void broadcast(void* data, std::int64_t count, DType dtype, int root) override {
    check_rank("broadcast", "root", root, size_);
    count_call(Collective::Broadcast, rank_ == root ? count : 0, dtype);
    check_nccl(ncclBroadcast(data, data, static_cast<std::size_t>(count), nccl_type(dtype, "broadcast"), root, comm_,
                             stream_),
               "broadcast");
  }
  void send(const void* data, std::int64_t count, DType dtype, int peer) override {
    check_rank("send", "peer", peer, size_);
    count_call(Collective::Send, count, dtype);
    check_nccl(ncclSend(data, static_cast<std::size_t>(count), nccl_type(dtype, "send"), peer, comm_, stream_), "send");
  }
  void recv(void* data, std::int64_t count, DType dtype, int peer) override {
    check_rank("recv", "peer", peer, size_);
    count_call(Collective::Recv, 0, dtype);
    check_nccl(ncclRecv(data, static_cast<std::size_t>(count), nccl_type(dtype, "recv"), peer, comm_, stream_), "recv");
  }

  // NCCL has no barrier: an all-reduce of one value, then the stream drained
  // while watching for a peer's failure.
  void barrier() override {
    const auto begin = Clock::now();
    ++stats_[Collective::Barrier].calls;
    check_cuda(cudaMemsetAsync(scratch_, 0, sizeof(std::int32_t), stream_), "barrier");
    check_nccl(ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, stream_), "barrier");
    for (int polls = 0;; ++polls) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) check_cuda(state, "barrier");
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess && async != ncclInProgress) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        fail("barrier: NCCL reported {} on rank {} of {}", ncclGetErrorString(async), rank_, size_);
      }
      if (Clock::now() - begin >= deadline_) {
        ncclCommAbort(comm_);  // frees the stream's stuck kernels
        comm_ = nullptr;
        throw CollectiveTimeout(fmt::format(
            "barrier on rank {} of {} did not complete within {:.1f} s: another rank died, hung or called a "
            "different collective",
            rank_, size_, std::chrono::duration<double>(deadline_).count()));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 100 ? 10 : 200));
    }
    stats_[Collective::Barrier].seconds += std::chrono::duration<double>(Clock::now() - begin).count();
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) fail("split: color {} must be >= 0", color);
    ncclComm_t sub = nullptr;
    check_nccl(ncclCommSplit(comm_, color, key, &sub, nullptr), "split");
    return std::make_unique<NcclCommunicator>(sub, device_, stream_, deadline_);
  }

  [[noreturn]] void abort_group(int exit_code) override {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    std::_Exit(exit_code);
  }

 private:
  // Enqueued work has no wall time of its own on the host; seconds are counted
  // by barrier() and by the backend's step timing.
  void count_call(Collective kind, std::int64_t count, DType dtype) {
    check_count(collective_name(kind), count);
    if (comm_ == nullptr) fail("{}: the NCCL communicator was aborted", collective_name(kind));
    auto& counter = stats_[kind];
    ++counter.calls;
    counter.bytes += static_cast<std::uint64_t>(count) * dtype_size(dtype);
  }

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  std::chrono::milliseconds deadline_;
  void* scratch_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, CUstream_st* stream,
                                                     std::chrono::milliseconds deadline) {
  if (deadline.count() <= 0) fail("the collective deadline must be positive, got {} ms", deadline.count());
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::string bytes(reinterpret_cast<const char*>(&id), sizeof(id));
  broadcast_bytes(bootstrap, bytes, 0);
  if (bytes.size() != sizeof(id)) fail("the NCCL unique id from rank 0 has {} bytes, not {}", bytes.size(), sizeof(id));
  std::memcpy(&id, bytes.data(), sizeof(id));
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "ncclCommInitRank");
  return std::make_unique<NcclCommunicator>(comm, device, stream, deadline);
}

}  // namespace nibble::dist
