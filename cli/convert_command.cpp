// `nibble convert`: bring foreign checkpoints into the Hugging Face layout once,
// so every other path reads one format; or, from a GGUF file, only its tokenizer
// (tokenizer.json + tokenizer_config.json) for tools that need one to count tokens.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "loader/gguf.h"
#include "loader/llama2c.h"
#include "tokenizer/tokenizer_json_writer.h"

namespace nibble::cli {
namespace {

void write_json(const std::filesystem::path& path, const nlohmann::ordered_json& value) {
  std::ofstream out(path, std::ios::binary);
  out << value.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::strict) << '\n';
  if (!out) fail("cannot write {}", path.string());
}

// The GGUF's embedded vocabulary as Hugging Face files: the same ids nibble
// produces, readable by `tokenizers` and transformers' AutoTokenizer.
void convert_gguf_tokenizer(const std::filesystem::path& gguf_path, const std::filesystem::path& out_dir) {
  const GgufFile gguf(gguf_path);
  const BpeTokenizerSpec spec = gguf_tokenizer_spec(gguf);
  std::filesystem::create_directories(out_dir);
  write_json(out_dir / "tokenizer.json", tokenizer_json(spec));
  nlohmann::ordered_json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                                   {"add_bos_token", !spec.prefix.empty()},
                                   {"add_eos_token", !spec.suffix.empty()}};
  const auto token = [&](TokenId id) { return spec.vocab.at(static_cast<std::size_t>(id)); };
  if (spec.bos) config["bos_token"] = token(*spec.bos);
  if (!spec.eos.empty()) config["eos_token"] = token(spec.eos.front());
  if (spec.options.unk) config["unk_token"] = token(*spec.options.unk);
  if (const auto arch = gguf.find_string("general.architecture")) {
    if (const auto context = gguf.find_int(*arch + ".context_length")) config["model_max_length"] = *context;
  }
  if (const auto chat_template = gguf.find_string("tokenizer.chat_template")) config["chat_template"] = *chat_template;
  write_json(out_dir / "tokenizer_config.json", config);
}

}  // namespace

void add_convert_command(CLI::App& app) {
  struct Options {
    std::string from;
    std::string input;
    std::string tokenizer;
    bool tokenizer_only = false;
    std::string out;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a checkpoint into a Hugging Face model folder");
  cmd->add_option("--from", options->from, "Source format: llama2c (model + tokenizer), or gguf (--tokenizer-only)")
      ->required()
      ->check(CLI::IsMember({"llama2c", "gguf"}));
  cmd->add_option("input", options->input, "The checkpoint (llama2.c: model.bin; gguf: model.gguf)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", options->tokenizer, "llama2.c tokenizer.bin")->check(CLI::ExistingFile);
  cmd->add_flag("--tokenizer-only", options->tokenizer_only,
                "Write only tokenizer.json and tokenizer_config.json (gguf: the embedded vocabulary, same ids as "
                "nibble)");
  cmd->add_option("-o,--out", options->out, "Output folder (created)")->required();
  cmd->callback([options] {
    if (options->from == "gguf") {
      if (!options->tokenizer_only) fail("--from gguf converts only the tokenizer: add --tokenizer-only");
      convert_gguf_tokenizer(options->input, options->out);
    } else {
      if (options->tokenizer_only) fail("--tokenizer-only is for --from gguf");
      if (options->tokenizer.empty()) fail("--from llama2c needs --tokenizer (the llama2.c tokenizer.bin)");
      convert_llama2c(options->input, options->tokenizer, options->out);
    }
    std::printf("wrote %s\n", options->out.c_str());
  });
}

}  // namespace nibble::cli
