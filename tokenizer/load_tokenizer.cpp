#include "common/error.h"
#include "loader/gguf.h"
#include "tokenizer/readers.h"
#include "tokenizer/tokenizer.h"

namespace nibble {

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) {
    if (fs::exists(model_path / "tokenizer.json")) return load_hf_tokenizer(model_path / "tokenizer.json");
    if (fs::exists(model_path / "tokenizer.model")) return load_sentencepiece_tokenizer(model_path / "tokenizer.model");
    fail("{}: no tokenizer.json or tokenizer.model in this folder", model_path.string());
  }
  if (!fs::exists(model_path, ec)) fail("{} does not exist", model_path.string());
  if (model_path.extension() == ".gguf") return load_gguf_tokenizer(GgufFile(model_path));
  if (model_path.filename() == "tokenizer.json") return load_hf_tokenizer(model_path);
  if (model_path.extension() == ".model") return load_sentencepiece_tokenizer(model_path);
  fail("{}: not a tokenizer (expected a .gguf file, a tokenizer.json or .model, or a model folder)",
       model_path.string());
}

}  // namespace nibble
