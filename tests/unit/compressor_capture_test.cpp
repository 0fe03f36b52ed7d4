// The calibration inputs the compressor quantizes each module on, pinned bit for
// bit: a fixture records a hash of every group's inputs (q/k/v, o, gate/up, down
// of each layer) for GPTQ on stories260K, so a change to how the compressor runs
// the model (it runs the serving engine's own blocks) cannot silently change what
// it calibrates on. The scalar kernels make the floats the same on every x86 CPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "quant/compressor.h"
#include "stories_model.h"

namespace nibble::quant {
namespace {

const std::filesystem::path kFixture =
    std::filesystem::path(NIBBLE_SOURCE_DIR) / "tests/quant/fixtures/stories260k_calibration_inputs.json";

std::uint64_t fnv1a(std::span<const float> values) {
  std::uint64_t hash = 14695981039346656037ull;
  const auto* bytes = reinterpret_cast<const unsigned char*>(values.data());
  for (std::size_t i = 0; i < values.size_bytes(); ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  return hash;
}

TEST(CompressorCapture, CalibrationInputsOfEveryModuleGroupAreThePinnedOnes) {
  // Before the first kernel runs: the ISA is chosen once per process.
  ::setenv("NIBBLE_CPU_ISA", "scalar", 1);
  testing::StoriesModel stories;
  const auto ids = stories.tokenizer->encode(
      "Once upon a time there was a little girl named Lily. She loved to play in the park with her dog. One day "
      "the sun was hot and they went to the lake to swim.",
      false);
  // Runs of unequal lengths, each from position 0.
  const CalibrationRuns runs{{ids.begin(), ids.begin() + 23}, {ids.begin() + 5, ids.end()}, {ids.begin() + 11, ids.begin() + 20}};
  CompressionOptions options;
  options.quantize = QuantMethod::Gptq;
  options.spec = QuantSpec{.bits = 4, .group_size = 32, .sym = false, .min_zero = 0};
  CheckpointSettings settings;
  settings.format = CheckpointFormat::CompressedTensors;
  settings.bits = 4;
  settings.group_size = 32;
  settings.sym = false;
  testing::TempDir out;
  kernels::CpuBackend backend(1);
  CheckpointWriter writer(stories.source, out / "gptq", settings);
  nlohmann::json captured = nlohmann::json::array();
  compress_model(stories.source, options, runs, backend, writer, {},
                 [&](std::span<const std::string> modules, std::span<const float> inputs, std::int64_t rows) {
                   std::string names;
                   for (const auto& m : modules) names += (names.empty() ? "" : ",") + m;
                   captured.push_back({{"modules", names},
                                       {"rows", rows},
                                       {"cols", static_cast<std::int64_t>(inputs.size()) / rows},
                                       {"fnv1a64", fmt::format("{:016x}", fnv1a(inputs))}});
                 });
  if (const char* update = std::getenv("NIBBLE_UPDATE_FIXTURES"); update != nullptr && *update == '1') {
    std::ofstream(kFixture) << captured.dump(1) << "\n";
    GTEST_SKIP() << "fixture written: " << kFixture;
  }
  std::ifstream in(kFixture);
  ASSERT_TRUE(in) << "missing " << kFixture;
  const auto pinned = nlohmann::json::parse(in);
  EXPECT_EQ(captured.size(), 4u * 5u) << "4 groups in each of stories260K's 5 layers";
  ASSERT_EQ(captured.size(), pinned.size());
  for (std::size_t i = 0; i < pinned.size(); ++i) EXPECT_EQ(captured[i], pinned[i]) << "group " << i;
}

}  // namespace
}  // namespace nibble::quant
