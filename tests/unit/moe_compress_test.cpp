// `nibble quantize` / `nibble prune` on mixture-of-experts models (issue 18), on the
// tiny random Mixtral (4 experts, top-2), Qwen2-MoE (8 experts, a shared expert
// with its sigmoid gate, a dense layer) and Qwen3-MoE that tests/reference/make_tiny_moe_models.py
// writes at test time (CTest fixture tiny_moe_models). Checked:
//   - each expert is calibrated on exactly the rows the router sends it (recomputed
//     here from the source router's weights), its down_proj on as many rows;
//   - every expert, the shared expert and attention come back quantized, the router
//     and the shared expert's gate do not, and the logits stay near transformers'
//     float ones (KL bound from a measured value) without being equal to them;
//   - experts with too few or no rows fall back to RTN (exactly RTN's codes), are
//     counted in the report and in the log, and the model loads and runs;
//   - 2:4 pruning (SparseGPT on routed rows, magnitude without calibration, SparseGPT
//     with GPTQ and fallback experts) leaves every expert weight 2:4 after load and
//     the routers untouched; Wanda prunes each expert exactly by its own rows' norms.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/architecture.h"
#include "quant/compressor.h"
#include "quant/gguf_writer.h"
#include "quant/hessian.h"
#include "test_util.h"

namespace nibble::quant {
namespace {

const std::filesystem::path kModels = NIBBLE_TINY_MOE_DIR;

// The largest mean KL(transformers float || nibble, 4-bit g16 GPTQ on 32 x 64
// calibration tokens) per position over tokens.json's 40 tokens. Measured 0.078
// (Mixtral), 0.057 (Qwen2-MoE) and 0.056 (Qwen3-MoE); RTN gives 0.097, 0.070 and
// 0.085, 8-bit GPTQ 2.3e-4 and 2.1e-4 on the first two (the 256x of 16x finer
// steps: the error is rounding noise, not a wrong module). The random tiny models
// are harsh on 4 bits (hidden size 32).
constexpr double kMaxMeanKl = 0.12;
// Enough calibration that every expert of both models gets at least hidden_size rows.
constexpr std::size_t kCalibrationRuns = 32, kCalibrationLength = 64;

// Everything spdlog's default logger says while alive.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~LogCapture() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::find(sinks.begin(), sinks.end(), sink_));
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  // The messages that start with `event` ("compress_moe_layer").
  std::vector<std::string> events(std::string_view event) const {
    std::vector<std::string> out;
    for (const auto& line : sink_->last_formatted()) {
      const auto at = line.find(event);
      if (at != std::string::npos && line.compare(at, event.size() + 1, std::string(event) + " ") == 0) {
        out.push_back(line.substr(at));
      }
    }
    return out;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
};

std::vector<std::int32_t> random_tokens(std::size_t count, std::uint32_t seed, std::int32_t vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, vocab - 1);
  std::vector<std::int32_t> out(count);
  for (auto& id : out) id = pick(rng);
  return out;
}

CalibrationRuns calibration_runs(std::size_t runs, std::size_t length, std::int32_t vocab) {
  CalibrationRuns out;
  for (std::size_t i = 0; i < runs; ++i) {
    out.push_back(random_tokens(length, 1000 + static_cast<std::uint32_t>(i), vocab));
  }
  return out;
}

std::vector<float> floats(const TensorView& tensor) {
  EXPECT_EQ(tensor.dtype, DType::F32);  // the tiny models are saved in float32
  const auto values = tensor.as<float>();
  return {values.begin(), values.end()};
}

// The rows each expert's modules were compressed on, seen through the observer.
struct Observed {
  struct Group {
    std::int64_t rows = 0;
    std::vector<float> inputs;  // gate/up only
  };
  std::map<std::string, Group> by_module;  // keyed by the group's first module
};

struct Compressed {
  CompressionReport report;
  Observed observed;
};

Compressed compress(const ModelSource& source, const CompressionOptions& options, const CalibrationRuns& calibration,
                    const CheckpointSettings& settings, const std::filesystem::path& out) {
  kernels::CpuBackend backend(2);
  CheckpointWriter writer(source, out, settings);
  Compressed run;
  const CalibrationObserver observer = [&](std::span<const std::string> modules, std::span<const float> inputs,
                                           std::int64_t rows) {
    auto& group = run.observed.by_module[modules.front()];
    group.rows = rows;
    group.inputs.assign(inputs.begin(), inputs.end());
  };
  run.report = compress_model(source, options, calibration, backend, writer, {}, observer);
  writer.finish();
  return run;
}

CompressionOptions gptq_4bit() {
  CompressionOptions options;
  options.quantize = QuantMethod::Gptq;
  options.spec = QuantSpec{4, 16, true, 0, ScaleChoice::Search};
  return options;
}

CheckpointSettings gptq_settings() {
  CheckpointSettings settings;
  settings.bits = 4;
  settings.group_size = 16;
  return settings;
}

// Routed-expert, shared-expert and router modules of a model's sparse layers.
struct MoeModules {
  std::vector<std::string> experts;  // every routed expert's gate, up, down
  std::vector<std::string> shared;   // the shared expert's gate, up, down
  std::vector<std::string> routers;  // router, shared_expert_gate
};

MoeModules moe_modules(const ModelConfig& config) {
  const Architecture& arch = architecture_of(config.architecture);
  MoeModules out;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (!config.moe.sparse_layer(layer)) continue;
    for (std::int64_t e = 0; e < config.moe.num_experts; ++e) {
      for (const auto role : {TensorRole::ExpertGate, TensorRole::ExpertUp, TensorRole::ExpertDown}) {
        out.experts.push_back(arch.expert_module(role, layer, e));
      }
    }
    out.routers.push_back(arch.module(TensorRole::Router, layer));
    if (config.moe.shared_expert_intermediate_size > 0) {
      for (const auto role : {TensorRole::SharedGate, TensorRole::SharedUp, TensorRole::SharedDown}) {
        out.shared.push_back(arch.module(role, layer));
      }
      if (config.moe.shared_expert_gate) out.routers.push_back(arch.module(TensorRole::SharedExpertGate, layer));
    }
  }
  return out;
}

// Mean over positions of KL(softmax(want) || softmax(got)), rows of `vocab` logits.
double mean_kl(std::span<const float> want, std::span<const float> got, std::size_t vocab) {
  double total = 0;
  const std::size_t positions = want.size() / vocab;
  for (std::size_t p = 0; p < positions; ++p) {
    const auto log_softmax = [&](std::span<const float> row) {
      const double top = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (const float v : row) sum += std::exp(v - top);
      std::vector<double> out(row.size());
      for (std::size_t i = 0; i < row.size(); ++i) out[i] = row[i] - top - std::log(sum);
      return out;
    };
    const auto lp = log_softmax(want.subspan(p * vocab, vocab));
    const auto lq = log_softmax(got.subspan(p * vocab, vocab));
    for (std::size_t i = 0; i < vocab; ++i) total += std::exp(lp[i]) * (lp[i] - lq[i]);
  }
  return total / static_cast<double>(positions);
}

// nibble's logits for tokens.json's sequence.
std::vector<float> logits_of(const ModelSource& source, const std::vector<TokenId>& tokens) {
  kernels::CpuBackend backend(2);
  engine::DecoderModel model(source, backend);
  engine::SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<std::size_t>(model.vocab_size()));
  model.forward(tokens, 0, cache, engine::Logits::AllRows, logits);
  return logits;
}

std::vector<TokenId> sequence_tokens(const std::filesystem::path& dir) {
  return nlohmann::json::parse(testing::read_file(dir / "tokens.json"))["tokens"].get<std::vector<TokenId>>();
}

// How many of `module`'s codes differ from round-to-nearest of the source weights.
std::int64_t mismatches_against_rtn(const ModelSource& source, const ModelSource& written, const std::string& module,
                                    const QuantSpec& spec) {
  const auto original = source.weights->load(module + ".weight");
  const auto rows = original.shape[0], cols = original.shape[1];
  const auto expected = round_to_nearest(floats(original), rows, cols, spec);
  const auto matrix = written.weights->load_quantized(module);
  EXPECT_TRUE(matrix.has_value()) << module;
  if (!matrix) return rows * cols;
  std::int64_t mismatches = 0;
  for (std::int64_t n = 0; n < rows; ++n) {
    for (std::int64_t k = 0; k < cols; ++k) {
      mismatches += matrix->value(n, k) != expected.weights[static_cast<std::size_t>(n * cols + k)] ? 1 : 0;
    }
  }
  return mismatches;
}

// One tiny model, opened, and a folder for what is written from it.
class TinyMoe : public ::testing::Test {
 protected:
  void open(const std::string& name) {
    dir_ = kModels / name;
    ASSERT_TRUE(std::filesystem::exists(dir_ / "config.json"))
        << dir_ << " is missing: CTest's tiny_moe_models makes it";
    source_ = open_model(dir_);
  }
  std::filesystem::path dir_;
  ModelSource source_;
  testing::TempDir out_;
};

class MoeQuantize : public TinyMoe, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { open(GetParam()); }
};

TEST_P(MoeQuantize, GptqCalibratesEachExpertOnItsRoutedRowsAndStaysCloseToFloat) {
  const ModelConfig& config = source_.config;
  const auto k = static_cast<std::size_t>(config.moe.experts_per_token);
  const CalibrationRuns calibration =
      calibration_runs(kCalibrationRuns, kCalibrationLength, static_cast<std::int32_t>(config.vocab_size));
  LogCapture log;
  const Compressed run = compress(source_, gptq_4bit(), calibration, gptq_settings(), out_ / "q");

  // Each expert's gate/up saw rows the router (recomputed from the source router:
  // softmax keeps the order of the logits, so the top-k logits are the choice) sends
  // it, its down_proj as many rows, and each layer's experts together every token k times.
  const Architecture& arch = architecture_of(config.architecture);
  const auto hidden = static_cast<std::size_t>(config.hidden_size);
  std::int64_t sparse_layers = 0;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (!config.moe.sparse_layer(layer)) continue;
    ++sparse_layers;
    const auto router = floats(source_.weights->load(arch.module(TensorRole::Router, layer) + ".weight"));
    std::int64_t routed = 0;
    for (std::int64_t e = 0; e < config.moe.num_experts; ++e) {
      const auto gate = run.observed.by_module.find(arch.expert_module(TensorRole::ExpertGate, layer, e));
      const auto down = run.observed.by_module.find(arch.expert_module(TensorRole::ExpertDown, layer, e));
      ASSERT_NE(gate, run.observed.by_module.end()) << "layer " << layer << " expert " << e << " got no rows";
      ASSERT_NE(down, run.observed.by_module.end());
      EXPECT_EQ(down->second.rows, gate->second.rows);
      routed += gate->second.rows;
      for (std::int64_t r = 0; r < gate->second.rows; ++r) {
        const float* x = gate->second.inputs.data() + static_cast<std::size_t>(r) * hidden;
        std::vector<std::pair<double, std::int64_t>> scores;
        for (std::int64_t j = 0; j < config.moe.num_experts; ++j) {
          double dot = 0;
          for (std::size_t c = 0; c < hidden; ++c) dot += static_cast<double>(x[c]) * router[j * hidden + c];
          scores.emplace_back(-dot, j);
        }
        std::ranges::sort(scores);
        const bool chosen = std::ranges::any_of(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(k),
                                                [&](const auto& s) { return s.second == e; });
        EXPECT_TRUE(chosen) << "layer " << layer << " expert " << e << " row " << r << " was not routed there";
      }
    }
    EXPECT_EQ(routed, run.report.calibration_tokens * static_cast<std::int64_t>(k)) << "layer " << layer;
  }
  EXPECT_EQ(run.report.experts, sparse_layers * config.moe.num_experts);
  EXPECT_EQ(run.report.expert_fallbacks, 0);
  const auto layer_lines = log.events("compress_moe_layer");
  ASSERT_EQ(static_cast<std::int64_t>(layer_lines.size()), sparse_layers);
  for (const auto& line : layer_lines) EXPECT_NE(line.find(" fallback=0 "), std::string::npos) << line;
  const auto summary = log.events("compress_moe");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_NE(summary[0].find(fmt::format("experts={} calibrated={} fallback=0", run.report.experts, run.report.experts)),
            std::string::npos)
      << summary[0];

  // What was written: experts, shared expert and attention quantized; routers float and unchanged.
  const ModelSource written = open_model(out_ / "q");
  const MoeModules modules = moe_modules(config);
  for (const auto& module : modules.experts) EXPECT_TRUE(written.weights->has_quantized(module)) << module;
  for (const auto& module : modules.shared) EXPECT_TRUE(written.weights->has_quantized(module)) << module;
  for (const auto& module : modules.routers) {
    EXPECT_FALSE(written.weights->has_quantized(module)) << module;
    EXPECT_EQ(floats(written.weights->load(module + ".weight")), floats(source_.weights->load(module + ".weight")))
        << module;
  }
  kernels::CpuBackend backend(2);
  engine::DecoderModel model(written, backend);
  // Attention (4 per layer), every dense MLP and every expert / shared expert module run quantized.
  std::int64_t dense_mlps = 0;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) dense_mlps += config.moe.sparse_layer(layer) ? 0 : 3;
  const auto moe_linears = static_cast<std::int64_t>(modules.experts.size() + modules.shared.size());
  EXPECT_EQ(model.weight_memory().quantized_layers, 4 * config.num_layers + dense_mlps + moe_linears);

  // Close to transformers' float logits, and not equal to them.
  const auto tokens = sequence_tokens(dir_);
  const auto want = testing::read_f32_file(dir_ / "logits.f32");
  const auto got = logits_of(written, tokens);
  ASSERT_EQ(got.size(), want.size());
  const double kl = mean_kl(want, got, static_cast<std::size_t>(config.vocab_size));
  const double relative = testing::relative_error(got, want);
  RecordProperty("mean_kl", fmt::format("{:.3e}", kl));
  RecordProperty("relative_error", fmt::format("{:.3e}", relative));
  std::printf("%s: mean KL %.3e, relative error %.3e\n", GetParam().c_str(), kl, relative);
  EXPECT_LT(kl, kMaxMeanKl);
  EXPECT_GT(relative, 1e-4);  // float runs agree within 1e-6 (moe_reference_test): quantization happened
  // GPTQ from each expert's own rows beats rounding the same weights without them
  // (min-max scales, GPTQ's reference rounding), and is no more than a little behind
  // RTN's data-free scale search: on these random-weight experts (a few routed rows
  // each) GPTQ has little to gain, and since the symmetric search may mirror its grid
  // (negative scales) that RTN is as good as GPTQ on mixtral_moe (KL 0.0567 vs 0.0590;
  // before, 0.0968 vs 0.0779). Trained weights keep the strict ordering
  // (quant_quality_stories260k: GPTQ 0.12, RTN 0.20).
  const auto rtn_kl = [&](ScaleChoice scales, const std::string& name) {
    CompressionOptions rtn = gptq_4bit();
    rtn.quantize = QuantMethod::Rtn;
    rtn.spec.scales = scales;
    CheckpointSettings rtn_settings = gptq_settings();
    rtn_settings.method = "rtn";
    compress(source_, rtn, {}, rtn_settings, out_ / name);
    const double value =
        mean_kl(want, logits_of(open_model(out_ / name), tokens), static_cast<std::size_t>(config.vocab_size));
    RecordProperty(name + "_mean_kl", fmt::format("{:.3e}", value));
    std::printf("%s: %s mean KL %.3e\n", GetParam().c_str(), name.c_str(), value);
    return value;
  };
  EXPECT_LT(kl, rtn_kl(ScaleChoice::MinMax, "rtn_minmax"));
  EXPECT_LT(kl, 1.1 * rtn_kl(ScaleChoice::Search, "rtn"));
}

INSTANTIATE_TEST_SUITE_P(TinyMoe, MoeQuantize, ::testing::Values("mixtral_moe", "qwen2_moe_shared", "qwen3_moe_qknorm"));

class MoeFallback : public TinyMoe {
 protected:
  void SetUp() override { open("mixtral_moe"); }
};

// One calibration token reaches 2 of the 4 experts of each layer with one row each:
// below the default minimum (hidden_size rows), so all of them fall back to RTN.
TEST_F(MoeFallback, TooFewRowsFallBackToRtnAndAreCounted) {
  const ModelConfig& config = source_.config;
  LogCapture log;
  const Compressed run = compress(source_, gptq_4bit(), {{5}}, gptq_settings(), out_ / "q");
  EXPECT_EQ(run.report.experts, config.num_layers * config.moe.num_experts);
  EXPECT_EQ(run.report.expert_fallbacks, run.report.experts);
  const auto layer_lines = log.events("compress_moe_layer");
  ASSERT_EQ(static_cast<std::int64_t>(layer_lines.size()), config.num_layers);
  for (const auto& line : layer_lines) {
    EXPECT_NE(line.find("experts=4 calibrated=0 fallback=4 no_rows=2 few_rows=2 min_rows=32"), std::string::npos)
        << line;
  }
  const auto summary = log.events("compress_moe");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_NE(summary[0].find("experts=8 calibrated=0 fallback=8"), std::string::npos) << summary[0];

  const ModelSource written = open_model(out_ / "q");
  for (const auto& module : moe_modules(config).experts) {
    EXPECT_EQ(mismatches_against_rtn(source_, written, module, gptq_4bit().spec), 0) << module;
  }
  const auto logits = logits_of(written, sequence_tokens(dir_));
  EXPECT_TRUE(std::ranges::all_of(logits, [](float v) { return std::isfinite(v); }));
}

// With a minimum of one row, exactly the experts the router never chose fall back.
TEST_F(MoeFallback, ExpertsWithNoRowsFallBackToRtn) {
  const ModelConfig& config = source_.config;
  CompressionOptions options = gptq_4bit();
  options.expert_min_rows = 1;
  LogCapture log;
  const Compressed run = compress(source_, options, {{5}}, gptq_settings(), out_ / "q");
  const ModelSource written = open_model(out_ / "q");
  const Architecture& arch = architecture_of(config.architecture);
  std::int64_t unreached = 0;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    std::int64_t reached = 0;
    for (std::int64_t e = 0; e < config.moe.num_experts; ++e) {
      const std::string gate = arch.expert_module(TensorRole::ExpertGate, layer, e);
      if (run.observed.by_module.contains(gate)) {
        ++reached;
        EXPECT_EQ(run.observed.by_module.at(gate).rows, 1);
        continue;
      }
      ++unreached;
      for (const auto role : {TensorRole::ExpertGate, TensorRole::ExpertUp, TensorRole::ExpertDown}) {
        const std::string module = arch.expert_module(role, layer, e);
        EXPECT_EQ(mismatches_against_rtn(source_, written, module, options.spec), 0) << module;
      }
    }
    EXPECT_EQ(reached, config.moe.experts_per_token) << "layer " << layer;
  }
  EXPECT_EQ(run.report.expert_fallbacks, unreached);
  const auto summary = log.events("compress_moe");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_NE(summary[0].find(fmt::format("fallback={} min_rows=1", unreached)), std::string::npos) << summary[0];
  const auto logits = logits_of(written, sequence_tokens(dir_));
  EXPECT_TRUE(std::ranges::all_of(logits, [](float v) { return std::isfinite(v); }));
}

// Every weight of `module` after load keeps at most 2 nonzeros in each aligned group of 4.
bool obeys_2_4(const ModelSource& written, const std::string& module) {
  std::vector<float> values;
  std::size_t cols = 0;
  if (const auto matrix = written.weights->load_quantized(module)) {  // pruned, then quantized
    cols = static_cast<std::size_t>(matrix->cols);
    values.resize(static_cast<std::size_t>(matrix->rows) * cols);
    for (std::int64_t n = 0; n < matrix->rows; ++n) matrix->dequantize_row(n, values.data() + n * matrix->cols);
  } else {
    const auto tensor = written.weights->load(module + ".weight");
    values = floats(tensor);
    cols = static_cast<std::size_t>(tensor.shape[1]);
  }
  for (std::size_t row = 0; row < values.size() / cols; ++row) {
    for (std::size_t c = 0; c < cols; c += 4) {
      int nonzero = 0;
      for (std::size_t i = c; i < c + 4; ++i) nonzero += values[row * cols + i] != 0.0f ? 1 : 0;
      if (nonzero > 2) return false;
    }
  }
  return true;
}

void expect_pruned_2_4(const ModelSource& source, const ModelSource& written) {
  const MoeModules modules = moe_modules(source.config);
  for (const auto& module : modules.experts) EXPECT_TRUE(obeys_2_4(written, module)) << module;
  for (const auto& module : modules.shared) EXPECT_TRUE(obeys_2_4(written, module)) << module;
  for (const auto& module : modules.routers) {
    EXPECT_EQ(floats(written.weights->load(module + ".weight")), floats(source.weights->load(module + ".weight")))
        << module;
  }
  const auto logits = logits_of(written, sequence_tokens(source.path));
  EXPECT_TRUE(std::ranges::all_of(logits, [](float v) { return std::isfinite(v); }));
}

CheckpointSettings pruned_2_4_settings(const char* method) {
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.sparsity_structure = "2:4";
  settings.pruning_method = method;
  settings.sparsity = 0.5;
  return settings;
}

TEST(MoePrune, SparseGpt24OnRoutedRowsAndMagnitudeWithoutCalibration) {
  const auto qwen = kModels / "qwen2_moe_shared";
  const auto mixtral = kModels / "mixtral_moe";
  ASSERT_TRUE(std::filesystem::exists(qwen / "config.json")) << "CTest's tiny_moe_models makes it";
  testing::TempDir out;
  {
    SCOPED_TRACE("sparsegpt, qwen2_moe_shared");
    const ModelSource source = open_model(qwen);
    CompressionOptions options;
    options.prune = PruneMethod::SparseGpt;
    options.sparsity = SparsitySpec::n_of_m(2, 4);
    const Compressed run = compress(
        source, options,
        calibration_runs(kCalibrationRuns, kCalibrationLength, static_cast<std::int32_t>(source.config.vocab_size)),
        pruned_2_4_settings("sparsegpt"), out / "sparsegpt");
    EXPECT_EQ(run.report.expert_fallbacks, 0);
    expect_pruned_2_4(source, open_model(out / "sparsegpt"));
  }
  {
    SCOPED_TRACE("magnitude, mixtral_moe");
    const ModelSource source = open_model(mixtral);
    CompressionOptions options;
    options.prune = PruneMethod::Magnitude;
    options.sparsity = SparsitySpec::n_of_m(2, 4);
    compress(source, options, {}, pruned_2_4_settings("magnitude"), out / "magnitude");
    expect_pruned_2_4(source, open_model(out / "magnitude"));
  }
}

// Wanda's column norms per expert come from its routed rows too (unstructured 50%).
TEST(MoePrune, WandaPrunesEachExpertByTheNormsOfItsOwnRows) {
  const ModelSource source = open_model(kModels / "mixtral_moe");
  testing::TempDir out;
  CompressionOptions options;
  options.prune = PruneMethod::Wanda;
  options.sparsity = SparsitySpec::unstructured(0.5);
  CheckpointSettings settings = pruned_2_4_settings("wanda");
  settings.sparsity_structure = "unstructured";
  const Compressed run = compress(
      source, options,
      calibration_runs(kCalibrationRuns, kCalibrationLength, static_cast<std::int32_t>(source.config.vocab_size)),
      settings, out / "wanda");
  EXPECT_EQ(run.report.expert_fallbacks, 0);
  // Each expert module is exactly Wanda with the norms of the inputs the observer saw
  // for it (its routed rows; down_proj: its own gate/up's activation on them).
  const ModelSource written = open_model(out / "wanda");
  const ModelConfig& config = source.config;
  const Architecture& arch = architecture_of(config.architecture);
  kernels::CpuBackend backend(1);
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    for (std::int64_t e = 0; e < config.moe.num_experts; ++e) {
      for (const auto role : {TensorRole::ExpertGate, TensorRole::ExpertUp, TensorRole::ExpertDown}) {
        const std::string module = arch.expert_module(role, layer, e);
        const std::string group = arch.expert_module(
            role == TensorRole::ExpertDown ? TensorRole::ExpertDown : TensorRole::ExpertGate, layer, e);
        const auto original = source.weights->load(module + ".weight");
        const auto rows = original.shape[0], cols = original.shape[1];
        const auto& seen = run.observed.by_module.at(group);
        Hessian hessian(cols);
        hessian.add(seen.inputs, seen.rows, backend);
        const auto expected = prune_wanda(floats(original), rows, cols, hessian.column_norms(), options.sparsity);
        EXPECT_EQ(floats(written.weights->load(module + ".weight")), expected) << module;
      }
    }
  }
  const auto logits = logits_of(written, sequence_tokens(source.path));
  EXPECT_TRUE(std::ranges::all_of(logits, [](float v) { return std::isfinite(v); }));
}

// SparseGPT and GPTQ in one sweep, with calibration so short that some experts fall
// back to magnitude pruning and RTN: both kinds stay 2:4 once quantized.
TEST(MoePrune, SparseGptWithGptqAndFallbacksStay24) {
  const ModelSource source = open_model(kModels / "qwen2_moe_shared");
  testing::TempDir out;
  CompressionOptions options = gptq_4bit();
  options.prune = PruneMethod::SparseGpt;
  options.sparsity = SparsitySpec::n_of_m(2, 4);
  CheckpointSettings settings = pruned_2_4_settings("sparsegpt");
  settings.bits = 4;
  settings.group_size = 16;
  // 128 tokens: 256 routed rows over 8 experts, about the 32 (hidden_size) the default asks.
  const Compressed run = compress(
      source, options, calibration_runs(1, 128, static_cast<std::int32_t>(source.config.vocab_size)), settings,
      out / "q");
  EXPECT_GT(run.report.expert_fallbacks, 0);
  EXPECT_LT(run.report.expert_fallbacks, run.report.experts);
  const ModelSource written = open_model(out / "q");
  for (const auto& module : moe_modules(source.config).experts) EXPECT_TRUE(written.weights->has_quantized(module));
  expect_pruned_2_4(source, written);
}

// GGUF output would have to stack each layer's experts into 3-D tensors: refused by name.
TEST(MoeCompress, GgufOutputIsRefused) {
  const ModelSource source = open_model(kModels / "mixtral_moe");
  testing::TempDir out;
  GgufWriter writer(source, out / "model.gguf", GgufRecipe::parse("Q4_0"), "test");
  kernels::CpuBackend backend(1);
  testing::expect_error([&] { compress_model(source, gptq_4bit(), {{5}}, backend, writer); },
                        {"mixture-of-experts", "MixtralForCausalLM", "Hugging Face folder"});
}

}  // namespace
}  // namespace nibble::quant
