// The engine reaches memory and compute only through kernels::Backend: a fake
// backend that owns every byte the model computes on (its allocations and copies
// of every upload, like a GPU's memory) and records every op runs whole steps of
// stories260K. Every pointer an op receives must lie in memory it handed out, the
// KV cache must be written only by its kv_store, and the logits must equal a plain
// CPU run bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/decoder_model.h"
#include "kernels/cpu/cpu_backend.h"
#include "model_steps.h"
#include "stories_model.h"

namespace nibble::engine {
namespace {

class RecordingBackend final : public kernels::Backend {
 public:
  std::map<std::string, int> ops;   // op name -> calls
  std::vector<std::string> strays;  // pointers outside this backend's memory, by op

  std::string name() const override { return "recording"; }
  kernels::Device device() const override { return {kernels::DeviceKind::Cuda, 7}; }  // not the host's

  kernels::Buffer allocate(DType dtype, std::vector<std::int64_t> shape) override {
    ++ops["allocate"];
    return remember(inner_.allocate(dtype, std::move(shape)));
  }
  kernels::Buffer upload(const void* host, DType dtype, std::vector<std::int64_t> shape,
                         std::shared_ptr<const void>) override {
    ++ops["upload"];
    kernels::Buffer copy = inner_.allocate(dtype, std::move(shape));
    std::memcpy(copy.raw(), host, copy.bytes());
    return remember(std::move(copy));
  }
  void download(const kernels::Buffer& source, std::size_t offset, std::size_t bytes, void* host) override {
    ++ops["download"];
    check("download", source.data<const void>());
    inner_.download(source, offset, bytes, host);
  }
  void kv_store(kernels::KvPool& pool, std::int64_t layer, std::span<const std::int32_t> table, std::int64_t start,
                std::int64_t rows, const float* keys, const float* values) override {
    ++ops["kv_store"];
    check("kv_store", keys, values, pool.keys.data<const void>(), pool.values.data<const void>());
    inner_.kv_store(pool, layer, table, start, rows, keys, values);
  }
  void kv_copy_block(kernels::KvPool& pool, std::int32_t from, std::int32_t to, std::int32_t tokens) override {
    ++ops["kv_copy_block"];
    inner_.kv_copy_block(pool, from, to, tokens);
  }
  std::unique_ptr<kernels::LinearWeights> prepare_linear(const kernels::Matrix& dense,
                                                         kernels::SparseChoice sparse) override {
    ++ops["prepare_linear"];
    return inner_.prepare_linear(dense, sparse);
  }
  std::unique_ptr<kernels::LinearWeights> prepare_linear(const QuantizedMatrix& quantized) override {
    ++ops["prepare_linear"];
    return inner_.prepare_linear(quantized);
  }
  void linear(const float* x, std::int64_t rows, const kernels::LinearWeights& w, const float* bias,
              float* y) override {
    ++ops["linear"];
    check("linear", x, y, bias);
    inner_.linear(x, rows, w, bias, y);
  }
  void linear(const float* x, std::int64_t rows, const kernels::Matrix& w, const float* bias, float* y) override {
    ++ops["linear(matrix)"];
    check("linear(matrix)", x, y, bias);
    inner_.linear(x, rows, w, bias, y);
  }
  void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                float* y) override {
    ++ops["rms_norm"];
    check("rms_norm", x, y, weight);
    inner_.rms_norm(x, rows, dim, weight, eps, y);
  }
  void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
            std::span<const std::int32_t> positions, std::span<const float> inv_freq, float scale,
            kernels::RopePairs pairs = kernels::RopePairs::Halves) override {
    ++ops["rope"];
    check("rope", x);
    inner_.rope(x, rows, heads, head_dim, positions, inv_freq, scale, pairs);
  }
  void attention(const float* q, std::int64_t rows, std::span<const std::int32_t> positions,
                 const kernels::KvLayerView& kv, const kernels::AttentionShape& shape, float* out) override {
    ++ops["attention"];
    check("attention", q, out, kv.keys, kv.values);
    inner_.attention(q, rows, positions, kv, shape, out);
  }
  void attention_batch(std::span<const kernels::AttentionSegment> segments,
                       const kernels::AttentionShape& shape) override {
    ++ops["attention_batch"];
    for (const auto& segment : segments) check("attention_batch", segment.q, segment.out, segment.kv.keys, segment.kv.values);
    inner_.attention_batch(segments, shape);
  }
  void copy_columns(const float* x, std::int64_t rows, std::int64_t x_width, std::int64_t x_first, std::int64_t width,
                    float* out, std::int64_t out_width, std::int64_t out_first) override {
    ++ops["copy_columns"];
    check("copy_columns", x, out);
    inner_.copy_columns(x, rows, x_width, x_first, width, out, out_width, out_first);
  }
  void head_linear(const float* x, kernels::HeadStrides xs, std::int64_t rows, std::int64_t heads,
                   const kernels::Matrix& w, float* y, kernels::HeadStrides ys) override {
    ++ops["head_linear"];
    check("head_linear", x, y, w.data);
    inner_.head_linear(x, xs, rows, heads, w, y, ys);
  }
  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    ++ops["swiglu"];
    check("swiglu", gate, up, out);
    inner_.swiglu(gate, up, n, out);
  }
  void geglu_tanh(const float* gate, const float* up, std::int64_t n, float* out) override {
    ++ops["geglu_tanh"];
    check("geglu_tanh", gate, up, out);
    inner_.geglu_tanh(gate, up, n, out);
  }
  void scale(float* x, std::int64_t n, float factor) override {
    ++ops["scale"];
    check("scale", x);
    inner_.scale(x, n, factor);
  }
  void soft_cap(float* x, std::int64_t n, float cap) override {
    ++ops["soft_cap"];
    check("soft_cap", x);
    inner_.soft_cap(x, n, cap);
  }
  void add(const float* x, std::int64_t n, float* y) override {
    ++ops["add"];
    check("add", x, y);
    inner_.add(x, n, y);
  }
  void embedding(const kernels::Matrix& table, std::span<const std::int32_t> ids, float* out) override {
    ++ops["embedding(matrix)"];
    check("embedding", out);
    inner_.embedding(table, ids, out);
  }
  void embedding(const kernels::LinearWeights& table, std::span<const std::int32_t> ids, float* out) override {
    ++ops["embedding"];
    check("embedding", out);
    inner_.embedding(table, ids, out);
  }

 private:
  kernels::Buffer remember(kernels::Buffer buffer) {
    ranges_.push_back({buffer.data<const std::byte>(), buffer.data<const std::byte>() + buffer.bytes()});
    kept_.push_back(buffer);  // a freed range may be reused by a later allocation; keep them all
    return buffer;
  }
  bool mine(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    return std::ranges::any_of(ranges_, [b](const auto& range) { return b >= range.first && b < range.second; });
  }
  template <typename... Pointers>
  void check(const char* op, const Pointers*... pointers) {
    for (const void* p : {static_cast<const void*>(pointers)...}) {
      if (p != nullptr && !mine(p)) strays.push_back(op);
    }
  }

  void gather_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids, float* out) override {
    ++ops["gather_rows"];
    check("gather_rows", x, out);
    inner_.gather_rows(x, width, ids, out);
  }
  void scatter_add_rows(const float* x, std::int64_t width, std::span<const std::int32_t> ids,
                        std::span<const float> weights, float* y) override {
    ++ops["scatter_add_rows"];
    check("scatter_add_rows", x, y);
    inner_.scatter_add_rows(x, width, ids, weights, y);
  }
  void fill_zero(float* x, std::int64_t n) override {
    ++ops["fill_zero"];
    check("fill_zero", x);
    inner_.fill_zero(x, n);
  }

  kernels::CpuBackend inner_{1};
  std::vector<std::pair<const std::byte*, const std::byte*>> ranges_;
  std::vector<kernels::Buffer> kept_;
};

TEST(BackendSeam, AWholeModelRunsOnlyOnMemoryAndOpsOfItsBackend) {
  testing::TempDir dir;
  const ModelSource source = testing::StoriesModel::convert_and_open(dir);
  RecordingBackend recording;
  DecoderModel model(source, recording);
  const auto ops_after_load = recording.ops;
  const auto got = testing::run_model_steps(model);

  EXPECT_TRUE(recording.strays.empty()) << recording.strays.size() << " pointers outside the backend's memory, first in "
                                        << recording.strays.front();
  const auto layers = source.config.num_layers;
  // Per step: each sequence stores its keys/values once per layer, all attend in one call per layer.
  const int steps = 1 + testing::kDecodeSteps;
  EXPECT_EQ(recording.ops["kv_store"], steps * 2 * layers);
  EXPECT_EQ(recording.ops["attention_batch"], steps * layers);
  EXPECT_EQ(recording.ops["download"], steps) << "logits come back once per step";
  EXPECT_GT(ops_after_load.at("upload"), 0) << "norm weights live in the backend's memory";

  // The same steps on the plain CPU backend, whose memory the host reads directly.
  kernels::CpuBackend cpu(1);
  DecoderModel reference(source, cpu);
  const auto want = testing::run_model_steps(reference);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t step = 0; step < got.size(); ++step) {
    EXPECT_EQ(got[step], want[step]) << "step " << step;
  }
}

TEST(BackendSeam, AStepAllocatesNothingOnceItsWorkspaceHasGrown) {
  testing::TempDir dir;
  const ModelSource source = testing::StoriesModel::convert_and_open(dir);
  RecordingBackend recording;
  DecoderModel model(source, recording);
  testing::run_model_steps(model);
  const int allocations = recording.ops["allocate"];
  PagedKvCache cache = model.make_kv_cache(16, 4);
  const int with_cache = recording.ops["allocate"];
  EXPECT_GT(with_cache, allocations) << "the KV pool is the backend's memory";
  const std::vector<TokenId> tokens{1, 5, 9};
  const std::vector<std::int32_t> table{2};
  std::vector<float> logits(static_cast<std::size_t>(model.vocab_size()));
  const BatchEntry entry{tokens, 0, table, Logits::LastRow};
  model.forward_batch(std::span(&entry, 1), cache, logits);
  EXPECT_EQ(recording.ops["allocate"], with_cache) << "a step no larger than earlier ones allocates nothing";
}

}  // namespace
}  // namespace nibble::engine
