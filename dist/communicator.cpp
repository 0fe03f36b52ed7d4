#include "dist/communicator.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace nibble::dist {

std::string_view collective_name(Collective collective) {
  switch (collective) {
    case Collective::AllReduce: return "all_reduce";
    case Collective::AllGather: return "all_gather";
    case Collective::ReduceScatter: return "reduce_scatter";
    case Collective::Broadcast: return "broadcast";
    case Collective::Send: return "send";
    case Collective::Recv: return "recv";
    case Collective::Barrier: return "barrier";
  }
  return "unknown";
}

void check_count(std::string_view call, std::int64_t count) {
  if (count < 0) fail("{}: negative element count {}", call, count);
}

void check_rank(std::string_view call, std::string_view what, int rank, int size) {
  if (rank < 0 || rank >= size) fail("{}: {} {} is outside the group of {} ranks", call, what, rank, size);
}

void broadcast_bytes(Communicator& communicator, std::string& bytes, int root) {
  std::int64_t length = static_cast<std::int64_t>(bytes.size());
  communicator.broadcast(&length, 1, DType::I64, root);
  if (length < 0) fail("broadcast_bytes: rank {} sent a negative length", root);
  bytes.resize(static_cast<std::size_t>(length));
  communicator.broadcast(bytes.data(), length, DType::U8, root);
}

namespace {

// One rank: reductions and gathers over one contribution are copies.
class SingleRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view engine() const override { return "single"; }

  void all_reduce(void*, std::int64_t count, DType, ReduceOp) override { check_count("all_reduce", count); }
  void all_gather(const void* send, void* recv, std::int64_t count, DType dtype) override {
    check_count("all_gather", count);
    copy(send, recv, count, dtype);
  }
  void reduce_scatter(const void* send, void* recv, std::int64_t count, DType dtype, ReduceOp) override {
    check_count("reduce_scatter", count);
    copy(send, recv, count, dtype);
  }
  void broadcast(void*, std::int64_t count, DType, int root) override {
    check_count("broadcast", count);
    check_rank("broadcast", "root", root, 1);
  }
  // A lone rank has no peer to talk to: a send or receive is a bug in the caller.
  void send(const void*, std::int64_t, DType, int peer) override { check_rank("send", "peer", peer, 0); }
  void recv(void*, std::int64_t, DType, int peer) override { check_rank("recv", "peer", peer, 0); }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleRankCommunicator>(); }
  [[noreturn]] void abort_group(int exit_code) override { std::_Exit(exit_code); }

 private:
  static void copy(const void* from, void* to, std::int64_t count, DType dtype) {
    if (from != to && count > 0) std::memmove(to, from, static_cast<std::size_t>(count) * dtype_size(dtype));
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_rank_communicator() { return std::make_unique<SingleRankCommunicator>(); }

}  // namespace nibble::dist
