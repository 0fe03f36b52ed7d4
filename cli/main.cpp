// nibble: serve compressed LLMs. Subcommands live in their own files; this file
// only wires them up and turns errors into one clear message and exit code.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "kernels/backend_factory.h"

int main(int argc, char** argv) {
  CLI::App app{"nibble: an inference server for compressed (quantized and pruned) LLMs"};
  app.set_version_flag("--version", "nibble " NIBBLE_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global flags (--log-level) may also follow the subcommand
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "text (event key=value) or json (one object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  app.parse_complete_callback([&log_level, &log_format] { nibble::log::init(log_level, log_format); });
  nibble::cli::add_generate_command(app);
  nibble::cli::add_inspect_command(app);
  nibble::cli::add_convert_command(app);
  nibble::cli::add_serve_command(app);
  nibble::cli::add_bench_command(app);
  nibble::cli::add_plan_command(app);
  nibble::cli::add_quantize_command(app);
  nibble::cli::add_prune_command(app);
  nibble::cli::add_eval_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const nibble::kernels::DeviceUnavailable& e) {
    // A distinct code, so scripts and orchestrators can tell "wrong machine" from a bad model or flag.
    std::fprintf(stderr, "nibble: error: %s\n", e.what());
    return 2;
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "nibble: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
