#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/unicode.h"

namespace nibble::byte_level {
namespace {

struct Table {
  std::array<std::string, 256> spelling;
  std::array<short, 512> byte_of;  // character (all are < U+0200) -> byte, -1 if none

  Table() {
    byte_of.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      unicode::append_utf8(spelling[static_cast<std::size_t>(b)], cp);
      byte_of[cp] = static_cast<short>(b);
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

void encode(std::string_view bytes, std::string& out) {
  const Table& t = table();
  for (char c : bytes) out += t.spelling[static_cast<unsigned char>(c)];
}

std::optional<std::string> decode(std::string_view text) {
  const Table& t = table();
  std::string out;
  out.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const char32_t cp = unicode::next(text, pos);
    if (cp >= t.byte_of.size() || t.byte_of[cp] < 0) return std::nullopt;
    out += static_cast<char>(t.byte_of[cp]);
  }
  return out;
}

}  // namespace nibble::byte_level
