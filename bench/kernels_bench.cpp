// Dense linear-layer kernels on SmolLM2-shaped matrices, per ISA and weight dtype.
// Each result carries `x_scalar`: its speed as a multiple of the portable scalar
// kernel, measured in the same run on the same shape.
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"

namespace {

using nibble::DType;
using nibble::kernels::CpuBackend;
using nibble::kernels::Matrix;
namespace cpu = nibble::kernels::cpu;

struct Problem {
  std::vector<float> x, y, w32;
  std::vector<std::uint16_t> w16;
  Matrix w;
};

Problem make_problem(DType dtype, std::int64_t rows, std::int64_t n, std::int64_t k) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  Problem p;
  p.x.resize(static_cast<std::size_t>(rows * k));
  p.y.resize(static_cast<std::size_t>(rows * n));
  p.w32.resize(static_cast<std::size_t>(n * k));
  for (auto& v : p.x) v = normal(rng);
  for (auto& v : p.w32) v = normal(rng);
  if (dtype == DType::F32) {
    p.w = {dtype, n, k, p.w32.data()};
  } else {
    for (const float v : p.w32) p.w16.push_back(dtype == DType::F16 ? nibble::f32_to_f16(v) : nibble::f32_to_bf16(v));
    p.w = {dtype, n, k, p.w16.data()};
  }
  return p;
}

double seconds_per_call(CpuBackend& backend, Problem& p, std::int64_t rows) {
  const int calls = 20;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) backend.linear(p.x.data(), rows, p.w, nullptr, p.y.data());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / calls;
}

void BM_Linear(benchmark::State& state, cpu::Isa isa, DType dtype) {
  if (!cpu::isa_supported(isa)) {
    state.SkipWithError("ISA not supported on this CPU");
    return;
  }
  const std::int64_t rows = state.range(0), n = 1536, k = 576;  // SmolLM2 gate/up projection
  Problem p = make_problem(dtype, rows, n, k);
  CpuBackend backend(static_cast<int>(state.range(1)));

  static std::map<std::tuple<int, std::int64_t, std::int64_t>, double> baseline;
  const auto key = std::make_tuple(static_cast<int>(dtype), rows, state.range(1));
  if (!baseline.contains(key)) {
    cpu::set_active_isa(cpu::Isa::Scalar);
    baseline[key] = seconds_per_call(backend, p, rows);
  }
  cpu::set_active_isa(isa);
  for (auto _ : state) {
    backend.linear(p.x.data(), rows, p.w, nullptr, p.y.data());
    benchmark::DoNotOptimize(p.y.data());
  }
  const double per_call = seconds_per_call(backend, p, rows);
  state.counters["x_scalar"] = baseline[key] / per_call;
  state.counters["weight_GBps"] = benchmark::Counter(
      static_cast<double>(n * k) * static_cast<double>(nibble::dtype_size(dtype)), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * static_cast<double>(rows * n * k), benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
  cpu::set_active_isa(cpu::best_supported_isa());
}

void linear_args(benchmark::internal::Benchmark* b) {
  for (const int threads : {1, 2}) {
    for (const int rows : {1, 4, 16, 64}) b->Args({rows, threads});
  }
  b->ArgNames({"rows", "threads"})->UseRealTime();
}

BENCHMARK_CAPTURE(BM_Linear, scalar_f32, cpu::Isa::Scalar, DType::F32)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx2_f32, cpu::Isa::Avx2, DType::F32)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx512_f32, cpu::Isa::Avx512, DType::F32)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx2_bf16, cpu::Isa::Avx2, DType::BF16)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx512_bf16, cpu::Isa::Avx512, DType::BF16)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx2_f16, cpu::Isa::Avx2, DType::F16)->Apply(linear_args);
BENCHMARK_CAPTURE(BM_Linear, avx512_f16, cpu::Isa::Avx512, DType::F16)->Apply(linear_args);

}  // namespace

BENCHMARK_MAIN();
