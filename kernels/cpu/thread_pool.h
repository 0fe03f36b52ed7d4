#pragma once
// A fork-join pool for the CPU kernels. Work is split into tasks that threads
// claim one at a time, and the caller works too: parallel_for returns as soon as
// every task is done, without waiting for threads that never woke up. So a core
// stolen by another process slows a step down by its share of the work, not by a
// scheduler time slice per barrier (what a barrier-based OpenMP team suffers).
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace nibble::kernels::cpu {

class ThreadPool {
 public:
  // `threads` counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(index, worker) for every index in [0, tasks), worker in [0, size())
  // naming the thread (for per-thread scratch). Tasks must not throw. Not
  // re-entrant: one parallel_for at a time per pool.
  template <typename Task>
  void parallel_for(std::int64_t tasks, Task&& task) {
    if (tasks <= 0) return;
    if (tasks == 1 || workers_.empty()) {
      for (std::int64_t i = 0; i < tasks; ++i) task(i, 0);
      return;
    }
    run(tasks, &invoke<std::remove_reference_t<Task>>, &task);
  }

 private:
  using Trampoline = void (*)(void* context, std::int64_t index, int worker);
  template <typename Task>
  static void invoke(void* context, std::int64_t index, int worker) {
    (*static_cast<Task*>(context))(index, worker);
  }

  void run(std::int64_t tasks, Trampoline trampoline, void* context);
  void work(std::uint32_t generation, int worker);
  void worker_loop(int worker);

  // state_ = generation << 32 | next task index. A task is claimed by a CAS that
  // also checks the generation, so a late thread can never run a task of a job
  // that has already finished.
  alignas(64) std::atomic<std::uint64_t> state_{0};
  alignas(64) std::atomic<std::int64_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  // Jobs alternate between two slots by generation parity. A thread holding a
  // stale claim on generation g can only read slot g & 1, which is rewritten for
  // g + 2 only after g + 1 was published, so its claim CAS fails; the release
  // stores here and acquire loads in work() make that hold for the job fields
  // too. (One shared slot let a stale thread read the next job's task count and
  // claim an index of the old generation before the new one was published.)
  struct Job {
    std::atomic<std::int64_t> tasks{0};
    std::atomic<Trampoline> trampoline{nullptr};
    std::atomic<void*> context{nullptr};
  };
  Job jobs_[2];
  std::vector<std::thread> workers_;
};

}  // namespace nibble::kernels::cpu
