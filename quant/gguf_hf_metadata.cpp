#include "quant/gguf_hf_metadata.h"

#include <fmt/format.h>

#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "loader/json_file.h"

namespace nibble::quant {
namespace {

using json = nlohmann::json;

std::shared_ptr<GgufArray> array_of(std::vector<GgufValue> values) {
  auto array = std::make_shared<GgufArray>();
  array->values = std::move(values);
  return array;
}

// llama.cpp's tokenizer.ggml.pre for a byte-level BPE tokenizer.json's pre-tokenizer:
// the names gguf_vocab.cpp reads back into the same splits.
std::string pre_tokenizer_name(const json& pre, const std::filesystem::path& file) {
  const auto type = pre.value("type", std::string());
  if (type == "ByteLevel" && pre.value("use_regex", true)) return "gpt-2";
  if (type == "Sequence" && pre.contains("pretokenizers")) {
    const auto& steps = pre["pretokenizers"];
    if (steps.size() == 2 && steps[0].value("type", "") == "Digits" && steps[0].value("individual_digits", false) &&
        steps[1].value("type", "") == "ByteLevel" && steps[1].value("use_regex", true)) {
      return "smollm";
    }
    if (!steps.empty() && steps[0].value("type", "") == "Split" && steps[0].contains("pattern")) {
      const std::string regex = steps[0]["pattern"].value("Regex", "");
      if (regex.find("\\p{N}{1,3}") != std::string::npos) return "llama-bpe";
      if (regex.find("\\p{N}|") != std::string::npos || regex.find("\\p{N}| ?") != std::string::npos) return "qwen2";
    }
  }
  fail("{}: a pre-tokenizer nibble cannot name for llama.cpp ({}); convert this model with llama.cpp's "
       "convert_hf_to_gguf.py first and quantize that GGUF",
       file.string(), pre.dump());
}

std::optional<std::int64_t> token_id(const std::map<std::string, std::int64_t>& ids, const json& config,
                                     const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& value = config[key];
  const std::string content = value.is_string() ? value.get<std::string>()
                              : value.is_object() ? value.value("content", std::string())
                                                  : std::string();
  const auto it = ids.find(content);
  return it == ids.end() ? std::nullopt : std::optional(it->second);
}

void set_tokenizer(const ModelSource& source, GgufFileWriter& file) {
  const auto path = source.path / "tokenizer.json";
  if (!std::filesystem::exists(path)) {
    fail("{} has no tokenizer.json; GGUF output needs the tokenizer (byte-level BPE)", source.path.string());
  }
  const json tokenizer = read_json_file(path);
  const json& model = tokenizer.at("model");
  if (model.value("type", "") != "BPE" || !tokenizer.contains("pre_tokenizer") || tokenizer["pre_tokenizer"].is_null()) {
    fail("{}: only byte-level BPE tokenizers are written to GGUF; convert with llama.cpp's convert_hf_to_gguf.py",
         path.string());
  }
  const std::string pre = pre_tokenizer_name(tokenizer["pre_tokenizer"], path);
  std::map<std::string, std::int64_t> ids;
  std::int64_t size = 0;
  for (const auto& [token, id] : model.at("vocab").items()) {
    ids[token] = id.get<std::int64_t>();
    size = std::max(size, ids[token] + 1);
  }
  std::map<std::int64_t, bool> added;  // id -> special
  for (const auto& token : tokenizer.value("added_tokens", json::array())) {
    const auto id = token.at("id").get<std::int64_t>();
    ids[token.at("content").get<std::string>()] = id;
    added[id] = token.value("special", false);
    size = std::max(size, id + 1);
  }
  size = std::max(size, source.config.vocab_size);  // llama.cpp wants one token per embedding row
  std::vector<std::string> tokens(static_cast<std::size_t>(size));
  std::vector<GgufValue> types(static_cast<std::size_t>(size), std::int32_t{1});
  for (std::int64_t i = 0; i < size; ++i) tokens[static_cast<std::size_t>(i)] = fmt::format("[PAD{}]", i);
  for (const auto& [token, id] : ids) tokens[static_cast<std::size_t>(id)] = token;
  std::vector<bool> named(static_cast<std::size_t>(size), false);
  for (const auto& [token, id] : ids) named[static_cast<std::size_t>(id)] = true;
  for (std::int64_t i = 0; i < size; ++i) {
    if (!named[static_cast<std::size_t>(i)]) types[static_cast<std::size_t>(i)] = std::int32_t{5};  // unused padding
  }
  for (const auto& [id, special] : added) types[static_cast<std::size_t>(id)] = std::int32_t{special ? 3 : 4};
  std::vector<GgufValue> merges;
  for (const auto& merge : model.at("merges")) {
    merges.emplace_back(merge.is_string() ? merge.get<std::string>()
                                          : merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
  }
  std::vector<GgufValue> token_values(tokens.begin(), tokens.end());
  file.set("tokenizer.ggml.model", std::string("gpt2"));
  file.set("tokenizer.ggml.pre", pre);
  file.set("tokenizer.ggml.tokens", array_of(std::move(token_values)));
  file.set("tokenizer.ggml.token_type", array_of(std::move(types)));
  file.set("tokenizer.ggml.merges", array_of(std::move(merges)));
  json config = json::object();
  if (std::filesystem::exists(source.path / "tokenizer_config.json")) {
    config = read_json_file(source.path / "tokenizer_config.json");
  }
  const auto bos = source.config.bos_token_id ? std::optional<std::int64_t>(*source.config.bos_token_id)
                                              : token_id(ids, config, "bos_token");
  const auto eos = !source.config.eos_token_ids.empty()
                       ? std::optional<std::int64_t>(source.config.eos_token_ids.front())
                       : token_id(ids, config, "eos_token");
  if (bos) file.set("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(*bos));
  if (eos) file.set("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(*eos));
  if (const auto unk = token_id(ids, config, "unk_token")) file.set("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(*unk));
  if (const auto pad = token_id(ids, config, "pad_token")) file.set("tokenizer.ggml.padding_token_id", static_cast<std::uint32_t>(*pad));
  if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) {
    file.set("tokenizer.ggml.add_bos_token", config["add_bos_token"].get<bool>());
  }
  std::optional<std::string> chat_template = source.chat_template;
  if (!chat_template && std::filesystem::exists(source.path / "chat_template.jinja")) {
    std::ifstream in(source.path / "chat_template.jinja");
    std::stringstream text;
    text << in.rdbuf();
    chat_template = text.str();
  }
  if (chat_template) file.set("tokenizer.chat_template", *chat_template);
}

}  // namespace

void set_hf_metadata(const ModelSource& source, GgufFileWriter& file) {
  const ModelConfig& c = source.config;
  const Architecture& arch = architecture_of(c.architecture);
  const std::string a(arch.gguf_name);
  if (a != "llama" && a != "qwen2") {
    fail("GGUF output from a Hugging Face folder supports llama and qwen2 models; {} needs llama.cpp's "
         "convert_hf_to_gguf.py first",
         c.architecture);
  }
  if (c.rope_scaling.kind != RopeScaling::Kind::None || c.sliding_window || c.rotary_dim) {
    fail("{}: rope scaling, sliding windows and partial rotary are not written to GGUF by nibble; convert with "
         "llama.cpp's convert_hf_to_gguf.py first",
         source.path.string());
  }
  const auto u32 = [](std::int64_t v) { return static_cast<std::uint32_t>(v); };
  file.set("general.architecture", a);
  file.set("general.type", std::string("model"));
  file.set("general.name", source.path.filename().string());
  file.set(a + ".block_count", u32(c.num_layers));
  file.set(a + ".context_length", u32(c.max_position_embeddings));
  file.set(a + ".embedding_length", u32(c.hidden_size));
  file.set(a + ".feed_forward_length", u32(c.intermediate_size));
  file.set(a + ".attention.head_count", u32(c.num_heads));
  file.set(a + ".attention.head_count_kv", u32(c.num_kv_heads));
  file.set(a + ".rope.freq_base", static_cast<float>(c.rope_theta));
  file.set(a + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    file.set(a + ".attention.key_length", u32(c.head_dim));
    file.set(a + ".attention.value_length", u32(c.head_dim));
  }
  file.set(a + ".vocab_size", u32(c.vocab_size));
  file.set(a + ".rope.dimension_count", u32(c.rope_dim()));
  set_tokenizer(source, file);
}

std::optional<std::string> gguf_tensor_name(const Architecture& architecture, const std::string& hf_name) {
  const auto dot = hf_name.rfind('.');
  if (dot == std::string::npos) return std::nullopt;
  const std::string suffix = hf_name.substr(dot + 1), stem = hf_name.substr(0, dot);
  if (suffix != "weight" && suffix != "bias") return std::nullopt;
  const auto ref = architecture.parse_module(stem);
  if (!ref) return std::nullopt;
  for (const auto& name : architecture.names) {
    if (name.role != ref->role || name.gguf.empty()) continue;
    // parse_module matched either a global name (the whole module) or a layer's part.
    if (stem == name.hf) return fmt::format("{}.{}", name.gguf, suffix);
    return fmt::format("blk.{}.{}.{}", ref->layer, name.gguf, suffix);
  }
  return std::nullopt;
}

}  // namespace nibble::quant
