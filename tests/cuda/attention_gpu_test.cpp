// Paged attention on the GPU against kernels::reference::attention (float64) on
// fresh random caches: shuffled block tables, contiguous caches, padded row
// strides, float32 and int8 caches, GQA groups from 1 to 20 query heads per kv
// head, head_dim 64..256, sliding windows, decode (one row, long context, split
// over position ranges and merged) and prefill (many rows), NaN-poisoned outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "common/error.h"
#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/reference.h"

namespace nibble::kernels::cuda {
namespace {

using cuda_testing::GpuTest;
using cuda_testing::random_floats;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

struct CacheCase {
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;
  std::int64_t context;       // positions 0..context-1 exist
  std::int64_t rows;          // queries: the last `rows` positions (prefill) or spread
  std::int64_t block_size = 16;  // 0: contiguous
  std::int64_t window = 0;
  bool int8 = false;
  std::int64_t stride_pad = 0;
};

class AttentionGpu : public GpuTest {
 protected:
  // `sm_count` steers the split over positions (a large count forces it).
  void check(std::mt19937& rng, const CacheCase& c, int sm_count, bool spread_positions = false) {
    SCOPED_TRACE(::testing::Message() << c.heads << "/" << c.kv_heads << " heads, head_dim " << c.head_dim << ", context "
                                      << c.context << ", rows " << c.rows << ", block " << c.block_size << ", window "
                                      << c.window << (c.int8 ? ", int8" : "") << ", sm_count " << sm_count);
    const std::int64_t stride = c.kv_heads * c.head_dim + c.stride_pad;
    // Storage: a shuffled block table over more blocks than needed.
    std::vector<std::int32_t> table;
    std::int64_t storage_rows = c.context;
    if (c.block_size > 0) {
      const std::int64_t blocks = (c.context + c.block_size - 1) / c.block_size;
      std::vector<std::int32_t> all(at(blocks + 3));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      table.assign(all.begin(), all.begin() + blocks);
      storage_rows = static_cast<std::int64_t>(all.size()) * c.block_size;
    }
    const std::vector<float> keys = random_floats(rng, at(storage_rows * stride));
    const std::vector<float> values = random_floats(rng, at(storage_rows * stride));
    std::uniform_int_distribution<int> code(-127, 127);
    std::uniform_real_distribution<float> scale(0.005f, 0.02f);
    std::vector<std::int8_t> key_codes(keys.size());
    std::vector<std::int8_t> value_codes(values.size());
    std::vector<float> key_scales(at(storage_rows * c.kv_heads));
    std::vector<float> value_scales(key_scales.size());
    for (auto& v : key_codes) v = static_cast<std::int8_t>(code(rng));
    for (auto& v : value_codes) v = static_cast<std::int8_t>(code(rng));
    for (auto& v : key_scales) v = scale(rng);
    for (auto& v : value_scales) v = scale(rng);

    std::vector<std::int32_t> positions(at(c.rows));
    for (std::int64_t r = 0; r < c.rows; ++r) positions[at(r)] = static_cast<std::int32_t>(c.context - c.rows + r);
    if (spread_positions) {
      std::uniform_int_distribution<std::int32_t> any(0, static_cast<std::int32_t>(c.context - 1));
      for (auto& p : positions) p = any(rng);
      positions.back() = static_cast<std::int32_t>(c.context - 1);
    }
    const std::vector<float> q = random_floats(rng, at(c.rows * c.heads * c.head_dim));

    const AttentionShape shape{c.heads, c.kv_heads, c.head_dim,
                               c.window > 0 ? std::optional<std::int64_t>(c.window) : std::nullopt};
    const KvLayerView host_view =
        c.int8 ? KvLayerView::int8(key_codes.data(), value_codes.data(), key_scales.data(), value_scales.data(), stride,
                                   table, c.block_size)
               : KvLayerView::floats(keys.data(), values.data(), stride, table, c.block_size);
    const std::vector<float> expected_f = reference::attention(q, c.rows, positions, host_view, shape);
    const std::vector<double> expected(expected_f.begin(), expected_f.end());

    const DeviceBuffer<float> q_d = to_device(q);
    const DeviceBuffer<float> keys_d = to_device(keys);
    const DeviceBuffer<float> values_d = to_device(values);
    const DeviceBuffer<std::int8_t> key_codes_d = to_device(key_codes);
    const DeviceBuffer<std::int8_t> value_codes_d = to_device(value_codes);
    const DeviceBuffer<float> key_scales_d = to_device(key_scales);
    const DeviceBuffer<float> value_scales_d = to_device(value_scales);
    const DeviceBuffer<std::int32_t> positions_d = to_device(positions);
    const DeviceBuffer<std::int32_t> table_d = to_device(table);
    PagedKvView view;
    if (c.int8) {
      view.key_codes = key_codes_d.data();
      view.value_codes = value_codes_d.data();
      view.key_scales = key_scales_d.data();
      view.value_scales = value_scales_d.data();
    } else {
      view.keys = keys_d.data();
      view.values = values_d.data();
    }
    view.stride = stride;
    view.block_table = table.empty() ? nullptr : table_d.data();
    view.block_size = c.block_size;
    const AttentionDims dims{c.heads, c.kv_heads, c.head_dim, c.window};
    const std::int32_t max_position = *std::max_element(positions.begin(), positions.end());
    const AttentionPlan plan = plan_attention(c.rows, dims, max_position, sm_count);
    DeviceBuffer<float> workspace(at(std::max<std::int64_t>(plan.workspace_floats, 1)));
    DeviceBuffer<float> out = poisoned(expected.size());
    paged_attention(plan, q_d.data(), c.rows, positions_d.data(), view, dims, out.data(), workspace.data(), stream);
    const std::vector<float> result = to_host(out, expected.size());
    EXPECT_LT(cuda_testing::relative_error(result, expected), 2e-5) << plan.parts << " position ranges";
  }
};

TEST_F(AttentionGpu, DecodeOverLongPagedContexts) {
  std::mt19937 rng(21);
  for (const int sm_count : {1, 132, 100000}) {
    check(rng, {32, 8, 128, 3000, 1}, sm_count);
    check(rng, {8, 8, 64, 777, 1, 32}, sm_count);
    check(rng, {28, 4, 128, 1500, 1, 16, 0, true}, sm_count);  // int8 cache, group 7
    check(rng, {20, 1, 64, 900, 1, 8}, sm_count);               // group 20: two slabs per kv head
    check(rng, {16, 2, 256, 700, 2, 16}, sm_count);             // head_dim 256 (>48 KB shared memory)
    check(rng, {12, 4, 80, 650, 1, 0, 0, false, 4}, sm_count);  // contiguous, padded stride, head_dim 80
    check(rng, {8, 2, 64, 2000, 1, 16, 512}, sm_count);         // sliding window
  }
}

TEST_F(AttentionGpu, PrefillManyRows) {
  std::mt19937 rng(22);
  check(rng, {8, 2, 64, 200, 200, 16}, 132);
  check(rng, {4, 4, 128, 130, 37, 0}, 132);
  check(rng, {32, 8, 128, 300, 65, 16, 0, true}, 132);
  check(rng, {6, 2, 96, 90, 90, 16, 40}, 132);
  check(rng, {16, 16, 64, 257, 40, 32}, 100000);
  check(rng, {8, 1, 64, 500, 23, 16}, 132, /*spread_positions=*/true);  // rows at arbitrary positions
}

TEST_F(AttentionGpu, BackendStagesHostPositionsAndBlockTables) {
  std::mt19937 rng(23);
  CudaBackend backend;
  const std::int64_t heads = 8, kv_heads = 2, head_dim = 64, block = 16, rows = 3;
  const std::int64_t stride = kv_heads * head_dim;
  const std::vector<std::int32_t> table = {5, 2, 7, 0, 3, 6, 1};
  const std::vector<float> keys = random_floats(rng, at(8 * block * stride));
  const std::vector<float> values = random_floats(rng, at(8 * block * stride));
  const std::vector<float> q = random_floats(rng, at(rows * heads * head_dim));
  const std::vector<std::int32_t> positions = {97, 98, 99};
  const AttentionShape shape{heads, kv_heads, head_dim, std::nullopt};
  const std::vector<float> expected_f =
      reference::attention(q, rows, positions, KvLayerView::floats(keys.data(), values.data(), stride, table, block), shape);
  const DeviceBuffer<float> keys_d = to_device(keys);
  const DeviceBuffer<float> values_d = to_device(values);
  const DeviceBuffer<float> q_d = to_device(q);
  DeviceBuffer<float> out = poisoned(expected_f.size());
  sync();
  backend.attention(q_d.data(), rows, positions, KvLayerView::floats(keys_d.data(), values_d.data(), stride, table, block),
                    shape, out.data());
  std::vector<float> result(expected_f.size());
  out.download(result, backend.stream());
  backend.synchronize();
  EXPECT_LT(cuda_testing::relative_error(result, std::vector<double>(expected_f.begin(), expected_f.end())), 2e-5);
}

TEST_F(AttentionGpu, BackendRefusesAnFp16CacheItCannotRead) {
  // The CPU's fp16 cache: refused before anything is read, not taken for an
  // incomplete float32 view.
  CudaBackend backend;
  const std::int64_t heads = 2, head_dim = 64;
  const std::vector<std::uint16_t> halves(at(heads * head_dim), 0);
  const std::vector<float> q(at(heads * head_dim), 0.0f);
  std::vector<float> out(q.size());
  const std::vector<std::int32_t> positions = {0};
  const AttentionShape shape{heads, heads, head_dim, std::nullopt};
  EXPECT_THROW(backend.attention(q.data(), 1, positions, KvLayerView::f16(halves.data(), halves.data(), heads * head_dim),
                                 shape, out.data()),
               Error);
}

}  // namespace
}  // namespace nibble::kernels::cuda
