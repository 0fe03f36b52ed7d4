#pragma once
// The quantization a Hugging Face checkpoint declares: config.json's
// "quantization_config" (or "compression_config"), or a separate
// quantize_config.json / quant_config.json. GPTQ, AWQ and compressed-tensors are
// parsed and checked here once (and FP8: DeepSeek-V3's quant_method "fp8", and
// compressed-tensors' "float-quantized"), so the weight readers only ask "how is this
// module stored?" and every inconsistency is reported before a tensor is read.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace nibble {

enum class QuantMethod { Gptq, Awq, CompressedTensors, Fp8 };
std::string_view quant_method_name(QuantMethod method);

// How one module's weight is quantized, after per-module overrides.
struct ModuleQuantization {
  int bits = 4;                  // 2, 3, 4 or 8
  std::int64_t group_size = -1;  // input columns per group; -1: one group per row; 0: one scale for the tensor
  bool sym = true;
  bool act_order = false;  // groups follow a stored per-column index (GPTQ desc_act g_idx, CT actorder "group")
  // Storage layout: "gptq" (v1 zeros), "gptq_v2", "gemm" (AWQ), "pack-quantized", "int-quantized",
  // or FP8 e4m3 codes: "fp8" (DeepSeek: `weight` + `weight_scale_inv`), "float-quantized"
  // (compressed-tensors: `weight` + `weight_scale`).
  std::string format;
  // FP8 block scales (DeepSeek's weight_block_size [block_rows, group_size],
  // compressed-tensors strategy "block"): output rows sharing one scale. 0: a scale
  // per row (or for the tensor, as group_size says).
  std::int64_t block_rows = 0;
  bool fp8() const { return format == "fp8" || format == "float-quantized"; }
  // compressed-tensors sparsity_config covers this module with sparsity_structure "2:4".
  // sparse-24-bitmask: the codes must follow the pattern (an error otherwise).
  bool sparse_2_4 = false;
  // Format "dense": the tool pruned 2:4 but stored the codes plainly; the reader uses
  // the pattern only where the codes bear it out.
  bool sparse_2_4_unchecked = false;
};

// GPTQModel's per-module `dynamic` rule: the first pattern that matches the module
// name (a regex anchored at the start, as Python's re.match) decides.
struct DynamicRule {
  std::string pattern;  // without the "+:" / "-:" prefix
  bool skip = false;    // "-:": the module is left unquantized
  std::optional<int> bits;
  std::optional<std::int64_t> group_size;
  std::optional<bool> sym;
  std::optional<bool> desc_act;
};

// One compressed-tensors config group (only its weight arguments matter here).
struct QuantScheme {
  std::string name;                           // "group_0"
  std::vector<std::string> targets;           // module names, "re:" regexes or class names ("Linear", "Embedding")
  std::string strategy;                       // "group", "channel", "tensor" or "block" (FP8); empty without weights
  std::optional<ModuleQuantization> weights;  // nullopt: an activation-only scheme, weights stay plain
};

struct SparsityConfig {
  std::string format;     // "sparse-24-bitmask", "sparse-bitmask" or "dense"
  std::string structure;  // "2:4", "unstructured", ...
  std::vector<std::string> targets;
  std::vector<std::string> ignore;
};

struct QuantizationConfig {
  QuantMethod method = QuantMethod::Gptq;
  std::string format;           // checkpoint format: "gptq", "gptq_v2", "gemm", or compressed-tensors' top-level format
  ModuleQuantization defaults;  // GPTQ/AWQ: the base settings; compressed-tensors: the first group's
  // GPTQ / AWQ.
  bool lm_head = false;  // GPTQModel quantized lm_head too
  // nibble's GPTQ key: model.embed_tokens is stored packed too (checkpoint_writer.h)
  bool embed_tokens = false;
  std::vector<DynamicRule> dynamic;
  std::vector<std::string> modules_to_not_convert;  // substrings of module names left unquantized
  std::vector<std::string> modules_in_block;        // optimum: module suffixes quantized inside each block
  // compressed-tensors.
  std::vector<QuantScheme> schemes;
  std::vector<std::string> ignore;
  std::optional<SparsityConfig> sparsity;
  std::string version;  // compressed-tensors version that wrote the checkpoint ("0.12.2")

  // How module `module` ("model.layers.0.mlp.up_proj") is stored: nullopt when
  // the config leaves it unquantized (a plain `module.weight`).
  std::optional<ModuleQuantization> module(const std::string& module) const;
  // compressed-tensors: the sparsity compressor applies to this module.
  bool sparse_target(const std::string& module) const;

  // One line for `nibble inspect`: "gptq 4-bit, group 128, sym, act-order, format gptq".
  std::string describe() const;
  nlohmann::json to_json() const;
};

// Parses a quantization description (the "quantization_config" object, or the
// whole quantize_config.json). Throws nibble::Error naming the offending field for
// unsupported methods, formats and inconsistent settings. Key order matters
// (GPTQModel's first matching `dynamic` rule wins), hence ordered_json.
QuantizationConfig parse_quantization_config(const nlohmann::ordered_json& description);

// The folder's quantization: config.json's "quantization_config" or
// "compression_config", else quantize_config.json or quant_config.json; nullopt
// when the model is not quantized. Errors name the file.
std::optional<QuantizationConfig> read_quantization_config(const std::filesystem::path& folder);

// Python re.match semantics on RE2: `pattern` must match a prefix of `text`.
// Throws nibble::Error for a pattern RE2 cannot compile.
bool regex_match_prefix(const std::string& pattern, const std::string& text);

}  // namespace nibble
