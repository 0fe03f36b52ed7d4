// Whole models on the CUDA backend against the CPU engine (label gpu): the same
// DecoderModel, the same steps (two sequences prefilled in one step, one scoring
// every prompt position, then batched decode steps over the paged cache), logits
// compared row by row. stories260K is a real model with float32 weights; the
// others are random weights in Llama-2-7B's shapes (hidden 4096, MLP 11008, 32
// heads of 128, vocab 32000), two of its 32 layers so the CPU reference stays
// quick: GPTQ 4-bit act-order, and GGUF K-quants mixed as a Q4_K_M file mixes them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "common/half.h"
#include "engine/decoder_model.h"
#include "cuda_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/llama2c.h"
#include "loader/model_source.h"
#include "../unit/model_steps.h"
#include "../unit/random_quantized.h"
#include "../unit/test_util.h"

namespace nibble {
namespace {

using engine::DecoderModel;

// max |gpu - cpu| / max |cpu| over every row of every step; NaN never passes.
double relative_error(const std::vector<std::vector<float>>& gpu, const std::vector<std::vector<float>>& cpu) {
  double worst = 0, scale = 0;
  for (std::size_t s = 0; s < cpu.size(); ++s) {
    for (std::size_t i = 0; i < cpu[s].size(); ++i) {
      if (!std::isfinite(gpu[s][i])) return INFINITY;
      worst = std::max(worst, std::abs(static_cast<double>(gpu[s][i]) - cpu[s][i]));
      scale = std::max(scale, std::abs(static_cast<double>(cpu[s][i])));
    }
  }
  return worst / std::max(scale, 1e-30);
}

class ModelGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_testing::gpu_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(ModelGpu, Stories260KMatchesTheCpuEngineInEveryKvFormatTheGpuReads) {
  testing::TempDir dir;
  const auto stories = std::filesystem::path(NIBBLE_SHARED_DIR) / "models/stories260K";
  convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", dir.path());
  const ModelSource source = open_model(dir.path());
  kernels::CpuBackend cpu(4);
  kernels::cuda::CudaBackend gpu(0);
  DecoderModel on_cpu(source, cpu);
  DecoderModel on_gpu(source, gpu);
  for (const auto kv : {engine::KvDtype::Float32, engine::KvDtype::Int8}) {
    const auto want = testing::run_model_steps(on_cpu, kv);
    const auto got = testing::run_model_steps(on_gpu, kv);
    // float32 weights on cuBLASLt and float32 attention: only summation order differs.
    EXPECT_LT(relative_error(got, want), 1e-4) << engine::kv_dtype_name(kv);
  }
}

// Llama-2-7B's layer shapes with random quantized weights, held in memory:
// make(rng, module, rows, cols) gives each linear module's matrix.
class RandomQuantized7BShaped final : public WeightSource {
 public:
  using MakeMatrix = std::function<QuantizedMatrix(std::mt19937&, const std::string&, std::int64_t, std::int64_t)>;
  RandomQuantized7BShaped(const ModelConfig& config, MakeMatrix make) : config_(config), make_(std::move(make)) {}

  std::vector<StoredTensorInfo> list() const override { return {}; }
  bool contains(const std::string& name) const override {
    return name.ends_with("norm.weight") || name == "model.embed_tokens.weight" || name == "lm_head.weight";
  }
  TensorView load(const std::string& name) const override {
    std::mt19937 rng(static_cast<std::uint32_t>(std::hash<std::string>{}(name)));
    if (name.ends_with("norm.weight")) {
      std::uniform_real_distribution<float> near_one(0.8f, 1.2f);
      std::vector<float> values(static_cast<std::size_t>(config_.hidden_size));
      for (auto& v : values) v = near_one(rng);
      return make_owned_f32(name, {config_.hidden_size}, std::move(values));
    }
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
      std::normal_distribution<float> normal(0.0f, 0.02f);
      const std::int64_t count = config_.vocab_size * config_.hidden_size;
      std::vector<std::byte> bytes(static_cast<std::size_t>(count) * 2);
      for (std::int64_t i = 0; i < count; ++i) {
        const std::uint16_t half = f32_to_f16(normal(rng));
        std::memcpy(bytes.data() + 2 * i, &half, 2);
      }
      return make_owned_tensor(name, DType::F16, {config_.vocab_size, config_.hidden_size}, std::move(bytes));
    }
    fail("no tensor '{}'", name);
  }
  std::optional<QuantizedMatrix> load_quantized(const std::string& module) const override {
    if (!has_quantized(module)) return std::nullopt;
    const auto shape = linear_module_shape(config_, module);
    std::mt19937 rng(static_cast<std::uint32_t>(std::hash<std::string>{}(module)));
    QuantizedMatrix m = make_(rng, module, (*shape)[0], (*shape)[1]);
    m.name = module;
    return m;
  }
  bool has_quantized(const std::string& module) const override {
    return module.starts_with("model.layers.") && linear_module_shape(config_, module).has_value();
  }
  std::uint64_t file_bytes() const override { return 0; }

 private:
  ModelConfig config_;
  MakeMatrix make_;
};

// Two of Llama-2-7B's layers, every linear module from `make`.
ModelSource random_7b_shaped(RandomQuantized7BShaped::MakeMatrix make) {
  ModelSource source;
  ModelConfig& config = source.config;
  config.architecture = "LlamaForCausalLM";
  config.model_type = "llama";
  config.vocab_size = 32000;
  config.hidden_size = 4096;
  config.intermediate_size = 11008;
  config.num_layers = 2;
  config.num_heads = 32;
  config.num_kv_heads = 32;
  config.head_dim = 128;
  config.max_position_embeddings = 4096;
  config.rms_norm_eps = 1e-5;
  config.validate();
  source.weights = std::make_unique<RandomQuantized7BShaped>(config, std::move(make));
  return source;
}

TEST_F(ModelGpu, RandomGptq7BShapedLayersMatchTheCpuEngine) {
  const ModelSource source = random_7b_shaped([](std::mt19937& rng, const std::string&, std::int64_t rows,
                                                 std::int64_t cols) {
    return testing::random_quantized(rng, testing::QuantCase{rows, cols, 4, 128, /*act_order=*/true});
  });
  kernels::CpuBackend cpu(0);
  kernels::cuda::CudaBackend gpu(0);
  DecoderModel on_cpu(source, cpu);
  DecoderModel on_gpu(source, gpu);
  EXPECT_EQ(on_gpu.weight_memory().quantized_layers, 14);
  const auto want = testing::run_model_steps(on_cpu, engine::KvDtype::Float32);
  const auto got = testing::run_model_steps(on_gpu, engine::KvDtype::Float32);
  // The GPU's quantized GEMMs take fp16 activations (11 significant bits) and the
  // dense lm_head runs in fp16 on cuBLASLt: about 1e-3 of the largest logit.
  EXPECT_LT(relative_error(got, want), 1e-2);
}

// GGUF K-quant blocks as a Q4_K_M file holds them (Q4_K, Q6_K for v and down),
// plus Q5_K for o: the layers run on the CUDA K-quant GEMM against the CPU
// backend's block kernels. Scales d, dmin of 2^-14 .. 2^-12 keep weights around
// 0.01-0.2, so activations stay inside fp16 as a trained model's do.
TEST_F(ModelGpu, RandomKquant7BShapedLayersMatchTheCpuEngine) {
  const ModelSource source = random_7b_shaped([](std::mt19937& rng, const std::string& module, std::int64_t rows,
                                                 std::int64_t cols) {
    const BlockFormat format = module.ends_with("v_proj") || module.ends_with("down_proj") ? BlockFormat::Q6_K
                               : module.ends_with("o_proj")                                 ? BlockFormat::Q5_K
                                                                                            : BlockFormat::Q4_K;
    return cuda_testing::random_blocks(rng, format, rows, cols, 1, 3);
  });
  kernels::CpuBackend cpu(0);
  kernels::cuda::CudaBackend gpu(0);
  DecoderModel on_cpu(source, cpu);
  DecoderModel on_gpu(source, gpu);
  EXPECT_EQ(on_gpu.weight_memory().quantized_layers, 14);
  // Weights stay packed: at most 1.15x the file's bytes (measured on the CPU: 1.01-1.03x).
  EXPECT_LE(static_cast<double>(on_gpu.weight_memory().quantized_resident),
            1.15 * static_cast<double>(on_gpu.weight_memory().quantized_file));
  const auto want = testing::run_model_steps(on_cpu, engine::KvDtype::Float32);
  const auto got = testing::run_model_steps(on_gpu, engine::KvDtype::Float32);
  // The same fp16 activation and lm_head roundings as the GPTQ case, plus the one
  // fp16 rounding of each weight.
  EXPECT_LT(relative_error(got, want), 1e-2);
}

}  // namespace
}  // namespace nibble
