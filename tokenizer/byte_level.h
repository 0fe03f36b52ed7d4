#pragma once
// GPT-2's reversible byte <-> printable-character table: byte-level BPE vocabularies
// spell every byte as one of these 256 characters (space is "Ġ", newline "Ċ").
#include <optional>
#include <string>
#include <string_view>

namespace nibble::byte_level {

// Appends the byte-level spelling of `bytes`.
void encode(std::string_view bytes, std::string& out);
// The bytes a byte-level string stands for; nullopt if some character is not in the
// table (Hugging Face then keeps that token's text as it is).
std::optional<std::string> decode(std::string_view text);

}  // namespace nibble::byte_level
