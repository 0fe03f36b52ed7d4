#include "quant/calibration.h"

#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace nibble::quant {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void check_ids(std::span<const std::int32_t> ids, const Tokenizer& tokenizer, const std::filesystem::path& path) {
  const auto vocab = static_cast<std::int64_t>(tokenizer.vocab_size());
  for (const auto id : ids) {
    if (id < 0 || id >= vocab) fail("{}: token id {} is outside the vocabulary of {}", path.string(), id, vocab);
  }
}

std::vector<std::vector<std::int32_t>> read_id_runs(const std::filesystem::path& path, const Tokenizer& tokenizer,
                                                    std::int64_t samples, std::int64_t seq_len) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", path.string(), e.what());
  }
  if (!json.is_array()) fail("{}: expected a JSON array of arrays of token ids", path.string());
  std::vector<std::vector<std::int32_t>> runs;
  for (const auto& item : json) {
    if (static_cast<std::int64_t>(runs.size()) == samples) break;
    if (!item.is_array()) fail("{}: expected a JSON array of arrays of token ids", path.string());
    std::vector<std::int32_t> run;
    for (const auto& id : item) {
      if (!id.is_number_integer()) fail("{}: a token id is not an integer", path.string());
      if (static_cast<std::int64_t>(run.size()) == seq_len) break;
      run.push_back(id.get<std::int32_t>());
    }
    check_ids(run, tokenizer, path);
    if (!run.empty()) runs.push_back(std::move(run));
  }
  return runs;
}

}  // namespace

std::vector<std::int32_t> read_token_stream(const std::filesystem::path& path, const Tokenizer& tokenizer,
                                            bool add_special) {
  const std::string text = read_file(path);
  if (text.empty()) fail("{} is empty", path.string());
  auto ids = tokenizer.encode(text, add_special);
  check_ids(ids, tokenizer, path);
  return ids;
}

std::vector<std::vector<std::int32_t>> read_calibration_runs(const std::filesystem::path& path,
                                                             const Tokenizer& tokenizer, std::int64_t samples,
                                                             std::int64_t seq_len) {
  if (samples <= 0 || seq_len <= 0) fail("calibration needs a positive sample count and sequence length");
  std::vector<std::vector<std::int32_t>> runs;
  if (path.extension() == ".json") {
    runs = read_id_runs(path, tokenizer, samples, seq_len);
  } else {
    const auto ids = read_token_stream(path, tokenizer);
    for (std::size_t start = 0; start + static_cast<std::size_t>(seq_len) <= ids.size() &&
                                static_cast<std::int64_t>(runs.size()) < samples;
         start += static_cast<std::size_t>(seq_len)) {
      runs.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(start),
                        ids.begin() + static_cast<std::ptrdiff_t>(start) + seq_len);
    }
    if (runs.empty()) {
      fail("{} holds {} tokens, fewer than one run of --seq-len {}", path.string(), ids.size(), seq_len);
    }
  }
  if (runs.empty()) fail("{} holds no calibration runs", path.string());
  return runs;
}

}  // namespace nibble::quant
