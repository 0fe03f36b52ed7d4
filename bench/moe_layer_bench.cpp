// One mixture-of-experts layer (engine/blocks/moe.h) against a dense gated MLP with
// the same active parameters (intermediate width k x expert width), at 1, 16 and
// 64 tokens in the same run, for fp16, 4-bit GPTQ-style (g128, zero points) and
// GGUF Q4_K experts (Q5_0 where the inputs are not a multiple of 256), random and
// held in memory. The MoE layer runs both ways: its experts one by one (each its
// own linear calls, the path before grouping) and grouped (one grouped_linear call
// for all experts' gate/up, one for their down projections). Samples of the three
// are interleaved (one of each per repeat), so load from other processes hits them
// alike. The MoE layer reads k of E experts for one token but more of them as
// tokens are added; the dense MLP reads all of its weights every time.
//
//   moe_layer_bench [--threads 2] [--hidden 1024] [--expert-width 1408] [--experts 8] [--top-k 2]
//                   [--tokens 1,16,64] [--formats f16,int4,q4_k] [--repeats 30]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "engine/blocks/mlp.h"
#include "engine/blocks/moe.h"
#include "engine/paged_kv_cache.h"
#include "engine/weight_binder.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/random_moe_weights.h"

namespace {

using namespace nibble;
using testing::ExpertFormat;

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

ExpertFormat format_named(const std::string& name) {
  if (name == "f16") return ExpertFormat::F16;
  if (name == "int4") return ExpertFormat::Int4;
  if (name == "q4_k") return ExpertFormat::Q4K;
  fail("unknown format '{}' (f16, int4, q4_k)", name);
}

double median(std::vector<double> samples) {
  std::ranges::sort(samples);
  return samples[samples.size() / 2];
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return in ? fmt::format("{} {} {}", one, five, fifteen) : "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"MoE layer vs a dense MLP of equal active parameters"};
  int threads = 2, repeats = 30;
  std::int64_t hidden = 1024, width = 1408, experts = 8, top_k = 2;
  std::string tokens_text = "1,16,64", formats_text = "f16,int4,q4_k";
  app.add_option("--threads", threads);
  app.add_option("--hidden", hidden);
  app.add_option("--expert-width", width);
  app.add_option("--experts", experts);
  app.add_option("--top-k", top_k);
  app.add_option("--tokens", tokens_text);
  app.add_option("--formats", formats_text);
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
    std::vector<std::int64_t> token_counts;
    for (const auto& item : split_list(tokens_text)) token_counts.push_back(std::stoll(item));
    const std::int64_t most = *std::ranges::max_element(token_counts);
    kernels::CpuBackend backend(threads);
    fmt::print("MoE: {} experts, top-{}, expert width {}, hidden {}; dense MLP width {} (same active parameters); "
               "{}; load average {}\n",
               experts, top_k, width, hidden, dense_width, backend.name(), load_average());
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> input(static_cast<std::size_t>(most * hidden));
    for (auto& x : input) x = normal(rng);
    const engine::LinearInputHook no_hook;
    for (const auto& format_name : split_list(formats_text)) {
      const testing::RandomMoeWeights weights(config, format_named(format_name), dense_width);
      engine::WeightBinder binder(weights, config, backend, engine::ModelOptions{});
      engine::MoeBlock moe(binder, arch, config, 0);
      const engine::GatedMlp dense(binder, arch.activation, {"dense.gate_proj", "dense.up_proj", "dense.down_proj"},
                                   dense_width, hidden);
      const std::int64_t stacked = std::max(moe.stacked_width(), dense.stacked_width());
      engine::Workspace ws(engine::MoeBlock::widths(
          config, engine::Workspace::Widths{hidden, hidden, hidden, std::max(dense_width, width), stacked, experts}));
      ws.reserve(backend, most);
      engine::PagedKvCache cache(backend, config, 1, 16);
      std::vector<std::int32_t> positions(static_cast<std::size_t>(most), 0);
      fmt::print("\n{} experts (an expert's down_proj: {})\n", format_name,
                 moe.find(arch.expert_module(TensorRole::ExpertDown, 0, 0))->weights->describe());
      fmt::print("{:>7} {:>13} {:>11} {:>10} {:>11} {:>11} {:>9} {:>8} {:>13}\n", "tokens", "one-by-one us",
                 "grouped us", "dense us", "1-by-1/dense", "grouped/dense", "speedup", "active", "expert bytes");
      for (const std::int64_t rows : token_counts) {
        const engine::StepContext step{backend, cache, rows, std::span(positions).first(static_cast<std::size_t>(rows)),
                                       {}, no_hook};
        const auto sample = [&](auto&& run) {
          std::copy(input.begin(), input.begin() + rows * hidden, ws.h());
          const auto start = std::chrono::steady_clock::now();
          run();
          return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * 1e6;
        };
        std::vector<double> one_by_one, grouped, dense_us;
        for (int r = 0; r < repeats + 3; ++r) {
          moe.set_grouped_experts(false);
          const double a = sample([&] { moe.forward(step, ws, ws.h(), ws.h()); });
          moe.set_grouped_experts(true);
          const double b = sample([&] { moe.forward(step, ws, ws.h(), ws.h()); });
          const double c = sample([&] { dense.forward(step, ws, ws.h(), ws.h()); });
          if (r < 3) continue;  // warm-up
          one_by_one.push_back(a);
          grouped.push_back(b);
          dense_us.push_back(c);
        }
        const double a = median(one_by_one), b = median(grouped), c = median(dense_us);
        const auto counts = moe.last_tokens_per_expert();
        const auto active = std::ranges::count_if(counts, [](std::int64_t n) { return n > 0; });
        // Every expert has the same size, so the fraction of expert bytes a step
        // reads is the fraction of experts with tokens.
        fmt::print("{:>7} {:>13.1f} {:>11.1f} {:>10.1f} {:>11.2f} {:>11.2f} {:>8.2f}x {:>5}/{:<2} {:>12.0f}%\n", rows,
                   a, b, c, a / c, b / c, a / b, active, experts,
                   100.0 * static_cast<double>(active) / static_cast<double>(experts));
      }
    }
  } catch (const nibble::Error& e) {
    fmt::print(stderr, "moe_layer_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
