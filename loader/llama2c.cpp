#include "loader/llama2c.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/byte_reader.h"
#include "common/error.h"
#include "common/mapped_file.h"
#include "loader/gguf_model.h"
#include "loader/model_config.h"
#include "loader/safetensors.h"
#include "loader/tensor.h"

namespace nibble {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

constexpr std::uint32_t kVersionedMagic = 0x616b3432;  // "ak42"
constexpr std::uint64_t kVersionedHeaderBytes = 256;
// Generous bounds that keep every size product below 2^63 while rejecting garbage headers.
constexpr std::int64_t kMaxExtent = 1 << 20;
constexpr std::int64_t kMaxVocab = 1 << 24;

// ---- Checkpoint header.

struct Header {
  int version = 0;  // 0: legacy 28-byte header; 1: fp32 "ak42"; 2: int8 "ak42"
  std::int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 0;
  bool shared_classifier = true;
  std::int64_t group_size = 0;  // version 2 only
  std::uint64_t data_offset = 0;

  std::int64_t head_size() const { return dim / heads; }
  std::int64_t kv_dim() const { return dim / heads * kv_heads; }
};

void check_header(const Header& h, const std::string& file) {
  const auto in_range = [&](std::int64_t value, std::int64_t max, const char* name) {
    if (value <= 0 || value > max) fail("{}: invalid llama2.c header: {} = {}", file, name, value);
  };
  in_range(h.dim, kMaxExtent, "dim");
  in_range(h.hidden, kMaxExtent, "hidden_dim");
  in_range(h.layers, 4096, "n_layers");
  in_range(h.heads, h.dim, "n_heads");
  in_range(h.kv_heads, h.heads, "n_kv_heads");
  in_range(h.vocab, kMaxVocab, "vocab_size");
  in_range(h.seq_len, kMaxExtent, "seq_len");
  if (h.dim % h.heads != 0 || h.head_size() % 2 != 0) {
    fail("{}: invalid llama2.c header: dim {} does not split into {} heads of even size", file, h.dim, h.heads);
  }
  if (h.heads % h.kv_heads != 0) {
    fail("{}: invalid llama2.c header: n_heads {} is not a multiple of n_kv_heads {}", file, h.heads, h.kv_heads);
  }
  if (h.version == 2 && (h.group_size <= 0 || h.dim % h.group_size != 0)) {
    fail("{}: invalid llama2.c header: group_size {} does not divide dim {}", file, h.group_size, h.dim);
  }
}

Header read_header(ByteReader& reader) {
  Header h;
  if (reader.remaining() >= 4 && reader.read<std::uint32_t>("the magic") == kVersionedMagic) {
    h.version = reader.read<std::int32_t>("the version");
    if (h.version != 1 && h.version != 2) {
      fail("{}: llama2.c export version {} is not supported (supported: legacy, 1, 2)", reader.file(), h.version);
    }
  } else {
    reader.seek(0);
  }
  std::int32_t fields[7];
  for (auto& field : fields) field = reader.read<std::int32_t>("the header");
  h.dim = fields[0];
  h.hidden = fields[1];
  h.layers = fields[2];
  h.heads = fields[3];
  h.kv_heads = fields[4];
  h.vocab = fields[5];
  h.seq_len = fields[6];
  if (h.version == 0) {
    // The legacy format flags an untied classifier with a negative vocab size.
    h.shared_classifier = h.vocab > 0;
    h.vocab = h.vocab < 0 ? -h.vocab : h.vocab;
    h.data_offset = reader.offset();
  } else {
    h.shared_classifier = reader.read<std::uint8_t>("the shared_classifier flag") != 0;
    if (h.version == 2) h.group_size = reader.read<std::int32_t>("the group size");
    h.data_offset = kVersionedHeaderBytes;
  }
  check_header(h, reader.file());
  return h;
}

// ---- Weights.

struct Weights {
  std::vector<float> embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;
};

// Reads consecutive float arrays. A dry run only advances the offset, so the exact
// expected file size comes from the same code that reads the data.
class WeightStream {
 public:
  WeightStream(ByteReader& reader, const Header& header, bool dry_run)
      : reader_(reader), header_(header), dry_run_(dry_run) {}

  std::vector<float> fp32(std::int64_t count, std::string_view what) {
    const auto bytes = dry_take(static_cast<std::uint64_t>(count) * 4, what);
    std::vector<float> out;
    if (!dry_run_) {
      out.resize(static_cast<std::size_t>(count));
      std::memcpy(out.data(), bytes.data(), bytes.size());
    }
    return out;
  }

  // Version 2 quantizes each layer's matrix on its own: int8 values, then one fp32
  // scale per group_size values.
  std::vector<float> q8(std::int64_t tensors, std::int64_t per_tensor, std::string_view what) {
    std::vector<float> out;
    if (!dry_run_) out.reserve(static_cast<std::size_t>(tensors * per_tensor));
    for (std::int64_t t = 0; t < tensors; ++t) {
      const auto values = dry_take(static_cast<std::uint64_t>(per_tensor), what);
      const std::vector<float> scales = fp32(per_tensor / header_.group_size, what);
      if (dry_run_) continue;
      const auto* q = reinterpret_cast<const std::int8_t*>(values.data());
      for (std::int64_t i = 0; i < per_tensor; ++i) {
        out.push_back(static_cast<float>(q[i]) * scales[static_cast<std::size_t>(i / header_.group_size)]);
      }
    }
    return out;
  }

  // Matrices: fp32 in the legacy and version 1 formats, int8 groups in version 2.
  std::vector<float> matrix(std::int64_t tensors, std::int64_t per_tensor, std::string_view what) {
    return header_.version == 2 ? q8(tensors, per_tensor, what) : fp32(tensors * per_tensor, what);
  }

  std::uint64_t offset() const { return offset_; }

 private:
  std::span<const std::byte> dry_take(std::uint64_t count, std::string_view what) {
    offset_ += count;
    return dry_run_ ? std::span<const std::byte>() : reader_.take(count, what);
  }

  ByteReader& reader_;
  const Header& header_;
  bool dry_run_;
  std::uint64_t offset_ = 0;
};

void read_matrices(WeightStream& s, const Header& h, Weights& w) {
  const std::int64_t L = h.layers;
  w.wq = s.matrix(L, h.dim * h.dim, "wq");
  w.wk = s.matrix(L, h.kv_dim() * h.dim, "wk");
  w.wv = s.matrix(L, h.kv_dim() * h.dim, "wv");
  w.wo = s.matrix(L, h.dim * h.dim, "wo");
}

void read_ffn(WeightStream& s, const Header& h, Weights& w) {
  const std::int64_t L = h.layers;
  w.w1 = s.matrix(L, h.hidden * h.dim, "w1");
  w.w2 = s.matrix(L, h.dim * h.hidden, "w2");
  w.w3 = s.matrix(L, h.hidden * h.dim, "w3");
}

Weights read_weights(WeightStream& s, const Header& h) {
  Weights w;
  const std::int64_t L = h.layers;
  if (h.version == 0) {
    w.embedding = s.fp32(h.vocab * h.dim, "token_embedding");
    w.rms_att = s.fp32(L * h.dim, "rms_att");
    read_matrices(s, h, w);
    w.rms_ffn = s.fp32(L * h.dim, "rms_ffn");
    read_ffn(s, h, w);
    w.rms_final = s.fp32(h.dim, "rms_final");
    // RoPE tables that llama2.c precomputed; nibble computes its own.
    s.fp32(2 * h.seq_len * (h.head_size() / 2), "freq_cis");
  } else {
    w.rms_att = s.fp32(L * h.dim, "rms_att");
    w.rms_ffn = s.fp32(L * h.dim, "rms_ffn");
    w.rms_final = s.fp32(h.dim, "rms_final");
    w.embedding = s.matrix(1, h.vocab * h.dim, "token_embedding");
    read_matrices(s, h, w);
    read_ffn(s, h, w);
  }
  if (!h.shared_classifier) w.wcls = s.matrix(1, h.vocab * h.dim, "wcls");
  return w;
}

std::vector<float> slice(const std::vector<float>& all, std::int64_t index, std::int64_t count) {
  const auto begin = all.begin() + index * count;
  return {begin, begin + count};
}

std::vector<float> rope_rows_to_halves(std::vector<float> rows, std::int64_t n_rows, std::int64_t heads) {
  std::vector<float> out(rows.size());
  interleaved_rope_rows_to_halves(std::as_bytes(std::span<const float>(rows)), std::as_writable_bytes(std::span(out)),
                                  n_rows, heads);
  return out;
}

std::vector<TensorView> hf_tensors(const Header& h, const Weights& w) {
  std::vector<TensorView> out;
  const auto add = [&](std::string name, std::vector<std::int64_t> shape, std::vector<float> values) {
    out.push_back(make_owned_f32(std::move(name), std::move(shape), std::move(values)));
  };
  const std::int64_t dim = h.dim, hidden = h.hidden, kv = h.kv_dim();
  add("model.embed_tokens.weight", {h.vocab, dim}, w.embedding);
  for (std::int64_t l = 0; l < h.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {dim}, slice(w.rms_att, l, dim));
    // llama2.c keeps Meta's interleaved RoPE row order; HF rotates head halves.
    add(p + "self_attn.q_proj.weight", {dim, dim}, rope_rows_to_halves(slice(w.wq, l, dim * dim), dim, h.heads));
    add(p + "self_attn.k_proj.weight", {kv, dim}, rope_rows_to_halves(slice(w.wk, l, kv * dim), kv, h.kv_heads));
    add(p + "self_attn.v_proj.weight", {kv, dim}, slice(w.wv, l, kv * dim));
    add(p + "self_attn.o_proj.weight", {dim, dim}, slice(w.wo, l, dim * dim));
    add(p + "post_attention_layernorm.weight", {dim}, slice(w.rms_ffn, l, dim));
    add(p + "mlp.gate_proj.weight", {hidden, dim}, slice(w.w1, l, hidden * dim));
    add(p + "mlp.down_proj.weight", {dim, hidden}, slice(w.w2, l, dim * hidden));
    add(p + "mlp.up_proj.weight", {hidden, dim}, slice(w.w3, l, hidden * dim));
  }
  add("model.norm.weight", {dim}, w.rms_final);
  if (!h.shared_classifier) add("lm_head.weight", {h.vocab, dim}, w.wcls);
  return out;
}

ModelConfig hf_config(const Header& h) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = h.vocab;
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden;
  c.num_layers = h.layers;
  c.num_heads = h.heads;
  c.num_kv_heads = h.kv_heads;
  c.head_dim = h.head_size();
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = h.shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  c.validate();
  return c;
}

// ---- Tokenizer.

struct Token {
  std::string piece;
  float score = 0;
};

std::vector<Token> read_tokens(const std::filesystem::path& path) {
  const MappedFile file(path);
  ByteReader reader(file.bytes(), path.string());
  const auto max_length = reader.read<std::int32_t>("max_token_length");
  if (max_length <= 0) fail("{}: invalid llama2.c tokenizer: max_token_length = {}", path.string(), max_length);
  std::vector<Token> tokens;
  while (reader.remaining() > 0) {
    const std::string what = fmt::format("token {}", tokens.size());
    Token token;
    token.score = reader.read<float>(what);
    const auto length = reader.read<std::int32_t>(what);
    if (length < 0) fail("{}: invalid llama2.c tokenizer: token {} has length {}", path.string(), tokens.size(), length);
    const auto bytes = reader.take(static_cast<std::uint64_t>(length), what);
    token.piece.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    tokens.push_back(std::move(token));
  }
  if (tokens.size() < 3) fail("{}: llama2.c tokenizer has only {} tokens", path.string(), tokens.size());
  return tokens;
}

// Byte offsets where UTF-8 characters start (plus the end); merges split pieces at
// character boundaries, as Python string slicing does.
std::vector<std::size_t> char_boundaries(const std::string& text, const std::string& file, std::size_t id) {
  std::vector<std::size_t> out;
  std::size_t i = 0;
  while (i < text.size()) {
    out.push_back(i);
    const auto lead = static_cast<unsigned char>(text[i]);
    const std::size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xe ? 3 : (lead >> 3) == 0x1e ? 4 : 0;
    bool valid = length > 0 && i + length <= text.size();
    for (std::size_t k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(text[i + k]) & 0xc0) == 0x80;
    if (!valid) fail("{}: token {} is not valid UTF-8", file, id);
    i += length;
  }
  out.push_back(text.size());
  return out;
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

bool is_byte_piece(const std::string& piece) {
  return piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>' &&
         std::isxdigit(static_cast<unsigned char>(piece[3])) && std::isxdigit(static_cast<unsigned char>(piece[4]));
}

const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space

struct Vocabulary {
  std::vector<std::string> pieces;  // by id, in SentencePiece form
  std::vector<float> scores;
  std::vector<bool> mergeable;  // normal pieces; unk, control and byte tokens never come from merges
  std::unordered_map<std::string, std::int64_t> ids;
};

Vocabulary vocabulary(const std::vector<Token>& tokens, const std::string& file) {
  Vocabulary v;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    // llama2.c's exporter wrote BOS/EOS as "\n<s>\n" / "\n</s>\n" and "▁" as a space.
    std::string piece = tokens[id].piece;
    if (piece == "\n<s>\n" || piece == "\n</s>\n") piece = piece.substr(1, piece.size() - 2);
    piece = replace_all(std::move(piece), " ", kSpace);
    char_boundaries(piece, file, id);
    const bool special = piece == "<unk>" || piece == "<s>" || piece == "</s>";
    if (!v.ids.emplace(piece, static_cast<std::int64_t>(id)).second) fail("{}: token {} ('{}') is a duplicate", file, id, piece);
    v.mergeable.push_back(!special && !is_byte_piece(piece));
    v.scores.push_back(tokens[id].score);
    v.pieces.push_back(std::move(piece));
  }
  for (const char* required : {"<unk>", "<s>", "</s>"}) {
    if (!v.ids.contains(required)) fail("{}: tokenizer has no '{}' token", file, required);
  }
  return v;
}

// SentencePiece BPE merges the adjacent pair whose merged piece scores highest;
// HF BPE merges the pair of lowest rank. Ranking every split of every piece by the
// piece's score makes the two agree (transformers' generate_merges).
std::vector<std::string> bpe_merges(const Vocabulary& v, const std::string& file) {
  struct Merge {
    std::int64_t left, right;
    float score;
    std::size_t left_length, right_length;
  };
  std::vector<Merge> merges;
  for (std::size_t id = 0; id < v.pieces.size(); ++id) {
    if (!v.mergeable[id]) continue;
    const std::string& piece = v.pieces[id];
    std::vector<Merge> local;
    const auto bounds = char_boundaries(piece, file, id);
    for (std::size_t b = 1; b + 1 < bounds.size(); ++b) {
      const auto left = v.ids.find(piece.substr(0, bounds[b]));
      const auto right = v.ids.find(piece.substr(bounds[b]));
      if (left == v.ids.end() || right == v.ids.end()) continue;
      if (!v.mergeable[left->second] || !v.mergeable[right->second]) continue;
      local.push_back({left->second, right->second, v.scores[id], left->first.size(), right->first.size()});
    }
    std::sort(local.begin(), local.end(),
              [](const Merge& a, const Merge& b) { return std::pair(a.left, a.right) < std::pair(b.left, b.right); });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  // Python's sorted(..., reverse=True) on (score, len(left), len(right)): stable, descending.
  std::stable_sort(merges.begin(), merges.end(), [&](const Merge& a, const Merge& b) {
    return std::tuple(a.score, v.pieces[a.left].size(), v.pieces[a.right].size()) >
           std::tuple(b.score, v.pieces[b.left].size(), v.pieces[b.right].size());
  });
  std::vector<std::string> out;
  out.reserve(merges.size());
  for (const auto& m : merges) out.push_back(v.pieces[m.left] + " " + v.pieces[m.right]);
  return out;
}

ordered_json added_token(std::int64_t id, const std::string& content) {
  return {{"id", id},        {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

ordered_json special_template(const std::string& bos, std::int64_t bos_id) {
  const auto special = [&](int type_id) { return ordered_json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  const auto sequence = [](const char* id, int type_id) {
    return ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  return {{"type", "TemplateProcessing"},
          {"single", {special(0), sequence("A", 0)}},
          {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

ordered_json tokenizer_json(const Vocabulary& v, const std::string& file) {
  ordered_json vocab = ordered_json::object();
  for (std::size_t id = 0; id < v.pieces.size(); ++id) vocab[v.pieces[id]] = id;
  const auto replace = [](const std::string& from, const std::string& to) {
    return ordered_json{{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
  };
  ordered_json out;
  out["version"] = "1.0";
  out["truncation"] = nullptr;
  out["padding"] = nullptr;
  out["added_tokens"] = ordered_json::array();
  for (const char* special : {"<unk>", "<s>", "</s>"}) out["added_tokens"].push_back(added_token(v.ids.at(special), special));
  out["normalizer"] = {{"type", "Sequence"},
                       {"normalizers", {{{"type", "Prepend"}, {"prepend", kSpace}}, replace(" ", kSpace)}}};
  out["pre_tokenizer"] = nullptr;
  out["post_processor"] = special_template("<s>", v.ids.at("<s>"));
  out["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {replace(kSpace, " "), {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  out["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", "<unk>"},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", true},
                  {"byte_fallback", true},
                  {"ignore_merges", false},
                  {"vocab", std::move(vocab)},
                  {"merges", bpe_merges(v, file)}};
  return out;
}

ordered_json tokenizer_config_json(std::int64_t model_max_length) {
  return {{"add_bos_token", true},
          {"add_eos_token", false},
          {"bos_token", "<s>"},
          {"eos_token", "</s>"},
          {"unk_token", "<unk>"},
          {"pad_token", nullptr},
          {"clean_up_tokenization_spaces", false},
          {"legacy", true},
          {"model_max_length", model_max_length},
          {"tokenizer_class", "LlamaTokenizer"}};
}

template <typename Json>
void write_json(const std::filesystem::path& path, const Json& value) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write {}", path.string());
  out << value.dump(2) << '\n';
  if (!out.flush()) fail("cannot write {}", path.string());
}

}  // namespace

void convert_llama2c_tokenizer(const std::filesystem::path& tokenizer_bin, const std::filesystem::path& out_dir,
                               std::int64_t model_max_length) {
  const Vocabulary v = vocabulary(read_tokens(tokenizer_bin), tokenizer_bin.string());
  std::filesystem::create_directories(out_dir);
  write_json(out_dir / "tokenizer.json", tokenizer_json(v, tokenizer_bin.string()));
  write_json(out_dir / "tokenizer_config.json", tokenizer_config_json(model_max_length));
}

void convert_llama2c(const std::filesystem::path& model_bin, const std::filesystem::path& tokenizer_bin,
                     const std::filesystem::path& out_dir) {
  const MappedFile file(model_bin);
  ByteReader reader(file.bytes(), model_bin.string());
  const Header header = read_header(reader);

  ByteReader sizing(file.bytes(), model_bin.string());
  WeightStream dry(sizing, header, /*dry_run=*/true);
  read_weights(dry, header);
  const std::uint64_t expected = header.data_offset + dry.offset();
  if (file.size() != expected) {
    fail("{}: {} llama2.c checkpoint: the header describes {} bytes but the file has {}", model_bin.string(),
         file.size() < expected ? "truncated" : "oversized", expected, file.size());
  }
  const ModelConfig config = hf_config(header);

  const auto tokens = read_tokens(tokenizer_bin);
  if (static_cast<std::int64_t>(tokens.size()) != header.vocab) {
    fail("{}: tokenizer has {} tokens but {} has vocab_size {}", tokenizer_bin.string(), tokens.size(),
         model_bin.string(), header.vocab);
  }

  reader.seek(header.data_offset);
  WeightStream stream(reader, header, /*dry_run=*/false);
  const Weights weights = read_weights(stream, header);

  std::filesystem::create_directories(out_dir);
  write_safetensors(out_dir / "model.safetensors", hf_tensors(header, weights), {{"format", "pt"}});
  write_json(out_dir / "config.json", to_hf_config(config));
  write_json(out_dir / "generation_config.json",
             json{{"bos_token_id", 1}, {"eos_token_id", 2}});
  convert_llama2c_tokenizer(tokenizer_bin, out_dir, header.seq_len);
}

}  // namespace nibble
