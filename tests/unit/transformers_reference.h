#pragma once
// A real model file and transformers' outputs for it (recorded by a script in
// tests/reference/): what the SmolLM2 and Gemma 3 reference tests share. The
// model is loaded once per test suite; every prompt's last-position logits are
// checked against transformers' within a bound.
#include <gtest/gtest.h>

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "test_util.h"

namespace nibble::testing {

struct TransformersReference {
  // `reference_json`: {"vocab_size", "cases": [{"prompt", "prompt_ids", "greedy_ids", ...}]};
  // `last_logits`: float32 [cases, vocab].
  TransformersReference(const std::filesystem::path& model_file, const std::filesystem::path& reference_json,
                        const std::filesystem::path& last_logits)
      : reference(nlohmann::json::parse(read_file(reference_json))),
        logits(read_f32_file(last_logits)),
        source(open_model(model_file)),
        backend(0),
        model(source, backend) {}

  nlohmann::json reference;
  std::vector<float> logits;
  ModelSource source;
  kernels::CpuBackend backend;
  engine::DecoderModel model;
};

// Each prompt's last-position logits against transformers', within `bound`
// relative; the errors are recorded as test properties.
inline void expect_last_position_logits(const TransformersReference& ref, engine::Model& model, double bound) {
  const auto vocab = static_cast<std::size_t>(model.vocab_size());
  ASSERT_EQ(ref.reference["vocab_size"].get<std::size_t>(), vocab);
  const auto& cases = ref.reference["cases"];
  ASSERT_GE(cases.size(), 5u);
  ASSERT_EQ(ref.logits.size(), cases.size() * vocab);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto ids = cases[i]["prompt_ids"].get<std::vector<TokenId>>();
    engine::SequenceCache cache(model, static_cast<std::int64_t>(ids.size()));
    std::vector<float> logits(vocab);
    model.forward(ids, 0, cache, engine::Logits::LastRow, logits);
    const std::span<const float> expected(ref.logits.data() + i * vocab, vocab);
    const double error = relative_error(logits, expected);
    EXPECT_LE(error, bound) << "prompt " << i << ": " << cases[i]["prompt"];
    ::testing::Test::RecordProperty("relative_error_" + std::to_string(i), fmt::format("{:.2e}", error));
  }
}

}  // namespace nibble::testing
