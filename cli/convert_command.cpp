// `nibble convert`: bring foreign checkpoints into the Hugging Face layout once,
// so every other path reads one format.
#include <cstdio>

#include "cli/commands.h"
#include "common/error.h"
#include "loader/llama2c.h"

namespace nibble::cli {

void add_convert_command(CLI::App& app) {
  struct Options {
    std::string from;
    std::string input;
    std::string tokenizer;
    std::string out;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a checkpoint into a Hugging Face model folder");
  cmd->add_option("--from", options->from, "Source format")->required()->check(CLI::IsMember({"llama2c"}));
  cmd->add_option("input", options->input, "The checkpoint (llama2.c: model.bin)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", options->tokenizer, "llama2.c tokenizer.bin")->required()->check(CLI::ExistingFile);
  cmd->add_option("-o,--out", options->out, "Output folder (created)")->required();
  cmd->callback([options] {
    convert_llama2c(options->input, options->tokenizer, options->out);
    std::printf("wrote %s\n", options->out.c_str());
  });
}

}  // namespace nibble::cli
