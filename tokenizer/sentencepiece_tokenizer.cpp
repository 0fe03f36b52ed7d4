// SentencePiece tokenizer.model through libsentencepiece. Control and unknown pieces
// written in the text are cut out first and each remaining segment is encoded on its
// own, which reproduces Hugging Face's legacy Llama tokenizer (the dummy "▁" prefix
// goes before every segment); decoding follows the same HF decoder chain.
#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/readers.h"

namespace nibble {
namespace {

const std::string kSpace = "\xE2\x96\x81";  // "▁"

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file) {
    const auto status = processor_.Load(model_file.string());
    if (!status.ok()) fail("{}: cannot load SentencePiece model: {}", model_file.string(), status.ToString());
    const int n = processor_.GetPieceSize();
    std::vector<AddedToken> added;
    pieces_.reserve(static_cast<std::size_t>(n));
    special_.assign(static_cast<std::size_t>(n), false);
    for (int id = 0; id < n; ++id) {
      pieces_.push_back(processor_.IdToPiece(id));
      ids_.try_emplace(pieces_.back(), id);
      if (processor_.IsControl(id) || processor_.IsUnknown(id)) {
        special_[static_cast<std::size_t>(id)] = true;
        added.push_back({id, pieces_.back(), true, false, false, false});
      }
    }
    added_ = AddedTokenMatcher(std::move(added));
    // The model proto is not exposed, so probe whether the normalizer adds the dummy prefix.
    const auto probe = processor_.EncodeAsPieces("a");
    const bool dummy_prefix = !probe.empty() && probe.front().starts_with(kSpace);
    std::vector<DecoderStep> steps = {{DecoderStep::Kind::Replace, kSpace, " "},
                                      {DecoderStep::Kind::ByteFallback, {}, {}},
                                      {DecoderStep::Kind::Fuse, {}, {}}};
    if (dummy_prefix) {
      DecoderStep strip{DecoderStep::Kind::Strip, {}, {}};
      strip.strip_start = 1;
      steps.push_back(strip);
    }
    decoder_ = Decoder(std::move(steps));
    if (processor_.bos_id() >= 0) bos_ = processor_.bos_id();
    if (processor_.eos_id() >= 0) eos_.push_back(processor_.eos_id());
    add_bos_ = bos_.has_value();
  }

  void apply_config(const nlohmann::json& config) {
    auto token = [&](const char* key) -> std::optional<TokenId> {
      if (!config.contains(key)) return std::nullopt;
      const auto& v = config[key];
      std::string text;
      if (v.is_string()) text = v.get<std::string>();
      else if (v.is_object() && v.contains("content")) text = v["content"].get<std::string>();
      else return std::nullopt;
      auto found = token_to_id(text);
      if (!found) fail("tokenizer_config.json {} {} is not in the vocabulary", key, log::quoted(text));
      return found;
    };
    if (auto bos = token("bos_token")) bos_ = bos;
    if (auto eos = token("eos_token")) eos_ = {*eos};
    if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) add_bos_ = config["add_bos_token"].get<bool>();
    if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) add_eos_ = config["add_eos_token"].get<bool>();
    if (add_bos_ && !bos_) fail("tokenizer_config.json sets add_bos_token but there is no BOS token");
    if (add_eos_ && eos_.empty()) fail("tokenizer_config.json sets add_eos_token but there is no EOS token");
  }

  using Tokenizer::encode;
  std::vector<TokenId> encode(std::string_view text, bool add_special,
                              std::span<const TextRange> plain) const override {
    std::vector<TokenId> ids;
    if (add_special && add_bos_) ids.push_back(*bos_);
    std::vector<TextSegment> segments;
    added_.split(text, segments, plain);
    for (const TextSegment& segment : segments) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
        continue;
      }
      std::vector<int> piece_ids;
      const auto status = processor_.Encode(segment.text, &piece_ids);
      if (!status.ok()) fail("SentencePiece encode failed: {}", status.ToString());
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    if (add_special && add_eos_) ids.push_back(eos_.front());
    return ids;
  }

  std::vector<TextRange> find_special_tokens(std::string_view text) const override {
    return added_.find_special(text);
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special) const override {
    std::vector<std::string_view> tokens;
    tokens.reserve(ids.size());
    for (TokenId id : ids) {
      check(id);
      if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
      tokens.push_back(pieces_[static_cast<std::size_t>(id)]);
    }
    return decoder_.decode(tokens);
  }

  std::string token_bytes(TokenId id) const override {
    check(id);
    return decoder_.token_bytes(pieces_[static_cast<std::size_t>(id)]);
  }
  bool strips_leading_space() const override { return decoder_.strips_leading_space(); }
  std::size_t vocab_size() const override { return pieces_.size(); }
  std::optional<TokenId> token_to_id(std::string_view token) const override {
    auto it = ids_.find(token);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  std::string id_to_token(TokenId id) const override {
    check(id);
    return pieces_[static_cast<std::size_t>(id)];
  }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[static_cast<std::size_t>(id)];
  }
  std::optional<TokenId> bos_id() const override { return bos_; }
  std::vector<TokenId> eos_ids() const override { return eos_; }

 private:
  void check(TokenId id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) fail("token id {} is outside the vocabulary", id);
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<std::string> pieces_;
  TokenMap ids_;
  std::vector<bool> special_;
  AddedTokenMatcher added_;
  Decoder decoder_;
  std::optional<TokenId> bos_;
  std::vector<TokenId> eos_;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& model_file) {
  if (!std::filesystem::is_regular_file(model_file)) fail("{} does not exist", model_file.string());
  auto tokenizer = std::make_unique<SentencePieceTokenizer>(model_file);
  const auto config_path = model_file.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    try {
      tokenizer->apply_config(nlohmann::json::parse(read_text_file(config_path)));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: {}", config_path.string(), e.what());
    }
  }
  return tokenizer;
}

}  // namespace nibble
