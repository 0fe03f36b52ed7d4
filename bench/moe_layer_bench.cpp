// One mixture-of-experts layer (engine/blocks/moe.h) against a dense gated MLP with
// the same active parameters (intermediate width k x expert width), both on random
// fp16 weights held in memory, at 1, 16 and 64 tokens in the same run. The MoE
// layer reads k of E experts for one token but more of them as tokens are added;
// the dense MLP reads all of its weights every time.
//
//   moe_layer_bench [--threads 2] [--hidden 1024] [--expert-width 1408] [--experts 8] [--top-k 2]
//                   [--tokens 1,16,64] [--repeats 30]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "common/half.h"
#include "engine/blocks/mlp.h"
#include "engine/blocks/moe.h"
#include "engine/paged_kv_cache.h"
#include "engine/weight_binder.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

using namespace nibble;

// Random fp16 matrices (and norm-free vectors) for any module the config implies,
// plus a dense MLP "dense.{gate,up,down}_proj" of width `dense_width`.
class RandomWeights final : public WeightSource {
 public:
  RandomWeights(const ModelConfig& config, std::int64_t dense_width) : config_(config), dense_width_(dense_width) {}
  std::vector<StoredTensorInfo> list() const override { return {}; }
  bool contains(const std::string&) const override { return true; }
  TensorView load(const std::string& name) const override {
    const std::string module = name.substr(0, name.rfind('.'));
    std::array<std::int64_t, 2> shape{};
    if (module.starts_with("dense.")) {
      shape = module == "dense.down_proj" ? std::array{config_.hidden_size, dense_width_}
                                          : std::array{dense_width_, config_.hidden_size};
    } else if (const auto implied = linear_module_shape(config_, module)) {
      shape = *implied;
    } else {
      fail("no tensor '{}'", name);
    }
    std::mt19937 rng(static_cast<std::uint32_t>(std::hash<std::string>{}(name)));
    std::normal_distribution<float> normal(0.0f, 0.05f);
    const std::int64_t count = shape[0] * shape[1];
    std::vector<std::byte> bytes(static_cast<std::size_t>(count) * 2);
    for (std::int64_t i = 0; i < count; ++i) {
      const std::uint16_t half = f32_to_f16(normal(rng));
      std::memcpy(bytes.data() + 2 * i, &half, 2);
    }
    return make_owned_tensor(name, DType::F16, {shape[0], shape[1]}, std::move(bytes));
  }
  std::uint64_t file_bytes() const override { return 0; }

 private:
  ModelConfig config_;
  std::int64_t dense_width_;
};

std::vector<std::int64_t> parse_list(const std::string& text) {
  std::vector<std::int64_t> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"MoE layer vs a dense MLP of equal active parameters"};
  int threads = 2, repeats = 30;
  std::int64_t hidden = 1024, width = 1408, experts = 8, top_k = 2;
  std::string tokens_text = "1,16,64";
  app.add_option("--threads", threads);
  app.add_option("--hidden", hidden);
  app.add_option("--expert-width", width);
  app.add_option("--experts", experts);
  app.add_option("--top-k", top_k);
  app.add_option("--tokens", tokens_text);
  app.add_option("--repeats", repeats);
  CLI11_PARSE(app, argc, argv);
  try {
    ModelConfig config;
    config.architecture = "MixtralForCausalLM";
    config.model_type = "mixtral";
    config.vocab_size = 32;
    config.hidden_size = hidden;
    config.intermediate_size = width;
    config.num_layers = 1;
    config.num_heads = 8;
    config.num_kv_heads = 8;
    config.head_dim = hidden / 8;
    config.moe.num_experts = experts;
    config.moe.experts_per_token = top_k;
    config.moe.expert_intermediate_size = width;
    config.moe.norm_topk_prob = true;
    config.validate();
    const Architecture& arch = architecture_of(config.architecture);
    const std::int64_t dense_width = top_k * width;
    RandomWeights weights(config, dense_width);
    kernels::CpuBackend backend(threads);
    engine::WeightBinder binder(weights, config, backend, engine::ModelOptions{});
    const engine::MoeBlock moe(binder, arch, config, 0);
    const engine::GatedMlp dense(binder, arch.activation, {"dense.gate_proj", "dense.up_proj", "dense.down_proj"},
                                 dense_width, hidden);
    const auto token_counts = parse_list(tokens_text);
    const std::int64_t most = *std::ranges::max_element(token_counts);
    engine::Workspace ws(engine::Workspace::Widths{hidden, hidden, hidden, std::max(dense_width, width), 0, experts});
    ws.reserve(backend, most);
    engine::PagedKvCache cache(backend, config, 1, 16);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(most), 0);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> input(static_cast<std::size_t>(most * hidden));
    for (auto& x : input) x = normal(rng);
    const engine::LinearInputHook no_hook;
    fmt::print("MoE: {} experts, top-{}, expert width {}, hidden {} (fp16); dense MLP width {} (same active "
               "parameters); {} threads\n",
               experts, top_k, width, hidden, dense_width, threads);
    fmt::print("{:>7} {:>12} {:>12} {:>8} {:>15}\n", "tokens", "moe us", "dense us", "ratio", "experts active");
    for (const std::int64_t rows : token_counts) {
      const engine::StepContext step{backend, cache, rows, std::span(positions).first(static_cast<std::size_t>(rows)), {},
                                     no_hook};
      const auto time = [&](auto&& run) {
        std::vector<double> samples;
        for (int r = 0; r < repeats + 3; ++r) {
          std::copy(input.begin(), input.end(), ws.h());
          const auto start = std::chrono::steady_clock::now();
          run();
          const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          if (r >= 3) samples.push_back(seconds);  // warm-up first
        }
        std::ranges::sort(samples);
        return samples[samples.size() / 2] * 1e6;  // median
      };
      const double moe_us = time([&] { moe.forward(step, ws, ws.h(), ws.h()); });
      const auto counts = moe.last_tokens_per_expert();
      const auto active = std::ranges::count_if(counts, [](std::int64_t c) { return c > 0; });
      const double dense_us = time([&] { dense.forward(step, ws, ws.h(), ws.h()); });
      fmt::print("{:>7} {:>12.1f} {:>12.1f} {:>8.2f} {:>12}/{}\n", rows, moe_us, dense_us, moe_us / dense_us, active,
                 experts);
    }
  } catch (const nibble::Error& e) {
    fmt::print(stderr, "moe_layer_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
