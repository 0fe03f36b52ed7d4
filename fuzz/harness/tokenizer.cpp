// Tokenizers on real vocabularies, loaded once: SmolLM2's GGUF vocabulary
// (byte-level BPE, nibble's own BPE engine) and the Llama 2 tokenizer.model
// (SentencePiece). The first input byte picks the tokenizer (bit 0) and what the
// rest is (bit 1): text to encode, or raw token ids to decode. Checked:
//   - encode gives ids inside the vocabulary;
//   - byte-level BPE round-trips any valid UTF-8 text exactly;
//   - streaming decode (IncrementalDecoder) never splits a character and, for
//     encoded text, adds up to the full decode, with and without special tokens;
//   - decoding arbitrary in-range ids works; out-of-range ids are a nibble::Error.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

struct Loaded {
  std::unique_ptr<nibble::Tokenizer> tokenizer;
  bool byte_level = false;
  // Bytes the vocabulary has a token for. SmolLM2's has none for 21 byte values
  // (0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2, 0xf5-0xff);
  // encode() drops them as Hugging Face's BPE without an unk token does, so only
  // texts made of the other bytes can round-trip.
  std::array<bool, 256> encodable{};
};
Loaded tokenizers[2];

std::unique_ptr<nibble::Tokenizer> load(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) {
    std::fprintf(stderr, "fuzz_tokenizer: %s is missing (scripts/get-model; the shared/ folder)\n", path.c_str());
    std::exit(2);
  }
  return nibble::load_tokenizer(path);
}

// Streaming decode: pieces never split a character; for ids that encode() made,
// the pieces add up to decode(). Not for arbitrary ids: where byte tokens form an
// invalid UTF-8 run, decode() replaces every byte of the run (as Hugging Face's
// ByteFallback does) while the stream has already sent the valid start of it.
void check_streaming(const nibble::Tokenizer& tokenizer, const std::vector<nibble::TokenId>& ids, bool whole_equal) {
  const bool any_special =
      std::any_of(ids.begin(), ids.end(), [&](nibble::TokenId id) { return tokenizer.is_special(id); });
  for (const bool skip : {true, false}) {
    if (!skip && !any_special) break;  // skip_special changes nothing then: same pieces, same checks
    nibble::IncrementalDecoder decoder(tokenizer, skip);
    std::string streamed;
    for (const auto id : ids) {
      const std::string piece = decoder.push(id);
      if (nibble::unicode::to_valid_utf8(piece) != piece) nibble::fuzz::violated("a streamed piece split a character");
      streamed += piece;
    }
    streamed += decoder.flush();
    const std::string whole = nibble::unicode::to_valid_utf8(tokenizer.decode(ids, skip));
    if (whole_equal && streamed != whole) {
      std::fprintf(stderr, "skip_special=%d\nstreamed: [%s]\ndecode(): [%s]\nids:", skip,
                   nibble::fuzz::escaped(streamed).c_str(), nibble::fuzz::escaped(whole).c_str());
      for (const auto id : ids) std::fprintf(stderr, " %d", id);
      std::fprintf(stderr, "\n");
      nibble::fuzz::violated("streamed decode differs from decode()");
    }
  }
}

void encode_text(const Loaded& loaded, std::string_view text) {
  const auto& tokenizer = *loaded.tokenizer;
  std::vector<nibble::TokenId> plain_ids;
  for (const bool add_special : {false, true}) {
    const auto ids = tokenizer.encode(text, add_special);
    if (!add_special) plain_ids = ids;
    for (const auto id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size()) nibble::fuzz::violated("id out of vocab");
    }
    const bool all_encodable =
        std::all_of(text.begin(), text.end(), [&](char c) { return loaded.encodable[static_cast<unsigned char>(c)]; });
    if (!add_special && loaded.byte_level && all_encodable && nibble::unicode::to_valid_utf8(std::string(text)) == text) {
      if (const std::string decoded = tokenizer.decode(ids, false); decoded != text) {
        std::fprintf(stderr, "text:    [%s]\ndecoded: [%s]\n", nibble::fuzz::escaped(text).c_str(),
                     nibble::fuzz::escaped(decoded).c_str());
        nibble::fuzz::violated("byte-level BPE did not round-trip valid UTF-8");
      }
    }
    // A tokenizer that adds nothing (SmolLM2's) gives the same ids: checked already.
    if (!add_special || ids != plain_ids) check_streaming(tokenizer, ids, true);
  }
  // The whole text marked plain (untrusted): no special token may be matched in it.
  const nibble::TextRange everything{0, text.size()};
  for (const auto id : tokenizer.encode(text, false, {&everything, 1})) {
    if (tokenizer.is_special(id)) nibble::fuzz::violated("special token matched inside a plain range");
  }
}

void decode_ids(const Loaded& loaded, std::string_view bytes) {
  const auto& tokenizer = *loaded.tokenizer;
  std::vector<nibble::TokenId> ids;
  bool out_of_range = false;
  for (std::size_t i = 0; i + 2 <= bytes.size(); i += 2) {
    // 16 bits per id, spread over a little more than the vocabulary so that
    // out-of-range ids are tried too.
    const auto raw = static_cast<std::uint16_t>(static_cast<unsigned char>(bytes[i]) |
                                                static_cast<unsigned char>(bytes[i + 1]) << 8);
    const auto id = static_cast<nibble::TokenId>(raw % (tokenizer.vocab_size() + 8));
    out_of_range |= static_cast<std::size_t>(id) >= tokenizer.vocab_size();
    ids.push_back(id);
  }
  if (out_of_range) {
    try {
      (void)tokenizer.decode(ids, false);
    } catch (const nibble::Error&) {
      return;
    }
    nibble::fuzz::violated("out-of-range id decoded without an error");
  }
  check_streaming(tokenizer, ids, false);
  for (const auto id : ids) (void)tokenizer.token_bytes(id), (void)tokenizer.id_to_token(id);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizers[0] = {load(NIBBLE_MODEL_CACHE "/SmolLM2-135M-Instruct.Q4_1.gguf"), true, {}};
  tokenizers[1] = {load(NIBBLE_SHARED_DIR "/models/llama2c-tokenizer"), false, {}};
  for (auto& loaded : tokenizers) {
    for (int byte = 0; byte < 256; ++byte) {
      loaded.encodable[static_cast<std::size_t>(byte)] =
          !loaded.tokenizer->encode(std::string(1, static_cast<char>(byte)), false).empty();
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const Loaded& loaded = tokenizers[data[0] & 1];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 2) {
    decode_ids(loaded, rest);
  } else {
    encode_text(loaded, rest);
  }
  return 0;
}
