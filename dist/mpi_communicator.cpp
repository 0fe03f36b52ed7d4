#include "dist/mpi_communicator.h"

#include <mpi.h>

#include <charconv>
#include <climits>
#include <cstdlib>
#include <string>
#include <thread>

namespace nibble::dist {

namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<std::size_t>(length));
}

void check_mpi(int code, std::string_view call) {
  if (code != MPI_SUCCESS) fail("{}: MPI error: {}", call, mpi_error_text(code));
}

// MPI is initialized once per process and finalized when the process exits
// normally: Open MPI's launcher treats a rank that exits without MPI_Finalize as
// failed and ends the job.
class MpiRuntime {
 public:
  static void ensure_initialized() { static MpiRuntime runtime; }
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

 private:
  MpiRuntime() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    // The serving loop's step thread makes the calls, not main(): SERIALIZED (one
    // thread at a time, any thread) is what that needs.
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    if (provided < MPI_THREAD_SERIALIZED) {
      fail("this MPI library provides thread level {} but nibble needs MPI_THREAD_SERIALIZED ({})", provided,
           MPI_THREAD_SERIALIZED);
    }
    owned_ = true;
  }
  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Finalize();
  }
  bool owned_ = false;
};

// What MPI reduces element-wise; other dtypes travel as bytes.
MPI_Datatype reducible_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::I8: return MPI_INT8_T;
    case DType::U8: return MPI_UINT8_T;
    default: return MPI_DATATYPE_NULL;
  }
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, bool owned, std::chrono::milliseconds deadline)
      : comm_(comm), owned_(owned), deadline_(deadline) {
    // Errors come back as codes (turned into nibble::Error) instead of
    // aborting every rank from inside the library.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    if (owned_) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view engine() const override { return "mpi"; }

  void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    const Call call = start(Collective::AllReduce, count, dtype);
    MPI_Request request;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, int_count(count), reduce_type(dtype, "all_reduce"), mpi_op(op), comm_,
                             &request),
              "all_reduce");
    finish(call, request);
  }

  void all_gather(const void* send, void* recv, std::int64_t count, DType dtype) override {
    const Call call = start(Collective::AllGather, count, dtype);
    const Bytes b = as_bytes(count, dtype, "all_gather");
    MPI_Request request;
    check_mpi(MPI_Iallgather(send, b.count, b.type, recv, b.count, b.type, comm_, &request), "all_gather");
    finish(call, request);
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t count, DType dtype, ReduceOp op) override {
    const Call call = start(Collective::ReduceScatter, count * size_, dtype);
    MPI_Request request;
    check_mpi(MPI_Ireduce_scatter_block(send, recv, int_count(count), reduce_type(dtype, "reduce_scatter"), mpi_op(op),
                                        comm_, &request),
              "reduce_scatter");
    finish(call, request);
  }

  void broadcast(void* data, std::int64_t count, DType dtype, int root) override {
    check_rank("broadcast", "root", root, size_);
    const Call call = start(Collective::Broadcast, rank_ == root ? count : 0, dtype);
    const Bytes b = as_bytes(count, dtype, "broadcast");
    MPI_Request request;
    check_mpi(MPI_Ibcast(data, b.count, b.type, root, comm_, &request), "broadcast");
    finish(call, request);
  }

  void send(const void* data, std::int64_t count, DType dtype, int peer) override {
    check_rank("send", "peer", peer, size_);
    const Call call = start(Collective::Send, count, dtype);
    const Bytes b = as_bytes(count, dtype, "send");
    MPI_Request request;
    check_mpi(MPI_Isend(data, b.count, b.type, peer, kTag, comm_, &request), "send");
    finish(call, request);
  }

  void recv(void* data, std::int64_t count, DType dtype, int peer) override {
    check_rank("recv", "peer", peer, size_);
    const Call call = start(Collective::Recv, 0, dtype);
    const Bytes b = as_bytes(count, dtype, "recv");
    MPI_Request request;
    check_mpi(MPI_Irecv(data, b.count, b.type, peer, kTag, comm_, &request), "recv");
    MPI_Status status;
    finish(call, request, &status);
    int received = 0;
    MPI_Get_count(&status, b.type, &received);
    if (received != b.count) fail("recv: rank {} sent {} units, {} were expected", peer, received, b.count);
  }

  void barrier() override {
    const Call call = start(Collective::Barrier, 0, DType::U8);
    MPI_Request request;
    check_mpi(MPI_Ibarrier(comm_, &request), "barrier");
    finish(call, request);
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) fail("split: color {} must be >= 0", color);
    MPI_Comm sub = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "split");
    return std::make_unique<MpiCommunicator>(sub, true, deadline_);
  }

  [[noreturn]] void abort_group(int exit_code) override {
    MPI_Abort(comm_, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

 private:
  static constexpr int kTag = 7;

  struct Call {
    Collective kind;
    Clock::time_point begin;
  };
  struct Bytes {
    int count;
    MPI_Datatype type;
  };

  static int int_count(std::int64_t count) {
    if (count > INT_MAX) fail("a collective of {} elements is more than MPI's int count allows; split it", count);
    return static_cast<int>(count);
  }

  static MPI_Datatype reduce_type(DType dtype, std::string_view call) {
    const MPI_Datatype type = reducible_type(dtype);
    if (type == MPI_DATATYPE_NULL) {
      fail("{}: MPI reduces F32, F64, I32, I64, I8 and U8 elements, not {}", call, dtype_name(dtype));
    }
    return type;
  }

  // Moves that do not reduce carry any dtype as its bytes.
  static Bytes as_bytes(std::int64_t count, DType dtype, std::string_view call) {
    check_count(call, count);
    const MPI_Datatype type = reducible_type(dtype);
    if (type != MPI_DATATYPE_NULL) return {int_count(count), type};
    return {int_count(count * static_cast<std::int64_t>(dtype_size(dtype))), MPI_BYTE};
  }

  Call start(Collective kind, std::int64_t count, DType dtype) {
    check_count(collective_name(kind), count);
    auto& counter = stats_[kind];
    ++counter.calls;
    counter.bytes += static_cast<std::uint64_t>(count) * dtype_size(dtype);
    return {kind, Clock::now()};
  }

  // Waits for `request` until the deadline. Polls with a growing pause: ranks
  // may outnumber cores (tests run 4 ranks on 2), and a spinning waiter would
  // take the core its peer needs to reach the collective.
  void finish(const Call& call, MPI_Request& request, MPI_Status* status = nullptr) {
    const auto deadline = call.begin + deadline_;
    int done = 0;
    for (int polls = 0;; ++polls) {
      check_mpi(MPI_Test(&request, &done, status ? status : MPI_STATUS_IGNORE), collective_name(call.kind));
      if (done) break;
      const auto now = Clock::now();
      if (now >= deadline) {
        stats_[call.kind].seconds += std::chrono::duration<double>(now - call.begin).count();
        throw CollectiveTimeout(fmt::format(
            "{} on rank {} of {} did not complete within {:.1f} s: another rank died, hung or called a different "
            "collective",
            collective_name(call.kind), rank_, size_, std::chrono::duration<double>(deadline_).count()));
      }
      if (polls < 64) continue;
      if (polls < 256) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(polls < 2048 ? 20 : 200));
      }
    }
    stats_[call.kind].seconds += std::chrono::duration<double>(Clock::now() - call.begin).count();
  }

  MPI_Comm comm_;
  bool owned_;
  std::chrono::milliseconds deadline_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

std::optional<int> launcher_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    const std::string_view text(value);
    int rank = -1;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), rank);
    if (error != std::errc() || end != text.data() + text.size() || rank < 0) fail("{}={} is not a local rank", name, text);
    return rank;
  }
  return std::nullopt;
}

std::unique_ptr<Communicator> make_mpi_world(std::chrono::milliseconds deadline) {
  if (deadline.count() <= 0) fail("the collective deadline must be positive, got {} ms", deadline.count());
  MpiRuntime::ensure_initialized();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false, deadline);
}

}  // namespace nibble::dist
