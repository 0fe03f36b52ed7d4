#pragma once
// Writes new keys/values into the paged KV pool on the device, converting each
// row to the pool's format exactly as the CPU backend does (float32 copied, fp16
// rounded to nearest even, int8 with one scale per (row, kv head): the largest
// magnitude maps to 127).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/kv_pool.h"

namespace nibble::kernels::cuda {

struct KvStoreArgs {
  void* keys = nullptr;  // the pool's arrays at the layer's first row
  void* values = nullptr;
  float* key_scales = nullptr;  // Int8
  float* value_scales = nullptr;
  const std::int32_t* block_table = nullptr;  // device
  std::int64_t block_size = 0;
  std::int64_t start = 0;  // position of row 0
  std::int64_t rows = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  KvFormat format = KvFormat::Float32;
  bool keys_only = false;  // the pool reads its values from the keys (MLA's latent): no values stored
};

// new_keys/new_values: [rows, kv_heads * head_dim] float32, device memory.
void kv_store(const KvStoreArgs& args, const float* new_keys, const float* new_values, cudaStream_t stream);

}  // namespace nibble::kernels::cuda
