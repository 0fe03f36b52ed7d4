// `nibble quantize` and `nibble prune`: the offline compressor. Both read an
// unquantized Hugging Face folder, run quant::compress_model layer by layer and
// write a folder other tools load (GPTQ / compressed-tensors).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/process_stats.h"
#include "cli/progress_bar.h"
#include "common/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "quant/bit_allocation.h"
#include "quant/calibration.h"
#include "quant/compressor.h"
#include "quant/gguf_writer.h"
#include "tokenizer/tokenizer.h"

namespace nibble::cli {
namespace {

struct CompressFlags {
  std::string model;
  std::string out;
  std::string method;
  std::string sparsity;
  std::string then_quantize;  // prune only: "gptq" or "rtn"
  std::string format;         // quantize only: "gptq", "compressed-tensors" or "gguf"
  std::string gguf_type;      // --format gguf: the recipe (Q4_K, Q4_K_M, ...)
  double target_bpw = 0;      // --format gguf: a mix chosen from data instead (0: none)
  int bits = 4;
  std::int64_t group_size = 128;
  bool asym = false;
  bool sym_flag = false;  // --sym: the default, accepted for clarity
  bool act_order = false;
  bool static_groups = false;
  bool natural_order = false;
  bool keep_embeddings = false;
  int embedding_bits = 8;
  std::string scales = "search";
  std::string calib;
  std::int64_t calib_samples = 128;
  std::int64_t seq_len = 512;
  std::int64_t expert_min_rows = 0;
  double damp = 0.01;
  int threads = 0;
  bool json = false;
};

void add_quantization_flags(CLI::App* cmd, CompressFlags& flags) {
  cmd->add_option("--bits", flags.bits, "Bits per weight")->check(CLI::IsMember({2, 3, 4, 8}))->capture_default_str();
  cmd->add_option("--group-size", flags.group_size, "Input columns per quantization group (-1: per output channel)")
      ->check([](const std::string& text) -> std::string {
        const auto value = std::stoll(text);
        return value == -1 || value > 0 ? "" : "must be -1 or positive";
      })
      ->capture_default_str();
  auto* sym = cmd->add_flag("--sym", flags.sym_flag, "Symmetric quantization (the default)");
  cmd->add_flag("--asym", flags.asym, "Asymmetric quantization (a zero point per group)")->excludes(sym);
  cmd->add_flag("--act-order", flags.act_order, "GPTQ: quantize columns by decreasing activation energy (desc_act)");
  cmd->add_flag("--static-groups", flags.static_groups, "GPTQ with --act-order: fix group scales before the sweep");
  cmd->add_flag("--natural-order", flags.natural_order,
                "GPTQ without --act-order: sweep columns in plain order instead of group-aware order (GAR)");
  cmd->add_option("--scales", flags.scales,
                  "Group scales: search (least squared error over clipped and full-range candidates, weighted by "
                  "H_jj for GPTQ and, with --calib, by the activations' mean x^2 for RTN) or minmax (GPTQ's "
                  "reference absmax/min-max)")
      ->check(CLI::IsMember({"search", "minmax"}))
      ->capture_default_str();
  cmd->add_option("--damp", flags.damp, "GPTQ/SparseGPT: diagonal damping, as a share of the mean diagonal")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
}

void add_common_flags(CLI::App* cmd, CompressFlags& flags) {
  cmd->add_option("--model", flags.model,
                  "Unquantized Hugging Face model folder (F32/F16/BF16); for --format gguf an F16/BF16/F32 .gguf file")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("-o,--out", flags.out, "Output folder (must not exist or be empty); --format gguf: the .gguf file")
      ->required();
  cmd->add_option("--calib", flags.calib,
                  "Calibration text file, or .json arrays of token ids (quantize --method rtn: weights each group's "
                  "scale search, or each GGUF block's fit, by the activations' mean x^2 per input column, "
                  "llama.cpp's imatrix)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--calib-samples", flags.calib_samples, "Calibration runs")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--seq-len", flags.seq_len, "Tokens per calibration run")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--expert-min-rows", flags.expert_min_rows,
                  "Mixture of experts: an expert routed fewer calibration tokens is compressed from its weights "
                  "alone (RTN / magnitude); 0: the hidden size")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--threads", flags.threads, "Worker threads (0: one per core)")->capture_default_str();
  cmd->add_flag("--json", flags.json, "Print the report as JSON");
}

quant::SparsitySpec parse_sparsity(const std::string& text) {
  if (text == "2:4") return quant::SparsitySpec::n_of_m(2, 4);
  if (text.find(':') != std::string::npos) fail("--sparsity {}: only the 2:4 pattern is supported", text);
  double fraction = 0;
  try {
    std::size_t used = 0;
    fraction = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
  } catch (const std::exception&) {
    fail("--sparsity {}: expected a fraction such as 0.5 or the pattern 2:4", text);
  }
  if (!(fraction > 0.0 && fraction < 1.0)) fail("--sparsity {}: the fraction must be between 0 and 1", text);
  return quant::SparsitySpec::unstructured(fraction);
}

std::uint64_t folder_bytes(const std::filesystem::path& folder) {
  if (std::filesystem::is_regular_file(folder)) return std::filesystem::file_size(folder);  // a GGUF file
  std::uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") bytes += entry.file_size();
  }
  return bytes;
}

void run_compression(const CompressFlags& flags, quant::CompressionOptions options,
                     quant::CheckpointSettings settings) {
  const bool gguf = flags.format == "gguf";
  // RTN into GGUF blocks uses calibration, when given, as block-fitting importance.
  if (gguf && options.quantize == quant::QuantMethod::Rtn && !flags.calib.empty()) options.rtn_importance = true;
  const auto start = std::chrono::steady_clock::now();
  ModelSource source = open_model(flags.model);
  quant::CalibrationRuns calibration;
  if (options.needs_calibration()) {
    if (flags.calib.empty()) fail("--method {} needs calibration data: pass --calib FILE", flags.method);
    const auto tokenizer = load_tokenizer(source.path);
    calibration = quant::read_calibration_runs(flags.calib, *tokenizer, flags.calib_samples, flags.seq_len);
  }
  settings.tool_version = NIBBLE_VERSION;
  options.expert_min_rows = flags.expert_min_rows;
  kernels::CpuBackend backend(flags.threads);
  std::unique_ptr<quant::ModuleWriter> writer_owner;
  nlohmann::json allocation_json;
  if (gguf) {
    quant::GgufRecipe recipe = quant::GgufRecipe::parse(flags.target_bpw > 0 ? "Q4_K" : flags.gguf_type);
    if (flags.target_bpw > 0) {
      // Each module's cost at each type from the float model's calibration inputs,
      // then the greedy mix (quant/bit_allocation.h); the token embedding and output
      // keep Q4_K's rule (Q6_K, or Q8_0 for rows that are not whole 256-blocks).
      const auto costs = quant::measure_block_costs(source, calibration, backend, 64, progress_bar());
      const quant::Allocation allocation = quant::allocate_bits(costs, flags.target_bpw);
      std::map<std::string, int> counts;
      for (const auto& module : costs) {
        const auto type = allocation.types.at(module.module);
        ++counts[std::string(ggml_type_name(type))];
        std::string errors;
        for (const auto& option : module.options) {
          errors += fmt::format(" {}={:.4g}", ggml_type_name(option.type), option.error);
        }
        // The choice and what it was made from, on stderr (stdout may be --json).
        std::fprintf(stderr, "target_bpw module=%s type=%s weighted_error:%s\n", module.module.c_str(),
                     std::string(ggml_type_name(type)).c_str(), errors.c_str());
      }
      std::string mix;
      for (const auto& [type, n] : counts) mix += fmt::format("{}{} x{}", mix.empty() ? "" : ", ", type, n);
      std::fprintf(stderr, "target_bpw target=%g achieved=%.4f modules=%zu mix=\"%s\"\n", flags.target_bpw,
                   allocation.bits_per_weight, costs.size(), mix.c_str());
      allocation_json = {{"target_bpw", flags.target_bpw}, {"achieved_bpw", allocation.bits_per_weight},
                         {"mix", mix}, {"types", nlohmann::json::object()}};
      for (const auto& [module, type] : allocation.types) {
        allocation_json["types"][module] = std::string(ggml_type_name(type));
      }
      recipe.module_types = allocation.types;
    }
    writer_owner = std::make_unique<quant::GgufWriter>(source, flags.out, std::move(recipe), NIBBLE_VERSION);
  } else {
    writer_owner = std::make_unique<quant::CheckpointWriter>(source, flags.out, settings);
  }
  quant::ModuleWriter& writer = *writer_owner;
  const auto report = quant::compress_model(source, options, calibration, backend, writer, progress_bar());
  writer.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto in_bytes = source.weights->file_bytes();
  const auto out_bytes = folder_bytes(flags.out);
  nlohmann::json json{{"out", flags.out},
                      {"modules", report.modules},
                      {"calibration_runs", calibration.size()},
                      {"calibration_tokens", report.calibration_tokens},
                      {"seconds", seconds},
                      {"compress_seconds", report.seconds},
                      {"peak_rss_bytes", peak_rss_bytes()},
                      {"input_bytes", in_bytes},
                      {"output_bytes", out_bytes},
                      {"proxy_loss", report.proxy_loss}};
  if (!allocation_json.is_null()) json["allocation"] = allocation_json;
  if (report.experts > 0) {
    json["experts"] = report.experts;
    json["expert_fallbacks"] = report.expert_fallbacks;  // too few calibration tokens: RTN / magnitude
  }
  // How group scales were chosen, in words: the log says what --calib did for RTN.
  std::string scales;
  if (options.quantize != quant::QuantMethod::None) {
    scales = options.spec.scales == quant::ScaleChoice::MinMax ? "min-max (GPTQ's reference)"
             : options.quantize == quant::QuantMethod::Gptq   ? "searched, weighted by the Hessian diagonal"
             : options.rtn_importance ? "searched, weighted by the calibration activations' mean x^2 (imatrix)"
                                      : "searched, unweighted (pass --calib to weight by activations)";
    json["scales"] = scales;
    json["embeddings"] = options.quantize_embeddings ? fmt::format("quantized, {} bits", settings.embedding_bits)
                                                     : std::string("kept");
  }
  if (flags.json) {
    std::printf("%s\n", json.dump(2).c_str());
  } else {
    std::printf("wrote %s: %lld modules in %.1f s, peak memory %.0f MiB, weights %.1f MiB -> %.1f MiB\n",
                flags.out.c_str(), static_cast<long long>(report.modules), seconds,
                static_cast<double>(peak_rss_bytes()) / (1 << 20), static_cast<double>(in_bytes) / (1 << 20),
                static_cast<double>(out_bytes) / (1 << 20));
    if (!scales.empty()) {
      std::printf("scales: %s; embeddings: %s\n", scales.c_str(), json["embeddings"].get<std::string>().c_str());
    }
    if (!allocation_json.is_null()) {
      std::printf("target %.3g bits per weight: %.4f over the layers' linear modules (%s)\n", flags.target_bpw,
                  allocation_json["achieved_bpw"].get<double>(), allocation_json["mix"].get<std::string>().c_str());
    }
    if (report.experts > 0) {
      std::printf("experts: %lld, %lld of them from their weights alone (too few calibration tokens routed)\n",
                  static_cast<long long>(report.experts), static_cast<long long>(report.expert_fallbacks));
    }
  }
}

void fill_quantization(const CompressFlags& flags, quant::CompressionOptions& options,
                       quant::CheckpointSettings& settings) {
  options.spec.bits = flags.bits;
  options.spec.group_size = flags.group_size;
  options.spec.sym = !flags.asym;
  options.act_order = flags.act_order;
  options.static_groups = flags.static_groups;
  options.damp = flags.damp;
  // Group-aware order improves GPTQ at no cost to the layout, so it is the default
  // wherever it applies (as in GPTQModel): plain groups, no act-order, no pruning.
  options.spec.scales = flags.scales == "search" ? quant::ScaleChoice::Search : quant::ScaleChoice::MinMax;
  options.group_aware_order = !flags.natural_order && !flags.act_order && !flags.static_groups &&
                              flags.group_size > 0 && flags.method == "gptq";
  settings.bits = flags.bits;
  settings.group_size = flags.group_size;
  settings.sym = !flags.asym;
  settings.desc_act = flags.act_order;
  settings.static_groups = flags.static_groups;
  settings.group_aware_order = options.group_aware_order;
  settings.damp = flags.damp;
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto flags = std::make_shared<CompressFlags>();
  flags->method = "gptq";
  // compressed-tensors by default: its symmetric modules store no zero point, so a
  // 4-bit g32 folder is 4.5 bits per weight like llama.cpp's Q4_0, where GPTQ's v1
  // layout stores a 4-bit zero point per group even when symmetric (4.625). The
  // default folder (quantized embedding) is nibble's to serve in either format;
  // --format gptq remains for AutoGPTQ/GPTQModel/vLLM-GPTQ readers.
  flags->format = "compressed-tensors";
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a model's linear layers (GPTQ or round-to-nearest)");
  add_common_flags(cmd, *flags);
  cmd->add_option("--method", flags->method, "gptq or rtn")->check(CLI::IsMember({"gptq", "rtn"}))->capture_default_str();
  add_quantization_flags(cmd, *flags);
  cmd->add_option("--format", flags->format,
                  "Checkpoint layout: compressed-tensors (llm-compressor; symmetric stores no zero points), gptq "
                  "(AutoGPTQ/GPTQModel v1: a zero point per group even when symmetric), or gguf (one llama.cpp file)")
      ->check(CLI::IsMember({"gptq", "compressed-tensors", "gguf"}))
      ->capture_default_str();
  cmd->add_option("--type", flags->gguf_type,
                  "--format gguf: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K or the mix Q4_K_M "
                  "(--bits/--group-size/--asym do not apply)");
  cmd->add_option("--target-bpw", flags->target_bpw,
                  "--format gguf, instead of --type: average bits per weight over the layers' linear modules; each "
                  "module's type (Q4_K..Q8_0, or Q4_0..Q8_0 for rows not of 256-blocks) chosen by its activation-"
                  "weighted error on the --calib text, more bits where they save the most error per byte")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--keep-embeddings", flags->keep_embeddings,
                "Keep the token embedding and lm_head unquantized (by default they are quantized like the layers; "
                "transformers, GPTQModel and vLLM read a quantized embedding from neither format, nibble from both)");
  cmd->add_option("--embedding-bits", flags->embedding_bits,
                  "Bits of the quantized embedding and lm_head (llama.cpp's Q4_0 keeps them at 8, Q8_0)")
      ->check(CLI::IsMember({2, 3, 4, 8}))
      ->capture_default_str();
  cmd->callback([flags] {
    quant::CompressionOptions options;
    quant::CheckpointSettings settings;
    options.quantize = flags->method == "gptq" ? quant::QuantMethod::Gptq : quant::QuantMethod::Rtn;
    fill_quantization(*flags, options, settings);
    const bool gguf = flags->format == "gguf";
    // A GGUF file's token_embd and output are the writer's: block-encoded by its recipe.
    if (gguf && flags->keep_embeddings) fail("--keep-embeddings does not apply to --format gguf (its recipe encodes them)");
    options.quantize_embeddings = !gguf && !flags->keep_embeddings;
    if (options.quantize_embeddings) {
      options.embedding_bits = flags->embedding_bits;
      settings.embedding_bits = flags->embedding_bits;
    }
    options.rtn_importance = flags->method == "rtn" && !flags->calib.empty();
    if (!gguf && options.rtn_importance && options.spec.scales != quant::ScaleChoice::Search) {
      fail("--calib with --method rtn weights the scale search; it has no use with --scales minmax");
    }
    if (flags->act_order && flags->method == "rtn") fail("--act-order only applies to --method gptq");
    settings.method = flags->method;
    settings.format =
        flags->format == "gptq" ? quant::CheckpointFormat::Gptq : quant::CheckpointFormat::CompressedTensors;
    if (settings.format == quant::CheckpointFormat::Gptq) options.spec.min_zero = 1;  // v1 stores zero - 1
    if (flags->target_bpw > 0) {
      if (!gguf) fail("--target-bpw goes with --format gguf");
      if (!flags->gguf_type.empty()) fail("--target-bpw chooses the types itself: leave out --type");
      if (flags->calib.empty()) fail("--target-bpw measures each module's error on calibration text: pass --calib FILE");
    } else if (gguf != !flags->gguf_type.empty()) {
      fail("--type goes with --format gguf, and it needs one (or --target-bpw)");
    }
    if (gguf) {
      if (flags->act_order || flags->static_groups) fail("GGUF blocks are contiguous: no --act-order/--static-groups");
      // Group-aware order: whole blocks by their largest H_jj (GPTQ only).
      options.group_aware_order = flags->method == "gptq" && !flags->natural_order;
    }
    run_compression(*flags, options, settings);
  });
}

void add_prune_command(CLI::App& app) {
  auto flags = std::make_shared<CompressFlags>();
  CLI::App* cmd = app.add_subcommand("prune", "Prune a model's linear layers (magnitude, Wanda, SparseGPT), optionally then quantize");
  add_common_flags(cmd, *flags);
  cmd->add_option("--method", flags->method, "magnitude, wanda or sparsegpt")
      ->required()
      ->check(CLI::IsMember({"magnitude", "wanda", "sparsegpt"}));
  cmd->add_option("--sparsity", flags->sparsity, "Share of weights removed (0.5, 0.7) or the pattern 2:4")->required();
  cmd->add_option("--then-quantize", flags->then_quantize, "Quantize the pruned weights: gptq or rtn")
      ->check(CLI::IsMember({"gptq", "rtn"}));
  add_quantization_flags(cmd, *flags);
  cmd->callback([flags] {
    quant::CompressionOptions options;
    quant::CheckpointSettings settings;
    options.prune = flags->method == "magnitude" ? quant::PruneMethod::Magnitude
                    : flags->method == "wanda"   ? quant::PruneMethod::Wanda
                                                 : quant::PruneMethod::SparseGpt;
    options.sparsity = parse_sparsity(flags->sparsity);
    const bool two_four = options.sparsity.kind == quant::SparsitySpec::Kind::NofM;
    if (!flags->then_quantize.empty()) {
      options.quantize = flags->then_quantize == "gptq" ? quant::QuantMethod::Gptq : quant::QuantMethod::Rtn;
      fill_quantization(*flags, options, settings);
      if (flags->act_order) fail("--act-order cannot be combined with pruning");
      settings.method = flags->then_quantize;
    }
    settings.format = quant::CheckpointFormat::CompressedTensors;
    settings.sparsity_structure = two_four ? "2:4" : "unstructured";
    settings.pruning_method = flags->method;
    settings.sparsity = two_four ? 0.5 : options.sparsity.fraction;
    settings.damp = flags->damp;
    run_compression(*flags, options, settings);
  });
}

}  // namespace nibble::cli
