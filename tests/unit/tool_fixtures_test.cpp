// Checkpoints written by GPTQModel, AutoAWQ and llm-compressor (tests/quant/
// make_tool_fixtures.py), run through the whole engine: nibble's all-position logits
// must match the logits of a float32 transformers model holding the weights that the
// tool's own unpacking code dequantized. Quantized layers must stay packed.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(NIBBLE_SOURCE_DIR) / "tests" / "quant" / "fixtures";

// The manifest is committed with the fixtures, so a missing one fails the test
// (through json::parse) instead of skipping it.
json read_manifest() { return json::parse(testing::read_file(kFixtures / "manifest.json")); }

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  try {
    const json manifest = read_manifest();
    for (const auto& fixture : manifest.at("fixtures")) names.push_back(fixture.at("name").get<std::string>());
  } catch (const std::exception&) {
    names.push_back("manifest_unreadable");  // the test body reports why
  }
  return names;
}

json fixture_record(const std::string& name) {
  const json manifest = read_manifest();
  for (const auto& fixture : manifest.at("fixtures")) {
    if (fixture.at("name") == name) return fixture;
  }
  throw std::runtime_error("fixture " + name + " is not in the manifest");
}

class ToolFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ToolFixture, LogitsMatchTheToolsDequantizedReference) {
  const json record = fixture_record(GetParam());
  const fs::path folder = kFixtures / record.at("folder").get<std::string>();
  const auto inputs = record.contains("input_ids") ? record["input_ids"] : read_manifest().at("input_ids");
  const auto& logits_files = record.at("logits_files");
  ASSERT_EQ(inputs.size(), logits_files.size());

  const ModelSource source = open_model(folder);
  kernels::CpuBackend backend(2);
  DecoderModel model(source, backend);
  const auto vocab = static_cast<std::size_t>(model.vocab_size());

  // Every module the tool quantized runs on a packed kernel, none expanded.
  const auto quantized = record.value("quantized_modules", json::array()).size();
  const bool weight_quantized = record.value("bits", 16) < 16;
  if (weight_quantized) {
    EXPECT_EQ(model.weight_memory().quantized_layers, static_cast<std::int64_t>(quantized));
    EXPECT_LE(model.weight_memory().quantized_resident, model.weight_memory().quantized_file * 115 / 100);
  }
  // 2:4-pruned INT4 weights run on the kernel that skips the pruned half.
  if (weight_quantized && record.value("sparsity", json()) == "2:4") {
    int sparse_kernels = 0;
    for (const auto& [kind, count] : model.linear_kinds()) {
      if (kind.find("2:4-sparse") != std::string::npos) sparse_kernels += count;
    }
    EXPECT_EQ(sparse_kernels, static_cast<int>(quantized));
  }

  for (std::size_t i = 0; i < inputs.size(); ++i) {
    SCOPED_TRACE("input " + std::to_string(i));
    const auto tokens = inputs[i].get<std::vector<TokenId>>();
    const std::vector<float> expected = testing::read_f32_file(folder / logits_files[i].get<std::string>());
    ASSERT_EQ(expected.size(), tokens.size() * vocab);

    SequenceCache cache(model, static_cast<std::int64_t>(tokens.size()));
    std::vector<float> logits(expected.size());
    model.forward(tokens, 0, cache, Logits::AllRows, logits);
    EXPECT_LE(testing::relative_error(logits, expected), 2e-5);

    // Decode steps (M = 1) take the GEMV path; they must agree with the batched pass.
    SequenceCache stepped(model, static_cast<std::int64_t>(tokens.size()));
    std::vector<float> last(vocab);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      model.forward(std::span(tokens).subspan(t, 1), static_cast<std::int64_t>(t), stepped, Logits::LastRow, last);
      ASSERT_LE(testing::relative_error(last, std::span<const float>(expected).subspan(t * vocab, vocab)), 2e-5)
          << "position " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tools, ToolFixture, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) { return param_info.param; });

}  // namespace
}  // namespace nibble::engine
