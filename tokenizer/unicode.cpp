#include "tokenizer/unicode.h"

#include <algorithm>
#include <vector>

namespace nibble::unicode {
namespace {

struct CategoryRange {
  char32_t first, last;
  unsigned char category;  // 1 letter, 2 number
};
struct CombiningRange {
  char32_t first, last;
  unsigned char ccc;
};
struct Decomposition {
  char32_t cp;
  unsigned short offset, length;
};
struct Composition {
  char32_t first, second, composed;
};

#include "tokenizer/unicode_data.inc"

unsigned char category(char32_t cp) {
  auto it = std::upper_bound(std::begin(kCategoryRanges), std::end(kCategoryRanges), cp,
                             [](char32_t c, const CategoryRange& r) { return c < r.first; });
  if (it == std::begin(kCategoryRanges)) return 0;
  --it;
  return cp <= it->last ? it->category : 0;
}

unsigned char combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::upper_bound(std::begin(kCombiningRanges), std::end(kCombiningRanges), cp,
                             [](char32_t c, const CombiningRange& r) { return c < r.first; });
  if (it == std::begin(kCombiningRanges)) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                             [](const Decomposition& d, char32_t c) { return d.cp < c; });
  if (it != std::end(kDecompositions) && it->cp == cp) {
    out.insert(out.end(), kDecompositionPool + it->offset, kDecompositionPool + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::pair{a, b},
                             [](const Composition& c, std::pair<char32_t, char32_t> key) {
                               return c.first != key.first ? c.first < key.first : c.second < key.second;
                             });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composed;
  return 0;
}

}  // namespace

std::size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

namespace {
// Valid range of the second byte given the lead (Unicode Table 3-7); later bytes are 80..BF.
bool second_ok(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

// Number of bytes of the valid (possibly incomplete) sequence starting at s[pos].
// Returns {bytes matched, complete?}.
std::pair<std::size_t, bool> match_sequence(std::string_view s, std::size_t pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const std::size_t n = sequence_length(lead);
  if (n == 0) return {0, false};
  std::size_t i = 1;
  for (; i < n && pos + i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? second_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {i, false};
  }
  return {i, i == n};
}
}  // namespace

char32_t next(std::string_view s, std::size_t& pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  if (lead < 0x80) {
    ++pos;
    return lead;
  }
  auto [n, complete] = match_sequence(s, pos);
  if (!complete) {
    ++pos;
    return kReplacement;
  }
  char32_t cp = lead & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (std::size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  pos += n;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return category(cp) == 1;
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return category(cp) == 2;
}

bool is_space(char32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    auto [n, complete] = match_sequence(bytes, pos);
    if (complete) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out += "\xEF\xBF\xBD";
      pos += std::max<std::size_t>(n, 1);
    }
  }
  return out;
}

std::size_t complete_prefix(std::string_view bytes) {
  // An unfinished sequence is at most 3 bytes long, so only the tail needs a look.
  const std::size_t start = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (std::size_t pos = start; pos < bytes.size(); ++pos) {
    if (sequence_length(static_cast<unsigned char>(bytes[pos])) < 2) continue;
    auto [n, complete] = match_sequence(bytes, pos);
    if (!complete && pos + n == bytes.size()) return pos;
  }
  return bytes.size();
}

std::string nfc(std::string_view text) {
  // Everything below U+0300 is already NFC and starts no composition with what follows.
  bool simple = true;
  for (std::size_t pos = 0; pos < text.size() && simple;) simple = next(text, pos) < 0x300;
  if (simple) return std::string(text);

  std::vector<char32_t> cps;
  for (std::size_t pos = 0; pos < text.size();) decompose(next(text, pos), cps);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (std::size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition (UAX #15): a mark composes with the last starter unless a
  // mark of the same or higher class sits between them.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  std::size_t starter = SIZE_MAX;
  int last_ccc = 0;
  for (char32_t cp : cps) {
    const int ccc = combining_class(cp);
    if (starter != SIZE_MAX && (last_ccc < ccc || last_ccc == 0)) {
      if (const char32_t composed = compose_pair(out[starter], cp)) {
        out[starter] = composed;
        continue;
      }
    }
    if (ccc == 0) starter = out.size();
    last_ccc = ccc;
    out.push_back(cp);
  }
  std::string result;
  result.reserve(text.size());
  for (char32_t cp : out) append_utf8(result, cp);
  return result;
}

}  // namespace nibble::unicode
