// The MPI communicator across real ranks: run by ctest under `mpirun -np N`
// (N = 2, 3, 4; more ranks than cores is fine). Every rank runs every test in the
// same order, as the collectives require; gtest's exit code is each rank's, and
// mpirun fails when any rank fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "dist/communicator.h"
#include "dist/mpi_communicator.h"

namespace nibble::dist {
namespace {

Communicator& world() {
  static const auto communicator = make_mpi_world();
  return *communicator;
}

// Rank r's contribution, which every rank can recompute to know the answer.
std::vector<float> contribution(int rank, std::size_t count, std::uint32_t salt = 0) {
  std::mt19937 rng(1000 + 17 * static_cast<std::uint32_t>(rank) + salt);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(rng);
  return values;
}

// Every rank holds the same bytes: gather them and compare with rank 0's.
void expect_same_on_every_rank(const std::vector<float>& values) {
  Communicator& c = world();
  std::vector<float> all(values.size() * static_cast<std::size_t>(c.size()));
  c.all_gather(values.data(), all.data(), static_cast<std::int64_t>(values.size()), DType::F32);
  for (int r = 1; r < c.size(); ++r) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(std::memcmp(&all[i], &all[r * values.size() + i], sizeof(float)), 0)
          << "rank " << r << " differs from rank 0 at " << i;
    }
  }
}

TEST(MpiCommunicator, WorldHasTheLaunchersRanks) {
  EXPECT_TRUE(launched_by_mpi());
  EXPECT_GE(world().size(), 2);
  EXPECT_GE(world().rank(), 0);
  EXPECT_LT(world().rank(), world().size());
  EXPECT_EQ(world().engine(), "mpi");
}

TEST(MpiCommunicator, AllReduceSumsAndMaximaAreExactAndIdenticalOnEveryRank) {
  Communicator& c = world();
  for (const std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, std::size_t{100003}}) {
    auto sum = contribution(c.rank(), count);
    auto max = sum;
    c.all_reduce(sum.data(), static_cast<std::int64_t>(count), DType::F32, ReduceOp::Sum);
    c.all_reduce(max.data(), static_cast<std::int64_t>(count), DType::F32, ReduceOp::Max);
    std::vector<double> want_sum(count, 0.0);
    std::vector<float> want_max(count, -INFINITY);
    for (int r = 0; r < c.size(); ++r) {
      const auto part = contribution(r, count);
      for (std::size_t i = 0; i < count; ++i) {
        want_sum[i] += part[i];
        want_max[i] = std::max(want_max[i], part[i]);
      }
    }
    for (std::size_t i = 0; i < count; ++i) {
      ASSERT_FALSE(std::isnan(sum[i]));
      // A float sum of <= 4 terms of size ~3 in any order: a few ulps of 10.
      ASSERT_NEAR(sum[i], want_sum[i], 1e-5 * (1.0 + std::abs(want_sum[i]))) << i;
      ASSERT_EQ(max[i], want_max[i]) << i;
    }
    expect_same_on_every_rank(sum);
  }
}

TEST(MpiCommunicator, IntegerSumsAreExact) {
  Communicator& c = world();
  std::vector<std::int64_t> values{c.rank() + 1, std::int64_t{1} << 40, -c.rank()};
  c.all_reduce(values.data(), 3, DType::I64, ReduceOp::Sum);
  const std::int64_t n = c.size();
  EXPECT_EQ(values[0], n * (n + 1) / 2);
  EXPECT_EQ(values[1], n << 40);
  EXPECT_EQ(values[2], -n * (n - 1) / 2);
}

TEST(MpiCommunicator, AllGatherPutsEachRanksSliceInRankOrder) {
  Communicator& c = world();
  const std::size_t count = 333;
  const auto mine = contribution(c.rank(), count, 5);
  std::vector<float> all(count * static_cast<std::size_t>(c.size()), NAN);
  c.all_gather(mine.data(), all.data(), static_cast<std::int64_t>(count), DType::F32);
  for (int r = 0; r < c.size(); ++r) {
    const auto want = contribution(r, count, 5);
    for (std::size_t i = 0; i < count; ++i) ASSERT_EQ(all[r * count + i], want[i]) << "rank " << r << " at " << i;
  }
  // Half-precision activations travel as their bytes.
  std::vector<std::uint16_t> halves{static_cast<std::uint16_t>(0x3C00 + c.rank())};
  std::vector<std::uint16_t> gathered(static_cast<std::size_t>(c.size()));
  c.all_gather(halves.data(), gathered.data(), 1, DType::F16);
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(gathered[r], 0x3C00 + r);
}

TEST(MpiCommunicator, ReduceScatterGivesEachRankTheSumOfItsSlice) {
  Communicator& c = world();
  const std::size_t count = 1000;
  const auto mine = contribution(c.rank(), count * static_cast<std::size_t>(c.size()), 9);
  std::vector<float> slice(count);
  c.reduce_scatter(mine.data(), slice.data(), static_cast<std::int64_t>(count), DType::F32, ReduceOp::Sum);
  std::vector<double> want(count, 0.0);
  for (int r = 0; r < c.size(); ++r) {
    const auto part = contribution(r, count * static_cast<std::size_t>(c.size()), 9);
    for (std::size_t i = 0; i < count; ++i) want[i] += part[c.rank() * count + i];
  }
  for (std::size_t i = 0; i < count; ++i) ASSERT_NEAR(slice[i], want[i], 1e-5 * (1.0 + std::abs(want[i]))) << i;
}

TEST(MpiCommunicator, BroadcastFromEveryRootAndBytesOfUnknownLength) {
  Communicator& c = world();
  for (int root = 0; root < c.size(); ++root) {
    auto values = contribution(c.rank(), 64, 3);
    c.broadcast(values.data(), 64, DType::F32, root);
    EXPECT_EQ(values, contribution(root, 64, 3)) << "root " << root;
  }
  const int root = c.size() - 1;
  std::string bytes = c.rank() == root ? std::string("a step plan\0with zeros", 22) : std::string("stale");
  broadcast_bytes(c, bytes, root);
  EXPECT_EQ(bytes, std::string("a step plan\0with zeros", 22));
}

TEST(MpiCommunicator, SendAndRecvAroundARing) {
  Communicator& c = world();
  const int next = (c.rank() + 1) % c.size();
  const int previous = (c.rank() + c.size() - 1) % c.size();
  const auto mine = contribution(c.rank(), 4097, 11);
  std::vector<float> got(4097);
  // Even ranks send first, odd ranks receive first: a ring without deadlock even
  // with blocking semantics; with an odd size the last even rank meets rank 0.
  if (c.rank() % 2 == 0) {
    c.send(mine.data(), 4097, DType::F32, next);
    c.recv(got.data(), 4097, DType::F32, previous);
  } else {
    c.recv(got.data(), 4097, DType::F32, previous);
    c.send(mine.data(), 4097, DType::F32, next);
  }
  EXPECT_EQ(got, contribution(previous, 4097, 11));
}

TEST(MpiCommunicator, SplitMakesTensorGroupsInsidePipelineStages) {
  Communicator& c = world();
  // Stages of two tensor ranks each: world ranks {0,1}, {2,3}, ...; with an odd
  // world the last stage has one rank.
  const int stage = c.rank() / 2;
  const int first = 2 * stage;
  const int members = std::min(2, c.size() - first);
  auto tensor_group = c.split(stage, c.rank());
  EXPECT_EQ(tensor_group->size(), members);
  EXPECT_EQ(tensor_group->rank(), c.rank() - first);
  std::int32_t value = c.rank();
  tensor_group->all_reduce(&value, 1, DType::I32, ReduceOp::Sum);
  EXPECT_EQ(value, members == 2 ? 2 * first + 1 : first) << "the sum of the stage's world ranks";
  // The reverse key orders the group's ranks the other way.
  auto reversed = c.split(0, -c.rank());
  EXPECT_EQ(reversed->rank(), c.size() - 1 - c.rank());
  EXPECT_THROW(c.split(-1, 0), Error);
}

TEST(MpiCommunicator, BadCallsAreClearErrors) {
  Communicator& c = world();
  float x = 1;
  std::uint16_t h = 0;
  EXPECT_THROW(c.broadcast(&x, 1, DType::F32, c.size()), Error);
  EXPECT_THROW(c.send(&x, 1, DType::F32, -1), Error);
  EXPECT_THROW(c.all_reduce(&x, -1, DType::F32, ReduceOp::Sum), Error);
  try {
    c.all_reduce(&h, 1, DType::F16, ReduceOp::Sum);
    FAIL() << "MPI cannot sum F16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("F16"), std::string::npos) << e.what();
  }
  c.barrier();  // the group is still in step after the refused calls
}

// A rank that does not show up: the others' collective ends with
// CollectiveTimeout after the deadline instead of hanging. Rank 1 then joins the
// barrier late, so the pending call completes and the group stays usable for
// the tests after this one.
TEST(MpiCommunicator, AMissingRankIsATimeoutNotAHang) {
  const auto short_deadline = make_mpi_world(std::chrono::milliseconds(1500));
  if (short_deadline->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    world().barrier();
  } else {
    const auto begin = std::chrono::steady_clock::now();
    try {
      short_deadline->barrier();
      FAIL() << "the barrier completed without rank 1";
    } catch (const CollectiveTimeout& e) {
      EXPECT_NE(std::string(e.what()).find("barrier on rank"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("did not complete within 1.5 s"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(20)) << "it must not wait for rank 1";
  }
  EXPECT_EQ(short_deadline->stats()[Collective::Barrier].calls, short_deadline->rank() == 1 ? 0u : 1u);
}

TEST(MpiCommunicator, StatsCountCallsAndBytes) {
  auto c = world().split(0, world().rank());
  std::vector<float> values(100, 1.0f);
  c->all_reduce(values.data(), 100, DType::F32, ReduceOp::Sum);
  c->all_reduce(values.data(), 100, DType::F32, ReduceOp::Sum);
  EXPECT_EQ(c->stats()[Collective::AllReduce].calls, 2u);
  EXPECT_EQ(c->stats()[Collective::AllReduce].bytes, 800u);
  EXPECT_GE(c->stats()[Collective::AllReduce].seconds, 0.0);
  EXPECT_EQ(c->stats()[Collective::Broadcast].calls, 0u);
  EXPECT_EQ(values[0], static_cast<float>(c->size() * c->size()));
}

}  // namespace
}  // namespace nibble::dist
