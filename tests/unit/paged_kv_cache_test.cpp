// The paged KV cache's storage in each dtype: what store() keeps, what layer()
// shows attention, what copy_block() copies, and what a position costs.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>

#include "common/error.h"
#include "common/half.h"
#include "engine/paged_kv_cache.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernel_test_util.h"

namespace nibble::engine {
namespace {

ModelConfig small_config() {
  ModelConfig config;
  config.num_layers = 3;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 24;  // not a multiple of 16: stores take the conversion's tail path
  config.hidden_size = config.num_heads * config.head_dim;
  return config;
}

// Element i of position t's key (or value) row in `view`, as float.
float element(const kernels::KvLayerView& view, bool key, std::int64_t t, std::int64_t i, std::int64_t kv_heads,
              std::int64_t head_dim) {
  const std::int64_t r = view.row(t), at = r * view.stride + i;
  switch (view.format()) {
    case KvDtype::Float32:
      return (key ? view.keys : view.values)[at];
    case KvDtype::Float16:
      return f16_to_f32((key ? view.keys_f16 : view.values_f16)[at]);
    case KvDtype::Int8: {
      // (Computed here, not after the switch: there gcc 12's UBSan reported a
      // division by zero that cannot happen, head_dim being 24.)
      const std::int64_t head = i / head_dim;
      return static_cast<float>((key ? view.key_codes : view.value_codes)[at]) *
             (key ? view.key_scales : view.value_scales)[r * kv_heads + head];
    }
  }
  throw std::logic_error("unknown KV format");
}

TEST(PagedKvCache, Float16StoresEachElementRoundedOnceToHalf) {
  const ModelConfig config = small_config();
  kernels::CpuBackend backend(1);
  std::mt19937 rng(std::random_device{}());
  PagedKvCache cache(backend, config, 4, 4, KvDtype::Float16);
  const std::vector<std::int32_t> table{2, 0};
  const std::int64_t rows = 6, kv_dim = config.kv_dim();
  const auto keys = testing::random_floats(rng, static_cast<std::size_t>(rows * kv_dim), 3.0f);
  const auto values = testing::random_floats(rng, keys.size(), 3.0f);
  cache.store(1, table, 0, rows, keys.data(), values.data());
  const auto view = cache.layer(1, table);
  ASSERT_EQ(view.format(), KvDtype::Float16);
  for (std::int64_t t = 0; t < rows; ++t) {
    for (std::int64_t i = 0; i < kv_dim; ++i) {
      const auto at = static_cast<std::size_t>(t * kv_dim + i);
      ASSERT_EQ(view.keys_f16[view.row(t) * kv_dim + i], f32_to_f16(keys[at])) << t << " " << i;
      ASSERT_EQ(view.values_f16[view.row(t) * kv_dim + i], f32_to_f16(values[at])) << t << " " << i;
    }
  }
}

TEST(PagedKvCache, CopyBlockCopiesTheFirstTokensOfEveryLayerInEveryDtype) {
  const ModelConfig config = small_config();
  kernels::CpuBackend backend(1);
  std::mt19937 rng(std::random_device{}());
  for (const auto dtype : {KvDtype::Float32, KvDtype::Float16, KvDtype::Int8}) {
    const std::int32_t block_size = 4;
    PagedKvCache cache(backend, config, 6, block_size, dtype);
    const std::int64_t kv_dim = config.kv_dim();
    const std::vector<std::int32_t> from{3}, to{1};
    // Block `to` first holds other rows, so a copy that misses anything leaves them.
    for (std::int64_t l = 0; l < config.num_layers; ++l) {
      const auto old_rows = testing::random_floats(rng, static_cast<std::size_t>(block_size * kv_dim));
      cache.store(l, to, 0, block_size, old_rows.data(), old_rows.data());
      const auto keys = testing::random_floats(rng, static_cast<std::size_t>(block_size * kv_dim));
      const auto values = testing::random_floats(rng, keys.size());
      cache.store(l, from, 0, block_size, keys.data(), values.data());
    }
    std::vector<float> before_tail;
    const auto untouched = cache.layer(0, to);
    for (std::int64_t i = 0; i < kv_dim; ++i) {
      before_tail.push_back(element(untouched, true, 3, i, config.num_kv_heads, config.head_dim));
    }
    cache.copy_block(3, 1, 3);
    for (std::int64_t l = 0; l < config.num_layers; ++l) {
      const auto src = cache.layer(l, from), dst = cache.layer(l, to);
      for (std::int64_t t = 0; t < 3; ++t) {
        for (std::int64_t i = 0; i < kv_dim; ++i) {
          for (const bool key : {true, false}) {
            ASSERT_EQ(element(dst, key, t, i, config.num_kv_heads, config.head_dim),
                      element(src, key, t, i, config.num_kv_heads, config.head_dim))
                << kv_dtype_name(dtype) << " layer " << l << " position " << t << " element " << i;
          }
        }
      }
    }
    for (std::int64_t i = 0; i < kv_dim; ++i) {
      EXPECT_EQ(element(cache.layer(0, to), true, 3, i, config.num_kv_heads, config.head_dim),
                before_tail[static_cast<std::size_t>(i)])
          << kv_dtype_name(dtype) << ": position 3 is past the copied tokens";
    }
  }
}

TEST(PagedKvCache, Float16HalvesTheBytesOfAPosition) {
  const ModelConfig config = small_config();
  kernels::CpuBackend backend(1);
  const PagedKvCache f32(backend, config, 2, 16, KvDtype::Float32), f16(backend, config, 2, 16, KvDtype::Float16),
      int8(backend, config, 2, 16, KvDtype::Int8);
  const auto elements = static_cast<std::uint64_t>(2 * config.num_layers * config.kv_dim());
  EXPECT_EQ(f32.bytes_per_token(), elements * 4);
  EXPECT_EQ(f16.bytes_per_token(), f32.bytes_per_token() / 2);
  EXPECT_EQ(f16.bytes(), f32.bytes() / 2);
  EXPECT_EQ(int8.bytes_per_token(), elements + 2 * 3 * 2 * sizeof(float));  // + a scale per (layer, kv head)
  EXPECT_EQ(kernels::kv_element_bytes(KvDtype::Float16) * 2, kernels::kv_element_bytes(KvDtype::Float32));
  EXPECT_EQ(kv_bytes_per_token(config, KvDtype::Int8), int8.bytes_per_token());
}

TEST(PagedKvCache, DtypeNamesAndAliasesParseAndOthersFailClearly) {
  EXPECT_EQ(parse_kv_dtype("float32"), KvDtype::Float32);
  EXPECT_EQ(parse_kv_dtype("float16"), KvDtype::Float16);
  EXPECT_EQ(parse_kv_dtype("f16"), KvDtype::Float16);
  EXPECT_EQ(parse_kv_dtype("fp16"), KvDtype::Float16);
  EXPECT_EQ(parse_kv_dtype("int8"), KvDtype::Int8);
  for (const auto dtype : {KvDtype::Float32, KvDtype::Float16, KvDtype::Int8}) {
    EXPECT_EQ(parse_kv_dtype(kv_dtype_name(dtype)), dtype);
  }
  EXPECT_EQ(kv_dtype_name(KvDtype::Float16), "float16");
  for (const char* bad : {"fp8", "bf16", "F16", "", "int4"}) {
    try {
      parse_kv_dtype(bad);
      ADD_FAILURE() << "'" << bad << "' parsed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("float16"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace nibble::engine
