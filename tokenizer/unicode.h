#pragma once
// The little Unicode the tokenizers need: UTF-8 stepping, the \p{L} / \p{N} / \s
// classes of the pre-tokenizer regexes, and NFC (Qwen2's normalizer).
#include <cstddef>
#include <string>
#include <string_view>

namespace nibble::unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

// Decodes the code point at s[pos] and advances pos past it. A malformed or truncated
// sequence yields U+FFFD and advances one byte, so scanning always makes progress.
char32_t next(std::string_view s, std::size_t& pos);
void append_utf8(std::string& out, char32_t cp);
// Length of the UTF-8 sequence a lead byte announces (0 for a continuation or invalid byte).
std::size_t sequence_length(unsigned char lead);

bool is_letter(char32_t cp);   // \p{L}
bool is_number(char32_t cp);   // \p{N}
bool is_space(char32_t cp);    // \s: the White_Space property, as Oniguruma and Rust use

// Replaces each maximal ill-formed subsequence with U+FFFD (Rust's from_utf8_lossy).
std::string to_valid_utf8(std::string_view bytes);
// Length of the longest prefix of `bytes` that does not end inside an unfinished but
// so-far valid UTF-8 sequence.
std::size_t complete_prefix(std::string_view bytes);

std::string nfc(std::string_view text);

}  // namespace nibble::unicode
