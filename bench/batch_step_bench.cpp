// One continuous-batching decode step of M sequences on a real model: what the
// scheduler pays per step. Each sequence holds `context` positions in the paged
// cache and adds one token; tokens/s per M, and the ratio to M = 1 measured in the
// same run, show how much of a step's cost the batch shares.
//
//   batch_step_bench --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]
//                    [--context 128] [--batches 1,4,16,32] [--kv f32|f16|int8] [--repeats 20]
//                    [--int8-activations]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/decoder_model.h"
#include "engine/paged_kv_cache.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"

namespace {

using nibble::engine::BatchEntry;
using nibble::engine::KvDtype;
using nibble::engine::DecoderModel;
using nibble::engine::Model;
using nibble::engine::Logits;
using nibble::engine::PagedKvCache;
using nibble::TokenId;

constexpr std::int32_t kBlockSize = 16;

struct Batch {
  std::vector<std::vector<std::int32_t>> tables;
  std::vector<TokenId> tokens;
  std::vector<BatchEntry> entries;
};

// M sequences whose first `context` positions are already in the cache.
Batch make_batch(Model& model, PagedKvCache& cache, std::int64_t m, std::int64_t context) {
  const std::int64_t blocks_each = (context + 1 + kBlockSize - 1) / kBlockSize;
  Batch batch;
  batch.tokens.resize(static_cast<std::size_t>(m));
  std::vector<std::vector<TokenId>> prompts(static_cast<std::size_t>(m));
  std::vector<BatchEntry> prefill;
  for (std::int64_t s = 0; s < m; ++s) {
    auto& table = batch.tables.emplace_back(static_cast<std::size_t>(blocks_each));
    std::iota(table.begin(), table.end(), static_cast<std::int32_t>(s * blocks_each));
    auto& prompt = prompts[static_cast<std::size_t>(s)];
    // Distinct token ids per sequence, so no two sequences attend over the same keys.
    for (std::int64_t i = 0; i < context; ++i) prompt.push_back(static_cast<TokenId>((s * 131 + i * 7) % 1000 + 10));
    batch.tokens[static_cast<std::size_t>(s)] = static_cast<TokenId>(s + 20);
  }
  // Every prompt in one prefill step; tables are all in place first (entries hold spans).
  for (std::int64_t s = 0; s < m; ++s) {
    prefill.push_back({prompts[static_cast<std::size_t>(s)], 0, batch.tables[static_cast<std::size_t>(s)], Logits::LastRow});
  }
  std::vector<float> logits(static_cast<std::size_t>(m * model.vocab_size()));
  model.forward_batch(prefill, cache, logits);
  for (std::int64_t s = 0; s < m; ++s) {
    batch.entries.push_back({std::span(&batch.tokens[static_cast<std::size_t>(s)], 1), context,
                             batch.tables[static_cast<std::size_t>(s)], Logits::LastRow});
  }
  return batch;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode-step cost of a batch of M sequences"};
  std::string model_path;
  int threads = 2;
  std::int64_t context = 128;
  std::vector<std::int64_t> batches{1, 4, 16, 32};
  std::string kv = "f32";
  int repeats = 20;
  bool int8_activations = false;
  app.add_option("--model", model_path, "model file or folder")->required();
  app.add_option("--threads", threads, "backend threads");
  app.add_option("--context", context, "positions each sequence already holds");
  app.add_option("--batches", batches, "batch sizes (sequences per step)")->delimiter(',');
  app.add_option("--kv", kv, "KV-cache dtype (float32, float16 / f16, int8)");
  app.add_option("--repeats", repeats, "timed steps per batch size (median reported)");
  app.add_flag("--int8-activations", int8_activations, "integer dot products for quantized layers");
  CLI11_PARSE(app, argc, argv);

  const auto source = nibble::open_model(model_path);
  nibble::kernels::CpuBackend backend(nibble::kernels::CpuBackendOptions{threads, int8_activations});
  fmt::print("{}\n", backend.name());
  DecoderModel model(source, backend);
  const std::int64_t max_m = *std::max_element(batches.begin(), batches.end());
  const auto blocks = static_cast<std::int32_t>(max_m * ((context + 1 + kBlockSize - 1) / kBlockSize));
  PagedKvCache cache = model.make_kv_cache(blocks, kBlockSize, nibble::engine::parse_kv_dtype(kv));

  fmt::print("{:>4} {:>12} {:>12} {:>10}\n", "M", "step ms", "tokens/s", "vs M=1");
  double base = 0;
  for (const std::int64_t m : batches) {
    Batch batch = make_batch(model, cache, m, context);
    std::vector<float> logits(static_cast<std::size_t>(m * model.vocab_size()));
    std::vector<double> seconds;
    for (int i = 0; i < repeats + 2; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      // The same position is rewritten each time: the step's cost, not a growing context.
      model.forward_batch(batch.entries, cache, logits);
      const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      if (i >= 2) seconds.push_back(dt.count());
    }
    const double step = median(seconds);
    const double rate = static_cast<double>(m) / step;
    if (base == 0) base = rate;
    fmt::print("{:>4} {:>12.2f} {:>12.1f} {:>9.2f}x\n", m, step * 1e3, rate, rate / base);
  }
  return 0;
}
