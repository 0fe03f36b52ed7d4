// The quantized GEMMs against cuBLAS FP16 measured in the same run, on the Llama
// shapes of issue 6, and a device-to-device copy as the bandwidth ceiling.
//
//   cuda_w4a16_bench [--out FILE.md] [--shapes 4096x4096,...] [--m 1,2,4,...] [--quick]
//
// Per shape (N outputs x K inputs) and M tokens: median time per launch of cuBLASLt
// fp16 (fp32 accumulation), W4A16 (int4 g128 asymmetric), W8A16, 2:4 + INT4 and
// GGUF Q4_K (super-blocks decoded in registers, kernels/cuda/kquant_layout.h),
// each the median of 7 batches of back-to-back launches timed with CUDA events,
// rotating over enough weight copies that the set is 4x the L2 (no cache reuse
// between launches). "floor" is the W4A16 bytes (weights, scales, x, y) over the
// measured copy bandwidth; "% copy" how close the kernel gets to it. "check":
// max |W4A16 - cuBLAS on the same dequantized fp16 weights| / max |cuBLAS| at M=16
// (and the same for Q4_K).
// Weights are random words in the kernel layout (valid 2:4 metadata): timing does
// not depend on their values, and the GPU tests cover correctness.
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cublas_linear.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/quant_gemm.h"

namespace {

using namespace nibble::kernels::cuda;
using nibble::DType;

constexpr int kThreads = 256;

__device__ __forceinline__ std::uint32_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return static_cast<std::uint32_t>(x ^ (x >> 31));
}

__global__ void __launch_bounds__(kThreads) fill_words(std::uint32_t* p, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    p[i] = mix(static_cast<std::uint64_t>(i) * 2654435761ull + seed);
  }
}

// 2:4 blobs: 64 code words, then 32 metadata words whose 4-bit fields are valid
// (two distinct positions, ascending).
__global__ void __launch_bounds__(kThreads) fill_sparse(std::uint32_t* p, std::int64_t n, std::uint32_t seed) {
  constexpr std::uint32_t kFields[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe};
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::uint32_t r = mix(static_cast<std::uint64_t>(i) * 2654435761ull + seed);
    if (i % 96 < 64) {
      p[i] = r;
    } else {
      std::uint32_t meta = 0;
      for (int f = 0; f < 8; ++f) meta |= kFields[(r >> (4 * f)) % 6] << (4 * f);
      p[i] = meta;
    }
  }
}

// K-quant sub-scale records: four random 6-bit values (sc, m, sc, m).
__global__ void __launch_bounds__(kThreads) fill_sub_scales(std::uint32_t* p, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    p[i] = mix(static_cast<std::uint64_t>(i) * 2654435761ull + seed) & 0x3f3f3f3fu;
  }
}

// Scale records: scale in [0.001, 0.011), zero point 8 (for Q4_K: d, and dmin 8).
__global__ void __launch_bounds__(kThreads) fill_records(std::uint32_t* p, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const float u = static_cast<float>(mix(static_cast<std::uint64_t>(i) + seed) >> 8) * (1.0f / 16777216.0f);
    p[i] = static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(0.001f + 0.01f * u))) |
           (static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(8.0f))) << 16);
  }
}

__global__ void __launch_bounds__(kThreads) fill_halves(std::uint16_t* p, std::int64_t n, std::uint32_t seed, float scale) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const float u = static_cast<float>(mix(static_cast<std::uint64_t>(i) + seed) >> 8) * (1.0f / 16777216.0f);
    p[i] = __half_as_ushort(__float2half_rn((u - 0.5f) * scale));
  }
}

unsigned grid(std::int64_t n) { return static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535)); }

struct Options {
  std::string out;
  std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{4096, 4096},  {4096, 11008}, {11008, 4096},
                                                               {8192, 8192},  {8192, 28672}, {28672, 8192}};
  std::vector<std::int64_t> ms = {1, 2, 4, 8, 16, 32, 64, 128};
  int samples = 7;
};

std::vector<std::int64_t> parse_list(const std::string& text) {
  std::vector<std::int64_t> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) values.push_back(std::stoll(item));
  return values;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--out") {
      o.out = value();
    } else if (arg == "--m") {
      o.ms = parse_list(value());
    } else if (arg == "--shapes") {
      o.shapes.clear();
      std::stringstream in(value());
      std::string item;
      while (std::getline(in, item, ',')) {
        const auto x = item.find('x');
        o.shapes.emplace_back(std::stoll(item.substr(0, x)), std::stoll(item.substr(x + 1)));
      }
    } else if (arg == "--quick") {
      o.shapes = {{4096, 4096}, {8192, 28672}};
      o.ms = {1, 16, 128};
      o.samples = 5;
    } else {
      throw std::runtime_error("unknown argument " + arg + " (--out FILE, --shapes NxK,..., --m 1,2,..., --quick)");
    }
  }
  return o;
}

class Timer {
 public:
  explicit Timer(cudaStream_t stream) : stream_(stream) {
    NIBBLE_CUDA_CHECK(cudaEventCreate(&start_));
    NIBBLE_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Timer() {
    static_cast<void>(cudaEventDestroy(start_));
    static_cast<void>(cudaEventDestroy(stop_));
  }
  // Median microseconds per call of launch(i) over `samples` batches of back-to-back calls.
  template <typename Launch>
  double per_call_us(const Launch& launch, int samples) {
    for (int i = 0; i < 3; ++i) launch(i);  // warm-up: module load, handles, heuristics
    NIBBLE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const double single = batch_ms(launch, 1);
    const int calls = static_cast<int>(std::clamp(3.0 / std::max(single, 1e-3), 10.0, 2000.0));  // ~3 ms batches
    std::vector<double> times;
    for (int s = 0; s < samples; ++s) times.push_back(batch_ms(launch, calls) * 1000.0 / calls);
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  template <typename Launch>
  double batch_ms(const Launch& launch, int calls) {
    NIBBLE_CUDA_CHECK(cudaEventRecord(start_, stream_));
    for (int i = 0; i < calls; ++i) launch(i);
    NIBBLE_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    NIBBLE_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    NIBBLE_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

struct QuantSet {
  QuantLayoutDims dims;
  std::vector<DeviceBuffer<std::uint32_t>> weights;
  std::vector<DeviceBuffer<std::uint32_t>> scales;
  std::vector<DeviceBuffer<std::uint32_t>> sub_scales;  // Q4K only
  std::uint64_t bytes_per_copy = 0;
};

QuantSet make_quant(QuantFormat format, std::int64_t n, std::int64_t k, std::uint64_t rotate_bytes, cudaStream_t stream) {
  QuantSet set;
  QuantLayoutDims& d = set.dims;
  d.format = format;
  d.rows = n;
  d.cols = k;
  d.n_pad = (n + layout::kBlockN - 1) / layout::kBlockN * layout::kBlockN;
  d.k_pad = (k + layout::kChunkK - 1) / layout::kChunkK * layout::kChunkK;
  const bool kquant = format == QuantFormat::Q4K;  // groups are 256-column super-blocks
  d.groups = kquant ? k / 256 : (k + 127) / 128;
  d.source_bits = format == QuantFormat::Dense8 ? 8 : 4;
  const std::int64_t words = d.n_tiles() * d.k_chunks() * d.blob_words();
  const std::int64_t records = d.groups * d.n_pad;
  const std::int64_t sub_records = kquant ? d.k_chunks() * d.n_pad : 0;
  set.bytes_per_copy = static_cast<std::uint64_t>(words + records + sub_records) * 4;
  const std::uint64_t copies = std::max<std::uint64_t>(1, (rotate_bytes + set.bytes_per_copy - 1) / set.bytes_per_copy);
  for (std::uint64_t c = 0; c < copies; ++c) {
    set.weights.emplace_back(static_cast<std::size_t>(words));
    set.scales.emplace_back(static_cast<std::size_t>(records));
    const auto seed = static_cast<std::uint32_t>(c * 7919 + static_cast<std::uint64_t>(format) * 104729);
    if (format == QuantFormat::Sparse4) {
      fill_sparse<<<grid(words), kThreads, 0, stream>>>(set.weights.back().data(), words, seed);
    } else {
      fill_words<<<grid(words), kThreads, 0, stream>>>(set.weights.back().data(), words, seed);
    }
    NIBBLE_CUDA_CHECK_LAUNCH(stream, "fill weights");
    fill_records<<<grid(records), kThreads, 0, stream>>>(set.scales.back().data(), records, seed + 1);
    NIBBLE_CUDA_CHECK_LAUNCH(stream, "fill records");
    if (kquant) {
      set.sub_scales.emplace_back(static_cast<std::size_t>(sub_records));
      fill_sub_scales<<<grid(sub_records), kThreads, 0, stream>>>(set.sub_scales.back().data(), sub_records, seed + 2);
      NIBBLE_CUDA_CHECK_LAUNCH(stream, "fill sub-scales");
    }
  }
  return set;
}

std::string now() {
  const std::time_t t = std::time(nullptr);
  char text[64];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return text;
}

std::string fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

int run(const Options& options) {
  int device = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp props{};
  NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  cudaStream_t stream = nullptr;
  NIBBLE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Timer timer(stream);
  const std::uint64_t rotate_bytes = std::max<std::uint64_t>(4ull * static_cast<std::uint64_t>(props.l2CacheSize), 64ull << 20);

  // Copy bandwidth: 1 GiB device to device, counting bytes read plus written.
  double copy_gbps = 0;
  {
    const std::size_t bytes = std::size_t{1} << 30;
    DeviceBuffer<std::byte> a(bytes);
    DeviceBuffer<std::byte> b(bytes);
    a.fill_bytes(1, stream);
    const double us = timer.per_call_us(
        [&](int) { NIBBLE_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream)); },
        options.samples);
    copy_gbps = 2.0 * static_cast<double>(bytes) / (us * 1e3);
  }

  std::ostringstream md;
  md << "# CUDA quantized GEMM benchmark\n\n"
     << "- device: " << props.name << " (sm_" << props.major << props.minor << ", " << props.multiProcessorCount
     << " SMs, L2 " << props.l2CacheSize / (1 << 20) << " MiB)\n"
     << "- date: " << now() << "\n"
     << "- copy bandwidth (cudaMemcpy D2D, read + write): " << fixed(copy_gbps, 0) << " GB/s\n"
     << "- weights: int4 / int8 group 128 asymmetric, 2:4 int4 group 128, GGUF Q4_K super-blocks; activations fp16, "
        "outputs fp32; cuBLASLt fp16 with fp32 accumulation as the baseline\n"
     << "- goals (issue 6): W4A16 >= 3.5x cuBLAS at M <= 16; 2:4 + INT4 >= 5x\n\n"
     << "| N x K | M | cuBLAS fp16 us | W4A16 us | W4A16 x | W8A16 us | W8A16 x | 2:4 INT4 us | 2:4 x | Q4_K us | Q4_K x "
        "| W4A16 floor us | W4A16 % copy | check W4A16 / Q4_K |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("copy bandwidth %.0f GB/s\n", copy_gbps);

  CublasLtLinear cublas;
  const std::int64_t max_m = *std::max_element(options.ms.begin(), options.ms.end());
  for (const auto& [n, k] : options.shapes) {
    std::fflush(stdout);
    // fp16 weights for cuBLAS, rotated like the quantized ones.
    const std::uint64_t dense_bytes = static_cast<std::uint64_t>(n * k) * 2;
    const std::uint64_t dense_copies = std::max<std::uint64_t>(1, (rotate_bytes + dense_bytes - 1) / dense_bytes);
    std::vector<DeviceBuffer<std::uint16_t>> dense;
    for (std::uint64_t c = 0; c < dense_copies; ++c) {
      dense.emplace_back(static_cast<std::size_t>(n * k));
      fill_halves<<<grid(n * k), kThreads, 0, stream>>>(dense.back().data(), n * k, static_cast<std::uint32_t>(c), 0.05f);
      NIBBLE_CUDA_CHECK_LAUNCH(stream, "fill fp16 weights");
    }
    QuantSet q4 = make_quant(QuantFormat::Dense4, n, k, rotate_bytes, stream);
    QuantSet q8 = make_quant(QuantFormat::Dense8, n, k, rotate_bytes, stream);
    QuantSet sp = make_quant(QuantFormat::Sparse4, n, k, rotate_bytes, stream);
    QuantSet qk = make_quant(QuantFormat::Q4K, n, k, rotate_bytes, stream);
    std::vector<std::int32_t> groups(static_cast<std::size_t>(q4.dims.k_tiles()));
    for (std::size_t t = 0; t < groups.size(); ++t) groups[t] = static_cast<std::int32_t>(t * 16 / 128);
    DeviceBuffer<std::int32_t> tile_group(groups.size());
    tile_group.upload(groups, stream);
    for (std::size_t t = 0; t < groups.size(); ++t) groups[t] = static_cast<std::int32_t>(t * 16 / 256);
    DeviceBuffer<std::int32_t> tile_super_block(groups.size());
    tile_super_block.upload(groups, stream);
    // The view of copy c of a set (K-quants: super-block tile groups and sub-scales).
    const auto view_of = [&](QuantSet& set, std::size_t c) {
      const bool kquant = !set.sub_scales.empty();
      return QuantWeightsView{set.dims, set.weights[c].data(), set.scales[c].data(),
                              kquant ? tile_super_block.data() : tile_group.data(), nullptr,
                              kquant ? set.sub_scales[c].data() : nullptr};
    };
    DeviceBuffer<std::uint16_t> x(static_cast<std::size_t>(max_m * q4.dims.k_pad));
    fill_halves<<<grid(max_m * q4.dims.k_pad), kThreads, 0, stream>>>(x.data(), max_m * q4.dims.k_pad, 99, 2.0f);
    NIBBLE_CUDA_CHECK_LAUNCH(stream, "fill activations");
    DeviceBuffer<float> y(static_cast<std::size_t>(max_m * n));
    DeviceBuffer<float> workspace(std::size_t{16} << 20);
    DeviceBuffer<int> counters(1 << 16);
    counters.fill_bytes(0, stream);

    const auto quant_call = [&](QuantSet& set, std::int64_t m) {
      const int blocks = quant_gemm_blocks_per_sm(set.dims.format, quant_gemm_m_tiles(m));
      const QuantGemmPlan plan = plan_quant_gemm(m, set.dims, props.multiProcessorCount, blocks,
                                                 static_cast<std::int64_t>(workspace.size()));
      if (plan.counters > static_cast<std::int64_t>(counters.size())) throw std::runtime_error("too many split counters");
      return [&set, plan, m, &x, &y, &workspace, &counters, &view_of, stream](int i) {
        const std::size_t c = static_cast<std::size_t>(i) % set.weights.size();
        const QuantWeightsView view = view_of(set, c);
        quant_gemm(plan, view, x.data(), set.dims.k_pad, m, y.data(), set.dims.rows, nullptr, workspace.data(),
                   counters.data(), stream);
      };
    };

    // Correctness on this shape: the kernel against cuBLAS on its own weights, dequantized.
    const auto check_set = [&](QuantSet& set) -> std::string {
      const std::int64_t m = std::min<std::int64_t>(16, max_m);
      quant_call(set, m)(0);
      std::vector<float> mine(static_cast<std::size_t>(m * n));
      y.download(mine, stream);
      std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
      for (std::int64_t r = 0; r < n; ++r) ids[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(r);
      DeviceBuffer<std::int32_t> ids_d(ids.size());
      ids_d.upload(ids, stream);
      DeviceBuffer<float> w_float(static_cast<std::size_t>(n * k));
      dequantize_rows(view_of(set, 0), ids_d.data(), n, w_float.data(), stream);
      convert_to_half(w_float.data(), n * k, dense[0].data(), false, stream);
      cublas.run(dense[0].data(), DType::F16, n, k, x.data(), m, y.data(), n, stream);
      std::vector<float> reference(mine.size());
      y.download(reference, stream);
      NIBBLE_CUDA_CHECK(cudaStreamSynchronize(stream));
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < mine.size(); ++i) {
        diff = std::max(diff, std::isfinite(mine[i]) ? std::abs(static_cast<double>(mine[i]) - reference[i]) : INFINITY);
        scale = std::max(scale, std::abs(static_cast<double>(reference[i])));
      }
      return scale > 0 ? fixed(diff / scale * 1e6, 1) + "e-6" : "n/a";
    };
    const std::string check = check_set(q4) + " / " + check_set(qk);

    for (const std::int64_t m : options.ms) {
      const double t_cublas = timer.per_call_us(
          [&](int i) {
            cublas.run(dense[static_cast<std::size_t>(i) % dense.size()].data(), DType::F16, n, k, x.data(), m, y.data(), n,
                       stream);
          },
          options.samples);
      const double t4 = timer.per_call_us(quant_call(q4, m), options.samples);
      const double t8 = timer.per_call_us(quant_call(q8, m), options.samples);
      const double ts = timer.per_call_us(quant_call(sp, m), options.samples);
      const double tk = timer.per_call_us(quant_call(qk, m), options.samples);
      const double bytes4 = static_cast<double>(q4.bytes_per_copy) + static_cast<double>(m * k) * 2 + static_cast<double>(m * n) * 4;
      const double floor_us = bytes4 / (copy_gbps * 1e3);
      const double share = floor_us / t4 * 100.0;
      md << "| " << n << " x " << k << " | " << m << " | " << fixed(t_cublas, 1) << " | " << fixed(t4, 1) << " | "
         << fixed(t_cublas / t4, 2) << " | " << fixed(t8, 1) << " | " << fixed(t_cublas / t8, 2) << " | " << fixed(ts, 1)
         << " | " << fixed(t_cublas / ts, 2) << " | " << fixed(tk, 1) << " | " << fixed(t_cublas / tk, 2) << " | "
         << fixed(floor_us, 1) << " | " << fixed(share, 0) << " | "
         << (m == options.ms.front() ? check : "") << " |\n";
      std::printf("%6lld x %-6lld M %4lld  cublas %8.1f us  w4a16 %8.1f us (%.2fx)  w8a16 %8.1f us (%.2fx)  2:4 %8.1f us (%.2fx)  q4_k %8.1f us (%.2fx)  %3.0f%% of copy bw\n",
                  static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m), t_cublas, t4,
                  t_cublas / t4, t8, t_cublas / t8, ts, t_cublas / ts, tk, t_cublas / tk, share);
    }
  }
  NIBBLE_CUDA_CHECK(cudaStreamDestroy(stream));
  const std::string report = md.str();
  std::printf("\n%s", report.c_str());
  if (!options.out.empty()) {
    std::ofstream file(options.out);
    file << report;
    if (!file) throw std::runtime_error("cannot write " + options.out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      std::fprintf(stderr, "cuda_w4a16_bench: no CUDA device\n");
      return 77;
    }
    return run(options);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "cuda_w4a16_bench: %s\n", error.what());
    return 1;
  }
}
