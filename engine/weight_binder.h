#pragma once
// Turns a model's named tensors into what its blocks run: linear weights
// prepared by the backend (quantized ones packed, never expanded; modules that
// read one input stacked when quantized alike), norm weights and biases made
// readable by the backend, and a running account of the memory they take. Each
// failure names the tensor.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/blocks/linear.h"
#include "engine/model.h"
#include "loader/tensor.h"
#include "loader/weight_source.h"

namespace nibble::engine {

class WeightBinder {
 public:
  WeightBinder(const WeightSource& weights, const ModelConfig& config, kernels::Backend& backend,
               const ModelOptions& options);

  struct Module {
    std::string name;   // "model.layers.0.self_attn.q_proj"
    std::int64_t rows;  // output features
  };

  // Module `module`'s weight [rows, cols]: quantized, or `module`.weight in F32/F16/BF16.
  // `lookup_only`: a table only ever read by row (an untied embedding), never sparse.
  Linear linear(const std::string& module, std::int64_t rows, std::int64_t cols, bool lookup_only = false);
  // Modules that read the same input, with their biases (`module`.bias) when `bias`.
  LinearGroup group(std::span<const Module> modules, std::int64_t cols, bool bias);
  // A vector (norm weight, bias) of `size` values, widened to float32 when stored
  // narrower, plus `offset` (Gemma's (1 + w) norms: 1) in float32, in the
  // backend's memory.
  kernels::Buffer vector(const std::string& name, std::int64_t size, float offset = 0.0f);
  // Module `module`'s weight [rows, cols] as float32 on the host, dequantized if
  // stored quantized: for the few matrices a block re-lays out at load (MLA's
  // kv_b_proj split into per-head W_UK^T and W_UV). Not accounted: what the block
  // uploads from it is (upload_f32).
  std::vector<float> host_matrix(const std::string& module, std::int64_t rows, std::int64_t cols);
  // A vector of `size` values as float32 on the host (DeepSeek-V3's router
  // correction bias, which the host-side routing reads).
  std::vector<float> host_vector(const std::string& name, std::int64_t size);
  // `values` (float32, `shape`) in the backend's memory, counted as weight memory.
  kernels::Buffer upload_f32(const std::string& name, std::vector<std::int64_t> shape, std::vector<float> values);
  bool contains(const std::string& name) const;
  bool has_quantized(const std::string& module) const;

  const WeightMemory& memory() const { return memory_; }
  const std::map<std::string, int>& linear_kinds() const { return linear_kinds_; }
  // The mapped or converted host tensors prepared weights may still view.
  std::vector<TensorView> take_held() { return std::move(held_); }

 private:
  Linear quantized_linear(QuantizedMatrix quantized, const std::string& module, std::int64_t rows, std::int64_t cols,
                          int modules);
  kernels::Buffer upload(TensorView tensor);

  const WeightSource& weights_;
  const ModelConfig& config_;
  kernels::Backend& backend_;
  ModelOptions options_;
  WeightMemory memory_;
  std::map<std::string, int> linear_kinds_;
  std::vector<TensorView> held_;
};

}  // namespace nibble::engine
