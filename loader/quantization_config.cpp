#include "loader/quantization_config.h"

#include <algorithm>
#include <cctype>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <re2/re2.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/whole_number.h"
#include "loader/json_file.h"

namespace nibble {
namespace {

using json = nlohmann::ordered_json;  // file order decides dynamic rules

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

bool present(const json& object, const char* key) { return object.contains(key) && !object[key].is_null(); }

template <typename T>
std::optional<T> field(const json& object, const char* key, const char* where) {
  if (!present(object, key)) return std::nullopt;
  try {
    return object[key].get<T>();
  } catch (const json::exception&) {
    fail("{}: '{}' has the wrong type ({})", where, key, object[key].dump());
  }
}

// Integers written as JSON numbers, also when a tool wrote 4.0 or "4".
std::optional<std::int64_t> int_field(const json& object, const char* key, const char* where) {
  if (!present(object, key)) return std::nullopt;
  const json& value = object[key];
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > std::uint64_t{INT64_MAX}) {
    fail("{}: '{}' is out of range ({})", where, key, value.dump());
  }
  if (value.is_number_integer()) return value.get<std::int64_t>();
  if (value.is_number_float()) {
    if (const auto whole = whole_int64(value.get<double>())) return whole;
  }
  if (value.is_string()) {
    try {
      std::size_t used = 0;
      const auto parsed = std::stoll(value.get<std::string>(), &used);
      if (used == value.get<std::string>().size()) return parsed;
    } catch (const std::exception&) {
    }
  }
  fail("{}: '{}' must be an integer, got {}", where, key, value.dump());
}

std::vector<std::string> string_list(const json& object, const char* key, const char* where) {
  std::vector<std::string> out;
  if (!present(object, key)) return out;
  const json& value = object[key];
  if (value.is_string()) return {value.get<std::string>()};
  if (!value.is_array()) fail("{}: '{}' must be a list of strings", where, key);
  for (const auto& item : value) {
    if (!item.is_string()) fail("{}: '{}' holds a non-string entry {}", where, key, item.dump());
    out.push_back(item.get<std::string>());
  }
  return out;
}

void check_bits(std::int64_t bits, const std::string& where) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    fail("{}: {}-bit weights are not supported (supported: 2, 3, 4, 8)", where, bits);
  }
}

void check_group_size(std::int64_t group_size, const std::string& where) {
  if (group_size == 0 || group_size < -1) {
    fail("{}: group_size {} is invalid (use -1 for one group per row, or a positive size)", where, group_size);
  }
}

// GPTQ's checkpoint format: GPTQModel writes "format" (and the deprecated
// "checkpoint_format" with the same value); AutoGPTQ and optimum write
// "checkpoint_format". Both absent means v1.
std::string gptq_format(const json& q) {
  const auto format = field<std::string>(q, "format", "GPTQ config");
  const auto checkpoint = field<std::string>(q, "checkpoint_format", "GPTQ config");
  if (format && checkpoint && lower(*format) != lower(*checkpoint)) {
    fail("GPTQ config: 'format' is '{}' but 'checkpoint_format' is '{}'", *format, *checkpoint);
  }
  const std::string value = lower(format ? *format : checkpoint ? *checkpoint : "gptq");
  if (value != "gptq" && value != "gptq_v2") {
    fail(
        "GPTQ checkpoint format '{}' is not supported (supported: gptq, gptq_v2); re-export the model in one of "
        "those formats",
        value);
  }
  return value;
}

DynamicRule parse_dynamic_rule(const std::string& key, const json& value, const char* config) {
  DynamicRule rule;
  rule.skip = key.starts_with("-:");
  rule.pattern = key.starts_with("-:") || key.starts_with("+:") ? key.substr(2) : key;
  const std::string where = fmt::format("{}: dynamic rule '{}'", config, key);
  if (!value.is_object()) fail("{}: the value must be an object", where);
  if (const RE2 compiled(rule.pattern, RE2::Quiet); !compiled.ok())
    fail("{}: invalid regex: {}", where, compiled.error());
  if (const auto bits = int_field(value, "bits", where.c_str())) {
    check_bits(*bits, where);
    rule.bits = static_cast<int>(*bits);
  }
  if (const auto group_size = int_field(value, "group_size", where.c_str())) {
    check_group_size(*group_size, where);
    rule.group_size = *group_size;
  }
  rule.sym = field<bool>(value, "sym", where.c_str());
  rule.desc_act = field<bool>(value, "desc_act", where.c_str());
  return rule;
}

// Which modules are quantized, and how, beyond the defaults: GPTQModel's lm_head
// flag and dynamic rules (it writes them for AWQ exports too), and
// modules_to_not_convert (AutoAWQ, transformers).
void parse_module_selection(const json& q, const char* where, QuantizationConfig& out) {
  out.lm_head = field<bool>(q, "lm_head", where).value_or(false);
  out.embed_tokens = field<bool>(q, "embed_tokens", where).value_or(false);
  if (present(q, "dynamic")) {
    if (!q["dynamic"].is_object()) fail("{}: 'dynamic' must be an object of pattern -> overrides", where);
    for (const auto& [key, value] : q["dynamic"].items()) out.dynamic.push_back(parse_dynamic_rule(key, value, where));
  }
  out.modules_to_not_convert = string_list(q, "modules_to_not_convert", where);
}

QuantizationConfig parse_gptq(const json& q) {
  QuantizationConfig out;
  out.method = QuantMethod::Gptq;
  const char* where = "GPTQ config";
  if (field<bool>(q, "is_marlin_format", where).value_or(false)) {
    fail("GPTQ config: Marlin-format checkpoints (is_marlin_format) are not supported; use a gptq or gptq_v2 export");
  }
  const auto bits = int_field(q, "bits", where);
  if (!bits) fail("GPTQ config: missing 'bits'");
  check_bits(*bits, where);
  out.defaults.bits = static_cast<int>(*bits);
  out.defaults.group_size = int_field(q, "group_size", where).value_or(128);
  check_group_size(out.defaults.group_size, where);
  out.defaults.sym = field<bool>(q, "sym", where).value_or(true);
  out.defaults.act_order = field<bool>(q, "desc_act", where).value_or(false);
  out.format = gptq_format(q);
  out.defaults.format = out.format;
  if (const auto pack = field<std::string>(q, "pack_dtype", where); pack && lower(*pack) != "int32") {
    fail("GPTQ config: pack_dtype '{}' is not supported (only int32)", *pack);
  }
  parse_module_selection(q, where, out);
  if (present(q, "modules_in_block_to_quantize")) {
    const json& blocks = q["modules_in_block_to_quantize"];
    if (!blocks.is_array()) fail("GPTQ config: 'modules_in_block_to_quantize' must be a list of lists of names");
    for (const auto& block : blocks) {
      if (!block.is_array()) fail("GPTQ config: 'modules_in_block_to_quantize' must be a list of lists of names");
      for (const auto& name : block) {
        if (!name.is_string()) fail("GPTQ config: 'modules_in_block_to_quantize' holds a non-string {}", name.dump());
        out.modules_in_block.push_back(name.get<std::string>());
      }
    }
  }
  return out;
}

QuantizationConfig parse_awq(const json& q) {
  QuantizationConfig out;
  out.method = QuantMethod::Awq;
  const char* where = "AWQ config";
  const auto pick = [&](const char* a, const char* b) -> std::optional<std::int64_t> {
    const auto first = int_field(q, a, where);
    const auto second = int_field(q, b, where);
    if (first && second && *first != *second) fail("AWQ config: '{}' is {} but '{}' is {}", a, *first, b, *second);
    return first ? first : second;
  };
  const auto bits = pick("w_bit", "bits");
  if (!bits) fail("AWQ config: missing 'w_bit' (or 'bits')");
  check_bits(*bits, where);
  out.defaults.bits = static_cast<int>(*bits);
  out.defaults.group_size = pick("q_group_size", "group_size").value_or(128);
  check_group_size(out.defaults.group_size, where);
  const auto zero_point = field<bool>(q, "zero_point", where);
  const auto sym = field<bool>(q, "sym", where);
  if (zero_point && sym && *zero_point == *sym) {
    fail("AWQ config: zero_point {} contradicts sym {}", *zero_point, *sym);
  }
  out.defaults.sym = zero_point ? !*zero_point : sym.value_or(false);
  if (field<bool>(q, "desc_act", where).value_or(false)) {
    fail("AWQ config: desc_act is set, but AWQ checkpoints have no act-order (g_idx); the config is inconsistent");
  }
  if (field<std::string>(q, "backend", where).value_or("") == "llm-awq") {
    fail("AWQ config: llm-awq checkpoints (backend 'llm-awq') are not supported; use an AutoAWQ GEMM export");
  }
  const auto version = field<std::string>(q, "version", where);
  const auto format = field<std::string>(q, "format", where);
  if (version && format && lower(*version) != lower(*format)) {
    fail("AWQ config: 'version' is '{}' but 'format' is '{}'", *version, *format);
  }
  out.format = lower(version ? *version : format ? *format : "gemm");
  if (out.format != "gemm") {
    fail("AWQ layout '{}' is not supported (only gemm); re-export the model with version \"gemm\"", out.format);
  }
  out.defaults.format = out.format;
  parse_module_selection(q, where, out);
  return out;
}

constexpr const char* kCtFormats =
    "pack-quantized, int-quantized, naive-quantized, float-quantized, dense, mixed-precision";

void check_ct_format(const std::string& format, const std::string& where) {
  if (format == "pack-quantized" || format == "int-quantized" || format == "naive-quantized" ||
      format == "float-quantized" || format == "dense" || format == "mixed-precision") {
    return;
  }
  fail("{}: compressed-tensors format '{}' is not supported (supported: {})", where, format, kCtFormats);
}

// Positive [rows, cols] of a block size (weight_block_size, block_structure).
std::pair<std::int64_t, std::int64_t> block_size(const json& object, const char* key, const std::string& where) {
  const json& value = object[key];
  if (!value.is_array() || value.size() != 2 || !value[0].is_number_integer() || !value[1].is_number_integer() ||
      value[0].get<std::int64_t>() <= 0 || value[1].get<std::int64_t>() <= 0) {
    fail("{}: '{}' must be two positive integers [rows, cols], got {}", where, key, value.dump());
  }
  return {value[0].get<std::int64_t>(), value[1].get<std::int64_t>()};
}

// compressed-tensors FP8 weights (llm-compressor's FP8 / FP8_DYNAMIC / FP8_BLOCK
// schemes): e4m3 codes in `weight`, scales in `weight_scale` per tensor, channel,
// group or block.
QuantScheme parse_ct_float_scheme(QuantScheme scheme, const json& w, std::string format, const std::string& where) {
  if (format == "naive-quantized") format = "float-quantized";  // the same storage for float weights
  if (format != "float-quantized") {
    fail("{}: weight type 'float' (FP8) needs format float-quantized (or naive-quantized), not '{}'", where, format);
  }
  const auto bits = int_field(w, "num_bits", where.c_str()).value_or(8);
  if (bits != 8) fail("{}: float weights of {} bits are not supported (only 8: FP8 e4m3)", where, bits);
  if (!field<bool>(w, "symmetric", where.c_str()).value_or(true)) {
    fail("{}: asymmetric FP8 weights (zero points) are not supported", where);
  }
  if (field<bool>(w, "dynamic", where.c_str()).value_or(false))
    fail("{}: dynamic weight quantization is not supported", where);
  ModuleQuantization& weights = scheme.weights.emplace();
  weights.format = format;
  weights.bits = 8;
  weights.sym = true;
  const auto group_size = int_field(w, "group_size", where.c_str());
  scheme.strategy = lower(field<std::string>(w, "strategy", where.c_str()).value_or("tensor"));
  if (scheme.strategy == "tensor") {
    weights.group_size = 0;
  } else if (scheme.strategy == "channel") {
    weights.group_size = -1;
  } else if (scheme.strategy == "group") {
    if (!group_size || *group_size <= 0) fail("{}: strategy 'group' needs a positive group_size", where);
    weights.group_size = *group_size;
  } else if (scheme.strategy == "block") {
    if (!present(w, "block_structure")) fail("{}: strategy 'block' needs 'block_structure' [rows, cols]", where);
    std::tie(weights.block_rows, weights.group_size) = block_size(w, "block_structure", where);
  } else {
    fail("{}: FP8 strategy '{}' is not supported (supported: tensor, channel, group, block)", where, scheme.strategy);
  }
  if (present(w, "actorder") && !(w["actorder"].is_boolean() && !w["actorder"].get<bool>())) {
    fail("{}: actorder is not supported for FP8 weights", where);
  }
  return scheme;
}

// DeepSeek-V3's (and transformers' FineGrainedFP8) quantization_config:
// {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
//  "weight_block_size": [128, 128]}: `weight` F8_E4M3 [N, K] and `weight_scale_inv`
// F32 [ceil(N/128), ceil(K/128)], weight = fp8 * scale_inv. Activations stay float32
// in nibble, so the activation scheme does not change what the weights mean.
QuantizationConfig parse_fp8(const json& q) {
  const char* where = "fp8 config";
  QuantizationConfig out;
  out.method = QuantMethod::Fp8;
  out.format = "fp8";
  const auto format = lower(field<std::string>(q, "fmt", where).value_or("e4m3"));
  if (format != "e4m3") fail("{}: fmt '{}' is not supported (only e4m3)", where, format);
  const auto activations = lower(field<std::string>(q, "activation_scheme", where).value_or("dynamic"));
  if (activations != "dynamic" && activations != "static") {
    fail("{}: activation_scheme '{}' is not supported (dynamic, static)", where, activations);
  }
  if (!present(q, "weight_block_size")) {
    fail("{}: no weight_block_size; per-tensor FP8 checkpoints of this method are not supported", where);
  }
  out.defaults.bits = 8;
  out.defaults.sym = true;
  out.defaults.format = "fp8";
  std::tie(out.defaults.block_rows, out.defaults.group_size) = block_size(q, "weight_block_size", where);
  out.modules_to_not_convert = string_list(q, "modules_to_not_convert", where);
  return out;
}

QuantScheme parse_ct_scheme(const std::string& name, const json& group, const std::string& top_format) {
  const std::string where = fmt::format("compressed-tensors config group '{}'", name);
  if (!group.is_object()) fail("{}: expected a scheme object, got {}", where, group.dump());
  QuantScheme scheme;
  scheme.name = name;
  scheme.targets = string_list(group, "targets", where.c_str());
  if (scheme.targets.empty()) fail("{}: no targets", where);
  std::string format = lower(field<std::string>(group, "format", where.c_str()).value_or(top_format));
  if (format == "mixed-precision")
    fail("{}: needs its own 'format' when the top-level format is mixed-precision", where);
  check_ct_format(format, where);
  if (!present(group, "weights")) return scheme;  // activation-only: the weights stay plain
  const json& w = group["weights"];
  const std::string wwhere = where + " weights";
  if (!w.is_object()) fail("{}: expected an object", wwhere);
  const auto type = lower(field<std::string>(w, "type", wwhere.c_str()).value_or("int"));
  if (type == "float") return parse_ct_float_scheme(std::move(scheme), w, format, wwhere);
  if (type != "int") fail("{}: weight type '{}' is not supported (int, or float 8-bit)", wwhere, type);
  if (format == "float-quantized") fail("{}: format float-quantized needs weight type 'float', not '{}'", wwhere, type);
  if (format == "naive-quantized") format = "int-quantized";  // same storage for integer weights
  ModuleQuantization& weights = scheme.weights.emplace();
  weights.format = format;
  if (field<bool>(w, "dynamic", wwhere.c_str()).value_or(false))
    fail("{}: dynamic weight quantization is not supported", wwhere);
  const auto bits = int_field(w, "num_bits", wwhere.c_str()).value_or(8);
  check_bits(bits, wwhere);
  weights.bits = static_cast<int>(bits);
  weights.sym = field<bool>(w, "symmetric", wwhere.c_str()).value_or(true);
  const auto group_size = int_field(w, "group_size", wwhere.c_str());
  std::string strategy = lower(field<std::string>(w, "strategy", wwhere.c_str())
                                   .value_or(group_size && *group_size > 0     ? "group"
                                             : group_size && *group_size == -1 ? "channel"
                                                                               : "tensor"));
  scheme.strategy = strategy;
  if (strategy == "group") {
    if (!group_size || *group_size <= 0) {
      fail("{}: strategy 'group' needs a positive group_size, got {}", wwhere,
           group_size ? fmt::to_string(*group_size) : "none");
    }
    weights.group_size = *group_size;
  } else if (strategy == "channel") {
    weights.group_size = -1;
  } else if (strategy == "tensor") {
    weights.group_size = 0;
  } else {
    fail("{}: strategy '{}' is not supported (supported: group, channel, tensor)", wwhere, strategy);
  }
  std::string actorder;
  if (present(w, "actorder")) {
    if (w["actorder"].is_boolean()) {
      actorder = w["actorder"].get<bool>() ? "group" : "";
    } else if (w["actorder"].is_string()) {
      actorder = lower(w["actorder"].get<std::string>());
    } else {
      fail("{}: 'actorder' must be a string or a boolean", wwhere);
    }
  }
  if (actorder == "dynamic") actorder = "group";
  if (actorder == "static") actorder = "weight";
  if (!actorder.empty() && actorder != "group" && actorder != "weight") {
    fail("{}: actorder '{}' is not supported (supported: group, weight)", wwhere, actorder);
  }
  // "weight" reorders only during calibration; the stored groups stay contiguous.
  weights.act_order = actorder == "group";
  if (weights.act_order && format != "pack-quantized") {
    fail("{}: actorder 'group' (a stored g_idx) is only supported with pack-quantized, not '{}'", wwhere, format);
  }
  if (weights.act_order && strategy != "group") {
    fail("{}: actorder 'group' needs strategy 'group', not '{}'", wwhere, strategy);
  }
  return scheme;
}

QuantizationConfig parse_compressed_tensors(const json& q) {
  QuantizationConfig out;
  out.method = QuantMethod::CompressedTensors;
  const char* where = "compressed-tensors config";
  out.version = field<std::string>(q, "version", where).value_or("");
  out.format = lower(field<std::string>(q, "format", where).value_or("dense"));
  check_ct_format(out.format, where);
  if (present(q, "transform_config") && !(q["transform_config"].is_object() && q["transform_config"].empty())) {
    fail("{}: transforms (transform_config) are not supported", where);
  }
  if (present(q, "config_groups")) {
    if (!q["config_groups"].is_object()) fail("{}: 'config_groups' must be an object", where);
    for (const auto& [name, group] : q["config_groups"].items()) {
      out.schemes.push_back(parse_ct_scheme(name, group, out.format));
    }
  }
  out.ignore = string_list(q, "ignore", where);
  for (const auto& scheme : out.schemes) {
    if (scheme.weights) {
      out.defaults = *scheme.weights;
      break;
    }
  }
  if (present(q, "sparsity_config") && !(q["sparsity_config"].is_object() && q["sparsity_config"].empty())) {
    const json& s = q["sparsity_config"];
    const char* swhere = "compressed-tensors sparsity_config";
    if (!s.is_object()) fail("{}: expected an object", swhere);
    SparsityConfig sparsity;
    sparsity.format = lower(field<std::string>(s, "format", swhere).value_or("dense"));
    if (sparsity.format != "sparse-24-bitmask" && sparsity.format != "sparse-bitmask" && sparsity.format != "dense") {
      fail("{}: sparsity format '{}' is not supported (supported: sparse-24-bitmask, sparse-bitmask, dense)", swhere,
           sparsity.format);
    }
    sparsity.structure = lower(field<std::string>(s, "sparsity_structure", swhere).value_or("unstructured"));
    if (sparsity.format == "sparse-24-bitmask" && sparsity.structure != "2:4") {
      fail("{}: format sparse-24-bitmask needs sparsity_structure '2:4', not '{}'", swhere, sparsity.structure);
    }
    sparsity.targets = string_list(s, "targets", swhere);
    sparsity.ignore = string_list(s, "ignore", swhere);
    out.sparsity = std::move(sparsity);
  }
  return out;
}

std::string infer_method(const json& q) {
  if (present(q, "quant_method")) {
    if (!q["quant_method"].is_string()) fail("quantization config: 'quant_method' must be a string");
    return lower(q["quant_method"].get<std::string>());
  }
  if (present(q, "method") && q["method"].is_string()) return lower(q["method"].get<std::string>());
  // Older separate files (AutoGPTQ quantize_config.json, AutoAWQ quant_config.json)
  // carry no method name; their keys tell them apart.
  if (present(q, "config_groups") || present(q, "sparsity_config")) return "compressed-tensors";
  if (present(q, "w_bit") || present(q, "q_group_size") || present(q, "zero_point")) return "awq";
  if (present(q, "bits")) return "gptq";
  fail("quantization config: cannot tell the quantization method (no 'quant_method')");
}

// Class-name targets of compressed-tensors, from the module name alone: a
// Llama-family decoder has token embeddings and linear layers only.
bool matches_class(const std::string& module, const std::string& target) {
  const bool embedding = module.ends_with("embed_tokens");
  if (target == "Embedding") return embedding;
  if (target == "Linear" || target == "LinearBase") return !embedding;
  return false;
}

// compressed-tensors matching: exact names first, then "re:" regexes, then classes.
int match_rank(const std::string& module, const std::vector<std::string>& targets) {
  int best = 0;
  for (const auto& target : targets) {
    if (target.starts_with("re:")) {
      if (regex_match_prefix(target.substr(3), module)) best = std::max(best, 2);
    } else if (target == module) {
      best = 3;
    } else if (matches_class(module, target)) {
      best = std::max(best, 1);
    }
  }
  return best;
}

std::optional<std::string> layer_suffix(const std::string& module) {
  // "model.layers.3.mlp.up_proj" -> "mlp.up_proj"
  const auto at = module.find(".layers.");
  if (at == std::string::npos) return std::nullopt;
  const auto dot = module.find('.', at + 8);
  if (dot == std::string::npos) return std::nullopt;
  return module.substr(dot + 1);
}

std::string group_text(std::int64_t group_size, std::int64_t block_rows = 0) {
  if (block_rows > 0) return fmt::format("block {}x{}", block_rows, group_size);
  if (group_size > 0) return fmt::format("group {}", group_size);
  return group_size == 0 ? "per tensor" : "per channel";
}

std::string scheme_text(const ModuleQuantization& m) {
  if (m.fp8()) return fmt::format("fp8 e4m3, {}", group_text(m.group_size, m.block_rows));
  return fmt::format("{}-bit, {}, {}{}", m.bits, group_text(m.group_size), m.sym ? "sym" : "asym",
                     m.act_order ? ", act-order" : "");
}

nlohmann::json scheme_json(const ModuleQuantization& m) {
  nlohmann::json out = {
      {"bits", m.bits}, {"group_size", m.group_size}, {"sym", m.sym}, {"act_order", m.act_order}, {"format", m.format}};
  if (m.block_rows > 0) out["block_rows"] = m.block_rows;  // FP8 block scales only
  return out;
}

}  // namespace

std::string_view quant_method_name(QuantMethod method) {
  switch (method) {
    case QuantMethod::Gptq:
      return "gptq";
    case QuantMethod::Awq:
      return "awq";
    case QuantMethod::CompressedTensors:
      return "compressed-tensors";
    case QuantMethod::Fp8:
      return "fp8";
  }
  return "?";
}

bool regex_match_prefix(const std::string& pattern, const std::string& text) {
  // RE2 has no match-at-start call for partial matches, so anchor the pattern.
  const RE2 anchored("^(?:" + pattern + ")", RE2::Quiet);
  if (!anchored.ok()) fail("invalid module pattern '{}': {}", pattern, anchored.error());
  return RE2::PartialMatch(text, anchored);
}

std::optional<ModuleQuantization> QuantizationConfig::module(const std::string& name) const {
  const auto excluded_by_substring = [&] {
    return std::any_of(modules_to_not_convert.begin(), modules_to_not_convert.end(),
                       [&](const std::string& key) { return !key.empty() && name.find(key) != std::string::npos; });
  };
  switch (method) {
    case QuantMethod::Fp8:
      // The decoder's linear layers; embeddings and lm_head stay plain (DeepSeek,
      // transformers' FP8 replacement). The reader also needs the scale tensor.
      if (name.ends_with("embed_tokens") || name.ends_with("lm_head") || excluded_by_substring()) return std::nullopt;
      return defaults;
    case QuantMethod::Awq:
    case QuantMethod::Gptq: {
      // GPTQ and AWQ quantize the decoder's linear layers; lm_head only on request.
      if ((name.ends_with("embed_tokens") && !embed_tokens) || excluded_by_substring()) return std::nullopt;
      if (name.ends_with("lm_head") && !lm_head) return std::nullopt;
      if (!modules_in_block.empty()) {
        const auto suffix = layer_suffix(name);
        if (suffix && std::find(modules_in_block.begin(), modules_in_block.end(), *suffix) == modules_in_block.end()) {
          return std::nullopt;
        }
      }
      ModuleQuantization out = defaults;
      for (const auto& rule : dynamic) {
        if (!regex_match_prefix(rule.pattern, name)) continue;
        if (rule.skip) return std::nullopt;
        out.bits = rule.bits.value_or(out.bits);
        out.group_size = rule.group_size.value_or(out.group_size);
        out.sym = rule.sym.value_or(out.sym);
        out.act_order = rule.desc_act.value_or(out.act_order);
        break;  // the first matching rule decides, as GPTQModel does
      }
      if (method == QuantMethod::Awq && out.act_order) {
        fail("dynamic rule for '{}' sets desc_act, but AWQ checkpoints have no act-order", name);
      }
      return out;
    }
    case QuantMethod::CompressedTensors: {
      if (match_rank(name, ignore) > 0) return std::nullopt;
      const QuantScheme* best = nullptr;
      int best_rank = 0;
      for (const auto& scheme : schemes) {
        const int rank = match_rank(name, scheme.targets);
        if (rank > best_rank) {
          best = &scheme;
          best_rank = rank;
        }
      }
      if (best == nullptr || !best->weights || best->weights->format == "dense") return std::nullopt;
      ModuleQuantization out = *best->weights;
      out.sparse_2_4 = sparsity && sparsity->format == "sparse-24-bitmask" && sparse_target(name);
      out.sparse_2_4_unchecked = sparsity && sparsity->format == "dense" && sparsity->structure == "2:4" &&
                                 match_rank(name, sparsity->targets) > 0 && match_rank(name, sparsity->ignore) == 0;
      return out;
    }
  }
  return std::nullopt;
}

bool QuantizationConfig::sparse_target(const std::string& name) const {
  if (!sparsity || sparsity->format == "dense") return false;
  return match_rank(name, sparsity->targets) > 0 && match_rank(name, sparsity->ignore) == 0;
}

std::string QuantizationConfig::describe() const {
  std::string text;
  switch (method) {
    case QuantMethod::Gptq:
    case QuantMethod::Awq:
      text = fmt::format("{} {}, format {}", quant_method_name(method), scheme_text(defaults), format);
      if (method == QuantMethod::Gptq) text += format == "gptq" ? " (v1 zeros: stored zero - 1)" : " (v2 zeros)";
      if (lm_head) text += ", lm_head quantized";
      if (embed_tokens) text += ", embeddings quantized";
      if (!dynamic.empty()) text += fmt::format(", {} dynamic rule{}", dynamic.size(), dynamic.size() == 1 ? "" : "s");
      if (!modules_to_not_convert.empty())
        text += fmt::format(", {} modules kept plain", modules_to_not_convert.size());
      break;
    case QuantMethod::Fp8:
      text = scheme_text(defaults);
      if (!modules_to_not_convert.empty())
        text += fmt::format(", {} modules kept plain", modules_to_not_convert.size());
      break;
    case QuantMethod::CompressedTensors: {
      text = fmt::format("compressed-tensors, format {}", format);
      for (const auto& scheme : schemes) {
        if (!scheme.weights) continue;
        text += fmt::format("; {}: {} {}", scheme.name, scheme.weights->format, scheme_text(*scheme.weights));
      }
      if (sparsity) text += fmt::format("; sparsity {} ({})", sparsity->format, sparsity->structure);
      break;
    }
  }
  return text;
}

nlohmann::json QuantizationConfig::to_json() const {
  nlohmann::json out = scheme_json(defaults);
  out["method"] = quant_method_name(method);
  out["format"] = format;
  switch (method) {
    case QuantMethod::Gptq:
    case QuantMethod::Awq: {
      out["lm_head"] = lm_head;
      if (embed_tokens) out["embed_tokens"] = true;
      nlohmann::json rules = nlohmann::json::array();
      for (const auto& rule : dynamic) {
        nlohmann::json r = {{"pattern", rule.pattern}, {"skip", rule.skip}};
        if (rule.bits) r["bits"] = *rule.bits;
        if (rule.group_size) r["group_size"] = *rule.group_size;
        if (rule.sym) r["sym"] = *rule.sym;
        if (rule.desc_act) r["desc_act"] = *rule.desc_act;
        rules.push_back(std::move(r));
      }
      out["dynamic"] = std::move(rules);
      out["modules_to_not_convert"] = modules_to_not_convert;
      break;
    }
    case QuantMethod::Fp8:
      out["modules_to_not_convert"] = modules_to_not_convert;
      break;
    case QuantMethod::CompressedTensors: {
      nlohmann::json groups = nlohmann::json::array();
      for (const auto& scheme : schemes) {
        nlohmann::json g = scheme.weights ? scheme_json(*scheme.weights) : nlohmann::json::object();
        g["name"] = scheme.name;
        g["targets"] = scheme.targets;
        g["strategy"] = scheme.strategy;
        groups.push_back(std::move(g));
      }
      out["schemes"] = std::move(groups);
      out["ignore"] = ignore;
      out["version"] = version;
      if (sparsity) {
        out["sparsity"] = {{"format", sparsity->format},
                           {"structure", sparsity->structure},
                           {"targets", sparsity->targets},
                           {"ignore", sparsity->ignore}};
      }
      break;
    }
  }
  return out;
}

QuantizationConfig parse_quantization_config(const json& description) {
  if (!description.is_object()) fail("quantization config: not a JSON object");
  const std::string method = infer_method(description);
  if (method == "gptq") return parse_gptq(description);
  if (method == "awq") return parse_awq(description);
  if (method == "compressed-tensors" || method == "compressed_tensors") return parse_compressed_tensors(description);
  if (method == "fp8") return parse_fp8(description);
  fail("quantization method '{}' is not supported (supported: gptq, awq, compressed-tensors, fp8)", method);
}

std::optional<QuantizationConfig> read_quantization_config(const std::filesystem::path& folder) {
  const json config = read_json_file(folder / "config.json");
  for (const char* key : {"quantization_config", "compression_config"}) {
    if (!config.is_object() || !present(config, key)) continue;
    json description = config[key];
    // compression_config is compressed-tensors' older name for the same object.
    if (std::string(key) == "compression_config" && description.is_object() && !present(description, "quant_method")) {
      description["quant_method"] = "compressed-tensors";
    }
    try {
      return parse_quantization_config(description);
    } catch (const Error& e) {
      fail("{}: config.json {}: {}", folder.string(), key, e.what());
    }
  }
  for (const char* name : {"quantize_config.json", "quant_config.json"}) {
    const auto path = folder / name;
    if (!std::filesystem::exists(path)) continue;
    const json description = read_json_file(path);
    try {
      return parse_quantization_config(description);
    } catch (const Error& e) {
      fail("{}: {}", path.string(), e.what());
    }
  }
  return std::nullopt;
}

}  // namespace nibble
