// Reads Hugging Face tokenizer.json (+ tokenizer_config.json) into a BpeTokenizerSpec.
#include <re2/re2.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/log.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/readers.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

using nlohmann::json;

std::string type_of(const json& node) {
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) return {};
  return node["type"].get<std::string>();
}

// Reads a field that tokenizers serializes as {"String": "..."} or {"Regex": "..."}.
std::pair<std::string, bool> pattern_of(const json& node) {
  if (node.contains("String")) return {node["String"].get<std::string>(), false};
  if (node.contains("Regex")) return {node["Regex"].get<std::string>(), true};
  fail("pattern {} is neither String nor Regex", node.dump());
}

std::string string_pattern(const json& node, std::string_view where) {
  auto [pattern, is_regex] = pattern_of(node);
  if (is_regex) fail("{} with a regex pattern is not supported: {}", where, pattern);
  return pattern;
}

PrependScheme prepend_scheme(const json& node) {
  if (node.contains("prepend_scheme")) {
    const auto scheme = node["prepend_scheme"].get<std::string>();
    if (scheme == "always") return PrependScheme::Always;
    if (scheme == "first") return PrependScheme::First;
    if (scheme == "never") return PrependScheme::Never;
    fail("unknown Metaspace prepend_scheme {}", log::quoted(scheme));
  }
  // Older files: add_prefix_space = true meant "always".
  return node.value("add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

void read_normalizer(const json& node, BpeTokenizerSpec& spec) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const json& child : node.at("normalizers")) read_normalizer(child, spec);
  } else if (type == "NFC") {
    spec.normalizer.push_back({NormalizerStep::Kind::Nfc, {}, {}});
  } else if (type == "Prepend") {
    spec.normalizer.push_back({NormalizerStep::Kind::Prepend, {}, node.at("prepend").get<std::string>()});
  } else if (type == "Replace") {
    spec.normalizer.push_back(
        {NormalizerStep::Kind::Replace, string_pattern(node.at("pattern"), "Replace normalizer"),
         node.at("content").get<std::string>()});
  } else {
    fail("unsupported normalizer type {}", log::quoted(type));
  }
}

void read_pre_tokenizer(const json& node, BpeTokenizerSpec& spec) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const json& child : node.at("pretokenizers")) read_pre_tokenizer(child, spec);
  } else if (type == "ByteLevel") {
    spec.byte_level = true;
    spec.byte_level_prefix_space = node.value("add_prefix_space", false);
    if (node.value("use_regex", true)) spec.splitters.emplace_back(SplitKind::Gpt2);
  } else if (type == "Split") {
    const std::string behavior = node.value("behavior", "Isolated");
    if (behavior != "Isolated" || node.value("invert", false))
      fail("unsupported Split pre-tokenizer: behavior {}, invert {}", log::quoted(behavior), node.value("invert", false));
    auto [pattern, is_regex] = pattern_of(node.at("pattern"));
    if (!is_regex) pattern = RE2::QuoteMeta(pattern);
    const SplitKind kind = is_regex ? classify_split_pattern(pattern) : SplitKind::Regex;
    spec.splitters.emplace_back(kind, pattern);
  } else if (type == "Digits") {
    spec.splitters.emplace_back(node.value("individual_digits", false) ? SplitKind::EachDigit : SplitKind::Digits);
  } else if (type == "Metaspace") {
    MetaspaceSpec metaspace;
    metaspace.replacement = node.value("replacement", metaspace.replacement);
    metaspace.prepend = prepend_scheme(node);
    metaspace.split = node.value("split", true);
    if (!spec.splitters.empty()) fail("Metaspace after other pre-tokenizers is not supported");
    spec.metaspace = metaspace;
  } else {
    fail("unsupported pre-tokenizer type {}", log::quoted(type));
  }
}

void read_decoder(const json& node, BpeTokenizerSpec& spec) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  using Kind = DecoderStep::Kind;
  if (type == "Sequence") {
    for (const json& child : node.at("decoders")) read_decoder(child, spec);
  } else if (type == "ByteLevel") {
    spec.decoder.push_back({Kind::ByteLevel, {}, {}});
  } else if (type == "Replace") {
    spec.decoder.push_back({Kind::Replace, string_pattern(node.at("pattern"), "Replace decoder"),
                            node.at("content").get<std::string>()});
  } else if (type == "ByteFallback") {
    spec.decoder.push_back({Kind::ByteFallback, {}, {}});
  } else if (type == "Fuse") {
    spec.decoder.push_back({Kind::Fuse, {}, {}});
  } else if (type == "Strip") {
    DecoderStep step{Kind::Strip, {}, {}};
    const auto content = node.value("content", std::string(" "));
    std::size_t pos = 0;
    if (content.empty()) fail("Strip decoder with empty content");
    step.strip_char = unicode::next(content, pos);
    step.strip_start = node.value("start", std::size_t{0});
    step.strip_stop = node.value("stop", std::size_t{0});
    spec.decoder.push_back(step);
  } else if (type == "Metaspace") {
    DecoderStep step{Kind::Metaspace, node.value("replacement", std::string("\xE2\x96\x81")), " "};
    step.metaspace_prepends = prepend_scheme(node) != PrependScheme::Never;
    spec.decoder.push_back(step);
  } else {
    fail("unsupported decoder type {}", log::quoted(type));
  }
}

void read_post_processor(const json& node, BpeTokenizerSpec& spec) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "Sequence") {
    for (const json& child : node.at("processors")) read_post_processor(child, spec);
  } else if (type == "ByteLevel") {
    // Only adjusts offsets.
  } else if (type == "TemplateProcessing") {
    const json& specials = node.at("special_tokens");
    bool seen_sequence = false;
    for (const json& item : node.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      const auto name = item.at("SpecialToken").at("id").get<std::string>();
      if (!specials.contains(name)) fail("TemplateProcessing names special token {} it does not define", log::quoted(name));
      auto& target = seen_sequence ? spec.suffix : spec.prefix;
      for (const json& id : specials.at(name).at("ids")) target.push_back(id.get<TokenId>());
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    spec.prefix.push_back(node.at("cls").at(1).get<TokenId>());
    spec.suffix.push_back(node.at("sep").at(1).get<TokenId>());
  } else {
    fail("unsupported post-processor type {}", log::quoted(type));
  }
}

void read_model(const json& model, BpeTokenizerSpec& spec) {
  const std::string type = type_of(model);
  if (!type.empty() && type != "BPE") fail("unsupported tokenizer model type {} (only BPE is)", log::quoted(type));
  if (!model.contains("vocab") || !model.contains("merges")) fail("BPE model without vocab or merges");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty())
      fail("BPE {} is not supported", key);
  }
  for (const auto& [token, id_node] : model.at("vocab").items()) {
    const auto id = id_node.get<TokenId>();
    if (id < 0) fail("vocab token {} has a negative id", log::quoted(token));
    if (static_cast<std::size_t>(id) >= spec.vocab.size()) spec.vocab.resize(static_cast<std::size_t>(id) + 1);
    spec.vocab[static_cast<std::size_t>(id)] = token;
  }
  for (const json& merge : model.at("merges")) {
    if (merge.is_array() && merge.size() == 2) {
      spec.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      continue;
    }
    const auto line = merge.get<std::string>();
    const auto space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
      fail("malformed merge {}", log::quoted(line));
    spec.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  spec.options.byte_fallback = model.value("byte_fallback", false);
  spec.options.ignore_merges = model.value("ignore_merges", false);
  spec.options.fuse_unk = model.value("fuse_unk", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto unk = model["unk_token"].get<std::string>();
    for (std::size_t id = 0; id < spec.vocab.size(); ++id)
      if (spec.vocab[id] == unk) spec.options.unk = static_cast<TokenId>(id);
  }
}

json parse_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
}

// bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content")) return value["content"].get<std::string>();
  return std::nullopt;
}

void apply_tokenizer_config(const json& config, BpeTokenizerSpec& spec) {
  auto lookup = [&](const std::string& token) -> std::optional<TokenId> {
    for (const AddedToken& added : spec.added_tokens)
      if (added.content == token) return added.id;
    for (std::size_t id = 0; id < spec.vocab.size(); ++id)
      if (spec.vocab[id] == token) return static_cast<TokenId>(id);
    return std::nullopt;
  };
  if (auto bos = config_token(config, "bos_token")) {
    spec.bos = lookup(*bos);
    if (!spec.bos) fail("tokenizer_config.json bos_token {} is not in the vocabulary", log::quoted(*bos));
  }
  if (auto eos = config_token(config, "eos_token")) {
    const auto id = lookup(*eos);
    if (!id) fail("tokenizer_config.json eos_token {} is not in the vocabulary", log::quoted(*eos));
    spec.eos = {*id};
  }
  // transformers rebuilds the post-processor from these flags (LlamaTokenizerFast and
  // kin), so when present they override tokenizer.json's template.
  const bool has_bos_flag = config.contains("add_bos_token") && config["add_bos_token"].is_boolean();
  const bool has_eos_flag = config.contains("add_eos_token") && config["add_eos_token"].is_boolean();
  if (has_bos_flag || has_eos_flag) {
    const bool add_bos = has_bos_flag ? config["add_bos_token"].get<bool>() : !spec.prefix.empty();
    const bool add_eos = has_eos_flag ? config["add_eos_token"].get<bool>() : !spec.suffix.empty();
    if (add_bos && !spec.bos) fail("tokenizer_config.json sets add_bos_token but names no bos_token");
    if (add_eos && spec.eos.empty()) fail("tokenizer_config.json sets add_eos_token but names no eos_token");
    spec.prefix.clear();
    spec.suffix.clear();
    if (add_bos) spec.prefix.push_back(*spec.bos);
    if (add_eos) spec.suffix.push_back(spec.eos.front());
  }
}

}  // namespace

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path.string());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("cannot read {}", path.string());
  return buffer.str();
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& tokenizer_json) {
  const json root = parse_json_file(tokenizer_json);
  try {
    if (!root.is_object() || !root.contains("model")) fail("no \"model\" section");
    BpeTokenizerSpec spec;
    read_model(root.at("model"), spec);
    if (root.contains("added_tokens")) {
      for (const json& t : root["added_tokens"]) {
        AddedToken token;
        token.id = t.at("id").get<TokenId>();
        token.content = t.at("content").get<std::string>();
        token.special = t.value("special", false);
        token.lstrip = t.value("lstrip", false);
        token.rstrip = t.value("rstrip", false);
        token.single_word = t.value("single_word", false);
        spec.added_tokens.push_back(std::move(token));
      }
    }
    read_normalizer(root.value("normalizer", json()), spec);
    read_pre_tokenizer(root.value("pre_tokenizer", json()), spec);
    read_post_processor(root.value("post_processor", json()), spec);
    read_decoder(root.value("decoder", json()), spec);
    // Without tokenizer_config.json, a lone special token the template prepends is BOS.
    if (spec.prefix.size() == 1) spec.bos = spec.prefix.front();
    if (spec.suffix.size() == 1) spec.eos = {spec.suffix.front()};

    const auto config_path = tokenizer_json.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
      const json config = parse_json_file(config_path);
      if (!config.is_object()) fail("{} is not a JSON object", config_path.string());
      apply_tokenizer_config(config, spec);
    }
    return std::make_unique<BpeTokenizer>(std::move(spec));
  } catch (const json::exception& e) {
    fail("{}: unexpected structure: {}", tokenizer_json.string(), e.what());
  } catch (const Error& e) {
    fail("{}: {}", tokenizer_json.string(), e.what());
  }
}

}  // namespace nibble
