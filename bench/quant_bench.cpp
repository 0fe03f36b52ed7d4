// Quantized and sparse linear kernels against the engine's own float32 dense
// kernel, measured in the same run on the same shape and thread count.
//
// Counters:
//   x_f32        speed as a multiple of the f32 dense kernel (same shape, rows, threads)
//   weight_GBps  bytes of (packed) weights streamed per second
//   x_stream     weight_GBps as a fraction of a STREAM-like copy's bandwidth
//                (read + write bytes), measured at the start of this run
//   copies       copies of the weight the calls rotate through
//   x_float_act  int8-activation runs: speed as a multiple of the same weights with
//                float activations (same shape, rows, threads, this run)
//   x_copy       BM_GgufLinear: memcpy time of the same number of weight bytes (cold,
//                same copies count, this run) over the kernel's time; 1 = as fast as
//                just reading and writing the weights once
//   tokens_per_s BM_GgufLinear: activation rows through this one layer per second
//
// Weights are cold, as in decode: a model's layers together far exceed the caches,
// so each call streams its weight from memory. Every benchmark rotates through
// enough copies of its weight to fill twice the machine's caches; without that, a
// server with a few hundred MB of L3 serves a single 4096x11008 weight (even in
// float32) from cache and the ratios mean nothing.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/block_format.h"
#include "common/half.h"
#include "common/quantized_matrix.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

using nibble::DType;
using nibble::QuantizedMatrix;
using nibble::kernels::CpuBackend;
using nibble::kernels::LinearWeights;
using nibble::kernels::Matrix;
using nibble::kernels::SparseChoice;

// Threads for every kernel and for the copy: NIBBLE_BENCH_THREADS, else every core.
int bench_threads() {
  static const int threads = [] {
    const char* text = std::getenv("NIBBLE_BENCH_THREADS");
    const int from_env = text != nullptr ? std::atoi(text) : 0;
    return from_env > 0 ? from_env : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return threads;
}

// Bytes of data cache on this machine, all levels and instances together.
double cache_bytes() {
  static const double bytes = [] {
    const auto& info = benchmark::CPUInfo::Get();
    double total = 0;
    for (const auto& cache : info.caches) {
      if (cache.type == "Instruction") continue;
      const int instances = cache.num_sharing > 0 ? std::max(1, info.num_cpus / cache.num_sharing) : 1;
      total += static_cast<double>(cache.size) * instances;
    }
    return total;
  }();
  return bytes;
}

// How many copies of a weight of `bytes` together fill the caches twice over.
std::size_t cold_copies(double bytes) {
  return static_cast<std::size_t>(std::clamp(std::ceil(2 * cache_bytes() / bytes), 1.0, 256.0));
}

template <typename F>
double seconds_per_call(F&& call) {
  call();  // warm caches and page tables
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    call();
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < 0.3 || calls < 3);
  return elapsed / calls;
}

// Copy bandwidth with bench_threads() threads over buffers far larger than the caches.
double stream_copy_gbps() {
  static const double gbps = [] {
    const std::size_t bytes = std::size_t{256} << 20;
    std::vector<char> a(bytes, 1), b(bytes, 0);
    const auto copy = [&] {
      std::vector<std::thread> threads;
      const std::size_t part = bytes / bench_threads();
      for (int t = 0; t < bench_threads(); ++t) {
        threads.emplace_back([&, t] { std::memcpy(b.data() + t * part, a.data() + t * part, part); });
      }
      for (auto& thread : threads) thread.join();
    };
    return 2.0 * static_cast<double>(bytes) / seconds_per_call(copy) / 1e9;
  }();
  return gbps;
}

QuantizedMatrix random_quantized(std::int64_t n, std::int64_t k, int bits, std::int64_t group_size, bool sparse_2_4) {
  std::mt19937 rng(1);
  QuantizedMatrix m;
  m.name = "bench";
  m.rows = n;
  m.cols = k;
  m.bits = bits;
  m.groups = k / group_size;
  m.group_of_col = nibble::contiguous_groups(k, group_size);
  m.codes.resize(static_cast<std::size_t>(n * k));
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  for (auto& q : m.codes) q = static_cast<std::uint8_t>(code(rng));
  m.scales.assign(static_cast<std::size_t>(n * m.groups), 0.01f);
  m.zeros.assign(static_cast<std::size_t>(n * m.groups), static_cast<std::uint8_t>(1 << (bits - 1)));
  if (sparse_2_4) {
    m.sparse_2_4 = true;
    for (std::size_t i = 0; i < m.codes.size(); i += 4) m.codes[i + 1] = m.codes[i + 3] = m.zeros[0];
  }
  return m;
}

struct Inputs {
  std::vector<float> x, y;
  Inputs(std::int64_t rows, std::int64_t n, std::int64_t k)
      : x(static_cast<std::size_t>(rows * k)), y(static_cast<std::size_t>(rows * n)) {
    std::mt19937 rng(2);
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
  }
};

// Cold copies of an f32 [n, k] weight.
struct F32Weights {
  std::vector<std::vector<float>> copies;
  std::vector<Matrix> matrices;
  F32Weights(std::int64_t n, std::int64_t k) {
    const auto count = cold_copies(static_cast<double>(n * k) * sizeof(float));
    for (std::size_t i = 0; i < count; ++i) {
      copies.emplace_back(static_cast<std::size_t>(n * k), 0.01f);
      matrices.push_back(Matrix{DType::F32, n, k, copies.back().data()});
    }
  }
};

// Seconds per call of the f32 dense kernel, once per (n, k, rows) in this run.
double f32_baseline(CpuBackend& backend, std::int64_t n, std::int64_t k, std::int64_t rows) {
  static std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, double> seconds;
  const auto key = std::make_tuple(n, k, rows);
  if (!seconds.contains(key)) {
    const F32Weights w(n, k);
    Inputs io(rows, n, k);
    std::size_t next = 0;
    seconds[key] = seconds_per_call([&] {
      backend.linear(io.x.data(), rows, w.matrices[next++ % w.matrices.size()], nullptr, io.y.data());
    });
  }
  return seconds[key];
}

void report(benchmark::State& state, double weight_bytes, double seconds, double baseline_seconds,
            std::size_t copies) {
  state.counters["copies"] = static_cast<double>(copies);
  state.counters["x_f32"] = baseline_seconds / seconds;
  state.counters["weight_GBps"] = weight_bytes / seconds / 1e9;
  state.counters["x_stream"] = weight_bytes / seconds / 1e9 / stream_copy_gbps();
}

// args: input features k, output features n, rows m, bits, 2:4 sparse, int8 activations
void BM_QuantLinear(benchmark::State& state) {
  const std::int64_t k = state.range(0), n = state.range(1), rows = state.range(2);
  const int bits = static_cast<int>(state.range(3));
  const bool sparse = state.range(4) != 0;
  const bool int8_activations = state.range(5) != 0;
  CpuBackend backend(nibble::kernels::CpuBackendOptions{bench_threads(), int8_activations});
  if (int8_activations && !backend.int8_activations()) {
    state.SkipWithError("no AVX-512 VNNI on this CPU");
    return;
  }
  const QuantizedMatrix matrix = random_quantized(n, k, bits, 128, sparse);
  std::vector<std::shared_ptr<const LinearWeights>> copies{backend.prepare_linear(matrix)};
  const double bytes = static_cast<double>(copies[0]->resident_bytes());
  while (copies.size() < cold_copies(bytes)) copies.push_back(backend.prepare_linear(matrix));
  Inputs io(rows, n, k);
  std::size_t next = 0;
  const auto call = [&] { backend.linear(io.x.data(), rows, *copies[next++ % copies.size()], nullptr, io.y.data()); };
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(io.y.data());
  }
  const double seconds = seconds_per_call(call);
  report(state, bytes, seconds, f32_baseline(backend, n, k, rows), copies.size());
  if (int8_activations) {
    // The same weights with float activations, in this run: what the integer path buys.
    CpuBackend floats(bench_threads());
    const double float_seconds = seconds_per_call(
        [&] { floats.linear(io.x.data(), rows, *copies[next++ % copies.size()], nullptr, io.y.data()); });
    state.counters["x_float_act"] = float_seconds / seconds;
  }
  state.SetLabel(copies[0]->describe() + (int8_activations ? " int8 activations" : ""));
}

// GGUF types on SmolLM2-135M's shapes: Q4_0 / Q8_0 (unpacked into the packed INT4/INT8
// tiles) against Q4_K / Q6_K (kept as blocks, decoded in the kernel).
enum GgufBenchType { kQ4_0, kQ8_0, kQ4_K, kQ6_K, kQ5_0 };

QuantizedMatrix gguf_bench_matrix(std::int64_t n, std::int64_t k, int type) {
  if (type == kQ4_0 || type == kQ8_0) {
    // Q4_0 / Q8_0 load as 32-weight groups with an f16 scale and a zero point.
    return random_quantized(n, k, type == kQ4_0 ? 4 : 8, 32, false);
  }
  const nibble::BlockFormat format = type == kQ4_K   ? nibble::BlockFormat::Q4_K
                                     : type == kQ5_0 ? nibble::BlockFormat::Q5_0
                                                     : nibble::BlockFormat::Q6_K;
  const auto& info = nibble::block_format_info(format);
  QuantizedMatrix m;
  m.name = "bench";
  m.rows = n;
  m.cols = k;
  m.block_format = format;
  m.blocks.resize(static_cast<std::size_t>(n * (k / info.elements) * info.bytes));
  std::mt19937 rng(1);
  for (auto& byte : m.blocks) byte = static_cast<std::byte>(rng());
  // Sane fp16 scales (random bytes could be NaN): Q4_K d, dmin at 0, 2; Q5_0 d at 0; Q6_K d at 208.
  const std::uint16_t scale = nibble::f32_to_f16(0.01f);
  const std::vector<int> scale_at = type == kQ4_K ? std::vector<int>{0, 2} : type == kQ5_0 ? std::vector<int>{0} : std::vector<int>{208};
  for (std::size_t b = 0; b < m.blocks.size(); b += static_cast<std::size_t>(info.bytes)) {
    for (const int at : scale_at) {
      std::memcpy(m.blocks.data() + b + at, &scale, 2);
    }
  }
  m.stored_bytes = m.blocks.size();
  return m;
}

// args: input features k, output features n, rows m, GgufBenchType, int8 activations
void BM_GgufLinear(benchmark::State& state) {
  const std::int64_t k = state.range(0), n = state.range(1), rows = state.range(2);
  const bool int8_activations = state.range(4) != 0;
  CpuBackend backend(nibble::kernels::CpuBackendOptions{bench_threads(), int8_activations});
  if (int8_activations && !backend.int8_activations()) {
    state.SkipWithError("no AVX-512 VNNI on this CPU");
    return;
  }
  const QuantizedMatrix matrix = gguf_bench_matrix(n, k, static_cast<int>(state.range(3)));
  std::vector<std::shared_ptr<const LinearWeights>> copies{backend.prepare_linear(matrix)};
  const double bytes = static_cast<double>(copies[0]->resident_bytes());
  while (copies.size() < cold_copies(bytes)) copies.push_back(backend.prepare_linear(matrix));
  Inputs io(rows, n, k);
  std::size_t next = 0;
  const auto call = [&] { backend.linear(io.x.data(), rows, *copies[next++ % copies.size()], nullptr, io.y.data()); };
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(io.y.data());
  }
  const double seconds = seconds_per_call(call);
  report(state, bytes, seconds, f32_baseline(backend, n, k, rows), copies.size());
  // The same bytes, cold the same way, copied once: the floor for a kernel that reads them.
  std::vector<std::vector<char>> sources(copies.size(), std::vector<char>(static_cast<std::size_t>(bytes), 1));
  std::vector<char> target(static_cast<std::size_t>(bytes));
  std::size_t source = 0;
  const double copy_seconds = seconds_per_call([&] {
    std::memcpy(target.data(), sources[source++ % sources.size()].data(), target.size());
    benchmark::DoNotOptimize(target.data());
  });
  state.counters["x_copy"] = copy_seconds / seconds;
  state.counters["tokens_per_s"] = static_cast<double>(rows) / seconds;
  if (int8_activations) {
    // The same weights with float activations, in this run: what the integer path buys.
    CpuBackend floats(bench_threads());
    const double float_seconds = seconds_per_call(
        [&] { floats.linear(io.x.data(), rows, *copies[next++ % copies.size()], nullptr, io.y.data()); });
    state.counters["x_float_act"] = float_seconds / seconds;
  }
  state.SetLabel(copies[0]->describe() + (int8_activations ? " int8 activations" : ""));
}

// The f32 dense kernel itself, for its own GB/s next to the quantized ones.
void BM_F32Linear(benchmark::State& state) {
  const std::int64_t k = state.range(0), n = state.range(1), rows = state.range(2);
  CpuBackend backend(bench_threads());
  const F32Weights w(n, k);
  Inputs io(rows, n, k);
  std::size_t next = 0;
  const auto call = [&] {
    backend.linear(io.x.data(), rows, w.matrices[next++ % w.matrices.size()], nullptr, io.y.data());
  };
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(io.y.data());
  }
  report(state, static_cast<double>(n * k * 4), seconds_per_call(call), f32_baseline(backend, n, k, rows),
         w.matrices.size());
}

// CSR against the dense f16 kernel at a given density (percent), to place the
// backend's automatic switch (csr_density_threshold).
void BM_CsrVsDenseF16(benchmark::State& state) {
  const std::int64_t k = 4096, n = 4096, rows = state.range(1);
  const double density = static_cast<double>(state.range(0)) / 100.0;
  CpuBackend backend(bench_threads());
  std::mt19937 rng(3);
  std::bernoulli_distribution keep(density);
  const auto count = cold_copies(static_cast<double>(n * k) * sizeof(std::uint16_t));
  std::vector<std::uint16_t> pattern(static_cast<std::size_t>(n * k));
  for (auto& v : pattern) v = keep(rng) ? nibble::f32_to_f16(0.01f) : 0;
  std::vector<std::vector<std::uint16_t>> w(count, pattern);
  std::vector<Matrix> dense;
  std::vector<std::shared_ptr<const LinearWeights>> csr;
  for (auto& copy : w) {
    dense.push_back(Matrix{DType::F16, n, k, copy.data()});
    csr.push_back(backend.prepare_linear(dense.back(), SparseChoice::Sparse));
  }
  Inputs io(rows, n, k);
  std::size_t next = 0;
  const auto call = [&] { backend.linear(io.x.data(), rows, *csr[next++ % count], nullptr, io.y.data()); };
  const double dense_seconds = seconds_per_call(
      [&] { backend.linear(io.x.data(), rows, dense[next++ % count], nullptr, io.y.data()); });
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(io.y.data());
  }
  const double seconds = seconds_per_call(call);
  state.counters["x_dense_f16"] = dense_seconds / seconds;
  state.counters["weight_GBps"] = static_cast<double>(csr[0]->resident_bytes()) / seconds / 1e9;
  state.counters["copies"] = static_cast<double>(count);
}

// FP8 e4m3 with 128x128 block scales (DeepSeek-V3 / Qwen3-FP8), widened in the
// kernel, against INT8 g128 (packed integer tiles) and F16 dense weights of the same
// shape, all three timed in this run. args: input features k, output features n, rows m.
QuantizedMatrix random_fp8(std::int64_t n, std::int64_t k) {
  QuantizedMatrix m;
  m.name = "bench";
  m.rows = n;
  m.cols = k;
  m.bits = 8;
  m.code_dtype = nibble::DType::F8_E4M3;
  m.scale_dtype = nibble::DType::F32;
  m.groups = (k + 127) / 128;
  m.group_of_col = nibble::contiguous_groups(k, 128);
  std::mt19937 rng(5);
  m.codes.resize(static_cast<std::size_t>(n * k));
  for (auto& c : m.codes) c = static_cast<std::uint8_t>(rng() % 0x7e);  // finite, both signs below 0x7f
  m.scales.assign(static_cast<std::size_t>(n * m.groups), 1e-3f);
  return m;
}

template <typename Prepared>
double cold_seconds(CpuBackend& backend, const Prepared& copies, Inputs& io, std::int64_t rows) {
  std::size_t next = 0;
  return seconds_per_call([&] { backend.linear(io.x.data(), rows, *copies[next++ % copies.size()], nullptr, io.y.data()); });
}

void BM_Fp8Linear(benchmark::State& state) {
  const std::int64_t k = state.range(0), n = state.range(1), rows = state.range(2);
  CpuBackend backend(bench_threads());
  const auto prepare_copies = [&](const auto& source) {
    std::vector<std::shared_ptr<const LinearWeights>> copies{backend.prepare_linear(source)};
    const double bytes = static_cast<double>(copies[0]->resident_bytes());
    while (copies.size() < cold_copies(bytes)) copies.push_back(backend.prepare_linear(source));
    return copies;
  };
  const auto fp8 = prepare_copies(random_fp8(n, k));
  Inputs io(rows, n, k);
  std::size_t next = 0;
  for (auto _ : state) {
    backend.linear(io.x.data(), rows, *fp8[next++ % fp8.size()], nullptr, io.y.data());
    benchmark::DoNotOptimize(io.y.data());
  }
  const double seconds = cold_seconds(backend, fp8, io, rows);
  report(state, static_cast<double>(fp8[0]->resident_bytes()), seconds, f32_baseline(backend, n, k, rows), fp8.size());
  {
    const auto int8 = prepare_copies(random_quantized(n, k, 8, 128, false));
    state.counters["x_int8_g128"] = cold_seconds(backend, int8, io, rows) / seconds;
  }
  {
    std::vector<std::uint16_t> f16(static_cast<std::size_t>(n * k), nibble::f32_to_f16(0.01f));
    std::vector<std::vector<std::uint16_t>> sources(cold_copies(static_cast<double>(f16.size()) * 2), f16);
    std::vector<std::shared_ptr<const LinearWeights>> dense;
    for (const auto& source : sources) {
      dense.push_back(backend.prepare_linear(Matrix{nibble::DType::F16, n, k, source.data()}, nibble::kernels::SparseChoice::Dense));
    }
    state.counters["x_f16"] = cold_seconds(backend, dense, io, rows) / seconds;
  }
  state.SetLabel(fp8[0]->describe());
}

void Shapes(benchmark::internal::Benchmark* b, bool quant) {
  for (const auto& [k, n] : {std::pair<int, int>{4096, 4096}, {4096, 11008}, {11008, 4096}}) {
    for (const int rows : {1, 4, 16}) {
      if (quant) {
        b->Args({k, n, rows, 4, 0, 0});
      } else {
        b->Args({k, n, rows});
      }
    }
  }
}

BENCHMARK(BM_F32Linear)->Apply([](auto* b) { Shapes(b, false); })->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_QuantLinear)->Apply([](auto* b) { Shapes(b, true); })->Unit(benchmark::kMillisecond)->UseRealTime();
// 8-bit and 2:4-sparse 4-bit at the square shape.
BENCHMARK(BM_QuantLinear)
    ->Args({4096, 4096, 1, 8, 0, 0})
    ->Args({4096, 4096, 16, 8, 0, 0})
    ->Args({4096, 4096, 1, 4, 1, 0})
    ->Args({4096, 4096, 16, 4, 1, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Int8 activations on integer dot products (AVX-512 VNNI), 4- and 8-bit.
BENCHMARK(BM_QuantLinear)
    ->ArgsProduct({{4096}, {4096}, {1, 4, 16, 64}, {4, 8}, {0}, {1}})
    ->Args({4096, 11008, 16, 4, 0, 1})
    ->Args({11008, 4096, 16, 4, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// SmolLM2-135M's down_proj (1536 -> 576; its 576-wide inputs are not whole 256-weight
// K-quant blocks, which is why Q4_K_M files hold Q5_0/Q8_0 there) and SmolLM2-1.7B's
// gate/up (2048 -> 8192), whose weights do not fit the caches; decode (1) and a batch (16).
BENCHMARK(BM_GgufLinear)
    ->ArgsProduct({{1536}, {576}, {1, 16}, {kQ4_0, kQ8_0, kQ4_K, kQ6_K, kQ5_0}, {0, 1}})
    ->ArgsProduct({{2048}, {8192}, {1, 16}, {kQ4_0, kQ8_0, kQ4_K, kQ6_K, kQ5_0}, {0, 1}})
    ->ArgsProduct({{576}, {1536}, {1, 512}, {kQ5_0}, {0, 1}})          // SmolLM2 Q4_K_M's gate/up, decode and pp512
    ->ArgsProduct({{640}, {262144}, {1}, {kQ8_0}, {0, 1}})             // Gemma 3 270M's tied lm_head (Q8_0)
    // Gemma 3 270M Q4_K_M's gate/up at pp512 (640 inputs: two whole 256-input tiles
    // and a half one), against whole-tile widths, per input.
    ->ArgsProduct({{640, 768, 1024}, {2048}, {512}, {kQ5_0}, {1}})
    ->ArgsProduct({{1024}, {2048}, {512}, {kQ4_K}, {1}})
    ->ArgsProduct({{640}, {256}, {512}, {kQ8_0, kQ5_0}, {1}})        // Gemma's attn_v (Q8_0 in half the layers)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_Fp8Linear)
    ->ArgsProduct({{4096}, {4096}, {1, 16}})
    ->Args({7168, 2048, 1})  // DeepSeek-V3's expert gate/up (hidden 7168 -> moe_intermediate 2048)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CsrVsDenseF16)
    ->ArgsProduct({{5, 10, 20, 30, 50}, {1, 4}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("threads", std::to_string(bench_threads()));
  benchmark::AddCustomContext("stream_copy_GBps", std::to_string(stream_copy_gbps()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
