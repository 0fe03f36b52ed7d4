#pragma once
// stories260K (../shared) converted to a Hugging Face folder and loaded on one CPU
// thread: the small real model the scheduler and server tests run on.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/decoder_model.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/llama2c.h"
#include "loader/model_source.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace nibble::testing {

inline const std::filesystem::path kStoriesDir = std::filesystem::path(NIBBLE_SHARED_DIR) / "models/stories260K";

// Line 1 of greedy_bos_128.txt: the 128 greedy token ids after BOS (llama2.c's own run).
inline std::vector<TokenId> reference_greedy_ids() {
  std::ifstream in(kStoriesDir / "greedy_bos_128.txt");
  if (!in) ADD_FAILURE() << "missing " << (kStoriesDir / "greedy_bos_128.txt") << ": is ../shared beside the checkout?";
  std::string line;
  std::getline(in, line);
  return nlohmann::json::parse(line).get<std::vector<TokenId>>();
}

struct StoriesModel {
  StoriesModel()
      : source(convert_and_open(dir)), tokenizer(load_tokenizer(dir.path())), backend(1), model(source, backend) {}

  TempDir dir;
  ModelSource source;
  std::unique_ptr<Tokenizer> tokenizer;
  kernels::CpuBackend backend;
  engine::DecoderModel model;

  // stories260K converted into `into` and opened.
  static ModelSource convert_and_open(const TempDir& into) {
    convert_llama2c(kStoriesDir / "stories260K.bin", kStoriesDir / "tok512.bin", into.path());
    return open_model(into.path());
  }
};

}  // namespace nibble::testing
