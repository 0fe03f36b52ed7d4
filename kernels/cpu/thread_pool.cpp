#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>

namespace nibble::kernels::cpu {
namespace {

constexpr std::uint64_t kIndexMask = 0xffffffffu;
// Spinning this long (a few microseconds) catches the next op of the same forward
// pass without a futex round trip; longer idle periods sleep.
constexpr int kSpinsBeforeSleep = 4096;

std::uint32_t generation_of(std::uint64_t state) { return static_cast<std::uint32_t>(state >> 32); }

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int worker = 1; worker < threads; ++worker) workers_.emplace_back([this, worker] { worker_loop(worker); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  state_.fetch_add(std::uint64_t{1} << 32);
  state_.notify_all();
  for (auto& thread : workers_) thread.join();
}

void ThreadPool::run(std::int64_t tasks, Trampoline trampoline, void* context) {
  const std::uint32_t generation = generation_of(state_.load(std::memory_order_relaxed)) + 1;
  Job& job = jobs_[generation & 1];
  job.trampoline.store(trampoline, std::memory_order_release);
  job.context.store(context, std::memory_order_release);
  job.tasks.store(tasks, std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  // Sequentially consistent store and load pair with the sleepers' increment and
  // re-check in worker_loop: either we see the sleeper or it sees the new job.
  state_.store(static_cast<std::uint64_t>(generation) << 32);
  if (sleepers_.load() > 0) state_.notify_all();
  work(generation, 0);
  for (int spin = 0; done_.load(std::memory_order_acquire) < tasks; ++spin) {
    // A thread that claimed a task may have lost its core; let it run.
    if (spin > kSpinsBeforeSleep) std::this_thread::yield(); else _mm_pause();
  }
}

void ThreadPool::work(std::uint32_t generation, int worker) {
  const Job& job = jobs_[generation & 1];
  std::uint64_t state = state_.load(std::memory_order_acquire);
  while (true) {
    if (generation_of(state) != generation) return;  // the job is over
    const std::uint64_t index = state & kIndexMask;
    if (static_cast<std::int64_t>(index) >= job.tasks.load(std::memory_order_acquire)) return;
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The claim succeeded while the generation was still ours, so the slot holds
    // this job and stays put until done_ reaches its task count.
    job.trampoline.load(std::memory_order_acquire)(job.context.load(std::memory_order_acquire),
                                                   static_cast<std::int64_t>(index), worker);
    done_.fetch_add(1, std::memory_order_acq_rel);
    state = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop(int worker) {
  std::uint32_t seen = 0;
  while (true) {
    std::uint64_t state = state_.load(std::memory_order_acquire);
    for (int spin = 0; generation_of(state) == seen && spin < kSpinsBeforeSleep; ++spin) {
      _mm_pause();
      state = state_.load(std::memory_order_acquire);
    }
    if (generation_of(state) == seen) {
      sleepers_.fetch_add(1);
      // Re-check after announcing ourselves, so a job published in between is not missed.
      state = state_.load();
      while (generation_of(state) == seen) {
        state_.wait(state, std::memory_order_acquire);
        state = state_.load(std::memory_order_acquire);
      }
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_of(state);
    work(seen, worker);
  }
}

}  // namespace nibble::kernels::cpu
