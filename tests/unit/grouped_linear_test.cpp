// Backend::grouped_linear on the CPU backend: several linear layers over their own
// rows in one call (a mixture's experts) give bit for bit what one linear() call
// per layer gives, for every weight format (dense f32/f16/bf16, CSR, 3/4/8-bit
// groups with and without act-order, 2:4-sparse 4-bit, GGUF Q4_K and Q5_0 blocks,
// FP8 128x128 blocks), on every ISA, with and without int8 activations, 1 and 3
// threads, with formats mixed in one call and layers that get no rows (which must
// leave their outputs untouched).
#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "common/half.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"
#include "random_moe_weights.h"
#include "random_quantized.h"

namespace nibble::kernels {
namespace {

using testing::IsaGuard;
using testing::random_floats;
using testing::supported_isas;

constexpr std::int64_t kOut = 100;  // 3 whole tiles of 32 columns and a ragged one
constexpr std::int64_t kIn = 512;
constexpr int kExperts = 8;

// One weight format: makes a layer's prepared weights on `backend`; dense data
// lives in `store` for as long as the test.
struct Format {
  std::string name;
  std::function<std::unique_ptr<LinearWeights>(CpuBackend&, std::mt19937&, std::deque<std::vector<std::byte>>&)> make;
};

std::unique_ptr<LinearWeights> dense(CpuBackend& backend, std::mt19937& rng, std::deque<std::vector<std::byte>>& store,
                                     DType dtype, SparseChoice sparse, double zero_fraction) {
  std::vector<float> values = random_floats(rng, static_cast<std::size_t>(kOut * kIn), 0.05f);
  std::bernoulli_distribution zero(zero_fraction);
  for (auto& v : values) v = zero(rng) ? 0.0f : v;
  auto& bytes = store.emplace_back(values.size() * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    const std::uint16_t half = dtype == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
    if (dtype != DType::F32) std::memcpy(bytes.data() + 2 * i, &half, 2);
  }
  return backend.prepare_linear(Matrix{dtype, kOut, kIn, bytes.data()}, sparse);
}

QuantizedMatrix fp8_blocks(std::mt19937& rng) {
  QuantizedMatrix m;
  m.name = "fp8";
  m.rows = kOut;
  m.cols = kIn;
  m.bits = 8;
  m.code_dtype = DType::F8_E4M3;
  m.scale_dtype = DType::F32;
  m.groups = kIn / 128;
  m.group_of_col = contiguous_groups(kIn, 128);
  std::uniform_real_distribution<float> scale(0.5e-3f, 2e-3f);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<float> grid(static_cast<std::size_t>((kOut + 127) / 128 * m.groups));
  for (auto& s : grid) s = scale(rng);
  for (std::int64_t n = 0; n < kOut; ++n) {
    for (std::int64_t g = 0; g < m.groups; ++g) m.scales.push_back(grid[static_cast<std::size_t>(n / 128 * m.groups + g)]);
    for (std::int64_t k = 0; k < kIn; ++k) {
      auto code = static_cast<std::uint8_t>(byte(rng));
      if ((code & 0x7f) == 0x7f) code = 0;  // no NaN codes
      m.codes.push_back(code);
    }
  }
  m.stored_bytes = static_cast<std::uint64_t>(kOut * kIn) + grid.size() * 4;
  return m;
}

std::vector<Format> formats() {
  using Store = std::deque<std::vector<std::byte>>;
  const auto quantized = [](testing::QuantCase c) {
    return [c](CpuBackend& backend, std::mt19937& rng, Store&) {
      return backend.prepare_linear(testing::random_quantized(rng, c));
    };
  };
  return {
      {"f32", [](CpuBackend& b, std::mt19937& rng, Store& s) { return dense(b, rng, s, DType::F32, SparseChoice::Dense, 0); }},
      {"f16", [](CpuBackend& b, std::mt19937& rng, Store& s) { return dense(b, rng, s, DType::F16, SparseChoice::Dense, 0); }},
      {"bf16", [](CpuBackend& b, std::mt19937& rng, Store& s) { return dense(b, rng, s, DType::BF16, SparseChoice::Dense, 0); }},
      {"csr f16", [](CpuBackend& b, std::mt19937& rng, Store& s) { return dense(b, rng, s, DType::F16, SparseChoice::Sparse, 0.9); }},
      {"int4 g128", quantized({kOut, kIn, 4, 128})},
      {"int4 g128 act-order", quantized({kOut, kIn, 4, 128, true})},
      {"int8 g64", quantized({kOut, kIn, 8, 64})},
      {"int3 g128", quantized({kOut, kIn, 3, 128})},
      {"int4 2:4", quantized({kOut, kIn, 4, 128, false, false, QuantizedMatrix::Offset::ZeroPoint, DType::F16, true})},
      {"q4_k", [](CpuBackend& b, std::mt19937& rng, Store&) { return b.prepare_linear(testing::random_blocks(rng, kOut, kIn)); }},
      {"q5_0", [](CpuBackend& b, std::mt19937& rng, Store&) { return b.prepare_linear(testing::random_blocks(rng, kOut, 96)); }},
      {"fp8 128x128", [](CpuBackend& b, std::mt19937& rng, Store&) { return b.prepare_linear(fp8_blocks(rng)); }},
  };
}

// Rows per expert when `tokens` tokens each pick 2 of the first 6 experts (the
// last two never get any).
std::vector<std::int64_t> routed_rows(std::mt19937& rng, std::int64_t tokens) {
  std::vector<std::int64_t> rows(kExperts, 0);
  std::uniform_int_distribution<int> pick(0, kExperts - 3);
  for (std::int64_t t = 0; t < tokens; ++t) {
    const int a = pick(rng);
    int b = pick(rng);
    while (b == a) b = pick(rng);
    ++rows[static_cast<std::size_t>(a)];
    ++rows[static_cast<std::size_t>(b)];
  }
  return rows;
}

// The layers `weights` over `rows[i]` random rows each, grouped and one by one:
// every output bit for bit the same; a layer with no rows keeps its output.
void expect_grouped_equals_sequential(CpuBackend& backend, std::span<const std::unique_ptr<LinearWeights>> weights,
                                      std::span<const std::int64_t> rows, std::mt19937& rng, const std::string& what) {
  std::vector<std::vector<float>> x, grouped, sequential;
  std::vector<GroupedLinearJob> jobs;
  constexpr float kUntouched = 12345.0f;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const LinearWeights& w = *weights[i];
    // Room for one row even when there are none, to see that it stays untouched.
    const std::int64_t room = std::max<std::int64_t>(rows[i], 1);
    x.push_back(random_floats(rng, static_cast<std::size_t>(room * w.cols())));
    grouped.emplace_back(static_cast<std::size_t>(room * w.rows()), kUntouched);
    sequential.emplace_back(static_cast<std::size_t>(room * w.rows()), kUntouched);
  }
  for (std::size_t i = 0; i < weights.size(); ++i) {
    jobs.push_back({weights[i].get(), x[i].data(), rows[i], nullptr, grouped[i].data()});
    if (rows[i] > 0) backend.linear(x[i].data(), rows[i], *weights[i], nullptr, sequential[i].data());
  }
  backend.grouped_linear(jobs);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    EXPECT_EQ(std::memcmp(grouped[i].data(), sequential[i].data(), grouped[i].size() * sizeof(float)), 0)
        << what << ", layer " << i << " (" << weights[i]->describe() << ", " << rows[i] << " rows)";
    if (rows[i] == 0) {
      EXPECT_EQ(grouped[i].front(), kUntouched) << what << ", layer " << i << " had no rows";
    }
  }
}

struct Setting {
  cpu::Isa isa;
  bool int8;
  int threads;
  std::string name() const {
    return fmt::format("{}{} {} threads", cpu::isa_name(isa), int8 ? " int8" : "", threads);
  }
};

std::vector<Setting> settings() {
  std::vector<Setting> out;
  for (const cpu::Isa isa : supported_isas()) {
    for (const int threads : {1, 3}) {
      out.push_back({isa, false, threads});
      // int8 activations run only where the CPU has VNNI (and on its widest ISA).
      if (isa == cpu::Isa::Avx512 && CpuBackend::int8_activations_supported()) out.push_back({isa, true, threads});
    }
  }
  return out;
}

TEST(GroupedLinear, EqualsOneLinearCallPerLayerBitForBitInEveryFormat) {
  IsaGuard guard;
  std::mt19937 rng(18);
  for (const Setting& setting : settings()) {
    cpu::set_active_isa(setting.isa);
    CpuBackend backend(CpuBackendOptions{setting.threads, setting.int8});
    for (const Format& format : formats()) {
      std::deque<std::vector<std::byte>> store;
      std::vector<std::unique_ptr<LinearWeights>> experts;
      for (int e = 0; e < kExperts; ++e) experts.push_back(format.make(backend, rng, store));
      for (const std::int64_t tokens : {1, 3, 16, 64}) {
        const auto rows = routed_rows(rng, tokens);
        expect_grouped_equals_sequential(backend, experts, rows, rng,
                                         fmt::format("{}, {}, {} tokens", setting.name(), format.name, tokens));
      }
    }
  }
}

TEST(GroupedLinear, MixesFormatsInOneCall) {
  IsaGuard guard;
  std::mt19937 rng(19);
  for (const Setting& setting : settings()) {
    cpu::set_active_isa(setting.isa);
    CpuBackend backend(CpuBackendOptions{setting.threads, setting.int8});
    std::deque<std::vector<std::byte>> store;
    std::vector<std::unique_ptr<LinearWeights>> layers;
    for (const Format& format : formats()) layers.push_back(format.make(backend, rng, store));
    for (const std::int64_t tokens : {1, 3, 16, 64}) {
      std::vector<std::int64_t> rows(layers.size());
      std::uniform_int_distribution<std::int64_t> count(0, tokens);
      for (auto& r : rows) r = count(rng);
      rows[1] = 0;  // always one layer without rows
      expect_grouped_equals_sequential(backend, layers, rows, rng, fmt::format("{}, {} tokens", setting.name(), tokens));
    }
  }
}

TEST(GroupedLinear, NoJobsOrNoRowsIsANoOp) {
  CpuBackend backend(2);
  backend.grouped_linear({});
  std::mt19937 rng(20);
  std::deque<std::vector<std::byte>> store;
  const auto w = dense(backend, rng, store, DType::F32, SparseChoice::Dense, 0);
  std::vector<float> y(kOut, 7.0f);
  const GroupedLinearJob job{w.get(), nullptr, 0, nullptr, y.data()};
  backend.grouped_linear(std::span(&job, 1));
  EXPECT_EQ(y, std::vector<float>(kOut, 7.0f));
}

}  // namespace
}  // namespace nibble::kernels
