#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace nibble::kernels::cpu {
namespace {

TEST(ThreadPool, RunsEveryTaskExactlyOnceAcrossManyJobs) {
  for (const int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int job = 0; job < 2000; ++job) {
      const std::int64_t tasks = job % 37;
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(tasks));
      std::atomic<bool> bad_worker{false};
      pool.parallel_for(tasks, [&](std::int64_t i, int worker) {
        hits[static_cast<std::size_t>(i)].fetch_add(1);
        if (worker < 0 || worker >= threads) bad_worker = true;
      });
      for (std::int64_t i = 0; i < tasks; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << job;
      ASSERT_FALSE(bad_worker.load());
    }
  }
}

TEST(ThreadPool, FinishesWhenOtherThreadsNeverGetACore) {
  // More pool threads than cores, plus busy threads: the caller must still finish
  // every job by doing the work itself, with every task run exactly once.
  ThreadPool pool(6);
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  for (unsigned i = 0; i < std::thread::hardware_concurrency(); ++i) {
    hogs.emplace_back([&] {
      while (!stop.load()) {
      }
    });
  }
  std::int64_t total = 0;
  for (int job = 0; job < 300; ++job) {
    std::atomic<std::int64_t> sum{0};
    pool.parallel_for(64, [&](std::int64_t i, int) { sum.fetch_add(i); });
    total += sum.load();
  }
  stop = true;
  for (auto& hog : hogs) hog.join();
  EXPECT_EQ(total, 300 * (63 * 64 / 2));
}

}  // namespace
}  // namespace nibble::kernels::cpu
