#include "tokenizer/tokenizer_json_writer.h"

#include <string>
#include <unordered_set>

#include "common/error.h"
#include "common/log.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

using json = nlohmann::ordered_json;

json string_pattern(const std::string& text) { return {{"String", text}}; }

json sequence_or_single(const char* type, const char* key, json items) {
  if (items.empty()) return nullptr;
  if (items.size() == 1) return items.front();
  return {{"type", type}, {key, std::move(items)}};
}

json normalizer(const BpeTokenizerSpec& spec) {
  json steps = json::array();
  for (const NormalizerStep& step : spec.normalizer) {
    switch (step.kind) {
      case NormalizerStep::Kind::Nfc:
        steps.push_back({{"type", "NFC"}});
        break;
      case NormalizerStep::Kind::Prepend:
        steps.push_back({{"type", "Prepend"}, {"prepend", step.to}});
        break;
      case NormalizerStep::Kind::Replace:
        steps.push_back({{"type", "Replace"}, {"pattern", string_pattern(step.from)}, {"content", step.to}});
        break;
    }
  }
  return sequence_or_single("Sequence", "normalizers", std::move(steps));
}

json byte_level(bool prefix_space, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", prefix_space}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json pre_tokenizer(const BpeTokenizerSpec& spec) {
  json steps = json::array();
  if (spec.metaspace) {
    const char* scheme = spec.metaspace->prepend == PrependScheme::Always  ? "always"
                         : spec.metaspace->prepend == PrependScheme::First ? "first"
                                                                           : "never";
    steps.push_back({{"type", "Metaspace"},
                     {"replacement", spec.metaspace->replacement},
                     {"prepend_scheme", scheme},
                     {"split", spec.metaspace->split}});
  }
  // ByteLevel's own regex is GPT-2's: a byte-level spec ending in that splitter is
  // ByteLevel(use_regex = true); every other splitter is a Split or Digits before it.
  const std::size_t n = spec.splitters.size();
  const bool byte_level_regex = spec.byte_level && n > 0 && spec.splitters.back().kind() == SplitKind::Gpt2;
  for (std::size_t i = 0; i < n - (byte_level_regex ? 1 : 0); ++i) {
    const SplitKind kind = spec.splitters[i].kind();
    if (kind == SplitKind::Digits || kind == SplitKind::EachDigit) {
      steps.push_back({{"type", "Digits"}, {"individual_digits", kind == SplitKind::EachDigit}});
      continue;
    }
    const std::string_view pattern = known_split_pattern(kind);
    if (pattern.empty()) fail("a pre-tokenizer regex whose text is not known cannot be written to tokenizer.json");
    steps.push_back({{"type", "Split"},
                     {"pattern", {{"Regex", std::string(pattern)}}},
                     {"behavior", "Isolated"},
                     {"invert", false}});
  }
  if (spec.byte_level) steps.push_back(byte_level(spec.byte_level_prefix_space, byte_level_regex));
  return sequence_or_single("Sequence", "pretokenizers", std::move(steps));
}

json decoder(const BpeTokenizerSpec& spec) {
  json steps = json::array();
  for (const DecoderStep& step : spec.decoder) {
    using Kind = DecoderStep::Kind;
    switch (step.kind) {
      case Kind::ByteLevel:
        steps.push_back(byte_level(true, true));
        break;
      case Kind::Replace:
        steps.push_back({{"type", "Replace"}, {"pattern", string_pattern(step.from)}, {"content", step.to}});
        break;
      case Kind::ByteFallback:
        steps.push_back({{"type", "ByteFallback"}});
        break;
      case Kind::Fuse:
        steps.push_back({{"type", "Fuse"}});
        break;
      case Kind::Strip: {
        std::string content;
        unicode::append_utf8(content, step.strip_char);
        steps.push_back({{"type", "Strip"}, {"content", content}, {"start", step.strip_start}, {"stop", step.strip_stop}});
        break;
      }
      case Kind::Metaspace:
        steps.push_back({{"type", "Metaspace"},
                         {"replacement", step.from},
                         {"prepend_scheme", step.metaspace_prepends ? "always" : "never"},
                         {"split", true}});
        break;
    }
  }
  return sequence_or_single("Sequence", "decoders", std::move(steps));
}

// BOS/EOS added around every encoding (add_special_tokens), as TemplateProcessing.
json post_processor(const BpeTokenizerSpec& spec) {
  if (spec.prefix.empty() && spec.suffix.empty()) return nullptr;
  const auto token = [&](TokenId id) { return spec.vocab.at(static_cast<std::size_t>(id)); };
  const auto template_for = [&](std::initializer_list<const char*> sequences) {
    json items = json::array();
    for (const char* sequence : sequences) {
      for (const TokenId id : spec.prefix) items.push_back({{"SpecialToken", {{"id", token(id)}, {"type_id", 0}}}});
      items.push_back({{"Sequence", {{"id", sequence}, {"type_id", 0}}}});
      for (const TokenId id : spec.suffix) items.push_back({{"SpecialToken", {{"id", token(id)}, {"type_id", 0}}}});
    }
    return items;
  };
  json special = json::object();
  for (const auto& ids : {spec.prefix, spec.suffix}) {
    for (const TokenId id : ids) special[token(id)] = {{"id", token(id)}, {"ids", {id}}, {"tokens", {token(id)}}};
  }
  return {{"type", "TemplateProcessing"},
          {"single", template_for({"A"})},
          {"pair", template_for({"A", "B"})},
          {"special_tokens", special}};
}

}  // namespace

json tokenizer_json(const BpeTokenizerSpec& spec) {
  json added = json::array();
  for (const AddedToken& token : spec.added_tokens) {
    added.push_back({{"id", token.id},
                     {"content", token.content},
                     {"single_word", token.single_word},
                     {"lstrip", token.lstrip},
                     {"rstrip", token.rstrip},
                     {"normalized", !token.special},
                     {"special", token.special}});
  }
  json vocab = json::object();
  std::unordered_set<std::string> seen;
  for (std::size_t id = 0; id < spec.vocab.size(); ++id) {
    const std::string& token = spec.vocab[id];
    if (token.empty()) continue;  // a hole
    if (!seen.insert(token).second) {
      fail("token {} appears twice in the vocabulary; tokenizer.json maps each token to one id", log::quoted(token));
    }
    vocab[token] = id;
  }
  json merges = json::array();
  for (const auto& [left, right] : spec.merges) merges.push_back({left, right});
  const auto unk = spec.options.unk;
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", unk ? json(spec.vocab.at(static_cast<std::size_t>(*unk))) : json(nullptr)},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", spec.options.fuse_unk},
                {"byte_fallback", spec.options.byte_fallback},
                {"ignore_merges", spec.options.ignore_merges},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", std::move(added)},
          {"normalizer", normalizer(spec)},
          {"pre_tokenizer", pre_tokenizer(spec)},
          {"post_processor", post_processor(spec)},
          {"decoder", decoder(spec)},
          {"model", std::move(model)}};
}

}  // namespace nibble
