#pragma once
// Each nibble subcommand registers its options and its action on the CLI11 app.
#include <CLI/CLI.hpp>

namespace nibble::cli {

void add_generate_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_prune_command(CLI::App& app);
void add_eval_command(CLI::App& app);

}  // namespace nibble::cli
